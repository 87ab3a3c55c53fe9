"""Watching a training run: the callback protocol of :func:`pyrovae.inference.train.train`.

``train(..., callbacks=[...])`` calls, on each callback, whichever of these methods it has:

==================  ================================================================================
``on_train_start``  once, before the first epoch of this session (after a checkpoint was resumed:
                    ``state.history`` then holds the epochs already done)
``on_epoch_start``  before every epoch's first step (``state.epoch`` is the epoch about to run)
``on_step``         after every SVI step (one minibatch of the main data, and one of each extra term)
``on_epoch_scored`` after every epoch's evaluation, its history row appended but not yet saved: a
                    callback that adds its own scores to ``state.history[-1]`` does it here, so
                    that the checkpoint and every ``on_epoch_end`` (metrics.csv) see them
``on_epoch_end``    after every epoch, once its history row is appended and its checkpoint written
``on_train_end``    once, when training stops: after the last epoch, or when an exception (a
                    divergence, Ctrl-C, a callback's own error) stops it — ``state.error`` says which
==================  ================================================================================

Each is given the ``state``, the :class:`~pyrovae.inference.train.Trainer` of the run, which
exposes (read them, do not assign them; what a run changes it changes through the trainer's
methods ``set_lr`` and ``set_beta``, as :class:`LRSchedule` and :class:`KLWarmup` do):

========================  ==========================================================================
``history``               the rows of the epochs done, a list of dicts: ``epoch``, ``train_elbo``,
                          ``test_elbo``, ``reconstruction``, ``kl``, ``seconds``, ``lr``,
                          ``samples_per_second`` (per datapoint, in nats; see :func:`train`)
``epoch``                 the epoch under way (1-based); in ``on_train_start``, the epochs done
``epochs``                the epoch training runs to (``train(epochs=...)``)
``steps``                 SVI steps taken in this session (resumed runs count from 0)
``loss``                  the last step's loss, −ELBO per datapoint of the minibatch's data set
                          (the β-weighted objective during a KL warm-up; NaN before the first step)
``lr``                    the learning rate of the epoch under way
``batch_size``            the minibatch size B
``samples_per_second``    datapoints trained on per second of training (evaluation excluded): the
                          running rate of the epoch under way in ``on_step``, the epoch's rate at its
                          end (also ``history[-1]["samples_per_second"]``); NaN before any step
``pair``                  ``(model, guide)``; ``params`` their parameters by name; ``optimizer``
``data``, ``test``        the data (``len(state.data)`` = N) and the test data (None without it)
``device``                the ``torch.device`` training runs on
``error``                 in ``on_train_end``: None when every epoch ran, else the exception that
                          stopped training (it is raised again after the callbacks)
========================  ==========================================================================

A callback that only counts or prints subclasses :class:`Callback` and overrides what it needs::

    class PrintKL(Callback):
        def on_epoch_end(self, state):
            print(state.epoch, state.history[-1]["kl"])

What :func:`~pyrovae.inference.train.train` does around the steps is made of callbacks too, in
this order: :class:`LRSchedule` (the learning rate of each epoch), :class:`KLWarmup` (β of each
epoch), :class:`DivergenceStop` (stop a diverging run), :class:`Checkpoint` (write one after every
epoch), :class:`ProgressBar`; then the caller's. The run directory's writers (``metrics.csv``,
TensorBoard, MLflow: :mod:`pyrovae.app.logs`) are callbacks as well. Callbacks are called in the order given; one that raises stops training (the
others still get ``on_train_end``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from ..errors import InputTypeError, TrainingError
from . import checkpoint as ckpt
from . import distributed

#: the methods of the protocol, in the order a run calls them
HOOKS = ("on_train_start", "on_epoch_start", "on_step", "on_epoch_scored", "on_epoch_end", "on_train_end")


class Callback:
    """The callback protocol with every method a no-op: subclass it and override what you need.

    Any object with some of the methods of :data:`HOOKS` serves as well; each is called with the
    run's :class:`~pyrovae.inference.train.Trainer` (the module's doc lists what it exposes).
    """

    def on_train_start(self, state) -> None:
        """Before the first epoch of this session (``state.history``: the epochs resumed)."""

    def on_epoch_start(self, state) -> None:
        """Before every epoch's first step (``state.epoch``: the epoch about to run)."""

    def on_step(self, state) -> None:
        """After every SVI step (``state.loss``, ``state.steps``, ``state.samples_per_second``)."""

    def on_epoch_scored(self, state) -> None:
        """After every epoch's evaluation, before its checkpoint: add scores to ``state.history[-1]``."""

    def on_epoch_end(self, state) -> None:
        """After every epoch: its row is ``state.history[-1]``, its checkpoint written."""

    def on_train_end(self, state) -> None:
        """When training stops (``state.error``: None after the last epoch, else the exception)."""


class EpochFunction(Callback):
    """``fn(history)`` after every epoch: the ``callback=`` argument of :func:`train`, as a callback."""

    def __init__(self, fn: Callable[[List[dict]], None]):
        self.fn = fn

    def on_epoch_end(self, state) -> None:
        self.fn(state.history)


class Callbacks:
    """The callbacks of one run, called in order; built by :func:`train` from its arguments."""

    def __init__(self, callbacks: Sequence = (), epoch_function: Optional[Callable] = None):
        if callbacks is None or isinstance(callbacks, (str, bytes)) or not hasattr(callbacks, "__iter__"):
            raise InputTypeError(f"callbacks must be a list of callbacks (objects with some of {', '.join(HOOKS)}), "
                                 f"got {type(callbacks).__name__}")
        self.callbacks = list(callbacks)
        for i, cb in enumerate(self.callbacks):
            if not any(callable(getattr(cb, hook, None)) for hook in HOOKS):
                raise InputTypeError(f"callbacks[{i}] must be a pyrovae Callback (an object with some of "
                                     f"{', '.join(HOOKS)}), got {type(cb).__name__}")
        if epoch_function is not None:
            if not callable(epoch_function):
                raise InputTypeError(f"callback must be a function of the history, got {type(epoch_function).__name__}")
            self.callbacks.append(EpochFunction(epoch_function))

    def __len__(self) -> int:
        return len(self.callbacks)

    def __call__(self, hook: str, state) -> None:
        """Call ``hook`` (one of :data:`HOOKS`) with ``state`` on every callback that has it."""
        for cb in self.callbacks:
            method = getattr(cb, hook, None)
            if method is not None:
                method(state)

    def end(self, state) -> None:
        """``on_train_end`` on every callback, each even when an earlier one raised; then the first
        such error is raised (unless training is already stopping on an error of its own)."""
        first = None
        for cb in self.callbacks:
            method = getattr(cb, "on_train_end", None)
            try:
                if method is not None:
                    method(state)
            except Exception as e:  # noqa: BLE001 -- every callback must get to close its files
                first = first or e
        if first is not None and state.error is None:
            raise first


class LRSchedule(Callback):
    """The learning rate of each epoch from ``optim`` (:class:`pyrovae.inference.optim.OptimizerSettings`:
    its schedule), set before the epoch's first step."""

    def __init__(self, optim):
        self.optim = optim

    def on_epoch_start(self, state) -> None:
        state.set_lr(self.optim.lr_at(state.epoch))


def warmup_beta(epoch: int, kl_warmup: int) -> float:
    """β of epoch ``epoch`` (from 1): min(1, epoch / kl_warmup), and 1 without warm-up."""
    return 1.0 if kl_warmup == 0 else min(1.0, epoch / kl_warmup)


class KLWarmup(Callback):
    """KL warm-up over ``epochs`` epochs: before epoch e the latent sites' weight β =
    min(1, e / epochs) (:func:`warmup_beta`; the trainer's ``ScaleLatents``), so that training
    maximises E_q[log p(x|z)] − β KL(q ‖ p) (Sønderby et al. 2016)."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_epoch_start(self, state) -> None:
        state.set_beta(warmup_beta(state.epoch, self.epochs))


class Checkpoint(Callback):
    """After every epoch, the run's state (parameters, optimizer and random states, history,
    ``config`` and ``metadata``) written atomically to ``path`` (:mod:`pyrovae.inference.checkpoint`;
    in data-parallel training every rank gives its random state and rank 0 writes).
    ``saved``: the epochs the file holds (those resumed at the start)."""

    def __init__(self, path, config=None, metadata=None):
        self.path, self.config, self.metadata, self.saved = Path(path), config, metadata, 0

    def on_train_start(self, state) -> None:
        self.saved = len(state.history)

    def on_epoch_end(self, state) -> None:
        saved = state.checkpoint_state(self.config, self.metadata)  # on every rank: it gathers their random states
        if distributed.is_main():
            ckpt.save(self.path, saved)
        distributed.barrier()
        self.saved = len(state.history)


#: a step's loss beyond this many times the session's starting scale is divergence
DIVERGENCE_FACTOR = 1e3


class DivergenceMonitor:
    """Watches the loss per datapoint of each step. It has diverged when it is non-finite, or when
    |loss| > ``DIVERGENCE_FACTOR`` × (|loss of the first step| + 1 nat).

    The first step's loss is that of the model as the session found it (untrained, or as resumed),
    which for a VAE is about the largest a sound run sees: training lowers it, a KL warm-up or a
    loss crossing zero moves it by a factor of a few. A learning rate that is far too large sends
    it to 1e10 and beyond within a few steps, often without reaching NaN. (A running average
    would follow a loss that grows by a factor of ten per step and never flag it.)
    """

    def __init__(self):
        self.scale = None

    def diverged(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return True
        if self.scale is None:
            self.scale = abs(loss)
        return abs(loss) > DIVERGENCE_FACTOR * (self.scale + 1.0)


class DivergenceStop(Callback):
    """Stop a diverging run with a :class:`~pyrovae.errors.TrainingError` that says where (epoch,
    step), why, and which checkpoint is kept: a step whose loss is non-finite (named by the
    trainer's ``why_not_finite``) or jumps (:class:`DivergenceMonitor`), or a parameter holding
    NaN/Inf at an epoch's end — checked before the epoch's :class:`Checkpoint` (given as
    ``checkpoint``) writes, so a good checkpoint is never overwritten by a diverged one."""

    def __init__(self, checkpoint: Optional[Checkpoint] = None):
        self.checkpoint, self.monitor, self.step = checkpoint, DivergenceMonitor(), 0

    def on_epoch_start(self, state) -> None:
        self.step = 0

    def on_step(self, state) -> None:
        self.step += 1
        if not math.isfinite(state.loss):
            self.stop(state, self.step, state.why_not_finite())
        if self.monitor.diverged(state.loss):
            self.stop(state, self.step, f"the loss jumped to {state.loss:.3g} nats per datapoint from "
                                        f"{self.monitor.scale:.3g} at the first step")

    def on_epoch_end(self, state) -> None:
        bad = [name for name, p in state.params.items() if not p.isfinite().all()]
        if bad:
            self.stop(state, "end", f"parameter(s) {bad[:3]} became NaN/Inf")

    def stop(self, state, step, what: str):
        done, path = (self.checkpoint.saved, self.checkpoint.path) if self.checkpoint else (0, None)
        kept = (f"the last good checkpoint (epoch {done}) is kept at {path}" if path and done
                else "no checkpoint was written" if path else "nothing was saved")
        raise TrainingError(f"training diverged at epoch {state.epoch}, step {step}: {what}. Training stopped "
                            f"(lower the learning rate or check the data); {kept}")


class ProgressBar(Callback):
    """A tqdm bar over the run's steps: each step's −ELBO and the epoch's running rate."""

    bar = None

    def on_train_start(self, state) -> None:
        from tqdm.auto import tqdm

        per_epoch = math.ceil(len(state.data) / state.batch_size)
        self.bar = tqdm(total=state.epochs * per_epoch, initial=len(state.history) * per_epoch, unit="step",
                        desc="train", dynamic_ncols=True)

    def on_step(self, state) -> None:
        self.bar.update(1)
        self.bar.set_postfix_str(f"epoch {state.epoch} -ELBO {state.loss:.2f} {state.samples_per_second:.0f} "
                                 "samples/s", refresh=False)

    def on_train_end(self, state) -> None:
        if self.bar is not None:
            self.bar.close()

"""Watching a training run: the callback protocol of :func:`pyrovae.inference.train.train`.

``train(..., callbacks=[...])`` calls, on each callback, whichever of these methods it has:

==================  ================================================================================
``on_train_start``  once, before the first epoch of this session (after a checkpoint was resumed:
                    ``state.history`` then holds the epochs already done)
``on_step``         after every SVI step (one minibatch of the main data, and one of each extra term)
``on_epoch_end``    after every epoch, once its history row is appended and its checkpoint written
``on_train_end``    once, when training stops: after the last epoch, or when an exception (a
                    divergence, Ctrl-C, a callback's own error) stops it — ``state.error`` says which
==================  ================================================================================

Each is given the ``state``, the :class:`~pyrovae.inference.train.Trainer` of the run, which
exposes (read them, do not assign them):

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
``checkpoint``            the checkpoint path (None without one)
``error``                 in ``on_train_end``: None when every epoch ran, else the exception that
                          stopped training (it is raised again after the callbacks)
========================  ==========================================================================

A callback that only counts or prints subclasses :class:`Callback` and overrides what it needs::

    class PrintKL(Callback):
        def on_epoch_end(self, state):
            print(state.epoch, state.history[-1]["kl"])

The run directory's writers (``metrics.csv``, TensorBoard, MLflow: :mod:`pyrovae.app.logs`) are
callbacks too. Callbacks are called in the order given; one that raises stops training (the
others still get ``on_train_end``).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

from ..errors import InputTypeError

#: the methods of the protocol, in the order a run calls them
HOOKS = ("on_train_start", "on_step", "on_epoch_end", "on_train_end")


class Callback:
    """The callback protocol with every method a no-op: subclass it and override what you need.

    Any object with some of the methods of :data:`HOOKS` serves as well; each is called with the
    run's :class:`~pyrovae.inference.train.Trainer` (the module's doc lists what it exposes).
    """

    def on_train_start(self, state) -> None:
        """Before the first epoch of this session (``state.history``: the epochs resumed)."""

    def on_step(self, state) -> None:
        """After every SVI step (``state.loss``, ``state.steps``, ``state.samples_per_second``)."""

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

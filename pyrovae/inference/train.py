"""Training any Pyro model/guide pair by stochastic variational inference.

``train(model, guide, data, epochs=..., batch_size=...)`` maximises the ELBO of the whole data
set: each minibatch of B out of N datapoints is scaled by N/B (:class:`ScaleData`), so the loss
is an unbiased estimate of −Σ_i ELBO(x_i) (pyro-ppl issue #1437). Parameters are whatever the
pair registers with ``pyro.param``/``pyro.module``; one ``torch.optim.Adam`` updates them all
(:class:`pyrovae.inference.optim.OptimizerSettings`: schedule, β1/β2/ε, gradient clipping).

Each epoch appends a row to the returned history (all per datapoint, in nats):
``epoch``, ``train_elbo`` (mean of the epoch's minibatch ELBOs), ``test_elbo``,
``reconstruction`` = E_q[log p(x|z)] and ``kl`` = KL(q(z|x) ‖ p(z)) of that test ELBO (on the
test set, or on the first 2000 training points when there is none), ``seconds`` (training and
evaluation), ``lr`` (the epoch's learning rate, :mod:`pyrovae.inference.optim`) and
``samples_per_second`` (datapoints trained on per second of the epoch's training, evaluation
excluded; all ranks' together in data-parallel training). Callbacks watch a run as it goes
(:mod:`pyrovae.inference.callbacks`).
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import pyro
import torch
from pyro.infer import RenyiELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import nn

from .. import checks
from ..errors import CheckpointError, PyrovaeError, TrainingError
from . import checkpoint as ckpt
from . import distributed
from .arguments import ModelArguments, batch_size_of
from .callbacks import Callbacks
from .elbos import make_elbo
from .optim import OptimizerSettings, set_lr
from .pathwise import DReG_IWAE
from .precision import with_precision
from .estimators import elbo_parts
from .faststep import FastStep
from .tracedstep import TracedStep, traced_mode, traces_pair
from .pairs import check_pair_on
from .traces import PARTICLE_PLATES, nesting_of, params_of

EVAL_POINTS = 2000  # training points scored each epoch when there is no test set


class ScaleData(Messenger):
    """Multiply by ``scale`` (N/B) the log-density of every sample site inside a plate over the
    minibatch: a vectorized plate of size B, or one declared without a size (``pyro.plate("data")``)
    whose dimension in the site's batch shape is B. Sites outside such plates (global latents and
    parameters) are not scaled; a plate subsampled by Pyro itself (``pyro.plate("data", N,
    subsample=...)``, size N) is scaled by Pyro and left alone here.

    Around both the model and the guide it makes a minibatch's ELBO an unbiased estimate of the
    ELBO of all N datapoints (pyro-ppl issue #1437).
    """

    def __init__(self, scale: float, batch: int):
        super().__init__()
        self.scale, self.batch = scale, batch

    def _over_batch(self, msg) -> bool:
        if site_is_subsample(msg):
            return False
        for f in msg["cond_indep_stack"]:
            if not f.vectorized or f.name in PARTICLE_PLATES or f.full_size not in (None, f.size):
                continue  # not over the batch, or subsampled (and scaled) by Pyro itself
            if f.size == self.batch or (f.size == -1 and self._size_at(msg, f.dim) == self.batch):
                return True
        return False

    @staticmethod
    def _size_at(msg, dim: int) -> int:
        """The size of batch dimension ``dim`` of a site: of its distribution, else of its value."""
        fn, shape = msg["fn"], msg["fn"].batch_shape
        if msg["value"] is not None:
            value = msg["value"]
            shape = torch.broadcast_shapes(shape, value.shape[:value.dim() - fn.event_dim])
        return shape[dim] if len(shape) >= -dim else 1

    def _process_message(self, msg):
        if msg["type"] == "sample" and self._over_batch(msg):
            msg["scale"] = self.scale * msg["scale"]

    def _postprocess_message(self, msg):
        """Nothing on the way back (skips ``Messenger``'s look-up of a ``_pyro_post_*`` method at every site)."""


class ScaleLatents(Messenger):
    """Multiply the log-density of every latent (unobserved) sample site by ``beta``.

    Around both the model and the guide this turns any ELBO into the β-weighted objective
    E_q[log p(x|z)] − β KL(q(z|x) ‖ p(z)) (TraceMeanField_ELBO scales its closed-form KL the same
    way): the KL warm-up of Sønderby et al. (2016) and Tomczak & Welling (2018) for β < 1.
    """

    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.beta * msg["scale"]

    _postprocess_message = ScaleData._postprocess_message


def scales_inside(elbo) -> bool:
    """Whether a minibatch is scaled to the data set inside the ELBO, by its sites' scale
    (:class:`ScaleData`): right for the ELBOs that are sums of site log-densities (Trace,
    TraceMeanField, TraceGraph, TraceEnum), which may also hold global latents.

    Not for the importance-weighted bound: Pyro's ``RenyiELBO`` (and :class:`DReG_IWAE`, which
    matches its value) puts a site's scale s inside the log-mean-exp over particles,
    log 1/k Σ_j w_j^s ≠ s · log 1/k Σ_j w_j; with s = N/B = 600 that is about s · max_j log w_j, the
    VR-max objective (Li & Turner 2016), not IWAE. For them the minibatch's loss and gradient are
    multiplied by N/B outside (an unbiased estimate of the bound summed over the data set).
    """
    return not isinstance(elbo, (RenyiELBO, DReG_IWAE))


def warmup_beta(epoch: int, kl_warmup: int) -> float:
    """β of epoch ``epoch`` (from 1): min(1, epoch / kl_warmup), and 1 without warm-up."""
    return 1.0 if kl_warmup == 0 else min(1.0, epoch / kl_warmup)


def resolve_device(device: Optional[str]) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _owner(fn) -> Optional[nn.Module]:
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def _check_data_once(model, *data) -> None:
    """A model whose owner checks its data (``VAE.check_data``) checks each whole data set here,
    once: its model and guide then check batches only while Pyro's validation is on."""
    check = getattr(_owner(model), "check_data", None)
    if check is not None:
        for arguments in data:
            if arguments is not None:
                for args, kwargs in arguments.parts():  # a streamed set in parts, never whole on the device
                    check(*args, **kwargs)


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


def _invalid_parameter(e: ValueError) -> Optional[str]:
    """What a validation error says of a distribution parameter (None when it is about something else)."""
    lines = [line for line in str(e).splitlines() if line.startswith("Expected parameter")]
    return f"a distribution parameter became NaN/Inf ({lines[0].rstrip(':')})" if lines else None


def load_params(params: Dict[str, torch.Tensor], saved: Dict[str, torch.Tensor]) -> None:
    """Copy saved values into the pair's parameters in place (shapes must match)."""
    missing = sorted(set(params) - set(saved))
    if missing:
        raise CheckpointError(f"the checkpoint lacks parameters {missing}: it was written for another model")
    with torch.no_grad():
        for name, p in params.items():
            if p.shape != saved[name].shape:
                raise CheckpointError(f"parameter {name} has shape {list(saved[name].shape)} in the "
                                           f"checkpoint but {list(p.shape)} in the model")
            p.copy_(saved[name])


def _objective(pair, data: ModelArguments, batch_size: int, elbo, num_particles: int, gradient: str):
    """(the pair's ELBO, the parameters it registers), from one run on its first minibatch, in
    which a mismatched pair is refused (:func:`pyrovae.inference.pairs.check_pair_on`)."""
    args, kwargs = data.rows(0, batch_size)
    traces = check_pair_on(*pair, *args, **kwargs)
    return make_elbo(elbo, num_particles, nesting_of(traces), gradient=gradient), params_of(traces)


@dataclass
class Term:
    """One more part of the objective, trained alongside the main pair in every step:
    ``weight`` × the ELBO of ``model``/``guide`` over ``data`` (a tensor, tuple or dict, as for
    :func:`train`), each of its minibatches scaled to its own data-set size.

    The semi-supervised objective of Kingma et al. (2014) is the main pair on the unlabeled data
    plus ``Term(model, guide, (x_labeled, y_labeled))`` and, for the classifier,
    ``Term(classifier_model, classifier_guide, (x_labeled, y_labeled), weight=α)``
    (examples/semi_supervised.py). ``elbo`` (default: the main one's) and ``batch_size``
    (default: the main one's) may differ; a term's data are cycled through, reshuffled each pass.
    """

    model: Callable
    guide: Callable
    data: Any
    elbo: Any = None
    batch_size: Optional[int] = None
    weight: float = 1.0


class _TermState:
    """A :class:`Term` inside a trainer: its data on the device, its ELBO, its endless minibatches."""

    shard = None  # (rank, world) in data-parallel training: the term's data are sharded like the main data

    def __init__(self, term: Term, name: str, dtype, device, default_batch: int):
        self.pair = (term.model, term.guide)
        self.data = ModelArguments(term.data, name, dtype).to(device)
        self.batch_size = checks.positive_int(f"{name}.batch_size", term.batch_size or default_batch)
        self.weight = checks.positive_float(f"{name}.weight", term.weight)
        self.elbo = term.elbo
        self.seek(0, 0)

    def seek(self, passes: int, taken: int) -> None:
        """Stand after ``taken`` minibatches of pass ``passes`` (where a checkpoint left the term)."""
        self.passes, self.taken = passes, 0
        self._batches = self.data.batches(self.batch_size, epoch=passes, shard=self.shard) if passes else iter(())
        for _ in range(taken):
            next(self._batches)
            self.taken += 1

    def next_batch(self):
        try:
            batch = next(self._batches)
        except StopIteration:
            self.seek(self.passes + 1, 0)
            batch = next(self._batches)
        self.taken += 1
        return batch


class Trainer:
    """The state of one training run; :func:`train` is the function to call."""

    def __init__(self, model, guide, data, *, batch_size, elbo, num_particles, test_data, device, lr: float = 1e-3,
                 validate: bool = False, extra: Sequence[Term] = (), optim: Optional[OptimizerSettings] = None,
                 gradient: str = "standard", precision: str = "float32", fast_step: bool = True,
                 traced_step="auto"):
        self.device = resolve_device(device)
        self.validate, self.steps, self.beta, self._pairs = validate, 0, 1.0, {}
        for fn in (model, guide, *[f for t in extra for f in (t.model, t.guide)]):
            if _owner(fn) is not None:
                _owner(fn).to(self.device)
        param = next(_owner(model).parameters(), None) if _owner(model) is not None else None
        dtype = None if param is None else param.dtype
        self.data = ModelArguments(data, "data", dtype).to(self.device)
        self.test = None if test_data is None else ModelArguments(test_data, "test_data", dtype).to(self.device)
        _check_data_once(model, self.data, self.test)
        self.batch_size = checks.positive_int("batch_size", batch_size)
        self.pair = with_precision((model, guide), precision, self.device)
        self.shard = (distributed.rank(), distributed.world_size()) if distributed.active() else None
        self.batch_points = 0  # the datapoints of the last step, over all ranks
        self.elbo, self.params = _objective(self.pair, self.data, self.batch_size, elbo, num_particles, gradient)
        self.fast = FastStep.for_elbo(self.elbo) if fast_step else None  # checked against self.elbo before use
        mode = traced_mode(traced_step)
        if self.fast is not None and traces_pair(mode, _owner(model)):
            self.fast = TracedStep(self.fast, [m for m in map(_owner, (model, guide)) if m is not None],
                                   warn=mode == "on")
        self.extra = [_TermState(t, f"extra[{i}]", dtype, self.device, self.batch_size) for i, t in enumerate(extra)]
        for term in self.extra:
            _check_data_once(term.pair[0], term.data)
            term.pair, term.shard = with_precision(term.pair, precision, self.device), self.shard
            term.elbo, params = _objective(term.pair, term.data, term.batch_size, term.elbo or elbo, num_particles,
                                           "standard")
            self.params.update(params)
        distributed.broadcast_params(self.params.values())  # every rank starts from rank 0's parameters
        distributed.reseed_rank()
        self.optim = optim if optim is not None else OptimizerSettings(lr=lr)
        self.lr = self.optim.lr_at(1)
        self.optimizer = self.optim.adam(list(self.params.values())) if self.params else None
        self.store_size = len(pyro.get_param_store())
        self.history: List[dict] = []
        self.monitor, self.checkpoint = DivergenceMonitor(), None

    def _adopt_new_params(self) -> None:
        """Parameters a pair creates after its first trace (a branch not taken then) join the optimizer."""
        store = pyro.get_param_store()
        if len(store) == self.store_size:
            return
        new = {n: p for n, p in store.named_parameters() if n not in self.params and p.grad is not None}
        if new and self.optimizer is None:
            self.optimizer = self.optim.adam(list(new.values()))
            set_lr(self.optimizer, self.lr)
        elif new:
            self.optimizer.add_param_group({"params": list(new.values()), "lr": self.lr})
        distributed.broadcast_params(new.values())
        self.params.update(new)
        self.store_size = len(store)

    def _scaled_pair(self, batch: int, term: Optional[_TermState] = None, inside: bool = True):
        """(the pair, a factor for its loss and gradient): the pair's minibatch sites scaled to the
        data-set size (N/B, :class:`ScaleData`) times a term's weight — inside the pair, or, for an
        ELBO that is not a sum of site log-densities (``inside=False``, :func:`scales_inside`), as
        the factor outside —, its latent sites by β during a KL warm-up. Built once per (term, B, β,
        inside) and reused: an epoch has at most two batch sizes."""
        key = (id(term), batch, self.beta, inside)
        if key not in self._pairs:
            n, weight = (len(self.data), 1.0) if term is None else (len(term.data), term.weight)
            pair = self.pair if term is None else term.pair
            if inside:
                pair = [ScaleData(weight * n / batch, batch)(fn) for fn in pair]
            pair = [ScaleLatents(self.beta)(fn) for fn in pair] if self.beta != 1.0 else list(pair)
            self._pairs[key] = pair, 1.0 if inside else weight * n / batch
        return self._pairs[key]

    def _loss_and_grads(self, elbo, args, kwargs, term: Optional[_TermState] = None) -> float:
        """``elbo.loss_and_grads`` on the minibatch, scaled to the data set (:meth:`_scaled_pair`);
        gradients add up in the parameters' ``.grad``."""
        pair, factor = self._scaled_pair(batch_size_of(args, kwargs), term, scales_inside(elbo))
        if factor == 1.0:
            if term is None and self.fast is not None and not self.validate:
                loss = self.fast.loss_and_grads(*pair, args, kwargs)  # None: the Pyro ELBO takes this step
                if loss is not None:
                    return loss
            return elbo.loss_and_grads(*pair, *args, **kwargs)
        held = [(p, p.grad) for p in self.params.values()]
        for p, _ in held:
            p.grad = None
        loss = elbo.loss_and_grads(*pair, *args, **kwargs)
        for p, grad in held:
            if p.grad is not None:
                p.grad.mul_(factor)
            if grad is not None:
                p.grad = grad if p.grad is None else p.grad.add_(grad)
        return loss * factor

    def step(self, args: tuple, kwargs: Optional[dict] = None) -> float:
        """One SVI step on a minibatch ``model(*args, **kwargs)`` (and one of each extra
        :class:`Term`); returns the loss per datapoint of the main data (−ELBO of the whole data
        set, plus the extra terms', divided by its N).

        Pyro's validation (distribution arguments, supports, site shapes) checks the first step
        of a run, which catches a pair's static mistakes; later steps skip it (it costs time at
        every step), unless ``validate`` is set; a VAE's data were checked whole in ``__init__``.
        A non-finite loss takes no optimizer step.
        """
        kwargs = kwargs or {}
        with pyro.validation_enabled(self.validate or self.steps == 0):
            loss = self._main_loss(args, kwargs)
            for term in self.extra:  # gradients add up in the parameters' .grad
                t_args, t_kwargs = term.next_batch()
                loss += self._loss_and_grads(term.elbo, t_args, t_kwargs, term)
        self.steps += 1
        self._adopt_new_params()
        # several ranks: the global minibatch's gradient and loss (pyrovae.inference.distributed), before clipping
        loss, self.batch_points = distributed.average_step(list(self.params.values()), loss,
                                                           batch_size_of(args, kwargs))
        if self.optimizer is not None:
            if math.isfinite(loss):
                self.optim.clip(list(self.params.values()))
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss / len(self.data)

    def _main_loss(self, args, kwargs) -> float:
        """The main pair's loss and gradients. A pair whose code cannot run particles vectorized
        (shape-dependent indexing) fails its first step so; it then runs them one at a time (Pyro's
        ``vectorize_particles=False``), with a warning."""
        try:
            return self._loss_and_grads(self.elbo, args, kwargs)
        except (RuntimeError, ValueError, IndexError) as e:
            if self.steps or not getattr(self.elbo, "vectorize_particles", False) or isinstance(e, PyrovaeError):
                raise
            warnings.warn(f"the pair cannot run its particles vectorized ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); training runs them one at a time",
                          stacklevel=3)
            for p in self.params.values():
                p.grad = None
            self.elbo.vectorize_particles = False
            self.fast = self.fast and FastStep.for_elbo(self.elbo)  # none for particles in a loop
            return self._loss_and_grads(self.elbo, args, kwargs)

    def diverged(self, epoch: int, step, what: str):
        """Raise TrainingError: where it diverged, why, and which checkpoint is kept."""
        done = len(self.history)
        kept = (f"the last good checkpoint (epoch {done}) is kept at {self.checkpoint}" if self.checkpoint and done
                else "no checkpoint was written" if self.checkpoint else "nothing was saved")
        raise TrainingError(f"training diverged at epoch {epoch}, step {step}: {what}. Training stopped (lower the "
                            f"learning rate or check the data); {kept}")

    def check_finite_params(self, epoch: int) -> None:
        """TrainingError if a parameter holds NaN/Inf (then no checkpoint is written over a good one)."""
        bad = [name for name, p in self.params.items() if not torch.isfinite(p).all()]
        if bad:
            self.diverged(epoch, "end", f"parameter(s) {bad[:3]} became NaN/Inf")

    def _why_not_finite(self, args, kwargs, loss: float) -> str:
        """Rerun the batch's loss with validation on, to name a NaN/Inf distribution parameter."""
        try:
            with pyro.validation_enabled(True), torch.no_grad():
                pair, _ = self._scaled_pair(batch_size_of(args, kwargs), inside=scales_inside(self.elbo))
                self.elbo.loss(*pair, *args, **kwargs)
        except ValueError as e:
            return _invalid_parameter(e) or f"the loss became {loss} ({str(e).splitlines()[0]})"
        return f"the loss became {loss}"

    def run_epoch(self, epoch: int, bar=None, beta: float = 1.0, on_step: Optional[Callable[[], None]] = None) -> float:
        """One pass over the data; returns the mean objective per datapoint (the ELBO when β = 1).
        After each step ``on_step()`` is called (the callbacks' ``on_step``, :func:`train`).

        Raises :class:`TrainingError` when a step's loss diverges (:class:`DivergenceMonitor`) or
        a distribution's parameter becomes NaN/Inf.
        """
        total, n, self.beta = 0.0, len(self.data), beta
        self.epoch, self.epoch_points, self.epoch_start = epoch, 0, time.perf_counter()
        self.lr = self.optim.lr_at(epoch)
        if self.optimizer is not None:
            set_lr(self.optimizer, self.lr)
        if isinstance(self.fast, TracedStep):
            self.fast.recheck()
        for step, (args, kwargs) in enumerate(self.data.batches(self.batch_size, epoch=epoch, shard=self.shard), 1):
            try:
                loss = self.step(args, kwargs)
            except ValueError as e:  # a distribution's validation saw NaN/Inf parameters
                what = _invalid_parameter(e)
                if what is None:
                    raise
                self.diverged(epoch, step, what)
            if not math.isfinite(loss):
                self.diverged(epoch, step, self._why_not_finite(args, kwargs, loss))
            if self.monitor.diverged(loss):
                self.diverged(epoch, step, f"the loss jumped to {loss:.3g} nats per datapoint from "
                                           f"{self.monitor.scale:.3g} at the first step")
            total += loss * self.batch_points / n
            self._count_step(loss, bar, on_step)
        return -total

    def _count_step(self, loss: float, bar, on_step) -> None:
        """After a step: its loss, the epoch's running rate (datapoints per second since the epoch
        began), the progress bar, the ``on_step`` hook."""
        self.loss, self.epoch_points = loss, self.epoch_points + self.batch_points
        self.samples_per_second = self.epoch_points / max(time.perf_counter() - self.epoch_start, 1e-9)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"epoch {self.epoch} -ELBO {loss:.2f} {self.samples_per_second:.0f} samples/s",
                                refresh=False)
        if on_step is not None:
            on_step()

    @torch.no_grad()
    def evaluate(self, batch_size: int = 1000) -> dict:
        """Test ELBO and its reconstruction and KL parts, per datapoint (first 2000 train points without a test set).
        With several ranks each scores every W-th chunk and the means are all-reduced (:func:`distributed.mean_parts`)."""
        data = self.test if self.test is not None else self.data
        n = len(data) if self.test is not None else min(EVAL_POINTS, len(data))
        parts = []
        for i in range(distributed.rank() * batch_size, n, batch_size * distributed.world_size()):
            args, kwargs = data.rows(i, min(i + batch_size, n))
            parts.append(elbo_parts(*self.pair, *args, **kwargs))
        return distributed.mean_parts(parts, ("elbo", "reconstruction", "kl"))

    # -- checkpoints -------------------------------------------------------------------------------
    def state(self, config=None, metadata=None) -> dict:
        return {
            "epoch": len(self.history),
            "metadata": metadata,
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "rng": _rng_state(),
            "rng_ranks": distributed.gather_objects(_rng_state()),  # several ranks: each one's, in rank order
            "history": self.history,
            "config": config,
            "terms": [[t.passes, t.taken] for t in self.extra],
            "optim": self.optim.spec(),
        }

    def load_state(self, state: dict) -> None:
        """Continue from a checkpoint's state (checked by :func:`checkpoint.load`)."""
        load_params(self.params, state["params"])
        saved = state.get("optim")
        if saved is not None and saved != self.optim.spec():
            changed = sorted(k for k in saved if saved.get(k) != self.optim.spec().get(k))
            raise CheckpointError(f"the checkpoint was trained with other optimizer settings ({', '.join(changed)}: "
                                  f"{ {k: saved.get(k) for k in changed} } there, "
                                  f"{ {k: self.optim.spec().get(k) for k in changed} } now); resume it with the same")
        try:
            if self.optimizer is not None:
                self.optimizer.load_state_dict(state["optimizer"])
            _set_rng_state(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"the checkpoint's optimizer or random state is damaged "
                                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e!r})") from None
        self.history = list(state["history"])
        positions = state.get("terms")
        if positions is None:  # a checkpoint from before terms were recorded: they start afresh
            positions = [[0, 0]] * len(self.extra)
        if len(positions) != len(self.extra):
            raise CheckpointError(f"the checkpoint was written with {len(positions)} extra term(s), this run has "
                                  f"{len(self.extra)}")
        for term, (passes, taken) in zip(self.extra, positions):
            term.seek(passes, taken)


def _rng_state() -> dict:
    """This process's random state: torch's CPU generator and every CUDA device's."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    """Restore this rank's random state from a checkpoint: its own when the checkpoint holds one per
    rank of the same number of ranks, else rank 0's (then reseeded per rank, :func:`distributed.reseed_rank`)."""
    ranks = state.get("rng_ranks") or []
    own = len(ranks) == distributed.world_size()
    rng = ranks[distributed.rank()] if own else state["rng"]
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if not own:
        distributed.reseed_rank()


def train(model, guide, data, *, epochs: int, batch_size: int = 128, lr: float = 1e-3, elbo: str = "trace",
          num_particles: int = 1, test_data=None, seed: Optional[int] = None, device: Optional[str] = None,
          checkpoint: Union[str, Path, None] = None, resume: bool = False, config: Optional[dict] = None,
          progress: bool = True, callback: Optional[Callable[[List[dict]], None]] = None, callbacks: Sequence = (),
          validate: bool = False, kl_warmup: int = 0, metadata: Optional[dict] = None,
          extra: Sequence[Term] = (), lr_schedule="constant", lr_schedule_options: Optional[dict] = None,
          betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8, clip_norm: Optional[float] = None,
          gradient: str = "standard", precision: str = "float32", fast_step: bool = True,
          traced_step="auto") -> List[dict]:
    """Train ``model``/``guide`` by SVI for ``epochs`` epochs; return the per-epoch history.

    Args:
        model, guide: any Pyro pair whose arguments are a minibatch (e.g. ``vae.model``, ``vae.guide``;
            ``model(x, y)`` of a conditional VAE).
        data, test_data: the model's arguments for every datapoint: a tensor ``[N, ...]`` or a
            :class:`pyrovae.data.DataSplit` (dynamic binarization is redrawn every epoch), called as
            ``model(x)``; a tuple of them, called as ``model(*batch)``; a dict, ``model(**batch)``
            (:mod:`pyrovae.inference.arguments`). Each element is sliced by the same minibatch indices.
        elbo: a name — ``"trace"`` (Trace_ELBO), ``"mean-field"`` (:class:`pyrovae.inference.elbos.MeanField_ELBO`,
            TraceMeanField_ELBO's estimate), ``"iwae"`` (RenyiELBO, alpha=0, ``num_particles``
            samples), ``"graph"`` (TraceGraph_ELBO), ``"enum"`` (TraceEnum_ELBO) — or any
            ``pyro.infer.ELBO`` instance; see :mod:`pyrovae.inference.elbos`.
        seed: seeds Pyro/torch before training (seed before building the model to fix its init).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``; a model/guide that are
            methods of an ``nn.Module`` have that module moved there.
        checkpoint: a path written atomically after every epoch (parameters, optimizer and RNG
            states, history, ``config`` and ``metadata``, plain values of the caller's). ``resume=True``
            continues from it exactly. A diverging run (see :class:`DivergenceMonitor`) raises
            :class:`pyrovae.errors.TrainingError` and leaves the last good checkpoint in place.
        callback: called after every epoch with the history so far (a list of rows).
        callbacks: objects with some of ``on_train_start``, ``on_step``, ``on_epoch_end``,
            ``on_train_end``, each called with the :class:`Trainer` (e.g. subclasses of
            :class:`pyrovae.inference.callbacks.Callback`, whose doc lists what the trainer exposes);
            ``callback`` runs after them, as one more.
        validate: run Pyro's validation (distribution arguments, supports, site shapes) on every
            step; by default it runs on the first step only, and a non-finite loss at any step
            stops training and is then diagnosed with validation on.
        extra: more parts of the objective, each a :class:`Term` (its own pair, data, weight),
            stepped together with the main pair: e.g. the labeled data and the classifier of a
            semi-supervised VAE. ``train_elbo`` is then the whole objective per main datapoint.
        lr, lr_schedule, lr_schedule_options, betas, eps, clip_norm: Adam at base rate ``lr`` with
            ``betas`` (β1, β2) and ``eps``; the rate of each epoch from ``lr_schedule`` — ``"constant"``,
            ``"step"``, ``"exponential"``, ``"burda"`` (Burda et al.'s 8 stages of 3^i epochs) or a
            :class:`pyrovae.inference.optim.Schedule` — with its options; each step's gradient
            rescaled to total norm ≤ ``clip_norm`` when set. All are saved in the checkpoint; a
            resumed run must ask for the same and continues the schedule (:mod:`pyrovae.inference.optim`).
        gradient: the gradient estimator: ``"standard"`` (the ELBO's own), ``"stl"`` (sticking the
            landing, with ``elbo="trace"``) or ``"dreg"`` (doubly reparameterized, with ``elbo="iwae"``);
            same expected gradient, lower variance for the guide (:mod:`pyrovae.inference.pathwise`).
        precision: ``"float32"``, or ``"bf16"``: the networks run under ``torch.autocast`` in bfloat16,
            the log-densities and the ELBO stay float32 (:mod:`pyrovae.inference.precision`).
        Several processes: with a process group (``torchrun``, :func:`pyrovae.inference.distributed.init_from_env`)
            each rank trains on its shard of every global minibatch of ``batch_size`` and the gradients are
            all-reduced (:mod:`pyrovae.inference.distributed`); rank 0 alone shows progress, writes the
            checkpoint and calls ``callback``; every rank reads the checkpoint on ``resume``.
        fast_step: a ``Trace_ELBO`` or ``"mean-field"`` pair (particles vectorized) runs without
            Pyro's trace bookkeeping — the same loss and gradients (a Bernoulli's sum fused, equal to
            float rounding), checked against the Pyro ELBO on the same draws at the first step
            (:mod:`pyrovae.inference.faststep`); False always runs the Pyro ELBO.
        traced_step: the fast step recorded once as a graph of tensor operations and replayed
            without the pair's Python, checked equal to it at its first use and every epoch
            (:mod:`pyrovae.inference.tracedstep`): ``"auto"`` for pyrovae's own models, ``"on"`` (True)
            for any pair whose code does the same computation at every step given its arguments'
            shapes (no state changed by a callback within an epoch), ``"off"`` (False) never.
        kl_warmup: over the first ``kl_warmup`` epochs, train on E_q[log p(x|z)] − β KL with
            β = epoch / kl_warmup rising to 1 (latent sites scaled by :class:`ScaleLatents`);
            0 (the default) trains on the ELBO throughout. ``train_elbo`` is then the β-weighted
            objective; the test ELBO, reconstruction and KL are always those of β = 1.
    """
    checks.positive_int("epochs", epochs)
    checks.non_negative_int("kl_warmup", kl_warmup, " (epochs)")
    hooks = Callbacks(callbacks, callback)
    if seed is not None:
        pyro.set_rng_seed(seed)
    optim = OptimizerSettings(lr=lr, lr_schedule=lr_schedule, lr_schedule_options=lr_schedule_options or {},
                              betas=betas, eps=eps, clip_norm=clip_norm)
    trainer = Trainer(model, guide, data, batch_size=batch_size, elbo=elbo, num_particles=num_particles,
                      test_data=test_data, device=device, validate=validate, extra=extra, optim=optim,
                      gradient=gradient, precision=precision, fast_step=fast_step, traced_step=traced_step)
    trainer.checkpoint = checkpoint
    if resume:
        trainer.load_state(ckpt.load_training(checkpoint))
    main = distributed.is_main()  # rank 0 (or the only process) writes, shows progress, calls back
    bar = _progress_bar(trainer, epochs) if progress and main else None
    hooks = hooks if main else Callbacks()
    _watch(trainer, epochs)
    try:
        hooks("on_train_start", trainer)
        for epoch in range(len(trainer.history) + 1, epochs + 1):
            start = time.perf_counter()
            train_elbo = trainer.run_epoch(epoch, bar, warmup_beta(epoch, kl_warmup),
                                           on_step=(lambda: hooks("on_step", trainer)) if len(hooks) else None)
            trainer.samples_per_second = trainer.epoch_points / _seconds_since(start, trainer.device)
            scores = trainer.evaluate()
            row = {"epoch": epoch, "train_elbo": train_elbo,
                   "test_elbo": scores["elbo"] if trainer.test is not None else float("nan"),
                   "reconstruction": scores["reconstruction"], "kl": scores["kl"],
                   "seconds": time.perf_counter() - start, "lr": trainer.lr,
                   "samples_per_second": trainer.samples_per_second}
            trainer.check_finite_params(epoch)
            trainer.history.append(row)
            if checkpoint is not None:
                state = trainer.state(config, metadata)  # on every rank: it gathers their random states
                if main:
                    ckpt.save(checkpoint, state)
                distributed.barrier()
            hooks("on_epoch_end", trainer)
    except BaseException as e:
        trainer.error = e
        raise
    finally:
        if bar is not None:
            bar.close()
        hooks.end(trainer)
    return trainer.history


def _watch(trainer: Trainer, epochs: int) -> None:
    """The state the callbacks read before the first step (:mod:`pyrovae.inference.callbacks`)."""
    done = trainer.history[-1] if trainer.history else {}
    trainer.epochs, trainer.epoch, trainer.error, trainer.loss = epochs, len(trainer.history), None, float("nan")
    trainer.samples_per_second = done.get("samples_per_second", float("nan"))


def _seconds_since(start: float, device: torch.device) -> float:
    """Wall-clock seconds since ``start``, once the device's queued work is done (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return max(time.perf_counter() - start, 1e-9)


def _progress_bar(trainer: Trainer, epochs: int):
    from tqdm.auto import tqdm

    per_epoch = math.ceil(len(trainer.data) / trainer.batch_size)
    done = len(trainer.history) * per_epoch
    return tqdm(total=epochs * per_epoch, initial=done, unit="step", desc="train", dynamic_ncols=True)

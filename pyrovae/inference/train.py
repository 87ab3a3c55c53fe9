"""Training any Pyro model/guide pair by stochastic variational inference.

``train(model, guide, data, epochs=..., batch_size=...)`` maximises the ELBO of the whole data
set: each minibatch of B out of N datapoints is scaled by N/B (:class:`ScaleData`), so the loss
is an unbiased estimate of −Σ_i ELBO(x_i) (pyro-ppl issue #1437). Parameters are whatever the
pair registers with ``pyro.param``/``pyro.module``; one ``torch.optim.Adam`` updates them all
(:class:`pyrovae.inference.optim.OptimizerSettings`: schedule, β1/β2/ε, gradient clipping).

Each epoch appends a row to the returned history (all per datapoint, in nats):
``epoch``, ``train_elbo`` (mean of the epoch's minibatch values of the objective: the ELBO, the
k-sample bound under IWAE), ``test_elbo``,
``reconstruction`` = E_q[log p(x|z)] and ``kl`` = KL(q(z|x) ‖ p(z)) of that test ELBO (scored on
``test_data`` after every epoch; NaN without it — nothing is evaluated that was not asked for),
``seconds`` (training and evaluation), ``lr`` (the epoch's learning rate,
:mod:`pyrovae.inference.optim`) and ``samples_per_second`` (datapoints trained on per second of
the epoch's training, evaluation excluded; all ranks' together in data-parallel training).
A pair that scales every one of its sites by a factor s itself (``poutine.scale``) has its
minibatch ELBOs divided by s, so that ``train_elbo`` is in nats per datapoint too; where its
sites' factors differ, ``train_elbo`` is in its scaled units (with a warning). The steps run with
the pair's modules in training mode, the evaluation in evaluation mode (Dropout off, BatchNorm on
its running statistics, which it leaves unchanged); each module's mode is restored afterwards.

The loop (:meth:`Trainer.fit`) is: for each epoch, ``on_epoch_start`` callbacks, then a step per
minibatch — ``elbo.loss_and_grads`` on the scaled pair (the ELBO, a speed path checked before it
is trusted, :func:`~pyrovae.inference.tracedstep.speed_path`), an Adam step, ``on_step`` — then
the evaluation and ``on_epoch_end``. What happens around the steps — the learning-rate schedule,
the KL warm-up, the divergence stop, the checkpoint, the progress bar — are callbacks
(:mod:`pyrovae.inference.callbacks`), as are the caller's; where the run stands is its
:class:`TrainState`.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Union

import pyro
import torch
from pyro.infer import ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import nn

from .. import checks
from ..errors import CheckpointError, PairError
from ..errors import TrainingError  # noqa: F401 -- what a diverging run raises, for callers
from . import checkpoint as ckpt
from . import distributed
from .arguments import ModelArguments, batch_size_of
from .callbacks import Callbacks, Checkpoint, DivergenceStop, KLWarmup, LRSchedule, ProgressBar
from .callbacks import DivergenceMonitor, warmup_beta  # noqa: F401 -- where they were, for callers
from .device import resolve_device
from .elbos import MeanField_ELBO, innermost, make_elbo, scales_inside
from .estimators import elbo_parts
from .optim import OptimizerSettings, set_lr
from .pairs import check_pair_on, check_reparameterized, own_scale
from .pathwise import DReG_IWAE, STL_ELBO
from .precision import with_precision
from .settings import RunSettings, StepSettings
from .state import modes, modules_of
from .tracedstep import speed_path, traced_mode, traces_pair
from .traces import PARTICLES, kl_or_none, nesting_of, out_of_order, params_of, sample_sites
from .vectorize import VerifiedParticles, particles_agree


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
            if not f.vectorized or f.name == PARTICLES or f.full_size not in (None, f.size):
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


def _invalid_parameter(e: ValueError) -> Optional[str]:
    """What a validation error says of a distribution parameter (None when it is about something else)."""
    lines = [line for line in str(e).splitlines() if line.startswith("Expected parameter")]
    return f"a distribution parameter became NaN/Inf ({lines[0].rstrip(':')})" if lines else None


def _site_scale(pair_traces) -> float:
    """The factor the pair scales all its sites by itself (``poutine.scale``), which ``train_elbo``
    is divided by to be in nats per datapoint (:func:`pyrovae.inference.pairs.own_scale`); 1 with a
    warning when the sites' factors differ (``train_elbo`` is then in the pair's scaled units)."""
    scale = own_scale(pair_traces)
    if scale is None or scale <= 0:
        warnings.warn("the pair scales its sites by different factors (poutine.scale): train_elbo is in the "
                      "pair's scaled units; test_elbo, reconstruction and kl are in nats per datapoint",
                      stacklevel=4)
        return 1.0
    return scale


def _objective(pair, data: ModelArguments, batch_size: int, elbo, num_particles: int, gradient: str):
    """(the pair's ELBO, the parameters it registers, the checked traces), from one run on its first
    minibatch, in which a mismatched pair is refused (:func:`pyrovae.inference.pairs.check_pair_on`),
    and a discrete guide site under an ELBO that needs reparameterized ones (:func:`_refuse_unreparameterized`)."""
    args, kwargs = data.rows(0, batch_size)
    traces = check_pair_on(*pair, *args, **kwargs)
    objective = make_elbo(elbo, num_particles, nesting_of(traces), gradient=gradient)
    _refuse_unreparameterized(objective, elbo, gradient, traces[1])
    _refuse_out_of_order(objective, elbo, *traces)
    return objective, params_of(traces), traces


def _refuse_unreparameterized(objective, elbo, gradient: str, guide_trace) -> None:
    """PairError naming the site when a path-wise-only ELBO (mean-field, STL, DReG) meets a guide
    site without rsample (:func:`pyrovae.inference.pairs.check_reparameterized`)."""
    if isinstance(objective, (TraceMeanField_ELBO, MeanField_ELBO, STL_ELBO, DReG_IWAE)):
        name = repr(elbo) if isinstance(elbo, str) else type(elbo).__name__
        check_reparameterized(guide_trace, f"elbo={name}" + (f" with gradient={gradient!r}" if gradient != "standard"
                                                              else ""))


def _refuse_out_of_order(objective, elbo, model_trace, guide_trace) -> None:
    """PairError naming the site when the mean-field ELBO would put a closed-form KL at a latent
    whose model parents the guide may draw after it (:func:`~pyrovae.inference.traces.out_of_order`):
    that estimate is biased, where Pyro's ``TraceMeanField_ELBO`` only warns."""
    if not isinstance(objective, (TraceMeanField_ELBO, MeanField_ELBO)):
        return
    model_sites, guide_sites = sample_sites(model_trace), sample_sites(guide_trace)
    for z, w in out_of_order(model_sites, guide_sites).items():
        if kl_or_none(guide_sites[z], model_sites[z]) is not None:
            name = repr(elbo) if isinstance(elbo, str) else type(elbo).__name__
            raise PairError(f"elbo={name} would replace log p − log q at site {z!r} by the closed-form KL, "
                            f"which is right only if no parent of {z!r} in the model is drawn from it in the "
                            f"guide; the guide samples {w!r} after {z!r} and the model {w!r} before {z!r}: use "
                            f"elbo='trace' or 'iwae', or sample the guide's sites in the model's order")


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


@dataclass
class TrainState:
    """Where a run stands; the trainer's own (callbacks read it through the :class:`Trainer`).

    ``epochs``: the epoch training runs to; ``epoch``: the epoch under way (the epochs done before
    the first); ``step``: SVI steps taken this session; ``loss``: the last step's −ELBO per
    datapoint (NaN before the first); ``lr``, ``beta``: the epoch's learning rate and KL weight;
    ``samples_per_second``: the epoch's running rate of training; ``history``: a row per epoch done;
    ``error``: the exception that stopped training, or None."""

    epochs: int = 0
    epoch: int = 0
    step: int = 0
    loss: float = math.nan
    lr: float = math.nan
    beta: float = 1.0
    samples_per_second: float = math.nan
    history: List[dict] = field(default_factory=list)
    error: Optional[BaseException] = None


class Trainer:
    """One training run: the pair, its data, its ELBO (itself checked before it is trusted:
    :func:`~pyrovae.inference.tracedstep.speed_path`), the optimizer, and its :class:`TrainState`;
    :meth:`fit` is the loop. :func:`train` is the function to call."""

    def __init__(self, model, guide, data, *, batch_size, elbo, num_particles, test_data, device, lr: float = 1e-3,
                 validate: bool = False, extra: Sequence[Term] = (), optim: Optional[OptimizerSettings] = None,
                 gradient: str = "standard", precision: str = "float32", fast_step: bool = True,
                 traced_step="auto"):
        self.device = resolve_device(device)
        self.validate, self._pairs = validate, {}
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
        main, self.params, checked = _objective(self.pair, self.data, self.batch_size, elbo, num_particles, gradient)
        self.modules = modules_of(model, guide, *[f for t in extra for f in (t.model, t.guide)])
        self.nesting, self.site_scale = nesting_of(checked), _site_scale(checked)
        self._check_vectorization(main, (model, guide))
        mode, modules = traced_mode(traced_step), modules_of(model, guide)
        self.elbo = speed_path(main, fast=fast_step and not validate, traced=traces_pair(mode, _owner(model)),
                               modules=modules, warn=mode == "on",
                               recheck_every=math.ceil(len(self.data) / self.batch_size))
        if getattr(main, "vectorize_particles", False) and main.num_particles > 1:  # every other shape checked too
            self.elbo = VerifiedParticles(self.elbo, main, (model, guide), self.nesting,
                                          isinstance(main, TraceEnum_ELBO))
        self.extra = [_TermState(t, f"extra[{i}]", dtype, self.device, self.batch_size) for i, t in enumerate(extra)]
        for term in self.extra:
            _check_data_once(term.pair[0], term.data)
            term.pair, term.shard = with_precision(term.pair, precision, self.device), self.shard
            term.elbo, params, _ = _objective(term.pair, term.data, term.batch_size, term.elbo or elbo, num_particles,
                                           "standard")
            self.params.update(params)
        distributed.broadcast_params(self.params.values())  # every rank starts from rank 0's parameters
        distributed.reseed_rank()
        self.optim = optim if optim is not None else OptimizerSettings(lr=lr)
        self.optimizer = self.optim.adam(list(self.params.values())) if self.params else None
        self.store_size = len(pyro.get_param_store())
        self.state = TrainState(lr=self.optim.lr_at(1))
        self._batch, self._invalid = None, None  # the last step's batch; what its validation named

    def _check_vectorization(self, elbo, pair) -> None:
        """Decide ``vectorize_particles`` for training on the first minibatch: an ELBO that vectorizes
        r > 1 particles keeps doing so only where the pair's vectorized particles equal the same draws
        run one at a time (:func:`pyrovae.inference.vectorize.particles_agree`, in training mode, everything
        left as found); else it runs them one at a time (Pyro's ``vectorize_particles=False``), with a
        warning naming the pair. Decided before the speed path is built (the fast step needs
        vectorized particles); every other minibatch shape is checked as it comes
        (:class:`~pyrovae.inference.vectorize.VerifiedParticles`)."""
        if not getattr(elbo, "vectorize_particles", False) or elbo.num_particles == 1:
            return
        args, kwargs = self.data.rows(0, self.batch_size)
        with modes(self.modules, True):
            agree = particles_agree(*pair, args, kwargs, self.nesting, isinstance(elbo, TraceEnum_ELBO),
                                    what="training runs them")
        if not agree:
            elbo.vectorize_particles = False

    # what callbacks read (:mod:`pyrovae.inference.callbacks`)
    history = property(lambda self: self.state.history)
    epoch = property(lambda self: self.state.epoch)
    epochs = property(lambda self: self.state.epochs)
    steps = property(lambda self: self.state.step)
    loss = property(lambda self: self.state.loss)
    lr = property(lambda self: self.state.lr)
    beta = property(lambda self: self.state.beta)
    samples_per_second = property(lambda self: self.state.samples_per_second)
    error = property(lambda self: self.state.error)

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, epochs: int, callbacks: Callbacks) -> List[dict]:
        """Train until ``epochs`` epochs are in the history, calling ``callbacks`` on the way;
        return the history. On any exception, ``on_train_end`` still runs (``error`` says which)."""
        done = self.history[-1] if self.history else {}
        self.state.epochs, self.state.epoch = epochs, len(self.history)
        self.state.samples_per_second = done.get("samples_per_second", math.nan)
        try:
            callbacks("on_train_start", self)
            for epoch in range(len(self.history) + 1, epochs + 1):
                self.state.epoch = epoch
                callbacks("on_epoch_start", self)
                start = time.perf_counter()
                with modes(self.modules, True):  # steps in training mode; the mode found is restored after
                    train_elbo = self.run_epoch(epoch, callbacks) / self.site_scale
                self.state.samples_per_second = self.epoch_points / _seconds_since(start, self.device)
                scores = self.evaluate()
                self.state.history.append({"epoch": epoch, "train_elbo": train_elbo, "test_elbo": scores["elbo"],
                                           "reconstruction": scores["reconstruction"], "kl": scores["kl"],
                                           "seconds": time.perf_counter() - start, "lr": self.lr,
                                           "samples_per_second": self.samples_per_second})
                callbacks("on_epoch_scored", self)
                callbacks("on_epoch_end", self)
        except BaseException as e:
            self.state.error = e
            raise
        finally:
            callbacks.end(self)
        return self.history

    def run_epoch(self, epoch: int, callbacks: Optional[Callbacks] = None) -> float:
        """One pass over the data; returns the mean objective per datapoint (the ELBO when β = 1).
        After each step, ``on_step`` of ``callbacks``."""
        total, n = 0.0, len(self.data)
        self.state.epoch, self.epoch_points, self.epoch_start = epoch, 0, time.perf_counter()
        for args, kwargs in self.data.batches(self.batch_size, epoch=epoch, shard=self.shard):
            loss = self.step(args, kwargs)
            total += loss * self.batch_points / n
            self.epoch_points += self.batch_points
            self.state.samples_per_second = self.epoch_points / max(time.perf_counter() - self.epoch_start, 1e-9)
            if callbacks is not None:
                callbacks("on_step", self)
        return -total

    def step(self, args: tuple, kwargs: Optional[dict] = None) -> float:
        """One SVI step on a minibatch ``model(*args, **kwargs)`` (and one of each extra
        :class:`Term`); returns the loss per datapoint of the main data (−ELBO of the whole data
        set, plus the extra terms', divided by its N).

        Pyro's validation (distribution arguments, supports, site shapes) checks the first step
        of a run, which catches a pair's static mistakes; later steps skip it unless ``validate``
        is set; a VAE's data were checked whole in ``__init__``. A non-finite loss takes no
        optimizer step; nor does a step whose validation found a NaN/Inf distribution parameter
        (its loss is NaN, :meth:`why_not_finite` names the parameter).
        """
        kwargs = kwargs or {}
        self._batch, self._invalid = (args, kwargs), None
        try:
            with pyro.validation_enabled(self.validate or self.state.step == 0):
                loss = self._loss_and_grads(self.elbo, args, kwargs)
                for term in self.extra:  # gradients add up in the parameters' .grad
                    t_args, t_kwargs = term.next_batch()
                    loss += self._loss_and_grads(term.elbo, t_args, t_kwargs, term)
        except ValueError as e:  # a distribution's validation saw NaN/Inf parameters
            self._invalid = _invalid_parameter(e)
            if self._invalid is None:
                raise
            loss = math.nan
        self.state.step += 1
        self._adopt_new_params()
        # several ranks: the global minibatch's gradient and loss (pyrovae.inference.distributed), before clipping
        loss, self.batch_points = distributed.average_step(list(self.params.values()), loss,
                                                           batch_size_of(args, kwargs))
        if self.optimizer is not None:
            if math.isfinite(loss):
                self.optim.clip(list(self.params.values()))
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.state.loss = loss / len(self.data)
        return self.state.loss

    def _loss_and_grads(self, elbo, args, kwargs, term: Optional[_TermState] = None) -> float:
        """``elbo.loss_and_grads`` on the minibatch, scaled to the data set (:meth:`_scaled_pair`):
        inside the ELBO, or, where the ELBO does not scale inside (:func:`scales_inside`), its
        loss and gradient multiplied outside; gradients add up in the parameters' ``.grad``."""
        pair, factor = self._scaled_pair(batch_size_of(args, kwargs), term, scales_inside(elbo))
        if factor == 1.0:
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

    # -- what callbacks change -------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        """The learning rate from the next step on (:class:`~pyrovae.inference.callbacks.LRSchedule`)."""
        self.state.lr = lr
        if self.optimizer is not None:
            set_lr(self.optimizer, lr)

    def set_beta(self, beta: float) -> None:
        """The latent sites' weight β from the next step on (:class:`~pyrovae.inference.callbacks.KLWarmup`)."""
        self.state.beta = beta

    # -- scores and diagnoses ----------------------------------------------------------------------
    def why_not_finite(self) -> str:
        """Why the last step's loss is NaN/Inf: the distribution parameter that Pyro's validation
        names when the batch is scored again with it on, where it can."""
        if self._invalid is not None:
            return self._invalid
        args, kwargs = self._batch
        try:
            with pyro.validation_enabled(True), torch.no_grad():
                pair, _ = self._scaled_pair(batch_size_of(args, kwargs), inside=scales_inside(self.elbo))
                innermost(self.elbo).loss(*pair, *args, **kwargs)
        except ValueError as e:
            return _invalid_parameter(e) or f"the loss became {self.loss} ({str(e).splitlines()[0]})"
        return f"the loss became {self.loss}"

    @torch.no_grad()
    def evaluate(self, batch_size: int = 1000) -> dict:
        """Test ELBO and its reconstruction and KL parts, per datapoint, on the test data; NaN for
        each without test data. The pair's modules are in evaluation mode meanwhile (no dropout,
        BatchNorm's running statistics used and unchanged; their modes restored after). With
        several ranks each scores every W-th chunk and the means are all-reduced
        (:func:`distributed.mean_parts`)."""
        if self.test is None:
            return {"elbo": math.nan, "reconstruction": math.nan, "kl": math.nan}
        parts = []
        with modes(self.modules, False):
            for i in range(distributed.rank() * batch_size, len(self.test), batch_size * distributed.world_size()):
                args, kwargs = self.test.rows(i, min(i + batch_size, len(self.test)))
                parts.append(elbo_parts(*self.pair, *args, **kwargs))
        return distributed.mean_parts(parts, ("elbo", "reconstruction", "kl"))

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint_state(self, config=None, metadata=None) -> dict:
        """What a checkpoint holds (:class:`~pyrovae.inference.callbacks.Checkpoint` writes it)."""
        return {
            "epoch": len(self.history),
            "metadata": metadata,
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "rng": ckpt.rng_state(),
            "rng_ranks": distributed.gather_objects(ckpt.rng_state()),  # several ranks: each one's, in rank order
            "history": self.history,
            "config": config,
            "terms": [[t.passes, t.taken] for t in self.extra],
            "optim": self.optim.spec(),
        }

    def load_state(self, state: dict) -> None:
        """Continue from a checkpoint's state (checked by :func:`checkpoint.load_training`)."""
        ckpt.load_params(self.params, state["params"])
        saved = state.get("optim")
        if saved is not None and saved != self.optim.spec():
            changed = sorted(k for k in saved if saved.get(k) != self.optim.spec().get(k))
            raise CheckpointError(f"the checkpoint was trained with other optimizer settings ({', '.join(changed)}: "
                                  f"{ {k: saved.get(k) for k in changed} } there, "
                                  f"{ {k: self.optim.spec().get(k) for k in changed} } now); resume it with the same")
        try:
            if self.optimizer is not None:
                self.optimizer.load_state_dict(state["optimizer"])
            ckpt.restore_rng(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"the checkpoint's optimizer or random state is damaged "
                                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e!r})") from None
        self.state.history = list(state["history"])
        positions = state.get("terms")
        if positions is None:  # a checkpoint from before terms were recorded: they start afresh
            positions = [[0, 0]] * len(self.extra)
        if len(positions) != len(self.extra):
            raise CheckpointError(f"the checkpoint was written with {len(positions)} extra term(s), this run has "
                                  f"{len(self.extra)}")
        for term, (passes, taken) in zip(self.extra, positions):
            term.seek(passes, taken)


def train(model, guide, data, *, epochs: int, batch_size: int = RunSettings.batch_size, lr: Optional[float] = None,
          elbo: Union[str, ELBO] = RunSettings.elbo, num_particles: int = RunSettings.num_particles, test_data=None,
          seed: Optional[int] = None, device: str = RunSettings.device, kl_warmup: int = RunSettings.kl_warmup,
          optimizer: Optional[OptimizerSettings] = None, step: Optional[StepSettings] = None,
          extra: Sequence[Term] = (), checkpoint: Union[str, Path, None] = None, resume: bool = False,
          config: Optional[dict] = None, metadata: Optional[dict] = None, progress: bool = True,
          callback: Optional[Callable[[List[dict]], None]] = None, callbacks: Sequence = ()) -> List[dict]:
    """Train ``model``/``guide`` by SVI for ``epochs`` epochs; return the per-epoch history.

    The common settings are keywords (:class:`~pyrovae.inference.settings.RunSettings` declares
    them: defaults, allowed values); the rest come in two settings objects::

        train(model, guide, x, epochs=50, lr=3e-4,
              optimizer=OptimizerSettings(lr_schedule="cosine", lr_schedule_options={"total_epochs": 50}),
              step=StepSettings(gradient="stl", precision="bf16"))

    Args:
        model, guide: any Pyro pair whose arguments are a minibatch (e.g. ``vae.model``, ``vae.guide``;
            ``model(x, y)`` of a conditional VAE).
        data, test_data: the model's arguments for every datapoint (``test_data``: scored after
            every epoch into the history's ``test_elbo``, ``reconstruction`` and ``kl``, NaN without
            it; to follow the training set's, pass a part of it, e.g. ``test_data=x[:2000]``): a tensor ``[N, ...]`` or a
            :class:`pyrovae.data.DataSplit` (dynamic binarization is redrawn every epoch), called as
            ``model(x)``; a tuple of them, called as ``model(*batch)``; a dict, ``model(**batch)``
            (:mod:`pyrovae.inference.arguments`). Each element is sliced by the same minibatch indices.
        batch_size: datapoints per minibatch (all ranks' together with several processes).
        lr: Adam's base learning rate; None: ``optimizer``'s (1e-3 by default).
        elbo: a name — ``"trace"`` (Trace_ELBO), ``"mean-field"`` (:class:`pyrovae.inference.elbos.MeanField_ELBO`,
            TraceMeanField_ELBO's estimate), ``"iwae"`` (RenyiELBO, alpha=0, ``num_particles``
            samples), ``"graph"`` (TraceGraph_ELBO), ``"enum"`` (TraceEnum_ELBO) — or any
            ``pyro.infer.ELBO`` instance; see :mod:`pyrovae.inference.elbos`.
        num_particles: particles per datapoint, vectorized (k of ``"iwae"``).
        seed: seeds Pyro/torch before training (seed before building the model to fix its init); None: no seeding.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` — one this
            machine has; a model/guide that are methods of an ``nn.Module`` have that module moved there.
        kl_warmup: over the first ``kl_warmup`` epochs, train on E_q[log p(x|z)] − β KL with
            β = epoch / kl_warmup rising to 1 (latent sites scaled by :class:`ScaleLatents`);
            0 (the default) trains on the ELBO throughout. ``train_elbo`` is then the β-weighted
            objective; the test ELBO, reconstruction and KL are always those of β = 1.
        optimizer: :class:`~pyrovae.inference.optim.OptimizerSettings`: Adam's β1, β2, ε, the
            learning-rate schedule of the epochs and its options, gradient clipping. Saved in the
            checkpoint; a resumed run must ask for the same and continues the schedule.
        step: :class:`~pyrovae.inference.settings.StepSettings`, how each step computes the objective
            and its gradient: ``gradient`` (``"standard"``, ``"stl"`` with ``elbo="trace"``, ``"dreg"``
            with ``elbo="iwae"``: same expected gradient, lower variance for the guide,
            :mod:`pyrovae.inference.pathwise`); ``precision`` (``"float32"``, or ``"bf16"``: the networks
            under ``torch.autocast``, the log-densities and the ELBO in float32); ``fast_step`` (a
            ``Trace_ELBO`` or ``"mean-field"`` pair steps without Pyro's trace bookkeeping, checked
            against the Pyro ELBO on the same draws at the first step, :mod:`pyrovae.inference.faststep`);
            ``traced_step`` (``"auto"``/``"on"``/``"off"``: that step recorded once as a graph and
            replayed, checked equal to it at its first use and every epoch, :mod:`pyrovae.inference.tracedstep`);
            ``validate`` (Pyro's validation on every step; by default on the first, and on a non-finite loss).
        extra: more parts of the objective, each a :class:`Term` (its own pair, data, weight),
            stepped together with the main pair: e.g. the labeled data and the classifier of a
            semi-supervised VAE. ``train_elbo`` is then the whole objective per main datapoint.
        checkpoint: a path written atomically after every epoch (parameters, optimizer and RNG
            states, history, ``config`` and ``metadata``, plain values of the caller's). ``resume=True``
            continues from it exactly. A diverging run (see :class:`DivergenceMonitor`) raises
            :class:`pyrovae.errors.TrainingError` and leaves the last good checkpoint in place.
        callback: called after every epoch with the history so far (a list of rows).
        callbacks: objects with some of ``on_train_start``, ``on_epoch_start``, ``on_step``,
            ``on_epoch_scored``, ``on_epoch_end``, ``on_train_end``, each called with the
            :class:`Trainer` (e.g. subclasses of :class:`pyrovae.inference.callbacks.Callback`,
            whose doc lists what the trainer exposes);
            ``callback`` runs after them, as one more.
        Several processes: with a process group (``torchrun``, :func:`pyrovae.inference.distributed.init_from_env`)
            each rank trains on its shard of every global minibatch of ``batch_size`` and the gradients are
            all-reduced (:mod:`pyrovae.inference.distributed`); rank 0 alone shows progress, writes the
            checkpoint and calls ``callback``; every rank reads the checkpoint on ``resume``.
    """
    run = RunSettings(epochs=epochs, batch_size=batch_size, elbo=elbo, num_particles=num_particles,
                      kl_warmup=kl_warmup, device=device)
    optim, step = optimizer or OptimizerSettings(), step or StepSettings()
    optim = optim if lr is None else replace(optim, lr=lr)
    user = Callbacks(callbacks, callback)
    if seed is not None:
        pyro.set_rng_seed(seed)
    trainer = Trainer(model, guide, data, batch_size=run.batch_size, elbo=run.elbo, num_particles=run.num_particles,
                      test_data=test_data, device=run.device, validate=step.validate, extra=extra, optim=optim,
                      gradient=step.gradient, precision=step.precision, fast_step=step.fast_step,
                      traced_step=step.traced_step)
    if resume:
        trainer.load_state(ckpt.load_training(checkpoint))
    saver = None if checkpoint is None else Checkpoint(checkpoint, config, metadata)
    main = distributed.is_main()  # rank 0 (or the only process) shows progress and calls the caller's callbacks
    every_rank = [LRSchedule(optim), KLWarmup(run.kl_warmup), DivergenceStop(saver)]
    on_main = ([ProgressBar()] if progress else []) + user.callbacks if main else []
    # the checkpoint before the caller's loggers: a kill between them leaves metrics.csv behind the
    # checkpoint, never ahead of it (scores a callback adds come in ``on_epoch_scored``, before both)
    return trainer.fit(epochs, Callbacks(every_rank + ([saver] if saver else []) + on_main))


def _seconds_since(start: float, device: torch.device) -> float:
    """Wall-clock seconds since ``start``, once the device's queued work is done (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return max(time.perf_counter() - start, 1e-9)

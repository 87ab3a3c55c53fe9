"""The optimizer of a training run: Adam's settings, the learning-rate schedule, gradient clipping.

A schedule gives the learning rate of every epoch as a multiple of the base rate ``lr``; the
trainer sets it at the start of each epoch (epochs count from 1), so a resumed run continues the
schedule exactly where the checkpoint left it. Schedules by name (:data:`SCHEDULES`, the
``train.lr_schedule`` config key, options in ``[train.lr_schedule_options]``)::

    constant     lr
    step         lr · gamma^⌊(epoch − 1) / step_size⌋          (torch.optim.lr_scheduler.StepLR)
    exponential  lr · gamma^(epoch − 1)                         (torch.optim.lr_scheduler.ExponentialLR)
    burda        lr · 10^(−i / (stages − 1)) in stage i = 0 … stages − 1, stage i lasting
                 growth^i epochs: Burda, Grosse & Salakhutdinov (2016, §5), 8 stages of 3^i epochs,
                 3,280 epochs in all; ``total_epochs`` stretches or shrinks the stages in proportion
    cosine       lr · (f + (1 − f)·(1 + cos(π·(epoch − 1)/total_epochs))/2), f = ``final``; after
                 total_epochs + 1 it stays at lr · f   (torch.optim.lr_scheduler.CosineAnnealingLR)

A new schedule is one class with ``factor(epoch)`` and one ``@SCHEDULES.register`` line.
:class:`OptimizerSettings` holds all of it and is saved in checkpoints (:meth:`~OptimizerSettings.spec`).
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, Dict, List

import torch

from .. import checks
from ..errors import InputError
from ..registry import Registry
from ..schema import Settings, setting


class Schedule:
    """A learning-rate schedule: ``factor(epoch)`` multiplies the base learning rate in that epoch."""

    def factor(self, epoch: int) -> float:
        raise NotImplementedError

    def options(self) -> Dict[str, Any]:
        """The options it was built with (saved in checkpoints, compared on resume)."""
        return dict(vars(self))


SCHEDULES = Registry("lr_schedule", Schedule)


@SCHEDULES.register("constant")
class Constant(Schedule):
    def factor(self, epoch: int) -> float:
        return 1.0


@SCHEDULES.register("step")
class Step(Schedule):
    """× ``gamma`` every ``step_size`` epochs."""

    def __init__(self, step_size: int = 30, gamma: float = 0.1):
        self.step_size = checks.positive_int("lr_schedule_options.step_size", step_size)
        self.gamma = checks.positive_float("lr_schedule_options.gamma", gamma)

    def factor(self, epoch: int) -> float:
        return self.gamma ** ((epoch - 1) // self.step_size)


@SCHEDULES.register("exponential")
class Exponential(Schedule):
    """× ``gamma`` every epoch."""

    def __init__(self, gamma: float = 0.99):
        self.gamma = checks.positive_float("lr_schedule_options.gamma", gamma)

    def factor(self, epoch: int) -> float:
        return self.gamma ** (epoch - 1)


@SCHEDULES.register("burda")
class Burda(Schedule):
    """Burda et al.'s schedule: ``stages`` stages, stage i lasting growth^i epochs at
    10^(−i / (stages − 1)) × the base rate (1e-3 in the paper). With ``total_epochs`` > 0 every
    stage is scaled by total_epochs / Σ_i growth^i (a run of that many epochs passes all stages
    in the same proportions); after the last stage the rate stays at its last value."""

    def __init__(self, stages: int = 8, growth: float = 3.0, total_epochs: int = 0):
        self.stages = checks.positive_int("lr_schedule_options.stages", stages)
        self.growth = checks.positive_float("lr_schedule_options.growth", growth)
        self.total_epochs = checks.non_negative_int("lr_schedule_options.total_epochs", total_epochs)

    def ends(self) -> List[float]:
        """The epoch at which each stage ends (cumulative lengths)."""
        lengths = [self.growth ** i for i in range(self.stages)]
        scale = self.total_epochs / sum(lengths) if self.total_epochs else 1.0
        ends, total = [], 0.0
        for length in lengths:
            total += length * scale
            ends.append(total)
        return ends

    def stage(self, epoch: int) -> int:
        """The stage (from 0) in which epoch ``epoch`` (from 1) starts: the first that ends after epoch − 1
        (a stage shrunk below one epoch is passed over when no epoch starts in it)."""
        return min(bisect.bisect_right(self.ends(), epoch - 1), self.stages - 1)

    def factor(self, epoch: int) -> float:
        return 10.0 ** (-self.stage(epoch) / max(self.stages - 1, 1))


@SCHEDULES.register("cosine")
class Cosine(Schedule):
    """Half a cosine from the base rate down to ``final`` × the base rate over ``total_epochs``
    epochs (Loshchilov & Hutter 2017, without restarts): on a fixed budget it keeps the rate near its
    peak for longer than step decays and still ends low."""

    def __init__(self, total_epochs: int = 100, final: float = 0.0):
        self.total_epochs = checks.positive_int("lr_schedule_options.total_epochs", total_epochs)
        self.final = checks.non_negative_float("lr_schedule_options.final", final)

    def factor(self, epoch: int) -> float:
        t = min(epoch - 1, self.total_epochs) / self.total_epochs
        return self.final + (1.0 - self.final) * (1.0 + math.cos(math.pi * t)) / 2.0


@dataclass
class OptimizerSettings(Settings):
    """Adam (β1, β2, ε) at base rate ``lr`` under ``lr_schedule``, each step's gradient rescaled to
    norm ≤ ``clip_norm`` when it is above 0 (``torch.nn.utils.clip_grad_norm_`` over all parameters together)."""

    lr: float = setting(1e-3, "Adam's base learning rate", low=0, open="low")
    lr_schedule: str = setting("constant", "the learning rate of each epoch: constant | step | exponential | burda "
                               "| cosine (pyrovae.inference.optim.SCHEDULES)", choices=SCHEDULES, instance=Schedule)
    lr_schedule_options: dict = setting({}, "the schedule's options: step: step_size, gamma; exponential: gamma; "
                                        "burda: stages, growth, total_epochs; cosine: total_epochs, final")
    adam_beta1: float = setting(0.9, "Adam's β1", low=0, high=1, open="high")
    adam_beta2: float = setting(0.999, "Adam's β2", low=0, high=1, open="high")
    adam_eps: float = setting(1e-8, "Adam's ε (Burda et al. use 1e-4)", low=0, open="low")
    clip_norm: float = setting(0.0, "> 0: rescale each step's gradient to at most this total norm (0 = off)", low=0)

    def __post_init__(self):
        super().__post_init__()
        self._check_schedule_options()
        self.schedule = SCHEDULES.build(self.lr_schedule, self.lr_schedule_options)

    def _check_schedule_options(self) -> None:
        """Each option is one the schedule takes: the error names it, what the schedule takes and what came."""
        if isinstance(self.lr_schedule, Schedule):
            return
        takes = SCHEDULES.options(self.lr_schedule)
        for key, value in self.lr_schedule_options.items():
            if key not in takes:
                others = [n for n in SCHEDULES.names() if key in SCHEDULES.options(n)]
                hint = f" ({key} is an option of {', '.join(map(repr, others))}: set lr_schedule too)" if others else ""
                raise InputError(f"lr_schedule_options.{key} is not an option of lr_schedule {self.lr_schedule!r}, "
                                 f"which takes {', '.join(takes) or 'none'}{hint}; got {key} = {value!r}")

    def lr_at(self, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (from 1)."""
        return self.lr * self.schedule.factor(epoch)

    def adam(self, params: List[torch.Tensor], epoch: int = 1) -> torch.optim.Adam:
        """One ``torch.optim.Adam`` over all parameters, fused (one kernel per parameter) where torch
        supports it for their device and dtype; the update is Adam's either way."""
        options = dict(lr=self.lr_at(epoch), betas=(self.adam_beta1, self.adam_beta2), eps=self.adam_eps)
        try:
            return torch.optim.Adam(params, **options, fused=True)
        except RuntimeError:  # e.g. a device or dtype without a fused kernel
            return torch.optim.Adam(params, **options)

    def clip(self, params: List[torch.Tensor]) -> None:
        """Rescale the gradients to total norm ≤ ``clip_norm`` (nothing when it is 0)."""
        if self.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, self.clip_norm)

    def spec(self) -> Dict[str, Any]:
        """Plain values saved in a checkpoint (a resumed run must ask for the same), in the checkpoint's
        own names: ``betas``, ``eps``, ``clip_norm`` None when off."""
        return {"lr": self.lr, "lr_schedule": type(self.schedule).registry_name
                if hasattr(type(self.schedule), "registry_name") else type(self.schedule).__name__,
                "lr_schedule_options": self.schedule.options(), "betas": [self.adam_beta1, self.adam_beta2],
                "eps": self.adam_eps, "clip_norm": self.clip_norm or None}


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate (the schedule's value for the epoch)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


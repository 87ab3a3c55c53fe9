"""The settings of a training run, grouped as :func:`pyrovae.train` takes them, each declared once.

:class:`RunSettings` are :func:`~pyrovae.train`'s own keywords (the common case), :class:`StepSettings`
how each step computes the objective and its gradient (``train(..., step=StepSettings(...))``),
:class:`~pyrovae.inference.optim.OptimizerSettings` Adam and the learning-rate schedule
(``train(..., optimizer=...)``). Every field is a :func:`pyrovae.schema.setting`: its default, what
it allows and its help line are also the ``[train]`` keys of the run config (:mod:`pyrovae.app.config`).
"""
from __future__ import annotations

from dataclasses import dataclass

from pyro.infer import ELBO

from .. import checks
from ..schema import Settings, setting
from .elbos import ELBOS, GRADIENTS
from .precision import PRECISIONS


@dataclass
class RunSettings(Settings):
    """The keywords of :func:`pyrovae.train` that most runs set."""

    epochs: int = setting(10, "passes over the training data", low=0, open="low")
    batch_size: int = setting(128, "datapoints per minibatch (all ranks' together under torchrun)", low=0, open="low")
    elbo: str = setting("trace", "the objective: trace | mean-field | iwae | graph | enum (pyrovae.ELBOS)",
                        choices=ELBOS, instance=ELBO)
    num_particles: int = setting(1, "particles per datapoint (k for elbo = \"iwae\"), vectorized", low=0, open="low")
    kl_warmup: int = setting(0, "epochs of KL warm-up, β = epoch/N rising to 1 (0 = none)", low=0)
    device: str = setting("auto", "auto: CUDA when available, else the CPU", validator=checks.device,
                          words="'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', where this machine has it")


@dataclass
class StepSettings(Settings):
    """How each step computes the objective and its gradient; none of it changes the expected gradient."""

    gradient: str = setting("standard", "standard | stl (elbo \"trace\") | dreg (elbo \"iwae\"): lower-variance "
                            "guide gradients", choices=GRADIENTS)
    precision: str = setting("float32", "float32 | bf16 (the networks under torch.autocast; log-densities and the "
                             "ELBO in float32)", choices=PRECISIONS)
    fast_step: bool = setting(True, "trace / mean-field / enum: steps without Pyro's trace graphs, checked equal first")
    traced_step: str = setting("auto", "that step recorded once as a graph and replayed (auto: pyrovae's models)",
                               switch=True)
    validate: bool = setting(False, "Pyro's validation at every step (else at the first, and on a non-finite loss)",
                             config=False)

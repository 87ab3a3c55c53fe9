"""Evaluation with the decoder and the Bernoulli density compiled by ``torch.compile``.

The importance-sampled log-likelihood (k = 5000) spends its time on the k × batch latent draws:
the decoder's matrix products and activations, and the likelihood's log-density of the data
under each draw — in eager PyTorch one pass over a [rows, D] tensor per operation (bias, tanh,
the product with 1 − 2x, softplus, the sum). TorchInductor fuses a layer's bias and activation
into its matrix product's output and the density's product, softplus and sum into one pass
that never writes the [rows, D] temporaries. Pyro's runtime cannot be compiled (TorchDynamo
breaks the graph at its messages), so only these pure tensor functions are:

    with compiled(vae):           # ``pyrovae evaluate --compile``
        iwae_bound(vae.model, vae.guide, x, num_samples=5000)

Inside the block every child network of the model whose name starts with ``decoder`` runs a
compiled ``forward``, :class:`~pyrovae.components.distributions.IndependentBernoulli` its
compiled :func:`~pyrovae.components.distributions.binary_log_density`, and
:class:`~pyrovae.components.distributions.DiagonalNormalMixture` (VampPrior, GMM prior) its
compiled log-sum-exp over components; the model, guide,
sampling and estimators are the same code, so the same draws under a seed. Compiled kernels
round differently (sums in another order): values agree with eager ones to float32 rounding
(tests/test_compiled.py). Each new shape compiles once (seconds to a minute, cached by torch
across runs); on a CPU Inductor needs a C++ compiler — where compiling fails, the function
warns once and runs eagerly. Speed: BENCHMARKS.md, "Evaluation speed".
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

from ..components.distributions import DiagonalNormalMixture, IndependentBernoulli, binary_log_density


class CompiledOrEager:
    """``fn`` compiled by ``torch.compile`` (static shapes); if compiling or running it fails, a
    warning and ``fn`` itself from then on (an error of ``fn``'s own is raised by ``fn`` again)."""

    def __init__(self, fn: Callable, name: str):
        self.fn, self.name, self.failed = fn, name, False
        self.compiled = torch.compile(fn, dynamic=False)

    def __call__(self, *args, **kwargs):
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # Inductor / C++ toolchain errors
                self.failed = True
                warnings.warn(f"torch.compile could not compile {self.name} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); it runs without compiling", stacklevel=2)
        return self.fn(*args, **kwargs)


def decoders(vae: nn.Module):
    """The model's decoder networks: its child modules whose names start with ``decoder``."""
    return [m for name, m in vae.named_children() if name.startswith("decoder")]


def ran_compiled(parts) -> bool:
    """Whether the functions a :func:`compiled` block installed (what it yields) all ran compiled:
    False if there were none or one fell back to eager (no C++ compiler, a failed compile)."""
    return bool(parts) and not any(part.failed for part in parts)


@contextmanager
def compiled(vae: nn.Module):
    """Within the block, ``vae``'s decoders, the Bernoulli density and the Gaussian mixture
    density (a VampPrior's, a GMM prior's) run compiled (module doc). Yields the list of the
    :class:`CompiledOrEager` functions installed (:func:`ran_compiled` says how they ran)."""
    nets = decoders(vae)
    mixture = DiagonalNormalMixture.__dict__["_grouped"]
    # torch's C++ builder logs "No CUDA runtime is found, using CUDA_HOME=…" on every CPU-only machine
    # with a CUDA toolkit directory: nothing to act on; its real errors still show
    builder = logging.getLogger("torch.utils.cpp_extension")
    level = builder.level
    try:
        builder.setLevel(logging.ERROR)
        parts = []
        for net in nets:
            net.forward = CompiledOrEager(net.forward, f"{type(net).__name__}.forward")
            parts.append(net.forward)
        grouped = CompiledOrEager(mixture, "the mixture density")
        density = CompiledOrEager(binary_log_density, "the Bernoulli density")
        IndependentBernoulli.binary_density = staticmethod(density)
        DiagonalNormalMixture._grouped = lambda self, *args: grouped(self, *args)
        yield parts + [grouped, density]
    finally:  # everything as it was, also after a setup that failed halfway
        for net in nets:
            net.__dict__.pop("forward", None)  # the class's forward again
        IndependentBernoulli.binary_density = staticmethod(binary_log_density)
        DiagonalNormalMixture._grouped = mixture
        builder.setLevel(level)

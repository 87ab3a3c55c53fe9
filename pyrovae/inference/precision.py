"""Mixed precision for training: the networks in bfloat16, the log-densities in float32.

``precision="bf16"`` (``train.precision`` in a config) runs the model and the guide under
``torch.autocast(device_type, dtype=torch.bfloat16)``: the matrix products of the networks
(``nn.Linear``, convolutions) take bfloat16 inputs and weights, which on a GPU with bf16 tensor
cores (A100, H100, H200) is several times faster. Everything else stays float32:

* the parameters, their gradients and Adam's state (autocast casts copies of the weights);
* each network's output: every module of the pair's owner (e.g. the ``VAE``) that holds parameters
  of its own (the ``Linear`` and ``Conv`` layers) has a forward hook that casts a bfloat16 output
  back to the parameters' dtype, so activations, the distributions' parameters (μ, σ, logits) and
  the samples z = μ + σ ε are float32;
* the log-densities and the ELBO: Pyro computes log p(x|z), log p(z), log q(z|x) after the pair has
  run (``Trace.compute_log_prob``), outside autocast, from those float32 parameters, and sums them
  in float32.

The ELBO is then that of slightly perturbed networks: each bf16 product rounds to 8 significant
bits (relative error about 2⁻⁹), which moves a test ELBO of about −100 nats per image by a small
fraction of a nat (tests/test_device.py measures it on the CPU, BENCHMARKS.md on a GPU). On the
CPU autocast to bf16 works but is not faster: the point of bf16 is the GPU.

A pair of plain functions (no ``nn.Module`` owner) runs under autocast too, but nothing casts its
networks' outputs back: its distributions then hold bfloat16 parameters. Give such a pair an owner
(methods of an ``nn.Module``) to get float32 log-densities.
"""
from __future__ import annotations

import functools
from typing import Callable, Iterable, Tuple

import torch
from torch import nn

from ..errors import InputError

PRECISIONS = ("float32", "bf16")
_HOOKED = "_pyrovae_bf16_hook"


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    return precision


def _to_param_dtype(module: nn.Module, inputs, output):
    """Forward hook: a bfloat16 tensor output (made under autocast) back to the module's parameters' dtype."""
    if isinstance(output, torch.Tensor) and output.dtype == torch.bfloat16:
        param = next(module.parameters(recurse=False), None)
        if param is not None and param.dtype != torch.bfloat16:
            return output.to(param.dtype)
    return None


def hook_networks(owners: Iterable[nn.Module]) -> None:
    """Put :func:`_to_param_dtype` on every module of ``owners`` that holds parameters of its own (once each)."""
    for owner in owners:
        for module in owner.modules():
            if not getattr(module, _HOOKED, False) and next(module.parameters(recurse=False), None) is not None:
                module.register_forward_hook(_to_param_dtype)
                setattr(module, _HOOKED, True)


def autocast(fn: Callable, device: torch.device) -> Callable:
    """``fn`` run under ``torch.autocast(device.type, dtype=torch.bfloat16)``."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            return fn(*args, **kwargs)
    return run


def with_precision(pair: Tuple[Callable, Callable], precision: str, device) -> Tuple[Callable, Callable]:
    """The pair as training runs it: unchanged for ``"float32"``; for ``"bf16"`` each function under
    :func:`autocast`, the networks of its owner (``fn.__self__`` when an ``nn.Module``) hooked to
    return float32 (module doc)."""
    if check_precision(precision) == "float32":
        return pair
    hook_networks(getattr(fn, "__self__") for fn in pair if isinstance(getattr(fn, "__self__", None), nn.Module))
    return tuple(autocast(fn, device) for fn in pair)

"""Argument checks that fail early with a message naming the argument, what was expected and what came."""
from __future__ import annotations

import math
import numbers

import torch
from .errors import DataError, InputError, InputTypeError


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def non_negative_int(name: str, value, unit: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise InputError(f"{name} must be a non-negative integer{unit}, got {value!r}")
    return int(value)


def positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise InputError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def non_negative_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0 or math.isinf(value):
        raise InputError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


def shape(name: str, value) -> tuple:
    """An int (flat data) or a tuple of positive ints → a tuple."""
    dims = (value,) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    try:
        dims = tuple(dims)
    except TypeError:
        raise InputTypeError(f"{name} must be an int or a tuple of ints, got {value!r}") from None
    if not dims or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d <= 0 for d in dims):
        raise InputError(f"{name} must be a positive int or a tuple of positive ints, got {value!r}")
    return tuple(int(d) for d in dims)


def data_tensor(x, event_shape: tuple, name: str = "x") -> tuple:
    """Check that ``x`` is a finite floating tensor ``[batch, *event_shape]``; return (min, max).

    One pass over the data (``torch.aminmax``; NaN propagates into both, ±Inf into one).
    """
    dims = ", ".join(map(str, event_shape))
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor of shape [batch, {dims}], got {type(x).__name__}")
    if x.dim() != len(event_shape) + 1 or tuple(x.shape[1:]) != tuple(event_shape):
        raise DataError(f"{name} must have shape [batch, {dims}], got {list(x.shape)}")
    if not x.is_floating_point():
        hint = ": convert 8-bit images to intensities in [0, 1] with x.float() / 255" if x.dtype == torch.uint8 else ""
        raise DataError(f"{name} must be a floating-point tensor, got dtype {x.dtype}{hint}")
    if x.numel() == 0:
        raise DataError(f"{name} must hold at least one datapoint, got shape {list(x.shape)}")
    lo, hi = (v.item() for v in torch.aminmax(x))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = (~torch.isfinite(x)).sum().item()
        raise DataError(f"{name} must be finite, got {bad} NaN/Inf value(s)")
    return lo, hi


def available_devices() -> list:
    """The device names this machine can train on: ``cpu``, ``cuda`` and ``cuda:i`` for each GPU torch sees, ``mps``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def device(name: str, value) -> torch.device:
    """``"auto"`` (CUDA when available, else the CPU) or a device this machine has, as a
    ``torch.device``; InputError naming ``name``, the devices available and what came."""
    if value in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError):
        dev = None
    available = available_devices()
    if dev is None or (str(dev) not in available and not (dev.type == "cpu" and dev.index in (None, 0))):
        why = " (torch sees no CUDA GPU here)" if dev is not None and dev.type == "cuda" and "cuda" not in available else ""
        raise InputError(f"{name} must be 'auto' or a device of this machine ({', '.join(map(repr, available))}), "
                         f"got {value!r}{why}")
    return dev

"""Where training and evaluation run: a device name resolved to a ``torch.device``."""
from __future__ import annotations

from typing import Optional

import torch

from .. import checks


def resolve_device(device: Optional[str], name: str = "device") -> torch.device:
    """``None``/``"auto"``: CUDA when available, else the CPU; any other name a device this machine
    has (:func:`pyrovae.checks.device`: an InputError naming ``name``, what is available and what came)."""
    return checks.device(name, device)

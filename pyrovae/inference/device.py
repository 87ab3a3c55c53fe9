"""Where training and evaluation run: a device name resolved to a ``torch.device``."""
from __future__ import annotations

from typing import Optional

import torch


def resolve_device(device: Optional[str]) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else the CPU; any other name as ``torch.device`` reads it."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)

"""Summaries of per-datapoint values and aligned text tables, shared by the lab and the app."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch


def standard_error(values: torch.Tensor) -> Optional[float]:
    """Standard error of the mean of ``values``: std / √n (None for fewer than two values)."""
    n = values.numel()
    return float(values.double().std() / math.sqrt(n)) if n > 1 else None


def mean_se(values: torch.Tensor) -> dict:
    """``{"mean", "se"}`` of per-datapoint values (se NaN for a single value), as plain floats."""
    se = standard_error(values)
    return {"mean": values.double().mean().item(), "se": float("nan") if se is None else se}


def text_table(head: Sequence[str], rows: Sequence[Sequence[str]], align: Optional[str] = None) -> List[str]:
    """Lines of an aligned table; ``align`` has an ``l`` or ``r`` per column (default: the first
    column left, the others right)."""
    align = align or "l" + "r" * (len(head) - 1)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w)
                         for c, w, a in zip(cells, widths, align)).rstrip()

    return [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]

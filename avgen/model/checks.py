"""What a pipeline call accepts, checked before any sampling: guidance scales and the guidance interval."""
from __future__ import annotations

import math

import numpy as np


def check_scales(**scales) -> None:
    """Guidance scales are finite numbers (None = follow the video's); NaN would fill a clip with NaN."""
    for name, v in scales.items():
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")


def check_interval(interval) -> tuple[float, float]:
    """(lo, hi) noise levels with 0 <= lo <= hi <= 1, as floats."""
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_interval must be two noise levels (lo, hi), got {interval!r}") from None
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"guidance_interval must satisfy 0 <= lo <= hi <= 1, got ({lo:g}, {hi:g})")
    return lo, hi


__all__ = ["check_interval", "check_scales"]

"""Small text formatters shared by the views (numbers as a microscopist reads them)."""

from __future__ import annotations

import math


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    d, rem = divmod(s, 86400)
    return (f"{d} d " if d else "") + f"{rem // 3600} h {rem % 3600 // 60:02d} min"


def rate(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f}"


def pm(value: float, sigma: float, digits: int = 1) -> str:
    return f"{value:.{digits}f} ± {sigma:.{digits}f}"

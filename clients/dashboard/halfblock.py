"""Images in any terminal: two pixels per cell with the upper half block ▀ (fg = top, bg = bottom).

Written here rather than taken from textual-image's half-cell renderer because it draws numpy
arrays straight at the widget's size, nearest-neighbour (label maps must never be blended), with
no PIL round trip per update, and its output is deterministic for snapshot tests. Where the
terminal speaks a graphics protocol, ``maps.MapView`` hands the image to textual-image instead.
"""

from __future__ import annotations

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.strip import Strip
from textual.widget import Widget

UPPER = "▀"


def fit(shape: tuple[int, int], cols: int, rows: int) -> tuple[int, int]:
    """Largest (cells wide, cells high) that shows an (ny, nx) image with square pixels."""
    ny, nx = shape
    if ny == 0 or nx == 0 or cols <= 0 or rows <= 0:
        return 0, 0
    scale = min(cols / nx, 2 * rows / ny)
    w = max(1, min(cols, round(nx * scale)))
    h = max(1, min(rows, round(ny * scale / 2)))
    return w, h


def resample(rgb: np.ndarray, width: int, height_px: int) -> np.ndarray:
    """Nearest-neighbour resampling of (ny, nx, 3) to (height_px, width, 3)."""
    ny, nx = rgb.shape[:2]
    yi = np.minimum((np.arange(height_px) + 0.5) * ny / height_px, ny - 1).astype(int)
    xi = np.minimum((np.arange(width) + 0.5) * nx / width, nx - 1).astype(int)
    return rgb[yi][:, xi]


def strips(rgb: np.ndarray, cols: int, rows: int) -> list[Strip]:
    """Half-block strips of an RGB image fitted (centred) into cols x rows cells."""
    w, h = fit(rgb.shape[:2], cols, rows)
    if w == 0:
        return []
    px = resample(rgb, w, 2 * h)
    pad = (cols - w) // 2
    out = []
    cache: dict[tuple[int, ...], Style] = {}
    for r in range(h):
        top, bottom = px[2 * r], px[2 * r + 1]
        segs = [Segment(" " * pad)] if pad else []
        for t, b in zip(top.tolist(), bottom.tolist(), strict=True):
            key = (*t, *b)
            style = cache.get(key)
            if style is None:
                style = cache[key] = Style.parse(f"rgb({t[0]},{t[1]},{t[2]}) on rgb({b[0]},{b[1]},{b[2]})")
            segs.append(Segment(UPPER, style))
        out.append(Strip(segs, pad + w))
    return out


class HalfBlockImage(Widget):
    """Shows an RGB uint8 array (ny, nx, 3) fitted to the widget's size."""

    DEFAULT_CSS = "HalfBlockImage { width: 1fr; height: 1fr; }"

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._rgb: np.ndarray | None = None
        self._strips: list[Strip] = []
        self._for_size = Size(0, 0)

    def set_rgb(self, rgb: np.ndarray | None) -> None:
        self._rgb = rgb
        self._for_size = Size(0, 0)
        self.refresh()

    def render_line(self, y: int) -> Strip:
        if self._rgb is None:
            return Strip.blank(self.size.width)
        if self._for_size != self.size:
            self._strips = strips(self._rgb, self.size.width, self.size.height)
            self._for_size = self.size
        if y < len(self._strips):
            return self._strips[y].extend_cell_length(self.size.width)
        return Strip.blank(self.size.width)

"""Images in any terminal: two pixels per cell with the upper half block ▀ (fg = top, bg = bottom).

Written here rather than taken from textual-image's half-cell renderer because it draws numpy
arrays straight at the widget's size (label maps must never be blended: see ``resample``), with
no PIL round trip per update, and its output is deterministic for snapshot tests. Where the
terminal speaks a graphics protocol, ``maps.MapView`` hands the image to textual-image instead.
numpy is imported inside the functions that need it: the widget is built before the first frame,
which must not wait for numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.strip import Strip
from textual.widget import Widget

if TYPE_CHECKING:
    import numpy as np

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


def _nearest(n_src: int, n_dst: int) -> np.ndarray:
    import numpy as np

    return np.minimum((np.arange(n_dst) + 0.5) * n_src / n_dst, n_src - 1).astype(int)


def resample(rgb: np.ndarray, width: int, height_px: int, crisp: bool = False) -> np.ndarray:
    """(ny, nx, 3) to (height_px, width, 3). Enlarging repeats pixels (nearest neighbour).
    Shrinking gives each target pixel the pixels that fall in it, summed up as their most frequent
    colour when ``crisp`` (label maps: a blend would be the colour of no cluster, and picking every
    n-th pixel would turn a few noisy pixels into speckle) or as their mean (count maps)."""
    import numpy as np

    ny, nx = rgb.shape[:2]
    if height_px >= ny and width >= nx:
        return rgb[_nearest(ny, height_px)][:, _nearest(nx, width)]
    if height_px > ny:  # an axis that grows while the other shrinks: grow it first
        rgb, ny = rgb[_nearest(ny, height_px)], height_px
    if width > nx:
        rgb, nx = rgb[:, _nearest(nx, width)], width
    target = (np.arange(ny) * height_px // ny)[:, None] * width + (np.arange(nx) * width // nx)[None, :]
    reduce = _block_mode if crisp else _block_mean
    return reduce(rgb.reshape(-1, 3), target.ravel(), height_px * width).reshape(height_px, width, 3)


def _block_mean(pixels: np.ndarray, target: np.ndarray, n: int) -> np.ndarray:
    import numpy as np

    counts = np.bincount(target, minlength=n)
    out = np.stack([np.bincount(target, weights=pixels[:, c], minlength=n) for c in range(3)], axis=1)
    return np.round(out / counts[:, None]).astype(np.uint8)


def _block_mode(pixels: np.ndarray, target: np.ndarray, n: int) -> np.ndarray:
    import numpy as np

    codes = pixels.astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])
    keys, counts = np.unique(target.astype(np.int64) << 24 | codes, return_counts=True)
    blocks = keys >> 24
    order = np.lexsort((-counts, blocks))  # per block, the most frequent colour first (ties: lowest code)
    _, first = np.unique(blocks[order], return_index=True)
    best = keys[order][first] & 0xFFFFFF
    return np.stack([best >> 16 & 255, best >> 8 & 255, best & 255], axis=1).astype(np.uint8)


def strips(rgb: np.ndarray, cols: int, rows: int, crisp: bool = False) -> list[Strip]:
    """Half-block strips of an RGB image fitted (centred) into cols x rows cells."""
    w, h = fit(rgb.shape[:2], cols, rows)
    if w == 0:
        return []
    px = resample(rgb, w, 2 * h, crisp)
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
                # from_color, not Style.parse of "rgb(..) on rgb(..)": the same colours, 5x faster
                style = cache[key] = Style.from_color(Color.from_rgb(*t), Color.from_rgb(*b))
            segs.append(Segment(UPPER, style))
        out.append(Strip(segs, pad + w))
    return out


class HalfBlockImage(Widget):
    """Shows an RGB uint8 array (ny, nx, 3) fitted to the widget's size."""

    DEFAULT_CSS = "HalfBlockImage { width: 1fr; height: 1fr; }"

    def __init__(self, *, crisp: bool = False, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.crisp = crisp  # a label map: shrink by the most frequent colour, never blend
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
            self._strips = strips(self._rgb, self.size.width, self.size.height, self.crisp)
            self._for_size = self.size
        if y < len(self._strips):
            return self._strips[y].extend_cell_length(self.size.width)
        return Strip.blank(self.size.width)

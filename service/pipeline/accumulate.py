"""Binned accumulation of X-ray counts, exact for any chunking and any number of frames.

Raw pixel (y, x) goes to binned pixel (y // f, x // f); a trailing row or column that does not
fill a bin becomes a partial bin, so no count is ever dropped. Counts go in with ``np.bincount``
over the few binned rows a chunk touches, which is exact (integer) and fast.

Coverage is kept per frame and raw pixel: it tells which (pixel, frame) pairs were swept (a chunk
with zero events still counts), detects a chunk received twice, and gives each binned pixel's
dose, so incomplete pixels are normalised rather than silently zero-filled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edxlive.service.pipeline.meta import binned_shape


@dataclass
class ChunkDelta:
    """What one accepted chunk added: binned pixels touched and its counts per (pixel, channel)."""

    bins: np.ndarray  # binned flat pixel of each nonzero entry
    channels: np.ndarray
    counts: np.ndarray
    n_events: int
    duplicate: bool = False


class Accumulator:
    """The binned spectrum image of one scan, plus per-frame coverage."""

    def __init__(self, shape: tuple[int, int], channels: int, factor: int, frames: int,
                 dtype: np.dtype | type = np.uint32) -> None:
        self.shape, self.channels, self.factor, self.frames = shape, channels, factor, frames
        self.binned_shape = binned_shape(shape, factor)
        ny, nx = shape
        yy, xx = np.divmod(np.arange(ny * nx), nx)
        # raw flat pixel -> binned flat pixel
        self.bin_of = (yy // factor) * self.binned_shape[1] + (xx // factor)
        n_bins = self.binned_shape[0] * self.binned_shape[1]
        self.cube = np.zeros((n_bins, channels), dtype=dtype)
        self.counts_map = np.zeros(n_bins, dtype=np.int64)
        self.coverage = np.zeros((frames, ny * nx), dtype=bool)
        self.bin_size = np.bincount(self.bin_of, minlength=n_bins)
        self.events = 0

    @staticmethod
    def nbytes_for(shape: tuple[int, int], channels: int, factor: int, frames: int, itemsize: int = 4) -> int:
        """Memory this accumulator will take, to check the budget before allocating anything."""
        nb = binned_shape(shape, factor)
        n_bins = nb[0] * nb[1]
        return n_bins * channels * itemsize + frames * shape[0] * shape[1] + n_bins * 16 + shape[0] * shape[1] * 8

    def seen(self, frame: int, first: int, n: int) -> bool:
        """True when every pixel of this frame's range was received already (a duplicate chunk)."""
        return bool(self.coverage[frame, first:first + n].all())

    def add_events(self, frame: int, first: int, n: int, offsets: np.ndarray, channels: np.ndarray) -> ChunkDelta:
        if self.seen(frame, first, n):
            return ChunkDelta(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64), 0, True)
        self.coverage[frame, first:first + n] = True
        bins = self.bin_of[first + offsets.astype(np.int64)]
        return self._add(bins, channels.astype(np.int64), np.ones(bins.size, dtype=np.int64))

    def add_dense(self, frame: int, first: int, counts: np.ndarray) -> ChunkDelta:
        n = counts.shape[0]
        if self.seen(frame, first, n):
            return ChunkDelta(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64), 0, True)
        self.coverage[frame, first:first + n] = True
        pix, chan = np.nonzero(counts)
        return self._add(self.bin_of[first + pix], chan.astype(np.int64), counts[pix, chan].astype(np.int64))

    def _add(self, bins: np.ndarray, chans: np.ndarray, weights: np.ndarray) -> ChunkDelta:
        if bins.size == 0:
            return ChunkDelta(bins, chans, weights, 0)
        # Profiled (docs/performance.md): scanning a dense (pixels x channels) block for its nonzeros
        # cost more than everything else per chunk; the unique (pixel, channel) pairs are cheaper.
        flat = bins * self.channels + chans
        keys, inverse = np.unique(flat, return_inverse=True)
        sums = np.bincount(inverse, weights=weights, minlength=keys.size).astype(np.int64)
        rows, cols = np.divmod(keys, self.channels)
        self._ensure_headroom(rows, cols, sums)
        np.add.at(self.cube, (rows, cols), sums.astype(self.cube.dtype))
        np.add.at(self.counts_map, rows, sums)
        n = int(sums.sum())
        self.events += n
        return ChunkDelta(rows, cols, sums, n)

    def _ensure_headroom(self, rows: np.ndarray, cols: np.ndarray, sums: np.ndarray) -> None:
        """Promote to a wider dtype before a channel could overflow (over16bit data and long scans)."""
        limit = np.iinfo(self.cube.dtype).max
        if int(self.cube[rows, cols].max(initial=0)) + int(sums.max(initial=0)) > limit:
            self.cube = self.cube.astype(np.uint64)

    # ----------------------------------------------------------------- views

    def binned_cube(self) -> np.ndarray:
        return self.cube.reshape(*self.binned_shape, self.channels)

    def frames_observed(self) -> np.ndarray:
        """Per raw pixel: how many frames swept it."""
        return self.coverage.sum(axis=0)

    def dose(self, expected_frames: int | None = None) -> np.ndarray:
        """Per binned pixel: fraction of the expected (pixel, frame) pairs received, in [0, 1]."""
        frames = expected_frames or self.frames
        per_bin = np.bincount(self.bin_of, weights=self.frames_observed(), minlength=self.bin_size.size)
        return (per_bin / (self.bin_size * frames)).reshape(self.binned_shape)

    def incomplete_fraction(self, expected_frames: int | None = None) -> float:
        frames = expected_frames or self.frames
        received = int(self.coverage[:frames].sum())
        return 1.0 - received / (frames * self.coverage.shape[1])

    def missing_by_frame(self, expected_frames: int | None = None) -> dict[int, int]:
        """Raw pixels never received, per frame (only frames with any missing)."""
        frames = expected_frames or self.frames
        missing = (~self.coverage[:frames]).sum(axis=1)
        return {int(f): int(m) for f, m in enumerate(missing) if m}

    def restore(self, cube: np.ndarray, coverage: np.ndarray) -> None:
        """Load a checkpoint's binned counts and coverage (a daemon resuming a scan after a restart)."""
        if cube.shape != self.cube.shape or coverage.shape != self.coverage.shape:
            raise ValueError(f"checkpoint shapes {cube.shape}, {coverage.shape} do not fit this scan "
                             f"{self.cube.shape}, {self.coverage.shape}")
        self.cube = cube.astype(np.promote_types(cube.dtype, self.cube.dtype), copy=True)
        self.coverage = coverage.astype(bool, copy=True)
        self.counts_map = self.cube.sum(axis=1, dtype=np.int64)
        self.events = int(self.counts_map.sum())


def offline_bin(cube: np.ndarray, factor: int) -> np.ndarray:
    """The reference ×factor binning: zero-pad to a multiple of the factor, then reshape-sum."""
    ny, nx, c = cube.shape
    by, bx = binned_shape((ny, nx), factor)
    padded = np.zeros((by * factor, bx * factor, c), dtype=np.uint64)
    padded[:ny, :nx] = cube
    return padded.reshape(by, factor, bx, factor, c).sum(axis=(1, 3))

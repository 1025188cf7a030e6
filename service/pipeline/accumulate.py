"""Binned accumulation of X-ray counts, exact for any chunking and any number of frames.

Raw pixel (y, x) goes to binned pixel (y // f, x // f); a trailing row or column that does not
fill a bin becomes a partial bin, so no count is ever dropped.

Each count lands at a flat key ``binned_pixel * channels + channel`` of the cube. Two stores:

- **dense** (a flat array of every (pixel, channel)): a chunk of events goes in by one compiled
  loop (``pipeline/scatter.py``; ``np.add.at`` for dense chunks). Events arrive in raster order,
  so consecutive keys fall in the same spectrum and the scatter stays in cache
  (docs/performance.md: profiled against np.unique + fancy assignment and ``np.add.at``).
- **sparse** (scans whose dense cube would exceed ``DENSE_LIMIT_BYTES``, e.g. 1024×1024 raw ×
  4096 channels): sorted unique keys with their counts, merged from a buffer of incoming keys
  whenever the buffer reaches half the store (amortised O(n log n)). Memory follows the number of
  distinct (pixel, channel) pairs seen, not the scan's size.

Both are exact integer counts; a cell promotes to uint64 before it could overflow. Coverage is kept
per frame and raw pixel: it tells which (pixel, frame) pairs were swept (a chunk with zero events
still counts), detects a chunk received twice, and gives each binned pixel's dose, so incomplete
pixels are normalised rather than silently zero-filled.
"""

from __future__ import annotations

import mmap
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from edxlive.service.pipeline import scatter
from edxlive.service.pipeline.meta import binned_shape

DENSE_LIMIT_BYTES = 1 << 30  # a larger binned cube is kept sparse
SPARSE_MIN_FLUSH = 1 << 22  # buffered keys before a sparse merge (at least; grows with the store)


@dataclass
class ChunkDelta:
    """What one accepted chunk added: (binned pixel, channel, count) entries.

    Entries may repeat a (pixel, channel) pair (one per X-ray for ``events`` chunks); ``counts``
    is None when every entry counts one. An ``events`` chunk keeps its raw pixels instead of the
    binned ones (``pixels``: bin_of, first pixel, offsets): the live statistics look them up in
    their own compiled loop, and ``bins`` is built only when asked for."""

    _bins: np.ndarray | None
    channels: np.ndarray
    counts: np.ndarray | None
    n_events: int
    duplicate: bool = False
    pixels: tuple[np.ndarray, int, np.ndarray] | None = None

    @property
    def bins(self) -> np.ndarray:
        if self._bins is None:
            assert self.pixels is not None
            bin_of, first, offsets = self.pixels
            self._bins = bin_of[first + offsets.astype(np.int64)]
        return self._bins


def _empty_delta(duplicate: bool) -> ChunkDelta:
    e = np.empty(0, np.int64)
    return ChunkDelta(e, e, e, 0, duplicate)


class Accumulator:
    """The binned spectrum image of one scan, plus per-frame coverage."""

    def __init__(self, shape: tuple[int, int], channels: int, factor: int, frames: int,
                 dtype: np.dtype | type = np.uint32, *, sparse: bool | None = None) -> None:
        self.shape, self.channels, self.factor, self.frames = shape, channels, factor, frames
        self.binned_shape = binned_shape(shape, factor)
        ny, nx = shape
        yy, xx = np.divmod(np.arange(ny * nx), nx)
        # raw flat pixel -> binned flat pixel
        self.bin_of = (yy // factor) * self.binned_shape[1] + (xx // factor)
        n_bins = self.binned_shape[0] * self.binned_shape[1]
        self.dtype = np.dtype(dtype)
        # uint32 keys sort and scatter faster; they fit up to 2**32 cells (512x512 binned x 16384 ch)
        self._key_dtype = np.dtype(np.uint32 if n_bins * channels <= 2**32 else np.int64)
        self._key_of = (self.bin_of * channels).astype(self._key_dtype)
        if sparse is None:
            sparse = n_bins * channels * self.dtype.itemsize > DENSE_LIMIT_BYTES
        self.sparse = sparse
        self._dense = None if sparse else fresh_zeros(n_bins * channels, self.dtype)
        self._store = _SparseCounts(self._key_dtype, self.dtype) if sparse else None
        self._bound = 0  # an upper bound on every dense cell, to promote before any overflow
        self._counts_map = np.zeros(n_bins, dtype=np.int64)
        self.coverage = np.zeros((frames, ny * nx), dtype=bool)
        self.bin_size = np.bincount(self.bin_of, minlength=n_bins)
        self.events = 0

    @staticmethod
    def nbytes_for(shape: tuple[int, int], channels: int, factor: int, frames: int, itemsize: int = 4) -> int:
        """Memory this accumulator will take, to check the budget before allocating anything.

        A sparse store's size depends on the counts; it is budgeted at 16 bytes (key, count and
        merge headroom) for up to 32 distinct (pixel, channel) pairs per raw pixel."""
        nb = binned_shape(shape, factor)
        n_bins = nb[0] * nb[1]
        n_raw = shape[0] * shape[1]
        cube = n_bins * channels * itemsize
        if cube > DENSE_LIMIT_BYTES:
            cube = Accumulator.nonzero_nbytes_for(shape, channels, factor)
        return cube + frames * n_raw + n_bins * 16 + n_raw * 16

    @staticmethod
    def nonzero_nbytes_for(shape: tuple[int, int], channels: int, factor: int) -> int:
        """The non-zero cells (key, count and headroom: 16 bytes each), budgeted for up to 32
        distinct (pixel, channel) pairs per raw pixel: a sparse store, or a checkpoint's copy."""
        nb = binned_shape(shape, factor)
        return 16 * min(nb[0] * nb[1] * channels, 32 * shape[0] * shape[1])

    def seen(self, frame: int, first: int, n: int) -> bool:
        """True when every pixel of this frame's range was received already (a duplicate chunk)."""
        return bool(self.coverage[frame, first:first + n].all())

    def add_events(self, frame: int, first: int, n: int, offsets: np.ndarray, channels: np.ndarray) -> ChunkDelta:
        if self.seen(frame, first, n):
            return _empty_delta(True)
        # the compiled loop does not check its indices: out of range would write outside the cube
        if offsets.size and not (_within(offsets, n) and _within(channels, self.channels)
                                 and first + n <= self.bin_of.size):
            raise ValueError(f"events outside the chunk's {n} pixels or the scan's {self.channels} channels")
        self.coverage[frame, first:first + n] = True
        if offsets.size == 0:
            return _empty_delta(False)
        if self._dense is not None:  # compiled loops: the cube and counts map; the delta keeps the raw offsets
            offsets = scatter.events_array(offsets, scatter.OFFSET)
            channels = scatter.events_array(channels, scatter.CHANNEL)
            self._grow_bound(offsets.size)
            scatter.kernels().add_events(self._dense, self._key_of, self._counts_map, self.bin_of, first, offsets,
                                         channels)
            self.events += offsets.size
            return ChunkDelta(None, channels, None, int(offsets.size), pixels=(self.bin_of, first, offsets))
        keys = self._key_of[first:first + n][offsets]
        np.add(keys, channels, out=keys, casting="unsafe")  # channels were checked < self.channels
        self._add_keys(keys, None, offsets.size)
        # counts per raw pixel of the chunk, then per binned pixel: O(events + pixels), no sort
        per_pixel = np.bincount(offsets, minlength=n)
        np.add.at(self._counts_map, self.bin_of[first:first + n], per_pixel)
        return ChunkDelta(self.bin_of[first:first + n][offsets], channels, None, int(offsets.size))

    def add_dense(self, frame: int, first: int, counts: np.ndarray) -> ChunkDelta:
        n = counts.shape[0]
        if self.seen(frame, first, n):
            return _empty_delta(True)
        self.coverage[frame, first:first + n] = True
        pix, chan = np.nonzero(counts)
        if pix.size == 0:
            return _empty_delta(False)
        weights = counts[pix, chan].astype(np.uint64)
        keys = self._key_of[first + pix] + chan.astype(self._key_dtype)
        total = int(weights.sum())
        self._add_keys(keys, weights, total)
        bins = self.bin_of[first + pix]
        np.add.at(self._counts_map, bins, weights.astype(np.int64))
        return ChunkDelta(bins, chan.astype(np.int64), weights.astype(np.int64), total)

    def _add_keys(self, keys: np.ndarray, weights: np.ndarray | None, total: int) -> None:
        self.events += total
        if self._store is not None:
            self._store.add(keys, weights)
            return
        cube = self._grow_bound(total)
        # the value's dtype must match the cube's: numpy's fast add.at path, ~10x the generic one
        np.add.at(cube, keys, cube.dtype.type(1) if weights is None else weights.astype(cube.dtype))

    def _grow_bound(self, total: int) -> np.ndarray:
        """Make room for ``total`` more counts in the dense cube: promote it to uint64 before any
        cell could overflow (a full ``max()`` only when the running upper bound passes the limit)."""
        cube = self._dense
        assert cube is not None
        self._bound += total
        if self._bound > np.iinfo(cube.dtype).max:
            self._bound = int(cube.max(initial=0)) + total
            if self._bound > np.iinfo(cube.dtype).max:  # (over16bit data, long scans)
                cube = self._dense = cube.astype(np.uint64)
        return cube

    def flush(self) -> None:
        """Merge buffered counts into the store (sparse mode); every view calls it first."""
        if self._store is not None:
            self._store.merge()

    # ----------------------------------------------------------------- views

    @property
    def cube(self) -> np.ndarray:
        """The (binned pixels, channels) counts. Sparse mode builds it: prefer ``row_blocks``."""
        if self._dense is not None:
            return self._dense.reshape(-1, self.channels)
        return self._rows(0, self.binned_shape[0]).reshape(-1, self.channels)

    @cube.setter
    def cube(self, value: np.ndarray) -> None:
        flat = np.ascontiguousarray(value).reshape(-1)
        if self._store is not None:
            self._store.assign(flat)
        else:
            self._dense = flat.copy()
        self._bound = int(flat.max(initial=0))

    @property
    def counts_map(self) -> np.ndarray:
        return self._counts_map

    @counts_map.setter
    def counts_map(self, value: np.ndarray) -> None:
        self._counts_map = np.asarray(value, dtype=np.int64).reshape(-1).copy()

    @property
    def nnz(self) -> int:
        """Stored (pixel, channel) entries: every cell when dense."""
        if self._store is not None:
            self._store.merge()
            return int(self._store.keys.size)
        return int(self._dense.size)  # type: ignore[union-attr]

    def binned_cube(self) -> np.ndarray:
        return self.cube.reshape(*self.binned_shape, self.channels)

    def row_blocks(self, max_bytes: int = 64 << 20) -> Iterator[np.ndarray]:
        """The binned cube as consecutive blocks of whole binned rows, each at most ~max_bytes:
        for writing a large cube without holding it whole (sparse mode)."""
        ny, nx = self.binned_shape
        row_bytes = nx * self.channels * max(self.dtype.itemsize, self._cell_dtype().itemsize)
        step = max(1, max_bytes // row_bytes)
        for r0 in range(0, ny, step):
            r1 = min(ny, r0 + step)
            yield self._rows(r0, r1).reshape(r1 - r0, nx, self.channels)

    def cube_dtype(self) -> np.dtype:
        """The dtype ``binned_cube`` and ``row_blocks`` return (uint64 once a cell has promoted)."""
        return self._cell_dtype()

    def _cell_dtype(self) -> np.dtype:
        if self._store is not None:
            self._store.merge()
            return self._store.vals.dtype
        return self._dense.dtype  # type: ignore[union-attr]

    def _rows(self, r0: int, r1: int) -> np.ndarray:
        width = self.binned_shape[1] * self.channels
        if self._dense is not None:
            return self._dense[r0 * width:r1 * width]
        assert self._store is not None
        return self._store.dense_range(r0 * width, r1 * width)

    def channel_sum(self, lo: int, hi: int) -> np.ndarray:
        """Per binned pixel (flat): counts summed over channels [lo, hi), float64."""
        return self.channel_sums([(lo, hi)])[0]

    def channel_sums(self, windows: list[tuple[int, int]]) -> np.ndarray:
        """(windows, binned pixels): counts summed over each channel window [lo, hi), float64.
        Sparse mode reads the store and the merge buffer as they are (no merge), in one pass."""
        n_bins = self.bin_size.size
        out = np.zeros((len(windows), n_bins))
        if self._dense is not None:  # one compiled pass over the windows' cells (numpy: a reduction per row)
            bounds = np.clip(np.array(windows, np.int64).reshape(-1, 2), 0, self.channels)
            bounds[:, 1] = np.maximum(bounds[:, 0], bounds[:, 1])
            scatter.kernels().window_sums(self.cube, bounds, out)
            return out
        assert self._store is not None
        bounds = np.array(windows, np.int64).reshape(-1, 2)
        for keys, weights in self._store.parts():  # compiled: numpy's divmod, masks and bincounts
            # took 59 % of a 1024² × 4096 scan's ingest (docs/performance.md)
            w = np.empty(0, self._store.vals.dtype) if weights is None else weights
            scatter.kernels().key_window_sums(keys, w, self.channels, bounds, out)
        return out

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

    def nonzero_cells(self) -> tuple[np.ndarray, np.ndarray]:
        """A copy of the non-zero cells: flat (binned pixel × channel) indices and their counts.
        Compact at EDX doses, and never a dense cube, whichever store holds the counts (checkpoints)."""
        if self._store is not None:
            self._store.merge()
            return self._store.keys.astype(np.int64), self._store.vals.copy()
        idx = np.flatnonzero(self._dense)
        return idx, self._dense[idx]  # type: ignore[index]

    def restore(self, keys: np.ndarray, counts: np.ndarray, coverage: np.ndarray) -> None:
        """Load a checkpoint's non-zero cells and coverage (a daemon resuming a scan after a restart)."""
        size = self.binned_shape[0] * self.binned_shape[1] * self.channels
        if coverage.shape != self.coverage.shape or keys.shape != counts.shape or (keys.size and (
                keys.min() < 0 or keys.max() >= size)):
            raise ValueError(f"checkpoint of {keys.size} cells and coverage {coverage.shape} does not fit this scan "
                             f"({size} cells, coverage {self.coverage.shape})")
        self.coverage = coverage.astype(bool, copy=True)
        if keys.size:
            self._add_keys(keys.astype(np.int64), counts.astype(np.uint64), int(counts.sum()))
        self.flush()
        self.counts_map = np.bincount(keys // self.channels, weights=counts, minlength=size // self.channels)


class _SparseCounts:
    """Sorted unique cube keys and their counts, fed through a buffer of unsorted keys."""

    def __init__(self, key_dtype: np.dtype, dtype: np.dtype) -> None:
        self.keys = np.empty(0, dtype=key_dtype)
        self.vals = np.empty(0, dtype=dtype)
        self._pending: list[tuple[np.ndarray, np.ndarray | None]] = []
        self._pending_n = 0

    def add(self, keys: np.ndarray, weights: np.ndarray | None) -> None:
        self._pending.append((keys, weights))
        self._pending_n += keys.size
        # merging costs O(store): wait for half the store's size, so each key is merged O(log n) times
        if self._pending_n >= max(SPARSE_MIN_FLUSH, self.keys.size // 2):
            self.merge()

    def merge(self) -> None:
        if not self._pending:
            return
        parts, self._pending, self._pending_n = self._pending, [], 0
        keys = np.concatenate([k for k, _ in parts])
        if all(w is None for _, w in parts):
            keys.sort()
            starts = _run_starts(keys)
            new_keys = keys[starts]
            new_vals = np.diff(np.append(starts, keys.size)).astype(np.uint64)
        else:
            weights = np.concatenate([np.ones(k.size, np.uint64) if w is None else w for k, w in parts])
            order = np.argsort(keys, kind="stable")
            keys = keys[order]
            starts = _run_starts(keys)
            new_keys = keys[starts]
            new_vals = np.add.reduceat(weights[order], starts) if keys.size else weights[:0]
        self._combine(new_keys, new_vals)

    def _combine(self, new_keys: np.ndarray, new_vals: np.ndarray) -> None:
        hit_pos = np.searchsorted(self.keys, new_keys)
        hit = hit_pos < self.keys.size
        hit[hit] = self.keys[hit_pos[hit]] == new_keys[hit]
        if hit.any():
            pos = hit_pos[hit]
            summed = self.vals[pos].astype(np.uint64) + new_vals[hit]
            self._fit(int(summed.max()))
            self.vals[pos] = summed
        miss = ~hit
        if miss.any():
            self._fit(int(new_vals[miss].max()))
            at = hit_pos[miss]
            self.keys = np.insert(self.keys, at, new_keys[miss])
            self.vals = np.insert(self.vals, at, new_vals[miss].astype(self.vals.dtype))

    def _fit(self, value: int) -> None:
        if value > np.iinfo(self.vals.dtype).max:
            self.vals = self.vals.astype(np.uint64)

    def parts(self) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """The store and the buffered keys, as (keys, counts or None for one each)."""
        return [(self.keys, self.vals), *self._pending]

    def dense_range(self, k0: int, k1: int) -> np.ndarray:
        self.merge()
        out = np.zeros(k1 - k0, dtype=self.vals.dtype)
        i0, i1 = np.searchsorted(self.keys, [k0, k1])
        out[self.keys[i0:i1].astype(np.int64) - k0] = self.vals[i0:i1]
        return out

    def assign(self, flat: np.ndarray) -> None:
        self._pending, self._pending_n = [], 0
        idx = np.flatnonzero(flat)
        self.keys = idx.astype(self.keys.dtype)
        self.vals = flat[idx].astype(self.vals.dtype if flat.max(initial=0) <= np.iinfo(self.vals.dtype).max
                                     else np.uint64)


def fresh_zeros(n: int, dtype: np.dtype | type) -> np.ndarray:
    """``np.zeros(n, dtype)`` in anonymous memory of ordinary pages, reusing a finished scan's.

    numpy asks the kernel for transparent huge pages on large arrays; where the kernel must compact
    memory to find them, the first touch of a scan's cube cost 1.3–1.7 s of CPU per 512 MiB, against
    0.5 s with 4 KiB pages (docs/performance.md). Even those 0.5 s are page faults, once per scan:
    a buffer of the same size that no array uses any more (the last scan's cube or live X) is
    handed out again instead, zeroed already by ``zero_spares`` while the daemon was idle, or here
    (~0.05 s per 512 MiB). Buffers of other sizes are released first, so the memory kept is at
    most what the last scan used."""
    dtype = np.dtype(dtype)
    nbytes = n * dtype.itemsize
    if nbytes < 1 << 20:
        return np.zeros(n, dtype)
    free = [i for i in range(len(_SPARE)) if _unused(i)]
    same = sorted((i for i in free if len(_SPARE[i]) == nbytes), key=lambda i: not _CLEAN[i])
    if same:
        i = same[0]
        out = np.frombuffer(_SPARE[i], dtype=dtype)
        if not _CLEAN[i]:
            out.fill(0)
        _CLEAN[i] = False
        return out
    for i in reversed(free):  # another size: return their memory before taking more
        _SPARE.pop(i).close()
        _CLEAN.pop(i)
    buf = mmap.mmap(-1, nbytes)
    _SPARE.append(buf)
    _CLEAN.append(False)
    return np.frombuffer(buf, dtype=dtype)


def zero_spares() -> bool:
    """Zero one buffer no scan uses any more, ahead of the next scan (the daemon calls it while
    idle, one buffer per call); False when there is none left to zero."""
    for i in range(len(_SPARE)):
        if not _CLEAN[i] and _unused(i):
            np.frombuffer(_SPARE[i], dtype=np.uint8).fill(0)
            _CLEAN[i] = True
            return True
    return False


_SPARE: list[mmap.mmap] = []  # every buffer fresh_zeros handed out and not yet released
_CLEAN: list[bool] = []  # _SPARE[i] is unused and all zero


def _unused(i: int) -> bool:
    """No array uses ``_SPARE[i]`` any more: the list's reference and getrefcount's own are all.
    (An array of it, or any view of that array, holds a memoryview that references the buffer.)"""
    return sys.getrefcount(_SPARE[i]) == 2


def _within(a: np.ndarray, limit: int) -> bool:
    """Every value of the integer array ``a`` in [0, limit)."""
    return int(a.max()) < limit and (a.dtype.kind == "u" or int(a.min()) >= 0)


def _run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Index of the first element of each run of equal keys."""
    if sorted_keys.size == 0:
        return np.empty(0, np.intp)
    change = np.empty(sorted_keys.size, dtype=bool)
    change[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=change[1:])
    return np.flatnonzero(change)


def offline_bin(cube: np.ndarray, factor: int) -> np.ndarray:
    """The reference ×factor binning: zero-pad to a multiple of the factor, then reshape-sum."""
    ny, nx, c = cube.shape
    by, bx = binned_shape((ny, nx), factor)
    padded = np.zeros((by * factor, bx * factor, c), dtype=np.uint64)
    padded[:ny, :nx] = cube
    return padded.reshape(by, factor, bx, factor, c).sum(axis=(1, 3))

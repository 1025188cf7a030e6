"""Reading a cube larger than the memory: its rows, a block at a time, from a read-only memmap.

The daemon's worker analyses ``np.load(accumulated.npy, mmap_mode="r")`` (16 GiB at 1024²
binned × 4096 channels in uint32). The analysis reads it in blocks of rows and keeps no copy of
it; but every page a memmap has read stays mapped in the process, so its resident set grows to
the whole file over one pass. Those pages are page cache, shared and reclaimable, not memory the
analysis holds: ``release`` unmaps a block's pages once it is read (MADV_DONTNEED on a shared
read-only file mapping: the page cache keeps them, a later pass maps them again), so the
worker's RSS shows what it holds. Arrays in memory, and writable memmaps, are left alone.
"""

from __future__ import annotations

import mmap

import numpy as np


def release(flat: np.ndarray, which: slice | np.ndarray) -> None:
    """The pages of rows ``which`` of ``flat`` (C-ordered rows) leave this process's resident set,
    if ``flat`` is a read-only file mapping."""
    found = _read_only_mapping(flat)
    if found is None or len(flat) == 0:
        return
    mm, start = found
    if isinstance(which, slice):
        first, last, _ = which.indices(len(flat))
    elif len(which):
        first, last = int(which.min()), int(which.max()) + 1
    else:
        return
    page = mmap.PAGESIZE
    lo = (flat.ctypes.data + first * flat.strides[0] - start) // page * page
    hi = min(len(mm), -(-(flat.ctypes.data + last * flat.strides[0] - start) // page) * page)
    if hi > lo >= 0:
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


TAKE_ROWS = 512


def take(flat: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A copy of rows ``rows`` (sorted indices) of ``flat``, gathered TAKE_ROWS at a time and each
    piece's pages released: a sample spread over the whole map would otherwise map most of it."""
    out = np.empty((len(rows), *flat.shape[1:]), dtype=flat.dtype)
    for start in range(0, len(rows), TAKE_ROWS):
        part = rows[start:start + TAKE_ROWS]
        out[start:start + len(part)] = flat[part]
        release(flat, part)
    return out


def _read_only_mapping(a: np.ndarray) -> tuple[mmap.mmap, int] | None:
    """The mmap under ``a`` and its first byte's address, when ``a`` views a read-only one."""
    base = a
    while isinstance(base, np.ndarray):
        base = base.base
    if not isinstance(base, mmap.mmap) or a.flags.writeable:
        return None
    return base, np.frombuffer(base, np.uint8).ctypes.data

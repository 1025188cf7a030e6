"""What the simulator replays: a spectrum image file or a phantom, as frames of sparse counts.

Counts are held sparse, as (flat pixel, channel, count) triples sorted by pixel: at STEM-EDX
doses almost every (pixel, channel) bin is zero, so this is far smaller than a dense cube, and a
chunk's pixel range is a binary search away.

Files with real frames (Velox ``sum_frames=False``, JEOL .pts) are replayed frame by frame.
Otherwise the total is split into N frames by sequential binomial thinning: frame i takes
Binomial(remaining, 1/(N-i)). That is an exact multinomial split with equal probabilities, so the
frames sum to the total exactly and each frame is Poisson with 1/N of the rate.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edxlive.service.pipeline.meta import ScanMeta

# Suffixes of the spectrum-image files HyperSpy/RosettaSciIO read; anything else is a phantom name.
FILE_SUFFIXES = frozenset({".bcf", ".emd", ".pts", ".hspy", ".zspy"})


@dataclass
class SparseFrame:
    """One frame's counts: ``pixel`` (flat y*nx+x, sorted), ``channel`` and ``count`` per nonzero bin."""

    pixel: np.ndarray
    channel: np.ndarray
    count: np.ndarray

    @classmethod
    def from_dense(cls, cube: np.ndarray) -> SparseFrame:
        flat = cube.reshape(-1, cube.shape[-1])
        pix, chan = np.nonzero(flat)
        return cls(pix.astype(np.int64), chan.astype(np.uint16), flat[pix, chan].astype(np.int64))

    @property
    def total(self) -> int:
        return int(self.count.sum())

    def events(self, first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """X-ray events in pixels [first, stop): (offset from first, channel), one entry per count."""
        lo, hi = np.searchsorted(self.pixel, [first, stop])
        reps = self.count[lo:hi]
        return (np.repeat(self.pixel[lo:hi] - first, reps).astype("<u4"),
                np.repeat(self.channel[lo:hi], reps).astype("<u2"))

    def dense(self, first: int, stop: int, channels: int) -> np.ndarray:
        lo, hi = np.searchsorted(self.pixel, [first, stop])
        out = np.zeros((stop - first, channels), dtype=np.uint32)
        np.add.at(out, (self.pixel[lo:hi] - first, self.channel[lo:hi]), self.count[lo:hi])
        return out

    def to_dense(self, shape: tuple[int, int], channels: int) -> np.ndarray:
        return self.dense(0, shape[0] * shape[1], channels).reshape(*shape, channels)


@dataclass
class ScanSource:
    """A scan to replay: metadata, and frames that sum exactly to ``total``."""

    name: str
    meta: ScanMeta
    frames: list[SparseFrame] = field(default_factory=list)
    real_frames: bool = False

    def iter_frames(self) -> Iterator[tuple[int, SparseFrame]]:
        yield from enumerate(self.frames)

    def total_counts(self) -> np.ndarray:
        """The (ny, nx, channels) sum of every frame: what a lossless daemon must end up with."""
        total = np.zeros((*self.meta.shape, self.meta.channels), dtype=np.uint64)
        for f in self.frames:
            total += f.to_dense(self.meta.shape, self.meta.channels)
        return total


def thin(total: SparseFrame, n_frames: int, rng: np.random.Generator) -> list[SparseFrame]:
    """Split counts into ``n_frames`` by sequential binomial thinning (exact, Poisson-preserving)."""
    remaining = total.count.copy()
    frames = []
    for i in range(n_frames):
        take = remaining if i == n_frames - 1 else rng.binomial(remaining, 1.0 / (n_frames - i))
        remaining = remaining - take
        keep = take > 0
        frames.append(SparseFrame(total.pixel[keep], total.channel[keep], take[keep]))
    return frames


def load_source(source: str, *, frames: int | None = None, seed: int | None = None,
                bin_energy: int = 1, downsample: int = 1, scan_id: str | None = None) -> ScanSource:
    """A file path or a phantom name -> ScanSource. Raises LoadError / KeyError with one-line messages."""
    rng = np.random.default_rng(seed)
    path = Path(source)
    if path.suffix and (path.exists() or "/" in source or path.suffix.lower() in FILE_SUFFIXES):
        return _from_file(path, frames, rng, bin_energy, downsample, scan_id)
    return _from_phantom(source, frames or 10, rng, seed, scan_id)


def _from_file(path: Path, n_frames: int | None, rng: np.random.Generator, bin_energy: int,
               downsample: int, scan_id: str | None) -> ScanSource:
    from edxlive.service import hsio

    sig = hsio.load_eds(path, frames=True, downsample=downsample, rebin_energy=bin_energy)
    cube = hsio.cube_of(sig)
    sid = scan_id or _safe_id(path.stem)
    if cube.ndim == 4 and n_frames is None:
        meta = hsio.meta_from_signal(sig, sid, frames=cube.shape[0])
        return ScanSource(path.name, meta, [SparseFrame.from_dense(f) for f in cube], real_frames=True)
    if cube.ndim == 4:
        cube = cube.sum(axis=0)
    n = n_frames or 1
    meta = hsio.meta_from_signal(sig, sid, frames=n)
    return ScanSource(path.name, meta, thin(SparseFrame.from_dense(cube), n, rng))


def _from_phantom(name: str, n_frames: int, rng: np.random.Generator, seed: int | None,
                  scan_id: str | None) -> ScanSource:
    from edxlive.clients.phantoms import make_phantom

    ph = make_phantom(name, seed=0 if seed is None else seed)  # the same specimen every time; thinning varies
    meta = ph.meta
    meta.scan_id = scan_id or meta.scan_id
    meta.frames = meta.frames_completed = n_frames
    return ScanSource(name, meta, thin(SparseFrame.from_dense(ph.counts), n_frames, rng))


def _safe_id(stem: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in stem)[:64] or "scan"

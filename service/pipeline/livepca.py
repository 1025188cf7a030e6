"""Live PCA, exact, from running statistics.

The live view works on the useful energy range rebinned to at most ``max_channels`` channels
(X: binned pixels × live channels). X is kept up to date as chunks arrive: each X-ray adds one to
one cell (a compiled loop, ``pipeline/scatter.py``; in raster order the scatter stays in cache),
a few ns per event and no per-chunk matrix work. X is float32 while no cell can pass 2²⁴ counts
(exact integers; half the memory), float64 after. The Gram matrix S = XᵀX is brought up to date
at a refresh (once per frame at least), whichever way is cheaper:

- from the delta D since the last refresh (the cells the events added, kept as a list):
  S' = S + X'ᵀD + DᵀX' − DᵀD with X' = X + D, O(nnz(D) · C), when the delta is sparse (low dose
  per frame, the usual STEM-EDX case);
- recomputed, S = XᵀX (BLAS, O(pixels · C²)), when the delta has more entries than that costs;
  in float32 blocks small enough that every partial sum stays below 2²⁴, summed in float64.

X holds integer counts, so every product and sum in S is an integer, held exactly (below 2²⁴ in a
float32 block, below 2⁵³ in float64): both ways give the same S, whatever the chunking or the
order of additions.

A refresh scales channels by 1/√(mean spectrum) (the channel half of Keenan–Kotula, a diagonal
transform W S W), centres (covariance = (S_w − n μμᵀ)/(n−1)) and diagonalises. Pixel-side
Poisson weighting is not a transform of S, so the live view omits it; the scan-end analysis
applies the configured scaling in full. At any moment the result equals a batch PCA of the
same scaled data (tests/test_livepca.py checks it).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from threadpoolctl import ThreadpoolController

from edxlive.service.pipeline import scatter
from edxlive.service.pipeline.accumulate import ChunkDelta, fresh_zeros

F32_EXACT = 1 << 24  # every integer up to this is exact in float32
DELTA_MAX_FRACTION = 0.025  # the sparse S update, up to this share of X's cells; above, one XᵀX


@dataclass
class LiveComponents:
    explained_variance_ratio: np.ndarray  # all components, descending
    components: np.ndarray  # (k, live channels) loadings, unit norm
    maps: np.ndarray  # (k, ny_b, nx_b) scores
    live_energy_kev: np.ndarray  # centre energy of each live channel


class LivePCA:
    def __init__(self, binned_shape: tuple[int, int], channels: int, energy_offset_kev: float,
                 energy_scale_kev: float, energy_min_kev: float = 0.2, energy_max_kev: float = 20.0,
                 max_channels: int = 256) -> None:
        self.binned_shape = binned_shape
        c0 = max(0, int(np.ceil((energy_min_kev - energy_offset_kev) / energy_scale_kev)))
        c1 = min(channels, int(np.floor((energy_max_kev - energy_offset_kev) / energy_scale_kev)) + 1)
        if c1 <= c0:
            c0, c1 = 0, channels
        self.rebin = max(1, -(-(c1 - c0) // max_channels))
        self.n_live = -(-(c1 - c0) // self.rebin)
        n_bins = binned_shape[0] * binned_shape[1]
        # channels outside the live range go to a spare last column, not through a mask; X is the
        # view without it (BLAS takes the row stride as is: no copy)
        self._width = self.n_live + 1
        lookup = np.full(channels, self.n_live, dtype=np.int64)
        lookup[c0:c1] = (np.arange(c0, c1) - c0) // self.rebin
        self._lookup = lookup
        self.live_of = np.where(lookup == self.n_live, -1, lookup)
        centres = c0 + (np.arange(self.n_live) + 0.5) * self.rebin - 0.5
        self.live_energy_kev = energy_offset_kev + energy_scale_kev * centres
        # float32: half the memory and memory traffic of float64, and exact for counts up to 2**24
        # per cell; past that bound X turns float64 (``_grow``)
        self._set_x(fresh_zeros(n_bins * self._width, np.float32).reshape(n_bins, self._width))
        self._bound = 0  # an upper bound on every cell of X
        # X's rows [lo, hi) hold every count so far; the others are zero, and the Gram and the scores
        # skip them: a scan fills X in raster order, so a refresh early in its first frame (the live
        # view's first, 0.1 s in) reads only the rows swept so far
        self._lo, self._hi = n_bins, 0
        self._S = np.zeros((self.n_live, self.n_live), dtype=np.float64)
        self._colsum = np.zeros(self._width)  # X's column sums (and the spare column's), kept per event
        # the delta since S was last brought up to date; None: too large, recompute S instead
        self._delta: list[tuple[np.ndarray, np.ndarray | None]] | None = []
        self._delta_n = 0
        self._stale = False

    def _set_x(self, padded: np.ndarray) -> None:
        self._padded = padded
        self._flat = padded.reshape(-1)
        self.X = padded[:, :self.n_live]

    def _grow(self, total: int) -> None:
        """Room for ``total`` more counts: X turns float64 before a float32 cell could round."""
        self._bound += total
        if self._bound > F32_EXACT and self._padded.dtype == np.float32:
            self._bound = int(self._padded.max(initial=0)) + total
            if self._bound > F32_EXACT:
                self._set_x(self._padded.astype(np.float64))

    def add(self, delta: ChunkDelta) -> None:
        """Add what one chunk added to the accumulator."""
        if delta.pixels is None or delta.counts is not None:
            self.update(delta.bins, delta.channels, delta.counts)
        elif delta.n_events:
            bin_of, first, offsets = delta.pixels
            # raw pixels first..last fall in binned rows row(first)..row(last): a binned pixel's row
            # never decreases along the raw raster (bin_of is the accumulator's binning map)
            last, nx = first + int(offsets.max()), self.binned_shape[1]
            self._touch(int(bin_of[first]) // nx * nx, (int(bin_of[last]) // nx + 1) * nx)
            self._add_events(bin_of, first, offsets, delta.channels)

    def _touch(self, lo: int, hi: int) -> None:
        self._lo, self._hi = min(self._lo, lo), max(self._hi, hi)

    def update(self, bins: np.ndarray, channels: np.ndarray, counts: np.ndarray | None = None) -> None:
        """Add counts at (binned pixel, full-resolution channel); ``counts`` None: one each.
        Entries may repeat a pair."""
        if bins.size == 0:
            return
        self._touch(int(bins.min()), int(bins.max()) + 1)
        if counts is None:  # the compiled loop does not check its indices
            if not (bins.min() >= 0 and bins.max() < self.X.shape[0] and channels.min() >= 0
                    and channels.max() < self._lookup.size):
                raise ValueError(f"bins or channels outside {self.X.shape[0]} pixels x {self._lookup.size} channels")
            self._add_events(np.asarray(bins, np.int64), 0, scatter.events_array(np.arange(bins.size), scatter.OFFSET),
                             scatter.events_array(channels, scatter.CHANNEL))
            return
        weights = counts.astype(np.float64)
        self._grow(int(counts.sum()))
        cols = self._lookup[channels]
        cells = bins * self._width + cols
        np.add.at(self._flat, cells, weights)
        self._colsum += np.bincount(cols, weights=weights, minlength=self._width)
        self._record(cells, weights)

    def _add_events(self, bin_of: np.ndarray, first: int, offsets: np.ndarray, channels: np.ndarray) -> None:
        """One count per event at binned pixel ``bin_of[first + offset]``: one compiled pass."""
        cells = np.empty(offsets.size if self._delta is not None else 0, np.int64)
        self._grow(offsets.size)
        scatter.kernels().add_live(self._flat, self._colsum, self._width, self._lookup, bin_of, first, offsets,
                                   channels, cells)
        self._record(cells, None)

    def _record(self, cells: np.ndarray, weights: np.ndarray | None) -> None:
        self._stale = True
        if self._delta is not None:
            self._delta.append((cells, weights))
            self._delta_n += cells.size
            # past this size the sparse update costs more than one XᵀX (measured at 256×256 binned
            # × 248, float32 X: 50 ms against 109 ms at 300 k entries (1.8 % of the cells), 79
            # against 94 at 450 k (2.8 %), 185 against 113 at 600 k (3.7 %))
            if self._delta_n > self._flat.size * DELTA_MAX_FRACTION:
                self._delta, self._delta_n = None, 0

    def flush(self) -> None:
        """Bring S up to date with X (a refresh does it)."""
        if not self._stale:
            return
        with _one_blas_thread():
            if self._delta is None:
                self._S = self._gram()
            else:
                self._S += self._delta_product()
        self._delta, self._delta_n, self._stale = [], 0, False

    def _gram(self) -> np.ndarray:
        """XᵀX, exact. A float32 product is exact while every partial sum is an integer below
        2**24: with m the largest cell, a block of rows·m² ≤ 2**24 rows qualifies (float32 BLAS,
        under half the time of float64; the blocks are summed in float64). Otherwise float64 blocks."""
        X = self.X[self._lo:self._hi]  # the other rows are zero
        n = X.shape[0]
        if X.dtype == np.float64:
            return X.T @ X  # numpy hands Xᵀ·X to BLAS syrk
        # the padded rows' maximum bounds X's (the spare column is never read): a contiguous pass,
        # 2 ms at 256² binned against 6-10 ms for numpy's strided reduction over X itself
        m = float(self._padded[self._lo:self._hi].max(initial=0.0))
        rows = int(F32_EXACT // max(m * m, 1.0))
        S = np.zeros((self.n_live, self.n_live))
        if rows >= 1024:
            for r0 in range(0, n, rows):
                b = X[r0:r0 + rows]
                S += b.T @ b
            return S
        for r0 in range(0, n, 8192):
            b = X[r0:r0 + 8192].astype(np.float64)
            S += b.T @ b
        return S

    def _delta_product(self) -> np.ndarray:
        """X'ᵀD + DᵀX' − DᵀD for the buffered delta D (X' = X with D already added)."""
        assert self._delta is not None
        cells = np.concatenate([c for c, _ in self._delta])
        weights = np.concatenate([np.ones(c.size) if w is None else w for c, w in self._delta])
        rows, cols = np.divmod(cells, self._width)
        keep = cols < self.n_live
        # Dᵀ·X walks X's rows in place, O(nnz(D) · C), in float64 (a compiled loop: scipy would
        # first copy a float32 X to float64)
        cross = np.zeros((self.n_live, self.n_live))
        scatter.kernels().delta_cross(self._padded, rows, cols, weights, self.n_live, cross)
        # DᵀD from D alone, as CSR (live channels × pixels; repeated cells are summed)
        dt = sparse.csr_matrix((weights[keep], (cols[keep], rows[keep])), shape=(self.n_live, self.X.shape[0]))
        d = dt.T
        return cross + cross.T - (d.T @ d).toarray()

    @property
    def S(self) -> np.ndarray:
        self.flush()
        return self._S

    def _mean(self) -> np.ndarray:
        # kept as the counts arrive: integer sums, exact in any order (no pass over X)
        return self._colsum[:self.n_live] / self.X.shape[0]

    def channel_weights(self, mean: np.ndarray | None = None) -> np.ndarray:
        mean = self._mean() if mean is None else mean
        return np.where(mean > 0, 1.0 / np.sqrt(np.maximum(mean, 1e-300)), 0.0)

    def scaled(self) -> np.ndarray:
        """The data the live PCA diagonalises: X with channels scaled (for batch comparison)."""
        return self.X * self.channel_weights()

    def refresh(self, k: int = 8) -> LiveComponents:
        self.flush()
        with _one_blas_thread():
            return self._components(k)

    def _components(self, k: int) -> LiveComponents:
        n = self.X.shape[0]
        mean = self._mean()
        w = self.channel_weights(mean)
        mu = mean * w
        cov = (self.S * np.outer(w, w) - n * np.outer(mu, mu)) / max(n - 1, 1)
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(evals)[::-1]
        evals, evecs = np.clip(evals[order], 0.0, None), evecs[:, order]
        total = evals.sum()
        ratio = evals / total if total > 0 else evals
        k = min(k, self.n_live)
        comps = evecs[:, :k].T
        # a fixed sign (largest loading positive) keeps the maps from flickering between refreshes
        signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
        comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
        # (X·w − μ)·Cᵀ without a scaled copy of X (which is as large as X), in X's precision: the
        # maps are published as float32. Rows outside [lo, hi) are zero: their scores are −μ·Cᵀ.
        offset = mu @ comps.T
        scores = np.empty((n, k), np.result_type(self.X.dtype, offset.dtype))
        scores[:] = -offset
        lo, hi = self._lo, max(self._lo, self._hi)
        scores[lo:hi] = self.X[lo:hi] @ (comps * w).T.astype(self.X.dtype) - offset
        maps = scores.T.reshape(k, *self.binned_shape)
        return LiveComponents(ratio, comps, maps, self.live_energy_kev)


@functools.cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def warm_up() -> None:
    """Find the BLAS libraries for ``_one_blas_thread`` (threadpoolctl scans the loaded libraries:
    ~0.15 s). The daemon calls it at start, so that the first scan's first refresh does not pay it."""
    _blas()


def _one_blas_thread() -> contextlib.AbstractContextManager[object]:
    """The refresh runs in the daemon's ingest loop: one BLAS thread. Measured (docs/performance.md):
    XᵀX at 256×256 binned took 2.1 s with OpenBLAS's threads on a busy 2-CPU machine, 0.35 s with one."""
    return _blas().limit(limits=1, user_api="blas")

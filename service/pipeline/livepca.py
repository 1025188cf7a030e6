"""Live PCA, exact, from running sufficient statistics.

The live view works on the useful energy range rebinned to at most ``max_channels`` channels
(X: binned pixels × live channels). It keeps X and the Gram matrix S = XᵀX. A chunk adds a
sparse delta D to a few rows of X, and S changes by

    S' = (X + D)ᵀ(X + D) = S + DᵀX + XᵀD + DᵀD,

which costs O(nnz(D) · C) because D holds only the chunk's counts: the update is cheap and the
statistics are exact at every moment, whatever the chunking.

A refresh scales channels by 1/√(mean spectrum) (the channel half of Keenan–Kotula, a diagonal
transform W S W), centres (covariance = (S_w − n μμᵀ)/(n−1)) and diagonalises. Pixel-side
Poisson weighting is not a transform of S, so the live view omits it; the scan-end analysis
applies the configured scaling in full. At any moment the result equals a batch PCA of the
same scaled data (tests/test_livepca.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

FLUSH_ENTRIES = 200_000  # buffered (pixel, channel) entries before the statistics are updated


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
        lookup = np.full(channels, -1, dtype=np.int64)
        lookup[c0:c1] = (np.arange(c0, c1) - c0) // self.rebin
        self.live_of = lookup
        centres = c0 + (np.arange(self.n_live) + 0.5) * self.rebin - 0.5
        self.live_energy_kev = energy_offset_kev + energy_scale_kev * centres
        n_bins = binned_shape[0] * binned_shape[1]
        self.X = np.zeros((n_bins, self.n_live), dtype=np.float64)
        self.S = np.zeros((self.n_live, self.n_live), dtype=np.float64)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_n = 0

    def update(self, bins: np.ndarray, channels: np.ndarray, counts: np.ndarray) -> None:
        """Add one chunk's counts (binned pixel, full-resolution channel, count).

        Chunks are buffered and applied together (``flush``): the update's fixed cost dominates for
        one scan line, and the sum of several deltas is one delta, so the result is the same."""
        self._pending.append((bins, channels, counts))
        self._pending_n += bins.size
        if self._pending_n >= FLUSH_ENTRIES:
            self.flush()

    def flush(self) -> None:
        """Apply the buffered chunks to X and S."""
        if not self._pending:
            return
        bins, channels, counts = (np.concatenate(parts) for parts in zip(*self._pending, strict=True))
        self._pending, self._pending_n = [], 0
        live = self.live_of[channels]
        keep = live >= 0
        if not keep.any():
            return
        rows, inverse = np.unique(bins[keep], return_inverse=True)
        d = sparse.csr_matrix((counts[keep].astype(np.float64), (inverse, live[keep])),
                              shape=(rows.size, self.n_live))
        x_old = self.X[rows]
        cross = np.asarray(d.T @ x_old)
        self.S += cross + cross.T + (d.T @ d).toarray()
        self.X[rows] = x_old + d.toarray()

    def channel_weights(self) -> np.ndarray:
        self.flush()
        mean = self.X.mean(axis=0)
        return np.where(mean > 0, 1.0 / np.sqrt(np.maximum(mean, 1e-300)), 0.0)

    def scaled(self) -> np.ndarray:
        """The data the live PCA diagonalises: X with channels scaled (for batch comparison)."""
        return self.X * self.channel_weights()

    def refresh(self, k: int = 8) -> LiveComponents:
        self.flush()
        n = self.X.shape[0]
        w = self.channel_weights()
        mu = self.X.mean(axis=0) * w
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
        scores = (self.X * w - mu) @ comps.T
        maps = scores.T.reshape(k, *self.binned_shape)
        return LiveComponents(ratio, comps, maps, self.live_energy_kev)

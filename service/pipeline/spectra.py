"""Cluster-mean spectra: the raw counts of each cluster's pixels, summed.

Hard labels sum member pixels (noise −1 excluded); soft memberships (GMM) weight every pixel by
its membership, so a pixel shared between two clusters is shared in their sums too.
"""

from __future__ import annotations

import numpy as np

CHUNK_ROWS = 4096  # profiled: converting the whole cube to float64 at once (1-2 GiB) cost more than the product


def hard_sums(flat: np.ndarray, labels: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """(sums (k, channels), pixel counts (k,)) over pixels with label 0..k-1."""
    onehot = labels[:, None] == np.arange(n_clusters)[None, :]
    return _weighted_sums(flat, onehot), onehot.sum(axis=0).astype(np.float64)


def soft_sums(flat: np.ndarray, memberships: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Membership-weighted sums: Mᵀ X, and the effective pixel count Σ M per cluster."""
    return _weighted_sums(flat, memberships), memberships.sum(axis=0)


def _weighted_sums(flat: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Wᵀ X in float64, a block of rows at a time (counts are integers: exact for hard labels)."""
    sums = np.zeros((weights.shape[1], flat.shape[1]), dtype=np.float64)
    for start in range(0, len(flat), CHUNK_ROWS):
        block = slice(start, start + CHUNK_ROWS)
        sums += weights[block].T.astype(np.float64) @ np.asarray(flat[block], dtype=np.float64)
    return sums

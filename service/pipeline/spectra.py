"""Cluster-mean spectra: the raw counts of each cluster's pixels, summed.

Hard labels sum member pixels (noise −1 excluded); soft memberships (GMM) weight every pixel by
its membership, so a pixel shared between two clusters is shared in their sums too.
"""

from __future__ import annotations

import numpy as np


def hard_sums(flat: np.ndarray, labels: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """(sums (k, channels), pixel counts (k,)) over pixels with label 0..k-1."""
    sums = np.zeros((n_clusters, flat.shape[1]), dtype=np.float64)
    sizes = np.zeros(n_clusters, dtype=np.float64)
    for k in range(n_clusters):
        member = labels == k
        sizes[k] = member.sum()
        if sizes[k]:
            sums[k] = flat[member].sum(axis=0, dtype=np.float64)
    return sums, sizes


def soft_sums(flat: np.ndarray, memberships: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Membership-weighted sums: Mᵀ X, and the effective pixel count Σ M per cluster."""
    return memberships.T @ flat.astype(np.float64), memberships.sum(axis=0)

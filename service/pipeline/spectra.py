"""Cluster-mean spectra: the raw counts of each cluster's pixels, summed.

Soft memberships (GMM) weight every pixel by its membership, so a pixel shared between two
clusters is shared in their sums too; hard labels (HDBSCAN) go in as one-hot weights (noise −1
has none), so their sums are the member pixels' exact integer sums.

``interior`` keeps, of each cluster, the members whose eight neighbours are members too: the
pixels away from the cluster's edges, where a binned pixel can straddle two phases or a phase and
the film. Quantification uses their sum (analyze.py; docs/analysis.md §4).
"""

from __future__ import annotations

import numpy as np

from edxlive.service.pipeline.blocks import release, take

CHUNK_ROWS = 4096  # profiled: converting the whole cube to float64 at once (1-2 GiB) cost more than the product


def one_hot(labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Hard labels as weights (pixels × clusters); noise (−1) has none."""
    return (labels[:, None] == np.arange(n_clusters)[None, :]).astype(np.float64)


def cube_sums(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sum spectrum (channels,) and the counts per pixel (pixels,), float64, in one pass over
    the cube a block of rows at a time (it may be a memmap of accumulated.npy: no float copy of it
    whole, blocks.py). Integer counts sum exactly, in any order."""
    spectrum = np.zeros(flat.shape[1])
    totals = np.empty(flat.shape[0])
    for start in range(0, len(flat), CHUNK_ROWS):
        block = np.asarray(flat[start:start + CHUNK_ROWS])
        spectrum += block.sum(axis=0, dtype=np.float64)
        totals[start:start + len(block)] = block.sum(axis=1, dtype=np.float64)
        release(flat, slice(start, start + CHUNK_ROWS))
    return spectrum, totals


def weighted_sums(flat: np.ndarray, weights: list[np.ndarray], rows: np.ndarray | None = None) -> list[np.ndarray]:
    """Wᵀ X in float64 for each W (pixels × clusters), X the cube's rows ``rows`` (all when None):
    each block of rows is read once for all of them (counts are integers: exact for hard labels)."""
    sums = [np.zeros((w.shape[1], flat.shape[1]), dtype=np.float64) for w in weights]
    for start in range(0, len(weights[0]), CHUNK_ROWS):
        block = slice(start, start + CHUNK_ROWS)
        if rows is None:
            X = np.asarray(flat[block], dtype=np.float64)
            release(flat, block)  # read: a memmap's pages leave the resident set (blocks.py)
        else:
            X = take(flat, rows[block]).astype(np.float64)
        for total, w in zip(sums, weights, strict=True):
            total += w[block].T.astype(np.float64) @ X
    return sums


INTERIOR_MIN_SHARE = 0.25  # a cluster whose interior holds less of its counts is quantified whole


def interior(weights: np.ndarray, labels: np.ndarray, observed: np.ndarray, map_shape: tuple[int, int]
             ) -> np.ndarray:
    """``weights`` (observed pixels × clusters) zeroed outside each cluster's interior: the
    pixels whose 3×3 neighbourhood lies wholly in the cluster by ``labels`` (hard, observed pixels)."""
    from scipy.ndimage import binary_erosion

    full = np.full(observed.size, -1, dtype=np.int64)
    full[observed] = labels
    grid = full.reshape(map_shape)
    inner = np.zeros_like(weights, dtype=bool)
    for k in range(weights.shape[1]):
        # border_value=1: the map's edge is not a boundary between phases
        inner[:, k] = binary_erosion(grid == k, np.ones((3, 3), bool), border_value=1).reshape(-1)[observed]
    return np.where(inner, weights, 0)


def quantified_sums(sums: np.ndarray, inner_sums: np.ndarray, weights: np.ndarray, inner_weights: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster, the interior's sum where it holds at least INTERIOR_MIN_SHARE of the counts, else
    the whole cluster's; and how many pixels (Σ weights) each sum covers."""
    use = inner_sums.sum(axis=1) >= INTERIOR_MIN_SHARE * np.maximum(sums.sum(axis=1), 1e-12)
    chosen = np.where(use[:, None], inner_sums, sums)
    pixels = np.where(use, inner_weights.sum(axis=0), weights.sum(axis=0)).astype(np.float64)
    return chosen, pixels

"""Subsample-and-assign: fit the expensive models on at most ``rows`` pixels, then label the rest.

Large maps (256x256 binned and up) hold far more pixels than a mixture model or an embedding
needs to find phases that cover >= 1 % of the map. The fitting set is a seeded uniform random
sample (the same pixels for the same scan and seed); every other pixel is assigned afterwards:
the GMM by its own ``predict_proba``, UMAP+HDBSCAN by a vote of its nearest fitted neighbours in
the PCA-score space. Kept because the ARI against the truth held (benchmarks/bench_analyze.py).
"""

from __future__ import annotations

import numpy as np

ASSIGN_NEIGHBOURS = 15
# memray at 1024² binned: one predict over every other pixel held its neighbours' indices and
# distances (~0.25 GiB) at the analysis's high-water mark; blocks of rows give the same labels
ASSIGN_BLOCK_ROWS = 1 << 16


def sample_rows(n: int, rows: int | None, random_state: int | None) -> np.ndarray | None:
    """Sorted row indices of the fitting set, or None when all ``n`` rows are used."""
    if not rows or n <= rows:
        return None
    return np.sort(np.random.default_rng(random_state).choice(n, rows, replace=False))


def assign_rest(features: np.ndarray, rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Labels for every row: the fitted rows keep theirs, the others take their neighbours' majority."""
    from sklearn.neighbors import KNeighborsClassifier

    full = np.empty(len(features), dtype=labels.dtype)
    full[rows] = labels
    rest = np.ones(len(features), dtype=bool)
    rest[rows] = False
    others = np.flatnonzero(rest)
    if others.size:
        vote = KNeighborsClassifier(n_neighbors=min(ASSIGN_NEIGHBOURS, len(rows))).fit(features[rows], labels)
        for start in range(0, others.size, ASSIGN_BLOCK_ROWS):
            part = others[start:start + ASSIGN_BLOCK_ROWS]
            full[part] = vote.predict(features[part])
    return full

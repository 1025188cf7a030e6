"""Workflow 2 of the reference method: UMAP to 4 dimensions, then HDBSCAN (Euclidean).

Fast mode (the default) feeds UMAP the PCA scores rather than the scaled spectra: the scores
carry the signal and far fewer dimensions, so the neighbour search is much cheaper. The
``faithful`` mode feeds UMAP the scaled spectra, exactly as the reference method.

``min_cluster_size`` is in binned pixels: the smallest region worth calling a phase. Its default
is 1 % of the observed pixels, at least 10. HDBSCAN marks noise −1; noise pixels stay out of the
cluster means and their fraction is reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass
class UMAPHDBSCANResult:
    labels: np.ndarray
    embedding: np.ndarray
    min_cluster_size: int
    noise_fraction: float
    durations_s: dict[str, float]


def default_min_cluster_size(n_pixels: int) -> int:
    return max(10, n_pixels // 100)


def embed(X: np.ndarray, random_state: int | None = 0, n_epochs: int | None = None) -> np.ndarray:
    import umap

    reducer = umap.UMAP(n_components=4, n_neighbors=15, min_dist=0.0, metric="euclidean",
                        random_state=random_state, n_epochs=n_epochs,
                        n_jobs=1 if random_state is not None else -1)
    return reducer.fit_transform(X)


def cluster(embedding: np.ndarray, min_cluster_size: int) -> np.ndarray:
    import hdbscan

    model = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min(min_cluster_size, 10),
                            metric="euclidean", core_dist_n_jobs=1)
    return model.fit_predict(embedding).astype(np.int64)


def umap_hdbscan(X: np.ndarray, min_cluster_size: int | None = None, random_state: int | None = 0,
                 n_epochs: int | None = None) -> UMAPHDBSCANResult:
    mcs = min_cluster_size or default_min_cluster_size(len(X))
    t0 = time.perf_counter()
    emb = embed(X, random_state, n_epochs)
    t1 = time.perf_counter()
    labels = cluster(emb, mcs)
    t2 = time.perf_counter()
    noise = float(np.mean(labels < 0)) if len(labels) else 0.0
    return UMAPHDBSCANResult(labels, emb, mcs, noise, {"umap": t1 - t0, "hdbscan": t2 - t1})


def warm_up() -> float:
    """Compile UMAP's and HDBSCAN's numba code on tiny data, so the first real scan does not pay."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (150, 6)), rng.normal(5, 1, (150, 6))]).astype(np.float32)
    cluster(embed(X, random_state=0, n_epochs=20), 10)
    return time.perf_counter() - t0

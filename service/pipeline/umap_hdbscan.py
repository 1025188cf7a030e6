"""Workflow 2 of the reference method: UMAP to 4 dimensions, then HDBSCAN (Euclidean).

Fast mode (the default) feeds UMAP the PCA scores rather than the scaled spectra: the scores
carry the signal in far fewer dimensions, so an exact neighbour graph is cheap (scikit-learn),
and UMAP is handed that graph. The ``faithful`` mode feeds UMAP the scaled spectra with UMAP's
own defaults, exactly as the reference method.

``min_cluster_size`` is in binned pixels: the smallest region worth calling a phase. Its default
is 1 % of the observed pixels, at least 10. HDBSCAN marks noise −1; noise pixels stay out of the
cluster means and their fraction is reported.

``fit_rows`` (fast mode): on maps larger than that, UMAP and HDBSCAN run on a seeded random
sample of that many pixels (``min_cluster_size`` scaled by twice the sampled fraction: a share
of the sample, 2 % by default, see SAMPLE_MCS_FACTOR), and every other pixel takes the label
of the majority of its 15 nearest sampled neighbours in the feature (PCA-score) space
(subsample.py).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

from edxlive.service.pipeline.subsample import assign_rest, sample_rows


@dataclass
class UMAPHDBSCANResult:
    labels: np.ndarray
    embedding: np.ndarray
    min_cluster_size: int
    noise_fraction: float
    durations_s: dict[str, float]


def default_min_cluster_size(n_pixels: int) -> int:
    return max(10, n_pixels // 100)


N_NEIGHBORS = 15
MIN_FIT_CLUSTER = 5  # the smallest min_cluster_size on a subsample
# On a sample, 1 % of 8192 points is a weak density signal: HDBSCAN split the noisy film into ~20
# clusters (ARI 0.06 on the sulfide phantom at 256x256 binned); twice the scaled size gave 7-10
# clusters and ARI 0.12-0.15, as good as the faithful method's (docs/performance.md)
SAMPLE_MCS_FACTOR = 2
FAST_EPOCHS = 100


def embed(X: np.ndarray, random_state: int | None = 0, n_epochs: int | None = None, faithful: bool = False
          ) -> np.ndarray:
    """UMAP to 4-D. Fast mode hands UMAP an exact k-nearest-neighbour graph from scikit-learn (no
    JIT, and exact on these few dimensions) instead of pynndescent, whose numba compilation alone
    costs ~40 s in every new process, and runs 100 epochs on at most ``fit_rows`` points
    (docs/performance.md: the ARI against the truth held)."""
    import umap

    kwargs: dict = {}
    if not faithful:
        from sklearn.neighbors import NearestNeighbors

        k = min(N_NEIGHBORS, len(X) - 1)
        dist, idx = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(X)
        kwargs["precomputed_knn"] = (idx, dist.astype(np.float32), None)
        # Profiled (py-spy, docs/performance.md): on a low-count map the kNN graph falls into many
        # components and the spectral initialisation (eigsh per component) took ~60 % of the run.
        # A PCA initialisation costs nothing and gives the same clusters (benchmarks/bench_analyze.py).
        kwargs["init"] = "pca"
        n_epochs = n_epochs or FAST_EPOCHS
    reducer = umap.UMAP(n_components=4, n_neighbors=min(N_NEIGHBORS, len(X) - 1), min_dist=0.0, metric="euclidean",
                        random_state=random_state, n_epochs=n_epochs,
                        n_jobs=1 if random_state is not None else -1, **kwargs)
    with warnings.catch_warnings():
        # with a precomputed graph UMAP warns that .transform() of new data is unavailable; we never call it
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]", category=UserWarning)
        return reducer.fit_transform(X)


def cluster(embedding: np.ndarray, min_cluster_size: int) -> np.ndarray:
    import hdbscan

    # min_samples = min_cluster_size (HDBSCAN's default): a smaller one splits a noisy carbon film
    # into dozens of clumps (ARI 0.06 vs 0.90 on the sulfide phantom, docs/analysis.md)
    model = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, metric="euclidean", core_dist_n_jobs=1)
    return model.fit_predict(embedding).astype(np.int64)


def umap_hdbscan(X: np.ndarray, min_cluster_size: int | None = None, random_state: int | None = 0,
                 n_epochs: int | None = None, faithful: bool = False, fit_rows: int | None = None
                 ) -> UMAPHDBSCANResult:
    mcs = min_cluster_size or default_min_cluster_size(len(X))
    rows = None if faithful else sample_rows(len(X), fit_rows, random_state)
    fit_on = X if rows is None else X[rows]
    fit_mcs = mcs
    if rows is not None:
        fit_mcs = min(mcs, max(MIN_FIT_CLUSTER, round(SAMPLE_MCS_FACTOR * mcs * len(fit_on) / len(X))))
    t0 = time.perf_counter()
    emb = embed(fit_on, random_state, n_epochs, faithful)
    t1 = time.perf_counter()
    labels = cluster(emb, fit_mcs)
    t2 = time.perf_counter()
    durations = {"umap": t1 - t0, "hdbscan": t2 - t1}
    if rows is not None:
        labels = assign_rest(X, rows, labels)
        durations["assign"] = time.perf_counter() - t2
    noise = float(np.mean(labels < 0)) if len(labels) else 0.0
    return UMAPHDBSCANResult(labels, emb, mcs, noise, durations)


def warm_up() -> float:
    """Compile UMAP's and HDBSCAN's numba code on tiny data, so the first real scan does not pay."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (150, 6)), rng.normal(5, 1, (150, 6))]).astype(np.float32)
    cluster(embed(X, random_state=0, n_epochs=20), 10)
    return time.perf_counter() - t0

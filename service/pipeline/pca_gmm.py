"""Workflow 1 of the reference method: PCA, then a Gaussian mixture on the scores.

Number of components: the scree's change point. On the log explained-variance curve of the
first ``max_components``, it is the component farthest below the straight line from the first to
the last point (the "knee"); at least 2 are kept. The scree is reported either way.

GMM k: the user's; when none is given, BIC is computed for k = 1..k_max and the suggestion is
the knee of the BIC curve (the point farthest below the chord), because on thousands of pixels
BIC keeps falling slowly long after the real phases are found. The curve is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PCAResult:
    scores: np.ndarray  # (n, n_keep)
    n_keep: int
    scree: np.ndarray  # explained variance ratio of the first max_components


@dataclass
class GMMResult:
    labels: np.ndarray  # (n,) hard labels
    memberships: np.ndarray  # (n, k) soft
    k: int
    bic: dict[int, float]
    suggested_k: int | None


def knee(values: np.ndarray) -> int:
    """Index of the point farthest below the chord from the first to the last value."""
    n = len(values)
    if n < 3:
        return n - 1
    x = np.arange(n)
    chord = values[0] + (values[-1] - values[0]) * x / (n - 1)
    return int(np.argmax(chord - values))


def pca_scores(X: np.ndarray, max_components: int = 20, random_state: int | None = 0) -> PCAResult:
    from sklearn.decomposition import PCA

    n_comp = int(min(max_components, X.shape[0] - 1, X.shape[1]))
    pca = PCA(n_components=n_comp, svd_solver="randomized" if min(X.shape) > 200 else "full",
              random_state=random_state)
    scores = pca.fit_transform(X)
    scree = pca.explained_variance_ratio_
    n_keep = max(2, knee(np.log(np.maximum(scree, 1e-12))) + 1) if n_comp > 2 else n_comp
    return PCAResult(scores[:, :n_keep].astype(np.float64), n_keep, scree)


def gmm(scores: np.ndarray, k: int | None, k_max: int = 8, random_state: int | None = 0) -> GMMResult:
    from sklearn.mixture import GaussianMixture

    def fit(n: int) -> GaussianMixture:
        return GaussianMixture(n_components=n, covariance_type="full", random_state=random_state,
                               n_init=2, reg_covar=1e-5).fit(scores)

    bic: dict[int, float] = {}
    models = {}
    suggested = None
    if k is None:
        for n in range(1, min(k_max, len(scores) - 1) + 1):
            models[n] = fit(n)
            bic[n] = float(models[n].bic(scores))
        ks = sorted(bic)
        suggested = ks[knee(np.array([bic[n] for n in ks]))]
        k = max(suggested, 1)
    model = models.get(k) or fit(k)
    memberships = model.predict_proba(scores)
    return GMMResult(memberships.argmax(axis=1), memberships, k, bic, suggested)

"""Workflow 1 of the reference method: PCA, then a Gaussian mixture on the scores.

Number of components: the scree's change point. On the log explained-variance curve of the
first ``max_components``, it is the component farthest below the straight line from the first to
the last point (the "knee"); at least 2 are kept. The scree is reported either way.

GMM k: the user's; when none is given, BIC is computed for k = 1..k_max and the suggestion is
the smallest k that gains 99 % of the BIC improvement from k = 1 to the curve's minimum
(BIC_GAIN). On thousands of pixels BIC keeps falling slowly long after the real phases are found,
so its minimum over-splits; the knee of the curve under-splits at low counts, where film against
particles is nearly the whole gain (k = 2 on the 10 counts/px sulfide phantom; docs/analysis.md).
The curve is reported.

Components are not clusters: with BIC's k (not the user's), components whose two-component mixture
has a single mode are merged into one cluster (merge.py, Hennig's ridgeline rule); the mixture's
k, the clusters and which components each holds are reported.

``fit_rows`` (fast mode): PCA and the GMM are fitted on a seeded random sample of at most that
many pixels, then every pixel is projected / given its memberships (subsample.py). The faithful
mode fits on every pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edxlive.service.pipeline.merge import merge_groups, merged_memberships
from edxlive.service.pipeline.preprocess import ScaledRows, row_blocks
from edxlive.service.pipeline.subsample import sample_rows


@dataclass
class PCAResult:
    all_scores: np.ndarray  # (n, max_components): UMAP takes more than the kept ones
    n_keep: int
    scree: np.ndarray  # explained variance ratio of the first max_components

    @property
    def scores(self) -> np.ndarray:
        """The kept components' scores (n, n_keep): what the GMM sees."""
        return self.all_scores[:, :self.n_keep]


@dataclass
class GMMResult:
    labels: np.ndarray  # (n,) hard labels of the clusters
    memberships: np.ndarray  # (n, clusters) soft
    k: int  # clusters
    bic: dict[int, float]
    suggested_k: int | None
    groups: list[list[int]]  # the mixture's components in each cluster

    @property
    def components(self) -> int:
        return sum(len(g) for g in self.groups)


def knee(values: np.ndarray) -> int:
    """Index of the point farthest below the chord from the first to the last value."""
    n = len(values)
    if n < 3:
        return n - 1
    x = np.arange(n)
    chord = values[0] + (values[-1] - values[0]) * x / (n - 1)
    return int(np.argmax(chord - values))


BIC_GAIN = 0.99


def suggest_k(bic: dict[int, float]) -> int:
    """The smallest k whose BIC has made BIC_GAIN of the fall from k = 1 to the minimum."""
    ks = sorted(bic)
    values = np.array([bic[k] for k in ks])
    fall = values[0] - values.min()
    if fall <= 0:
        return ks[0]
    return ks[int(np.argmax(values[0] - values >= BIC_GAIN * fall))]


def pca_scores(X: np.ndarray | ScaledRows, max_components: int = 20, random_state: int | None = 0,
               fit_rows: int | None = None) -> PCAResult:
    """``X`` may be preprocess.ScaledRows, made from the cube a block of rows at a time: with
    ``fit_rows`` only the sample's rows are read at once."""
    from sklearn.decomposition import PCA

    rows = sample_rows(len(X), fit_rows, random_state)
    fit_on = np.asarray(X) if rows is None else X[rows]
    n_comp = int(min(max_components, fit_on.shape[0] - 1, X.shape[1]))
    pca = PCA(n_components=n_comp, svd_solver="randomized" if min(fit_on.shape) > 200 else "full",
              random_state=random_state)
    scores = pca.fit_transform(fit_on) if rows is None else _project(pca.fit(fit_on), X)
    scree = pca.explained_variance_ratio_
    n_keep = max(2, knee(np.log(np.maximum(scree, 1e-12))) + 1) if n_comp > 2 else n_comp
    return PCAResult(scores.astype(np.float64, copy=False), n_keep, scree)


# BLAS computes a row of a product the same way wherever it starts on a multiple of its kernel's
# row unroll (24 in OpenBLAS's Haswell sgemm; 16 or 32 elsewhere): blocks of a multiple of 96 rows
# give the scores of one product of the whole matrix, bit for bit (4096-row blocks differed by 1e-7).
PROJECT_ROWS = 3072


def _project(pca, X: np.ndarray | ScaledRows) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Every row's scores, a block of rows at a time (memory: X is never whole; the same numbers as
    one transform of the whole matrix, tests/test_blocked.py)."""
    out = np.empty((len(X), pca.n_components_), dtype=np.float64)
    for start, part in row_blocks(X, PROJECT_ROWS):
        out[start:start + len(part)] = pca.transform(part)
    return out


def gmm(scores: np.ndarray, k: int | None, k_max: int = 8, random_state: int | None = 0,
        fit_rows: int | None = None, merge: bool = False) -> GMMResult:
    """``merge``: BIC's components with a unimodal pairwise mixture become one cluster (merge.py);
    a k the user chose is taken as given."""
    from sklearn.mixture import GaussianMixture

    rows = sample_rows(len(scores), fit_rows, random_state)
    fit_on = scores if rows is None else scores[rows]

    scale = max(float(fit_on.var(axis=0).mean()), 1e-12) if len(fit_on) else 1.0

    def fit(n: int) -> GaussianMixture:
        # Many identical points (an empty corner of the map, equal after smoothing) can collapse a
        # component onto zero covariance; a larger regularisation, relative to the data, fits them.
        for reg in (1e-5, 1e-3 * scale, 1e-1 * scale):
            try:
                return GaussianMixture(n_components=n, covariance_type="full", random_state=random_state,
                                       n_init=2, reg_covar=reg).fit(fit_on)
            except ValueError:
                continue
        raise ValueError(f"the Gaussian mixture with k = {n} does not fit these data; choose a smaller k")

    bic: dict[int, float] = {}
    models = {}
    suggested = None
    if k is None:
        for n in range(1, min(k_max, len(fit_on) - 1) + 1):
            models[n] = fit(n)
            bic[n] = float(models[n].bic(fit_on))
        suggested = suggest_k(bic)
        k = max(suggested, 1)
    model = models.get(k) or fit(k)
    if rows is not None:
        model = _refine_on_all(model, scores)
    memberships = model.predict_proba(scores)
    groups = [[c] for c in range(k)]
    if merge and suggested is not None:
        groups = merge_groups(model.weights_, model.means_, model.covariances_)
        memberships = merged_memberships(memberships, groups) if len(groups) < k else memberships
    return GMMResult(memberships.argmax(axis=1), memberships, len(groups), bic, suggested, groups)


REFINE_ITERATIONS = 20


def _refine_on_all(model, scores: np.ndarray):  # type: ignore[no-untyped-def]
    """A few EM steps on every pixel, from the sample's fit: the same clusters, their means and
    covariances no longer subject to which pixels were sampled (docs/performance.md: the fast
    mode's ARI against the truth then matches the faithful full fit). A step that fails (a
    collapsing component) keeps the sample's fit."""
    import copy
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    refined = copy.deepcopy(model).set_params(warm_start=True, max_iter=REFINE_ITERATIONS, tol=1e-4)
    with warnings.catch_warnings():
        # stopping after REFINE_ITERATIONS is the intent, not a failure
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            return refined.fit(scores)
        except ValueError:
            return model

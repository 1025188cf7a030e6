"""Gaussian-mixture components -> clusters: two components whose mixture has one mode are one cluster.

BIC chooses the number of components that best describes the *density* of the scores, and a
cluster that is not Gaussian (skewed or heavy-tailed, as the smoothed Poisson noise of a thin
film is at a few counts per pixel) takes two or more components: one narrow core and one wide
tail with nearly the same mean. Counting those as two phases splits one material in two
(docs/analysis.md §3). Hennig's ridgeline-unimodality rule (Hennig 2010, "Methods for merging
Gaussian mixture components", Adv. Data Anal. Classif. 4:3-34; the ``ridge.uni`` method of R's
fpc) says when two components are one cluster: all modes of a two-component mixture lie on its
ridgeline (Ray & Lindsay 2005, Ann. Statist. 33:2042),

    x*(a) = [(1-a) S_i + a S_j]^-1 [(1-a) S_i m_i + a S_j m_j],  a in [0, 1],  S = covariance^-1,

so the mixture is unimodal exactly when its density along that curve has one maximum. Unimodal
pairs are merged one at a time (``merge_groups``), as fpc's ``mergenormals`` does; a cluster's
membership is the sum of its components' posterior probabilities. Nothing is tuned: the rule has
no threshold.
"""

from __future__ import annotations

import numpy as np

MAX_STEP = 0.1  # Mahalanobis units, in both components' metrics, between neighbouring ridgeline points
MAX_POINTS = 100_000


def ridgeline_log_density(weights: np.ndarray, means: np.ndarray, covariances: np.ndarray, i: int, j: int
                          ) -> np.ndarray:
    """log of w_i N(x; m_i, C_i) + w_j N(x; m_j, C_j) along the ridgeline, from m_i to m_j.

    The curve is sampled adaptively: where one component is much tighter than the other (a thin
    film's scores against a particle's), it runs from one mean to the other within a tiny range of
    a, and a uniform grid in a would step over the second mode."""
    s_i, s_j = np.linalg.inv(covariances[i]), np.linalg.inv(covariances[j])
    b_i, b_j = s_i @ means[i], s_j @ means[j]

    def at(a: np.ndarray) -> np.ndarray:
        precision = (1 - a)[:, None, None] * s_i + a[:, None, None] * s_j
        return np.linalg.solve(precision, ((1 - a)[:, None] * b_i + a[:, None] * b_j)[..., None])[..., 0]

    a = np.linspace(0.0, 1.0, 65)
    x = at(a)
    while len(a) < MAX_POINTS:
        dx = np.diff(x, axis=0)
        step2 = np.maximum(np.einsum("nd,de,ne->n", dx, s_i, dx), np.einsum("nd,de,ne->n", dx, s_j, dx))
        coarse = np.flatnonzero(step2 > MAX_STEP ** 2)
        if coarse.size == 0:
            break
        mid = 0.5 * (a[coarse] + a[coarse + 1])
        a, x = np.insert(a, coarse + 1, mid), np.insert(x, coarse + 1, at(mid), axis=0)
    return np.logaddexp(_log_component(x, weights[i], means[i], covariances[i]),
                        _log_component(x, weights[j], means[j], covariances[j]))


def _log_component(x: np.ndarray, weight: float, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, (x - mean).T)
    log_det = 2.0 * np.log(np.diag(chol)).sum()
    return np.log(weight) - 0.5 * ((z * z).sum(axis=0) + log_det + len(mean) * np.log(2 * np.pi))


def modes(log_density: np.ndarray) -> int:
    """Local maxima of a sampled curve, ends included; steps within rounding are flat."""
    steps = np.diff(log_density)
    tol = 1e-9 * max(1.0, float(np.abs(log_density).max()))
    signs = np.sign(steps[np.abs(steps) > tol])
    if signs.size == 0:
        return 1
    return int(np.sum((signs[:-1] > 0) & (signs[1:] < 0)) + (signs[0] < 0) + (signs[-1] > 0))


def merge_groups(weights: np.ndarray, means: np.ndarray, covariances: np.ndarray) -> list[list[int]]:
    """Components grouped into clusters, hierarchically as Hennig's ``ridge.uni``: while some pair of
    clusters has a unimodal mixture, the most overlapping such pair (smallest Bhattacharyya distance)
    becomes one cluster, represented by the Gaussian with the pair's weight, mean and covariance,
    and is compared with the others again. A skewed cluster fitted by three components merges step
    by step where no single pair of its components is unimodal. Groups are ordered by their first
    component, so an unmerged mixture keeps its numbering."""
    groups = [[c] for c in range(len(weights))]
    w, m, cov = list(weights), list(means), list(covariances)
    while True:
        pairs = sorted((bhattacharyya(m[a], m[b], cov[a], cov[b]), a, b) for a in range(len(groups))
                       for b in range(a + 1, len(groups)))
        arrays = np.array(w), np.array(m), np.array(cov)
        joinable = next(((a, b) for _, a, b in pairs if modes(ridgeline_log_density(*arrays, a, b)) == 1), None)
        if joinable is None:
            return sorted(sorted(g) for g in groups)
        a, b = joinable
        w[a], m[a], cov[a] = moment_match(w[a], m[a], cov[a], w[b], m[b], cov[b])
        groups[a] += groups[b]
        for store in (groups, w, m, cov):
            del store[b]


def bhattacharyya(m_a: np.ndarray, m_b: np.ndarray, c_a: np.ndarray, c_b: np.ndarray) -> float:
    c = 0.5 * (c_a + c_b)
    d = m_a - m_b
    logdet = [np.linalg.slogdet(x)[1] for x in (c, c_a, c_b)]
    return float(d @ np.linalg.solve(c, d) / 8 + 0.5 * logdet[0] - 0.25 * (logdet[1] + logdet[2]))


def moment_match(w_a: float, m_a: np.ndarray, c_a: np.ndarray, w_b: float, m_b: np.ndarray, c_b: np.ndarray
                 ) -> tuple[float, np.ndarray, np.ndarray]:
    """The weight, mean and covariance of the two-component mixture: the merged cluster's Gaussian."""
    w = w_a + w_b
    m = (w_a * m_a + w_b * m_b) / w
    cov = (w_a * (c_a + np.outer(m_a - m, m_a - m)) + w_b * (c_b + np.outer(m_b - m, m_b - m))) / w
    return w, m, cov


def merged_memberships(memberships: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    """Each cluster's membership: the sum of its components' posterior probabilities."""
    return np.stack([memberships[:, g].sum(axis=1) for g in groups], axis=1)

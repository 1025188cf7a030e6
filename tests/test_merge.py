"""Mixture components -> clusters by ridgeline unimodality (service/pipeline/merge.py)."""

from __future__ import annotations

import numpy as np

from edxlive.service.pipeline.merge import merge_groups, merged_memberships, modes, ridgeline_log_density
from edxlive.service.pipeline.pca_gmm import gmm


def _pair(mean_b: list[float], cov_a: list[list[float]], cov_b: list[list[float]], w: float = 0.5):
    return np.array([w, 1 - w]), np.array([[0.0, 0.0], mean_b]), np.array([cov_a, cov_b])


def test_core_and_tail_with_one_mean_are_one_cluster() -> None:
    weights, means, covs = _pair([0.05, 0.0], [[0.1, 0.0], [0.0, 0.1]], [[2.0, 0.3], [0.3, 1.5]], 0.7)
    assert modes(ridgeline_log_density(weights, means, covs, 0, 1)) == 1
    assert merge_groups(weights, means, covs) == [[0, 1]]


def test_separated_components_stay_apart() -> None:
    weights, means, covs = _pair([6.0, 0.0], np.eye(2).tolist(), np.eye(2).tolist())
    assert modes(ridgeline_log_density(weights, means, covs, 0, 1)) == 2
    assert merge_groups(weights, means, covs) == [[0], [1]]


def test_a_tight_component_does_not_hide_a_broad_ones_mode() -> None:
    """A thin film's scores are orders of magnitude tighter than a particle's: on a uniform grid of
    the ridgeline parameter the curve jumps from one mean to the other in its last step, and the
    second mode is missed (seen on the 64x64-binned phantom at 40 counts/px, where film and a phase
    were merged). The adaptive sampling resolves it."""
    weights, means, covs = _pair([12.0, -4.0], [[1e-4, 0.0], [0.0, 1e-4]], [[1.0, 0.2], [0.2, 0.8]], 0.9)
    density = ridgeline_log_density(weights, means, covs, 0, 1)
    assert modes(density) == 2
    assert density[0] > density.min() < density[-1]


def test_groups_are_connected_pairs_in_component_order() -> None:
    tight, broad = [[0.1, 0.0], [0.0, 0.1]], [[2.0, 0.0], [0.0, 2.0]]
    weights = np.array([0.3, 0.3, 0.4])
    means = np.array([[0.0, 0.0], [10.0, 0.0], [0.05, 0.0]])
    covs = np.array([tight, np.eye(2), broad])
    assert merge_groups(weights, means, covs) == [[0, 2], [1]]
    z = np.array([[0.5, 0.1, 0.4], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(merged_memberships(z, [[0, 2], [1]]), [[0.9, 0.1], [0.0, 1.0]])


def _heavy_tailed_and_round(seed: int = 0) -> np.ndarray:
    """A heavy-tailed cluster (as the smoothed scores of a thin film: a narrow core and a wide tail
    about one mean, seen on the 256x256-binned phantom at 10 counts/px) and a round one."""
    rng = np.random.default_rng(seed)
    film = np.vstack([rng.normal(0.0, 0.4, (2800, 2)), rng.normal(0.0, 1.6, (1200, 2))])
    particle = rng.normal([14.0, 6.0], 0.7, (1000, 2))
    return np.vstack([film, particle])


def test_bic_components_of_one_heavy_tailed_cluster_are_merged() -> None:
    scores = _heavy_tailed_and_round()
    g = gmm(scores, None, k_max=6, merge=True)
    assert g.suggested_k is not None and g.components == g.suggested_k > 2  # BIC needs >1 Gaussian for the tail
    assert g.k == 2 and len(g.groups) == 2
    assert g.memberships.shape == (len(scores), 2)
    np.testing.assert_allclose(g.memberships.sum(axis=1), 1.0, rtol=1e-9)
    assert (g.labels[:4000] == g.labels[0]).mean() > 0.99 and (g.labels[4000:] != g.labels[0]).all()


def test_the_users_k_is_taken_as_given() -> None:
    g = gmm(_heavy_tailed_and_round(), 4, merge=True)
    assert g.k == 4 and g.groups == [[0], [1], [2], [3]] and g.memberships.shape[1] == 4

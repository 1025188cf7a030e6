"""Both reference workflows on phantoms whose truth is known, through ``analyze_cube``."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from edxlive.clients.phantoms import make_phantom
from edxlive.service.pipeline.accumulate import offline_bin
from edxlive.service.pipeline.analyze import analyze_cube
from edxlive.service.pipeline.results import AnalysisParams, AnalysisResult


@functools.cache
def _analysed(name: str, **kw: object) -> tuple[AnalysisResult, dict[int, dict[str, float]]]:
    ph = make_phantom(name, seed=0)
    meta = ph.meta
    meta.binning = 2
    return analyze_cube(offline_bin(ph.counts, 2), meta, AnalysisParams(**kw)), ph.phases  # type: ignore[arg-type]


def _phases(result: AnalysisResult) -> list[dict]:
    return [ph for ph in result.verdict["phases"] if ph["role"] == "phase"]


def _closest(phases: list[dict], truth: dict[str, float]) -> tuple[dict, float]:
    def distance(ph: dict) -> float:
        # the carbon film under a particle adds C to its spectrum: compare on the particle's own elements
        comp = {el: v for el, (v, _) in ph["composition_at_pct"].items() if el != "C"}
        total = sum(comp.values()) or 1.0
        return max(abs(100 * comp.get(el, 0.0) / total - v) for el, v in truth.items())

    best = min(phases, key=distance)
    return best, distance(best)


def test_sulfide_phases_are_found_and_quantified() -> None:
    result, truth = _analysed("sulfide")
    assert result.verdict["follow_up"] is True
    phases = _phases(result)
    assert len(phases) >= 3
    # the two well-separated phases come out within 2.5 at% of the truth in every element
    for pid in (1, 2):
        _, err = _closest(phases, truth[pid])
        assert err < 2.5, f"phase {pid}: worst element off by {err:.1f} at%"
    roles = {ph["role"] for ph in result.verdict["phases"]}
    assert "support" in roles  # the carbon film is named as support, not as a phase


def test_workflow_outputs_are_complete() -> None:
    result, _ = _analysed("sulfide")
    gmm, umap = result.workflows["pca_gmm"], result.workflows["umap_hdbscan"]
    # BIC suggests the mixture's components; components with a unimodal mixture are one cluster
    assert gmm.extras["suggested_k"] == gmm.params["mixture_components"]
    assert sorted(c for g in gmm.extras["merged_components"] for c in g) == list(range(gmm.extras["suggested_k"]))
    assert len(gmm.extras["merged_components"]) == gmm.params["k"] == len(gmm.clusters)
    assert np.all(np.diff(gmm.extras["scree"]) <= 1e-12)  # descending
    assert gmm.memberships is not None and gmm.memberships.shape[-1] == len(gmm.clusters)  # soft, kept
    observed = gmm.labels >= 0
    np.testing.assert_allclose(gmm.memberships[observed].sum(axis=-1), 1.0, rtol=1e-5)
    assert 0.0 <= umap.noise_fraction < 0.5
    assert umap.params["n_components"] == 4 and umap.params["min_cluster_size"] >= 5
    assert umap.mean_spectra.shape == (len(umap.clusters), result.meta.channels)
    for c in umap.clusters:
        if c.role == "phase":
            assert c.entropy is not None and c.entropy.per_site_R > 0


def test_thickness_split_is_reported_as_one_phase() -> None:
    """A core-shell look-alike: one composition in spheres thinning to the edge. With k=4 the GMM
    splits the film off and the particles by thickness; the verdict must call them one phase."""
    result, _ = _analysed("coreshell", gmm_k=4)
    assert result.verdict["follow_up"] is False
    assert any("thickness" in r for r in result.verdict["reasons"])


def test_tiny_two_phases() -> None:
    result, truth = _analysed("tiny", gmm_k=3)  # film + 2 phases; BIC on 256 binned pixels suggests 2
    assert result.verdict["follow_up"] is True
    _, err = _closest(_phases(result), truth[1])
    assert err < 3.0


@pytest.mark.slow
def test_faithful_mode_runs_the_reference_method() -> None:
    result, _ = _analysed("tiny", faithful=True)
    assert {"pca_gmm", "umap_hdbscan"} <= set(result.workflows)
    assert result.workflows["umap_hdbscan"].params["input"].startswith("scaled spectra")


def test_subsample_and_assign_labels_every_pixel_like_the_full_fit() -> None:
    """Models fitted on 1024 of the 4096 binned pixels, the rest assigned: every pixel has a label,
    and the GMM finds the phases in the particles as well as the fit on every pixel does."""
    from sklearn.metrics import adjusted_rand_score

    ph = make_phantom("sulfide", seed=0)
    truth = ph.truth_labels[::2, ::2].ravel()
    particles = truth > 0
    # the same k for both (BIC on 1024 pixels may suggest another): the assignment is under test
    full, _ = _analysed("sulfide", gmm_k=5)  # 64x64 binned: under the default fit_rows, a full fit
    sub, _ = _analysed("sulfide", gmm_k=5, fit_rows=1024)
    g_full, g_sub = full.workflows["pca_gmm"], sub.workflows["pca_gmm"]
    assert g_sub.params["fit_rows"] == 1024 and g_full.params["fit_rows"] == g_full.labels.size
    assert (g_sub.labels >= 0).all()
    ari_full, ari_sub = (adjusted_rand_score(truth[particles], g.labels.ravel()[particles]) for g in (g_full, g_sub))
    assert ari_sub > ari_full - 0.05 and ari_full > 0.8, (ari_full, ari_sub)
    umap = sub.workflows["umap_hdbscan"]
    assert umap.params["fit_rows"] == 1024 and "assign" in umap.durations_s
    assert umap.labels.shape == g_sub.labels.shape and umap.labels.max() >= 1


def test_robust_scaling_is_scikit_learns() -> None:
    from sklearn.preprocessing import RobustScaler

    from edxlive.service.pipeline.preprocess import robust_scale

    X = np.random.default_rng(0).poisson(0.4, (3000, 40)).astype(np.float64)
    X[:, 5] = 0.0  # a zero IQR scales by 1, as in scikit-learn
    np.testing.assert_array_equal(robust_scale(X), RobustScaler().fit_transform(X))


def test_spatial_smoothing_lifts_umap_hdbscan_at_low_counts() -> None:
    """The option (analysis.smoothing_px): UMAP's input averaged over neighbouring pixels, on a
    10 counts/px phantom, finds the phases far better; cluster sums still come from the raw counts."""
    from sklearn.metrics import adjusted_rand_score

    ph = make_phantom("sulfide", seed=0, counts_per_pixel=10.0)
    meta = ph.meta
    meta.binning = 2
    cube = offline_bin(ph.counts, 2)
    truth = ph.truth_labels[::2, ::2]
    scores = {}
    for sigma in (0.0, 1.0):
        result = analyze_cube(cube, meta, AnalysisParams(workflows=["umap_hdbscan"], smoothing_px=sigma))
        wf = result.workflows["umap_hdbscan"]
        assert wf.params["smoothing_px"] == sigma
        scores[sigma] = adjusted_rand_score(truth.ravel(), wf.labels.ravel())
        total = wf.mean_spectra.sum() + cube.reshape(-1, cube.shape[-1])[(wf.labels < 0).ravel()].sum()
        assert total == cube.sum()  # every raw count is in a cluster sum or in the noise
    assert scores[1.0] > scores[0.0] + 0.3, scores


def test_smoothing_ignores_unobserved_pixels() -> None:
    from edxlive.service.pipeline.preprocess import smooth_over_pixels

    observed = np.ones(16, dtype=bool)
    observed[5] = False
    features = np.full((15, 2), 3.0)
    out = smooth_over_pixels(features, observed, (4, 4), 1.0)
    np.testing.assert_allclose(out, 3.0)  # a constant map stays constant: the gap is not a zero
    assert smooth_over_pixels(features, observed, (4, 4), 0.0) is features


def _z_scores(cluster, truth: dict[str, float]) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """(measured − true) / σ for every element but the film's C, renormalised without it."""
    at = {el: v for el, v in cluster.composition.at_pct.items() if el != "C"}
    total = sum(v for v, _ in at.values()) / 100.0
    return {el: (v / total - truth.get(el, 0.0)) / max(s / total, 1e-9) for el, (v, s) in at.items()}


@functools.cache
def _low_dose(tmp: str) -> tuple[AnalysisResult, np.ndarray, dict[int, dict[str, float]]]:
    from pathlib import Path

    ph = make_phantom("sulfide", seed=0, counts_per_pixel=10.0)
    meta = ph.meta
    meta.binning = 2
    kfile = Path(tmp) / "phantom_kfactors.toml"  # the phantom's own k-factors, as a user's file
    kfile.write_text("[kfactors]\n" + "".join(f'"{ln}" = {v!r}\n' for ln, v in ph.kfactors.values.items()))
    result = analyze_cube(offline_bin(ph.counts, 2), meta, AnalysisParams(kfactors=kfile))
    return result, ph.truth_labels[::2, ::2], ph.phases


def _main_cluster(wf, truth: np.ndarray, pid: int) -> int:  # type: ignore[no-untyped-def]
    """The cluster holding most of phase ``pid``'s pixels."""
    inside = wf.labels[truth == pid]
    return int(np.bincount(inside[inside >= 0]).argmax())


def test_low_dose_phases_are_found_by_both_workflows(tmp_path_factory: pytest.TempPathFactory) -> None:
    """10 counts/px (the sulfide phantom, Ag/Cd/In L and Cu Kβ/Zn Kα overlapping), BIC's own k:
    both workflows separate the particles from the film and find phase 2 whole and pure; PCA+GMM
    also separates phase 1 from the wurtzites. UMAP+HDBSCAN does so at about half of its seeds
    at this dose (docs/analysis.md, "Low dose"), so that is not asserted for one seed."""
    from sklearn.metrics import adjusted_rand_score

    result, truth, _ = _low_dose(str(tmp_path_factory.mktemp("k")))
    assert result.kfactors_source.startswith("file")
    particles = truth >= 1
    for name, wf in result.workflows.items():
        assert adjusted_rand_score(truth.ravel(), wf.labels.ravel()) > 0.6, name
        phase2 = wf.labels == _main_cluster(wf, truth, 2)
        assert np.mean(truth[phase2] == 2) > 0.8 and np.mean(phase2[truth == 2]) > 0.9, name
    gmm = result.workflows["pca_gmm"]
    assert adjusted_rand_score(truth[particles], gmm.labels[particles]) > 0.75
    # the film fills most of the map: outside it the workflows' agreement is measured apart
    assert result.agreement["ari_outside_largest"] is not None
    assert any(r.startswith("agreement") and "outside the largest cluster" in r for r in result.verdict["reasons"])


def test_the_agreement_outside_the_largest_cluster_sees_a_merged_phase() -> None:
    """Two labelings that agree on a film of 900 pixels and differ on 100 particle pixels (one
    workflow merged two phases): the all-pixel ARI stays high, the ARI outside the film does not."""
    from edxlive.service.pipeline.analyze import _ari_outside_largest

    a = np.r_[np.zeros(900, int), np.ones(50, int), np.full(50, 2)]
    b = np.r_[np.zeros(900, int), np.ones(100, int)]
    assert _ari_outside_largest(a, b) == 0.0
    assert _ari_outside_largest(a, a) == 1.0
    assert _ari_outside_largest(np.zeros(5, int), np.zeros(5, int)) is None  # nothing outside the film
    assert _ari_outside_largest(np.full(5, -1), a[:5]) is None  # all noise


def test_low_dose_compositions_are_recovered_within_their_sigma(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The phases resolved at 10 counts/px (phases 1 and 2 by PCA+GMM, phase 2 by UMAP+HDBSCAN at
    any seed): the cluster holding most of a phase's pixels is quantified (its interior) close to
    the truth in units of its own σ. Of 24 element values most fall within 2σ, none beyond 4σ (the
    two wurtzites stay merged at this dose, docs/analysis.md)."""
    result, truth, phases = _low_dose(str(tmp_path_factory.mktemp("k")))
    z = []
    for name, pids in (("pca_gmm", (1, 2)), ("umap_hdbscan", (2,))):
        wf = result.workflows[name]
        for pid in pids:
            cluster = wf.clusters[_main_cluster(wf, truth, pid)]
            assert cluster.quantified_pixels < cluster.n_pixels  # its interior, not its edges
            z += list(_z_scores(cluster, phases[pid]).values())
    z = np.abs(np.array(z))
    assert np.mean(z <= 2) >= 0.75 and z.max() < 4, np.round(z, 1)


@pytest.mark.parametrize("scaling", ["robust", "poisson"])
def test_prepare_in_row_blocks_equals_the_whole_matrix(scaling: str) -> None:
    """prepare() scales the map a block of rows at a time (memory): the same numbers as scaling the
    whole energy-cut matrix at once, gaps (dose < 1) and unobserved pixels included."""
    from edxlive.service.pipeline import preprocess
    from edxlive.service.pipeline.subsample import sample_rows

    ph = make_phantom("tiny", seed=1, shape=(96, 96))
    cube = offline_bin(ph.counts, 1)
    dose = np.ones(cube.shape[:2])
    dose[5, :] = 0.5
    dose[7, 3] = 0.0
    got = preprocess.prepare(cube, ph.meta, scaling, dose, fit_rows=2000, random_state=3)
    X, _, _ = preprocess.cut_and_rebin(cube.reshape(-1, cube.shape[-1]), ph.meta)
    observed = dose.reshape(-1) > 0
    X = X[observed] / dose.reshape(-1)[observed][:, None]
    if scaling == "robust":
        want = preprocess.robust_scale(X, sample_rows(len(X), 2000, 3))
    else:
        want = preprocess.poisson_scale(X)
    assert len(X) > preprocess.BLOCK_ROWS  # more than one block
    np.testing.assert_array_equal(got.X, want.astype(np.float32))
    np.testing.assert_array_equal(got.observed, observed)


def test_a_cube_without_counts_is_refused_in_one_line() -> None:
    """A scan aborted before its first chunk reaches the analysis with no counts at all: one line
    that says so and where to look, not a clustering library's error about empty arrays."""
    from edxlive.service.pipeline.analyze import EmptyScanError

    ph = make_phantom("tiny")
    ph.meta.binning = 1
    with pytest.raises(EmptyScanError, match=r"^the spectrum image holds no counts: .*edxlive tail"):
        analyze_cube(np.zeros(ph.counts.shape, np.uint32), ph.meta, AnalysisParams())

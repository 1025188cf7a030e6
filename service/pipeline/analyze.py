"""The scan-end analysis: from a binned cube to clusters, compositions ± σ, entropy and a verdict.

Both the daemon (in a worker process) and `edxlive analyze` call ``analyze_cube``. Steps:
elements (given, from metadata, or identified) -> energy-calibration check -> k-factors ->
preprocessing -> PCA -> workflows (pca_gmm, umap_hdbscan) -> cluster sums of raw counts ->
quantification -> entropy -> verdict.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from edxlive.service.pipeline import xray
from edxlive.service.pipeline.elements import ElementError, identify_elements, unquantifiable, validate_elements
from edxlive.service.pipeline.entropy import configurational_entropy
from edxlive.service.pipeline.kfactors import KFactors, resolve_kfactors
from edxlive.service.pipeline.meta import ScanMeta
from edxlive.service.pipeline.pca_gmm import gmm, pca_scores
from edxlive.service.pipeline.preprocess import ScaledRows, prepare, smooth_over_pixels
from edxlive.service.pipeline.quantify import METHOD, Composition, estimate_shift, quantify
from edxlive.service.pipeline.results import AnalysisParams, AnalysisResult, ClusterResult, WorkflowResult
from edxlive.service.pipeline.spectra import cube_sums, interior, one_hot, quantified_sums, weighted_sums
from edxlive.service.pipeline.umap_hdbscan import umap_hdbscan
from edxlive.service.pipeline.verdict import LOW_COUNTS_PER_PX, Member, build_verdict, role_of

Progress = Callable[[str, float], None]
VACUUM_FRACTION = 0.1  # a cluster under 10 % of the scan's mean counts per pixel is vacuum
UMAP_MIN_DIMS = 6
FAITHFUL_CHANNELS = 1024  # the reference method's feature channels (0.2-20 keV summed down to <= 1024)
class EmptyScanError(ValueError):
    """A cube without a single count: nothing to cluster or quantify."""


MIN_OUTSIDE_PIXELS = 10  # fewer pixels outside the shared largest cluster: no second ARI


class Context:
    """What every workflow needs: the raw counts, the quantification setup, the observed pixels.

    The cube is only ever read a block of rows at a time (it may be a read-only memmap of
    accumulated.npy, larger than the memory): never copied whole, not even its observed rows."""

    def __init__(self, cube: np.ndarray, meta: ScanMeta, params: AnalysisParams, observed: np.ndarray,
                 elements: list[str], kfactors: KFactors, shift: float, totals: np.ndarray,
                 dose: np.ndarray | None = None) -> None:
        self.flat = cube.reshape(-1, cube.shape[-1])
        self.meta, self.params, self.observed = meta, params, observed
        self.elements, self.kfactors, self.shift = elements, kfactors, shift
        self.map_shape = cube.shape[:2]
        self.dose = dose
        # the observed pixels' rows of the cube, read block by block (None: every pixel is in)
        self.rows = None if observed.all() else np.flatnonzero(observed)
        self.totals = totals  # counts per pixel (spectra.cube_sums)
        self.mean_cpp = float(self.totals[observed].sum() / max(observed.sum(), 1))

    def clusters(self, weights: np.ndarray, labels: np.ndarray
                 ) -> tuple[np.ndarray, list[ClusterResult]]:
        """Each cluster's sum of raw counts and its result; each quantified from
        its interior (spectra.py) where that holds enough counts, so that pixels straddling two
        phases do not blur the composition. One pass over the cube for both sums."""
        n_obs = max(int(self.observed.sum()), 1)
        inner = interior(weights, labels, self.observed, self.map_shape)
        sums, inner_sums = weighted_sums(self.flat, [weights, inner], self.rows)
        sizes = weights.sum(axis=0)
        qsums, qpixels = quantified_sums(sums, inner_sums, weights, inner)
        comps = quantify(qsums, self.meta, self.elements, self.kfactors, self.shift) if len(sums) else []
        out = []
        for k, (total, size) in enumerate(zip(sums, sizes, strict=True)):
            cpp = float(total.sum() / size) if size else 0.0
            comp: Composition | None = comps[k]
            if cpp < VACUUM_FRACTION * self.mean_cpp:
                comp = Composition({}, {}, comp.intensities, float(total.sum()), True, ["vacuum: too few counts"])
            role = role_of(comp)
            entropy = None
            if role == "phase" and comp is not None:
                entropy = configurational_entropy({el: v for el, (v, _) in comp.at_pct.items()}, self.params.anions)
            out.append(ClusterResult(k, float(size), float(size) / n_obs, cpp, comp, entropy, role,
                                     float(qpixels[k])))
        return sums, out

    def smooth(self, features: np.ndarray) -> np.ndarray:
        """The clustering features averaged over neighbouring pixels, edge-aware (preprocess.py)."""
        if self.params.smoothing_px <= 0:
            return features
        totals = self.totals
        if self.dose is not None:  # a pixel that lost frames is not thinner: compare doses alike
            totals = totals / np.maximum(self.dose.reshape(-1), 1e-12)
        return smooth_over_pixels(features, self.observed, self.map_shape, self.params.smoothing_px, totals)

    def membership_map(self, memberships: np.ndarray) -> np.ndarray:
        full = np.zeros((self.flat.shape[0], memberships.shape[1]), dtype=np.float32)
        full[self.observed] = memberships
        return full.reshape(*self.map_shape, memberships.shape[1])

    def label_map(self, labels_observed: np.ndarray) -> np.ndarray:
        full = np.full(self.flat.shape[0], -1, dtype=np.int16)
        full[self.observed] = labels_observed
        return full.reshape(self.map_shape)


def analyze_cube(cube: np.ndarray, meta: ScanMeta, params: AnalysisParams, dose: np.ndarray | None = None,
                 progress: Progress | None = None) -> AnalysisResult:
    from threadpoolctl import threadpool_limits

    # Profiled (docs/performance.md): the many small BLAS/OpenMP calls (line fits, GMM, k-means
    # init, kNN) spent most of their time waking and spinning idle threads, the more so on a busy
    # machine; one thread per analysis is faster, and parallelism comes from the worker processes.
    with threadpool_limits(limits=1):
        return _analyze(cube, meta, params, dose, progress)


def _analyze(cube: np.ndarray, meta: ScanMeta, params: AnalysisParams, dose: np.ndarray | None,
             progress: Progress | None) -> AnalysisResult:
    report = progress or (lambda stage, fraction: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    cube = np.asarray(cube)  # a memmap stays one: the cube is read a block of rows at a time
    total, totals = cube_sums(cube.reshape(-1, cube.shape[-1]))
    if not total.any():  # a scan aborted before its first chunk, or an empty file
        raise EmptyScanError("the spectrum image holds no counts: nothing to cluster or quantify; check that the "
                             "acquisition's chunks reach the daemon (`edxlive tail` shows scan.progress)")
    elements, source = choose_elements(params.elements, meta, total)
    shift = estimate_shift(total, meta, elements)
    emax = xray.energy_max(meta)
    kf = resolve_kfactors([xray.quant_line(el, meta.beam_energy_kev, emax) for el in elements], meta, params.kfactors)
    timings["elements"] = time.perf_counter() - t0
    report("preprocessing", 0.1)
    t1 = time.perf_counter()
    fit_rows = None if params.faithful else params.fit_rows
    channels = FAITHFUL_CHANNELS if params.faithful else params.cluster_channels
    prepared = prepare(cube, meta, "robust" if params.faithful else params.scaling, dose, max_channels=channels,
                       fit_rows=fit_rows, random_state=params.random_state)
    pca = pca_scores(prepared.rows, random_state=params.random_state, fit_rows=fit_rows)
    timings["preprocess_pca"] = time.perf_counter() - t1
    ctx = Context(cube, meta, params, prepared.observed, elements, kf, shift, totals, dose)
    workflows: dict[str, WorkflowResult] = {}
    # one smoothing for both workflows: the GMM's scores are the leading columns of UMAP's features
    t2 = time.perf_counter()
    features = None if params.faithful else ctx.smooth(_umap_features(prepared.rows, pca))
    timings["features"] = time.perf_counter() - t2
    if "pca_gmm" in params.workflows:
        report("pca_gmm", 0.3)
        scores = pca.scores if features is None else features[:, :pca.n_keep]
        workflows["pca_gmm"] = run_pca_gmm(ctx, scores, pca, timings["preprocess_pca"])
    if "umap_hdbscan" in params.workflows:
        report("umap_hdbscan", 0.5)
        workflows["umap_hdbscan"] = run_umap_hdbscan(ctx, prepared.X if features is None else features,
                                                     timings["preprocess_pca"])
    report("verdict", 0.9)
    agreement = _agreement(workflows, prepared.observed)
    low = _low_count_elements(total, meta, elements, kf, shift)
    members = [Member(name, c.id, c.composition, c.area_fraction, c.counts_per_pixel, c.role)
               for name, wf in workflows.items() for c in wf.clusters]
    verdict = build_verdict(members, agreement.get("ari"), low, agreement.get("ari_outside_largest"))
    timings["total"] = time.perf_counter() - t0
    report("done", 1.0)
    return AnalysisResult(meta, workflows, agreement, verdict, elements, source, kf.values, kf.source, METHOD,
                          shift, timings)


def choose_elements(given: list[str], meta: ScanMeta, total: np.ndarray) -> tuple[list[str], str]:
    if given:
        elements = validate_elements(given)
        if bad := unquantifiable(elements, meta):
            raise ElementError(f"{', '.join(bad)}: no X-ray line between 0.2 keV and the end of the spectrum to "
                               "quantify; leave it out of --elements")
        return elements, "user"
    if meta.elements:
        elements = validate_elements(meta.elements)
        bad = unquantifiable(elements, meta)
        note = f" ({', '.join(bad)} left out: no line in the fitted range)" if bad else ""
        return [el for el in elements if el not in bad], "scan metadata" + note
    return identify_elements(total, meta), "identified from the sum spectrum"


def _umap_features(X: ScaledRows, pca) -> np.ndarray:
    """PCA scores carry the signal in few dimensions; keep at least 6 so UMAP has room (the same
    PCA's further components, or a PCA of its own where that one had fewer than 6)."""
    n = max(pca.n_keep, UMAP_MIN_DIMS)
    if n <= pca.all_scores.shape[1]:
        return pca.all_scores[:, :n]
    from sklearn.decomposition import PCA

    return PCA(n_components=min(n, *X.shape), random_state=0).fit_transform(np.asarray(X))  # few rows or channels


def run_pca_gmm(ctx: Context, scores: np.ndarray, pca, pca_seconds: float) -> WorkflowResult:
    p = ctx.params
    t0 = time.perf_counter()
    g = gmm(scores, p.gmm_k, p.gmm_k_max, p.random_state, None if p.faithful else p.fit_rows,
            merge=not p.faithful)
    t1 = time.perf_counter()
    sums, clusters = ctx.clusters(g.memberships, g.labels)
    t2 = time.perf_counter()
    params = {"scaling": "robust" if p.faithful else p.scaling, "n_components": pca.n_keep, "k": g.k,
              "k_source": "user" if p.gmm_k else "BIC", "mixture_components": g.components,
              "random_state": p.random_state,
              "smoothing_px": 0.0 if p.faithful else p.smoothing_px,
              "fit_rows": _fit_rows(p, len(pca.scores))}
    extras = {"scree": [round(float(v), 6) for v in pca.scree], "bic": {str(k): v for k, v in g.bic.items()},
              "suggested_k": g.suggested_k, "merged_components": g.groups}
    return WorkflowResult("pca_gmm", ctx.label_map(g.labels), sums, clusters, params,
                          {"pca": pca_seconds, "gmm": t1 - t0, "quantify": t2 - t1}, 0.0, extras,
                          ctx.membership_map(g.memberships))


def run_umap_hdbscan(ctx: Context, features: np.ndarray, pca_seconds: float) -> WorkflowResult:
    p = ctx.params
    u = umap_hdbscan(features, p.min_cluster_size, p.random_state, p.umap_epochs, p.faithful,
                     None if p.faithful else p.fit_rows)
    t0 = time.perf_counter()
    n_clusters = int(u.labels.max()) + 1 if u.labels.size and u.labels.max() >= 0 else 0
    weights = one_hot(u.labels, n_clusters)  # built once: the sums and the interiors both use it
    sums, clusters = ctx.clusters(weights, u.labels)
    params = {"input": "scaled spectra" if p.faithful else f"PCA scores ({features.shape[1]} dims)",
              "smoothing_px": 0.0 if p.faithful else p.smoothing_px,
              "n_components": 4, "min_cluster_size": u.min_cluster_size, "random_state": p.random_state,
              "n_epochs": p.umap_epochs, "fit_rows": _fit_rows(p, len(features))}
    durations = {"pca": pca_seconds, **u.durations_s, "quantify": time.perf_counter() - t0}
    return WorkflowResult("umap_hdbscan", ctx.label_map(u.labels), sums, clusters, params, durations,
                          u.noise_fraction)


def _fit_rows(p: AnalysisParams, n: int) -> int:
    """How many pixels the models were fitted on (the rest were assigned)."""
    return n if p.faithful or not p.fit_rows else min(n, p.fit_rows)


def _agreement(workflows: dict[str, WorkflowResult], observed: np.ndarray) -> dict[str, float | None]:
    if len(workflows) < 2:
        return {"ari": None}
    from sklearn.metrics import adjusted_rand_score

    a, b = (wf.labels.reshape(-1)[observed] for wf in list(workflows.values())[:2])
    return {"ari": round(float(adjusted_rand_score(a, b)), 4), "ari_outside_largest": _ari_outside_largest(a, b)}


def _ari_outside_largest(a: np.ndarray, b: np.ndarray) -> float | None:
    """The ARI over the pixels that are not in both workflows' largest cluster. A film or matrix
    that fills most of the map keeps the all-pixel ARI high even where the workflows split the
    particles differently (docs/analysis.md, "UMAP's seed matters at low dose")."""
    from sklearn.metrics import adjusted_rand_score

    if not (a >= 0).any() or not (b >= 0).any():
        return None
    keep = (a != np.bincount(a[a >= 0]).argmax()) | (b != np.bincount(b[b >= 0]).argmax())
    if keep.sum() < MIN_OUTSIDE_PIXELS:
        return None
    return round(float(adjusted_rand_score(a[keep], b[keep])), 4)


def _low_count_elements(total: np.ndarray, meta: ScanMeta, elements: list[str], kf: KFactors,
                        shift: float) -> dict[str, float]:
    if not elements:
        return {}
    [comp] = quantify(total[None], meta, elements, kf, shift)
    n_raw = meta.shape[0] * meta.shape[1]
    out = {}
    for el in elements:
        line = xray.quant_line(el, meta.beam_energy_kev, xray.energy_max(meta))
        cpp = comp.intensities.get(line, (0.0, 0.0))[0] / max(n_raw, 1)
        if cpp < LOW_COUNTS_PER_PX:
            out[el] = cpp
    return out

"""Scan end -> result: edxlive's analysis against the reference method run exactly (`faithful`).

Baseline: `analyze_cube(..., faithful=True)`: RobustScaler on the spectra, PCA+GMM, UMAP on the
scaled spectra (pynndescent, default epochs) + HDBSCAN, what `edxlive analyze --workflow faithful`
runs. Figure: the default analysis (fitted on 8192 pixels, edge-aware smoothing of the features,
UMAP on PCA scores with an exact kNN graph).
Both run in this process, on the same phantom, after one warm-up of the numba code and of the
quantification imports (a tiny analysis); both include quantification of every cluster.
Accuracy: ARI of each workflow's labels against the truth, over every pixel and over the
particles. ``--skip-faithful`` measures only edxlive (for the scaling table; no ratio then).

    python benchmarks/bench_analyze.py [--size 512] [--channels 2048] [--counts 10] [--skip-faithful]
"""

from __future__ import annotations

import argparse

from common import Timer, ari, machine, phantom_cube

from edxlive.service.pipeline.analyze import analyze_cube
from edxlive.service.pipeline.results import AnalysisParams
from edxlive.service.pipeline.umap_hdbscan import warm_up


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512, help="raw scan size (square); binned x2")
    ap.add_argument("--channels", type=int, default=2048)
    ap.add_argument("--counts", type=float, default=10.0)
    ap.add_argument("--skip-faithful", action="store_true")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    cube, meta, truth, _ = phantom_cube("sulfide", (args.size, args.size), args.channels, args.counts)
    print(f"sulfide phantom {args.size}x{args.size} raw -> {cube.shape[0]}x{cube.shape[1]} binned x "
          f"{args.channels} channels, {args.counts:g} counts/px")
    warm_up()
    small, small_meta, _, _ = phantom_cube("sulfide", (32, 32), args.channels, args.counts)
    analyze_cube(small, small_meta, AnalysisParams(workflows=["pca_gmm"]))  # imports, element tables
    runs = [("faithful (baseline)", AnalysisParams(faithful=True)), ("edxlive", AnalysisParams())]
    rows = []
    for label, params in runs[1:] if args.skip_faithful else runs:
        with Timer() as t:
            result = analyze_cube(cube, meta, params)
        scores = {wf: ari(truth, res.labels) for wf, res in result.workflows.items()}
        particles = {wf: ari(truth[truth >= 1], res.labels[truth >= 1]) for wf, res in result.workflows.items()}
        rows.append((label, t.seconds, scores))
        print(f"{label:20} {t.seconds:8.1f} s   ARI pca_gmm {scores['pca_gmm']:.3f}   "
              f"umap_hdbscan {scores['umap_hdbscan']:.3f}   (particles only: pca_gmm {particles['pca_gmm']:.3f}, "
              f"umap_hdbscan {particles['umap_hdbscan']:.3f}; k {result.workflows['pca_gmm'].params['k']}, "
              f"{len(result.workflows['umap_hdbscan'].clusters)} HDBSCAN clusters)", flush=True)
        print(f"{'':20} stages: {stages(result)}", flush=True)
    if args.skip_faithful:
        return
    (_, base_t, base_s), (_, ours_t, ours_s) = rows
    print(f"speed-up: {base_t / ours_t:.1f}x   ARI umap_hdbscan: {ours_s['umap_hdbscan']:.3f} vs "
          f"{base_s['umap_hdbscan']:.3f} (faithful)   pca_gmm: {ours_s['pca_gmm']:.3f} vs {base_s['pca_gmm']:.3f}")


def stages(result) -> str:  # type: ignore[no-untyped-def]
    """Seconds per stage, from the result's own timings."""
    parts = {"elements": result.durations_s.get("elements", 0.0),
             "prep+pca": result.durations_s.get("preprocess_pca", 0.0),
             "features": result.durations_s.get("features", 0.0)}
    for name, wf in result.workflows.items():
        parts.update({f"{name}.{k}": v for k, v in wf.durations_s.items() if k != "pca"})
    return " ".join(f"{k} {v:.1f}" for k, v in parts.items())


if __name__ == "__main__":
    main()

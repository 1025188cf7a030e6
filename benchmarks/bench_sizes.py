"""How the scan-end analysis cost grows with the map and the spectrum: edxlive's default analysis
(both workflows + quantification) at several binned sizes and channel counts.

Baseline: the first size/channel pair of the run (its seconds); each row prints its time ratio to
that baseline beside its pixel x channel ratio, so growth slower than the data shows as a smaller
first number. The phantom is made directly at the binned size with 4x the per-pixel dose (what a
2x2 binning of a ``--counts`` scan gives), so large maps need no 4x larger raw cube in memory.

    python benchmarks/bench_sizes.py [--sizes 128 256 512] [--channels 2048] [--counts 10]
"""

from __future__ import annotations

import argparse

from common import Timer, ari, machine, phantom_cube

from edxlive.service.pipeline.analyze import analyze_cube
from edxlive.service.pipeline.results import AnalysisParams
from edxlive.service.pipeline.umap_hdbscan import warm_up


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512], help="binned map sides")
    ap.add_argument("--channels", type=int, nargs="+", default=[2048])
    ap.add_argument("--counts", type=float, default=10.0, help="counts per raw pixel (x4 per binned pixel)")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    warm_up()
    small, small_meta, _, _ = phantom_cube("sulfide", (32, 32), 1024, args.counts)
    analyze_cube(small, small_meta, AnalysisParams(workflows=["pca_gmm"]))  # imports, element tables
    print(f"{'binned':>10} {'channels':>8} {'seconds':>8} {'x time':>7} {'x data':>7}  ARI gmm  ARI umap  stages")
    base = None
    for channels in args.channels:
        for size in args.sizes:
            cube, meta, truth, _ = phantom_cube("sulfide", (size, size), channels, 4 * args.counts, binning=1)
            with Timer() as t:
                result = analyze_cube(cube, meta, AnalysisParams())
            data = size * size * channels
            base = base or (t.seconds, data)
            scores = {wf: ari(truth, res.labels) for wf, res in result.workflows.items()}
            print(f"{size:>5}x{size:<4} {channels:>8} {t.seconds:8.1f} {t.seconds / base[0]:7.2f} {data / base[1]:7.1f}"
                  f"  {scores['pca_gmm']:7.3f} {scores['umap_hdbscan']:9.3f}  {stages(result)}", flush=True)
            del cube, result


def stages(result) -> str:  # type: ignore[no-untyped-def]
    parts = {"prep+pca": result.durations_s.get("preprocess_pca", 0.0)}
    for name, wf in result.workflows.items():
        parts.update({f"{name}.{k}": v for k, v in wf.durations_s.items() if k != "pca"})
    return " ".join(f"{k} {v:.1f}" for k, v in parts.items())


if __name__ == "__main__":
    main()

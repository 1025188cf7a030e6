"""Which scaling for low-count data? `poisson` (Keenan–Kotula) against `robust` (the reference method's).

Baseline: `robust` (RobustScaler, the reference). Figure: `poisson`. Same phantom, same seeds.
Accuracy: ARI of each workflow's labels against the truth, at the binned resolution, over all
pixels and over the particles only (the carbon film's thickness texture aside). GMM k is fixed at
6 (4 phases, film, vacuum) and smoothing is off, so that the scaling alone is what differs.

    python benchmarks/bench_scaling.py [--counts 10] [--size 128] [--seeds 3]
"""

from __future__ import annotations

import argparse

import numpy as np
from common import ari, machine, phantom_cube

from edxlive.service.pipeline.analyze import analyze_cube
from edxlive.service.pipeline.results import AnalysisParams


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", type=float, default=10.0, help="mean X-ray counts per raw pixel")
    ap.add_argument("--size", type=int, default=128, help="raw scan size (square)")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(f"sulfide phantom {args.size}x{args.size} raw, x2 binned, {args.counts:g} counts/px, {args.seeds} seeds")
    keys = ("pca_gmm", "umap_hdbscan", "pca_gmm particles", "umap_hdbscan particles")
    scores: dict[str, dict[str, list[float]]] = {s: {k: [] for k in keys} for s in ("robust", "poisson")}
    for seed in range(args.seeds):
        cube, meta, truth, _ = phantom_cube("sulfide", (args.size, args.size), 2048, args.counts, seed=seed)
        for scaling in ("robust", "poisson"):
            params = AnalysisParams(scaling=scaling, gmm_k=6, random_state=seed, smoothing_px=0.0)
            result = analyze_cube(cube, meta, params)
            particles = truth >= 1
            for wf, res in result.workflows.items():
                scores[scaling][wf].append(ari(truth, res.labels))
                scores[scaling][f"{wf} particles"].append(ari(truth[particles], res.labels[particles]))
    print(f"{'ARI':24} {'robust (baseline)':>18} {'poisson':>8} {'ratio':>7}")
    for key in keys:
        base, ours = np.mean(scores["robust"][key]), np.mean(scores["poisson"][key])
        ratio = f"{ours / base:6.2f}x" if base > 0.05 else "    n/a"
        print(f"{key:24} {base:18.3f} {ours:8.3f} {ratio}")


if __name__ == "__main__":
    main()

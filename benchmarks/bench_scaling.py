"""Which scaling for low-count data? `poisson` (Keenan–Kotula) against `robust` (the reference method's).

Baseline: `robust` (RobustScaler, the reference). Figure: `poisson`. Same phantom, same seeds.
Accuracy: ARI of each workflow's labels against the truth, at the binned resolution.

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
    scores: dict[str, dict[str, list[float]]] = {s: {"pca_gmm": [], "umap_hdbscan": []} for s in ("robust", "poisson")}
    for seed in range(args.seeds):
        cube, meta, truth, _ = phantom_cube("sulfide", (args.size, args.size), 2048, args.counts, seed=seed)
        for scaling in ("robust", "poisson"):
            result = analyze_cube(cube, meta, AnalysisParams(scaling=scaling, gmm_k=6, random_state=seed))
            for wf, res in result.workflows.items():
                scores[scaling][wf].append(ari(truth, res.labels))
    print(f"{'workflow':14} {'robust ARI (baseline)':>22} {'poisson ARI':>12} {'ratio':>7}")
    for wf in ("pca_gmm", "umap_hdbscan"):
        base, ours = np.mean(scores["robust"][wf]), np.mean(scores["poisson"][wf])
        ratio = ours / base if base > 0 else float("inf")
        print(f"{wf:14} {base:22.3f} {ours:12.3f} {ratio:7.2f}x")


if __name__ == "__main__":
    main()

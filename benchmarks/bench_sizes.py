"""How the scan-end analysis cost grows with the map and the spectrum: edxlive's default analysis
(both workflows + quantification) at several binned sizes and channel counts, time and memory.

Baseline: the first size/channel pair of the run (its seconds); each row prints its time ratio to
that baseline beside its pixel x channel ratio, so growth slower than the data shows as a smaller
first number. Memory: each row's peak RSS (VmHWM, reset before the analysis) and peak anonymous
RSS, against the size of the dense uint32 binned cube as the baseline.

The phantom is made directly at the binned size with 4x the per-raw-pixel dose (common.binned_phantom)
and written to an .npy a block at a time, uint32 as the daemon's accumulated.npy; the analysis reads
it as the daemon's worker does, a read-only memmap (``--dense``: loaded into memory first). VmHWM
then includes the memmap's file pages (page cache, reclaimable); RssAnon is what the analysis holds.

    python benchmarks/bench_sizes.py [--sizes 128 256 512] [--channels 2048] [--counts 10] [--dense]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from bench_analyze import stages
from common import PeakMemory, Timer, ari, binned_phantom, machine, phantom_cube, status_bytes

from edxlive.service.pipeline.analyze import analyze_cube
from edxlive.service.pipeline.results import AnalysisParams
from edxlive.service.pipeline.umap_hdbscan import warm_up

GIB = 2**30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512], help="binned map sides")
    ap.add_argument("--channels", type=int, nargs="+", default=[2048])
    ap.add_argument("--counts", type=float, default=10.0, help="counts per raw pixel (x4 per binned pixel)")
    ap.add_argument("--dense", action="store_true", help="analyse the cube in memory, not from a memmap")
    ap.add_argument("--tmp", type=Path, default=None,
                    help="folder for the phantoms' .npy, on a disk (default: the system's temp dir; a tmpfs "
                         "there would hold the 16 GiB of a 1024² x 4096 cube in memory)")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    warm_up()
    small, small_meta, _, _ = phantom_cube("sulfide", (32, 32), 1024, args.counts)
    analyze_cube(small, small_meta, AnalysisParams(workflows=["pca_gmm"]))  # imports, element tables
    print(f"this process before the runs: RSS {status_bytes('VmRSS') / GIB:.2f} GiB, anonymous "
          f"{status_bytes('RssAnon') / GIB:.2f} GiB (interpreter, libraries, warm-up)")
    print(f"{'binned':>10} {'channels':>8} {'seconds':>8} {'x time':>7} {'x data':>7}  ARI gmm  ARI umap"
          f"  {'cube GiB':>8} {'peak RSS':>8} {'peak anon':>9} {'anon/cube':>9}  stages")
    base = None
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="bench_sizes_") as tmp:
        for channels in args.channels:
            for size in args.sizes:
                path = Path(tmp) / "accumulated.npy"
                cube, meta, truth, ph = binned_phantom("sulfide", (size, size), channels, args.counts, out=path)
                if args.dense:
                    cube = np.array(cube)
                with PeakMemory() as mem, Timer() as t:
                    result = analyze_cube(cube, meta, AnalysisParams())
                data = size * size * channels
                base = base or (t.seconds, data)
                scores = {wf: ari(truth, res.labels) for wf, res in result.workflows.items()}
                dense = 4 * data / GIB
                print(f"{size:>5}x{size:<4} {channels:>8} {t.seconds:8.1f} {t.seconds / base[0]:7.2f}"
                      f" {data / base[1]:7.1f}  {scores['pca_gmm']:7.3f} {scores['umap_hdbscan']:9.3f}"
                      f"  {dense:8.2f} {mem.rss / GIB:8.2f} {mem.anon / GIB:9.2f} {mem.anon / GIB / dense:9.2f}"
                      f"  {stages(result)}", flush=True)
                del cube, ph, result
                path.unlink()


if __name__ == "__main__":
    main()

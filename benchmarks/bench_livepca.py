"""Live PCA refresh per frame at 256×256 binned, against a batch PCA of the same data.

A synthetic multi-phase map (phases with distinct spectra, Poisson counts, ~10 counts per raw
pixel = ~40 per binned pixel) is streamed frame by frame into `LivePCA`, in raster-ordered chunks
of 16 binned rows, as the daemon does. At the end of each frame the live view refreshes (what
`Engine._live` runs). Baseline, measured in this run: scikit-learn's batch PCA of the same scaled
data at the last frame (`PCA(svd_solver="full")`), with the agreement (explained-variance ratios,
|cos| of the loadings). Target: the refresh stays under the frame time of a 1-minute, 20-frame scan.

    python benchmarks/bench_livepca.py [--binned 256] [--channels 2048] [--frames 20] [--counts 10]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
from common import machine
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits

from edxlive.service.pipeline import scatter
from edxlive.service.pipeline.livepca import LivePCA

K = 8


def phase_map(n: int, phases: int, rng: np.random.Generator) -> np.ndarray:
    """Labels of an n×n map: random discs of each phase on a matrix (phase 0)."""
    yy, xx = np.mgrid[:n, :n]
    labels = np.zeros((n, n), np.int64)
    for ph in range(1, phases):
        for _ in range(6):
            cy, cx, r = rng.integers(0, n), rng.integers(0, n), rng.integers(n // 20, n // 6)
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = ph
    return labels


def spectra(phases: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    e = np.arange(channels)
    base = np.exp(-e / (channels / 3)) + 0.05
    out = []
    for _ in range(phases):
        s = base.copy()
        for c in rng.integers(channels // 40, channels // 2, 4):
            s += rng.uniform(0.5, 3) * np.exp(-0.5 * ((e - c) / 6.0) ** 2)
        out.append(s / s.sum())
    return np.array(out)


def frame_events(labels: np.ndarray, spec: np.ndarray, per_bin: float, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """One frame's events (binned pixel, channel), in raster order."""
    flat = labels.ravel()
    counts = rng.poisson(per_bin, flat.size)
    bins = np.repeat(np.arange(flat.size), counts)
    chans = np.empty(bins.size, np.int64)
    phase_of_event = flat[bins]
    for ph in range(spec.shape[0]):
        sel = phase_of_event == ph
        chans[sel] = rng.choice(spec.shape[1], sel.sum(), p=spec[ph])
    return bins, chans.astype(np.uint16)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--binned", type=int, default=256)
    ap.add_argument("--channels", type=int, default=2048)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--counts", type=float, default=10.0, help="counts per raw pixel over the scan (binning 2x2)")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    rng = np.random.default_rng(0)
    n, c = args.binned, args.channels
    labels, spec = phase_map(n, 5, rng), spectra(5, c, rng)
    scatter.warm_up()  # the daemon compiles its ingest loops at start
    live = LivePCA((n, n), c, 0.0, 0.01)
    frame_time = 60.0 / args.frames
    refresh_s, update_s, events = [], 0.0, 0
    rows = 16 * n
    for _ in range(args.frames):
        bins, chans = frame_events(labels, spec, 4 * args.counts / args.frames, rng)
        events += bins.size
        bounds = np.searchsorted(bins, np.arange(0, n * n + rows, rows))
        t0 = time.perf_counter()
        for lo, hi in itertools.pairwise(bounds):
            live.update(bins[lo:hi], chans[lo:hi], None)
        update_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        comps = live.refresh(K)
        refresh_s.append(time.perf_counter() - t0)
    data = live.scaled()
    batch_s = np.inf
    for threads in (None, 1):  # the live refresh runs on one BLAS thread: the baseline both ways, the best
        with threadpool_limits(threads, user_api="blas"):
            t0 = time.perf_counter()
            batch = PCA(n_components=K, svd_solver="full").fit(data)
            batch_s = min(batch_s, time.perf_counter() - t0)
    dratio = float(np.abs(comps.explained_variance_ratio[:K] - batch.explained_variance_ratio_).max())
    cos = np.abs(np.sum(comps.components[:3] * batch.components_[:3], axis=1))
    print(f"{n}x{n} binned x {c} ch ({live.n_live} live channels), {args.frames} frames, {events:,} events")
    print(f"batch PCA of the same data (baseline, sklearn full SVD, best of default and 1 BLAS thread): "
          f"{batch_s:6.2f} s")
    print(f"live refresh per frame: median {np.median(refresh_s):.2f} s, max {max(refresh_s):.2f} s  "
          f"({batch_s / max(refresh_s):.1f}x faster than batch; frame time of a 1-min {args.frames}-frame scan "
          f"{frame_time:.1f} s: {'under' if max(refresh_s) < frame_time else 'OVER'})")
    print(f"statistics update while streaming: {update_s / events * 1e9:.0f} ns/event "
          f"({events / update_s / 1e6:.0f} M events/s)")
    print(f"agreement with batch: max |d explained variance ratio| {dratio:.1e}, |cos| of the first 3 loadings "
          f"{', '.join(f'{x:.12f}' for x in cos)}")


if __name__ == "__main__":
    main()

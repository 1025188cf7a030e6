"""Checkpoint cost: how long the writer thread needs for one checkpoint, and how long a resume reads.

Baseline, measured in this run: ``np.save`` of the same binned cube to the same disk (a plain,
unsynced write of the bytes). Figure: ``checkpoint.save`` (cube + bit-packed coverage + header,
fsynced, atomic rename) and ``checkpoint.load``. The write runs on its own thread in the daemon,
so it stalls ingest by only the copy of the cube (also printed).

    python benchmarks/bench_checkpoint.py [--size 256] [--channels 2048] [--frames 10] [--dir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine

from edxlive.service import checkpoint
from edxlive.service import protocol as p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--channels", type=int, default=2048)
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--counts", type=float, default=40.0,
                    help="counts per binned pixel (40: 10 counts/px raw, binned 2x2, a typical STEM-EDX map)")
    ap.add_argument("--dir", type=Path, default=None, help="a folder on the disk to measure (default: the tmp dir)")
    args = ap.parse_args()
    n, ch = args.size, args.channels
    start = p.Sequencer("bench").make(p.ScanStart, scan_id="bench", shape=(n, n), channels=ch,
                                      energy_offset_kev=0.0, energy_scale_kev=0.01, frames=args.frames)
    cube = np.random.default_rng(0).poisson(args.counts / ch, size=((n // 2) * (n // 2), ch)).astype(np.uint32)
    coverage = np.ones((args.frames, n * n), dtype=bool)
    t = time.perf_counter()
    keys = np.flatnonzero(cube)  # what Accumulator.nonzero_cells copies out of a dense store
    counts = cube.reshape(-1)[keys]
    t_copy = time.perf_counter() - t
    ck = checkpoint.Checkpoint(start, keys, counts, coverage.copy(), 3, 0, 0, 0, {"bench": 1}, int(cube.sum()))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        np.save(folder / "baseline.npy", cube)
        t_base = time.perf_counter() - t
        t = time.perf_counter()
        checkpoint.save(folder, ck)
        t_save = time.perf_counter() - t
        size = checkpoint.path_in(folder).stat().st_size
        t = time.perf_counter()
        back = checkpoint.load(checkpoint.path_in(folder))
        t_load = time.perf_counter() - t
    restored = np.zeros(cube.size, cube.dtype)
    restored[back.keys] = back.counts
    assert np.array_equal(restored.reshape(cube.shape), cube) and np.array_equal(back.coverage, coverage)
    print(f"machine: {machine()}")
    print(f"scan {n}x{n} binned x2, {ch} channels, {args.frames} frames: cube {cube.nbytes / 2**20:.0f} MiB, "
          f"checkpoint file {size / 2**20:.0f} MiB ({args.counts:g} counts per binned pixel, "
          f"{keys.size / cube.size:.1%} of the cells non-zero)")
    print(f"baseline np.save: {t_base:.2f} s")
    print(f"checkpoint.save (fsync + rename): {t_save:.2f} s, ratio {t_save / t_base:.2f}")
    print(f"checkpoint.load: {t_load:.2f} s; ingest stalls only for the copy: {t_copy * 1000:.0f} ms")


if __name__ == "__main__":
    main()

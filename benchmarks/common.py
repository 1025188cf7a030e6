"""Shared by the benchmarks: phantoms at a chosen size and dose, truth at the binned resolution, ARI."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "numba"))


def machine() -> str:
    cpus = os.cpu_count()
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f", {int(f.readline().split()[1]) / 2**20:.0f} GiB RAM"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {cpus} CPUs{mem}, Python {platform.python_version()}"


def phantom_cube(name: str, raw_shape: tuple[int, int], channels: int, counts_per_pixel: float, binning: int = 2,
                 seed: int = 0):  # type: ignore[no-untyped-def]
    from edxlive.clients.phantoms import make_phantom
    from edxlive.service.pipeline.accumulate import offline_bin

    ph = make_phantom(name, seed=seed, shape=raw_shape, channels=channels, counts_per_pixel=counts_per_pixel)
    meta = ph.meta
    meta.binning = binning
    truth = binned_truth(ph.truth_labels, binning)
    return offline_bin(ph.counts, binning), meta, truth, ph


def binned_truth(labels: np.ndarray, factor: int) -> np.ndarray:
    """The majority true label of each binned pixel."""
    ny, nx = labels.shape[0] // factor, labels.shape[1] // factor
    blocks = labels[:ny * factor, :nx * factor].reshape(ny, factor, nx, factor).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(ny, nx, -1) + 1  # -1 (vacuum) -> 0
    counts = np.apply_along_axis(np.bincount, 2, blocks, minlength=int(labels.max()) + 2)
    return counts.argmax(axis=2) - 1


def ari(truth: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(truth.ravel(), labels.ravel()))


class Timer:
    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0

"""Shared by the benchmarks: phantoms at a chosen size and dose, truth at the binned resolution, ARI."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "numba"))

from edxlive.service.logs import quiet_third_party_warnings

quiet_third_party_warnings()  # the figures, not HyperSpy's import-path notices, as the CLI shows them


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


def binned_phantom(name: str, binned_shape: tuple[int, int], channels: int, raw_counts: float,
                   out: Path | None = None, seed: int = 0):  # type: ignore[no-untyped-def]
    """A phantom made directly at the binned size: a 2x2-binned pixel of a scan at ``raw_counts``
    per pixel holds the sum of four Poisson draws, i.e. one Poisson draw at 4x the rate, so the
    phantom is drawn at 4x the counts, and its truth is its own layout. The metadata describe the
    raw scan (twice the size, binning 2), as the daemon's would. ``out``: the counts are written
    there (uint32 .npy, as accumulated.npy) a block at a time and the cube is a read-only memmap,
    so no dense raw or binned cube is ever in memory."""
    from edxlive.clients.phantoms import make_phantom

    ph = make_phantom(name, seed=seed, shape=binned_shape, channels=channels, counts_per_pixel=4 * raw_counts,
                      out=out)
    meta = ph.meta
    meta.shape, meta.binning = (2 * binned_shape[0], 2 * binned_shape[1]), 2
    return ph.counts, meta, ph.truth_labels, ph


def binned_truth(labels: np.ndarray, factor: int) -> np.ndarray:
    """The majority true label of each binned pixel."""
    if factor == 1:
        return labels
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


# ---------------------------------------------------------------- ingest: synthetic detector streams, real daemons

DETECTOR_RATE = 2e6  # counts/s of the fastest EDX detectors, the ingest baseline


def event_chunks(size: int, channels: int, events: float, frames: int, chunk_pixels: int, seed: int = 0):  # type: ignore[no-untyped-def]
    """A square scan's X-rays as a detector sends them: per frame, consecutive raster ranges of
    ``chunk_pixels`` pixels, events in time (= raster) order, channels uniform. Yields
    (frame, first_pixel, n_pixels, pixel offsets <u4, channels <u2)."""
    rng = np.random.default_rng(seed)
    n_pix = size * size
    per_chunk = events / frames / n_pix * chunk_pixels
    for frame in range(frames):
        for first in range(0, n_pix, chunk_pixels):
            n = min(chunk_pixels, n_pix - first)
            k = rng.poisson(per_chunk * n / chunk_pixels)
            yield (frame, first, n, np.sort(rng.integers(0, n, k, dtype=np.uint32)).astype("<u4"),
                   rng.integers(0, channels, k, dtype=np.uint16).astype("<u2"))


def vm_hwm(pid: int | str = "self") -> int:
    """Peak resident set size of a process, bytes (/proc/<pid>/status VmHWM)."""
    return status_bytes("VmHWM", pid)


class PeakMemory:
    """Peak resident memory of this process inside a ``with`` block: ``rss`` (VmHWM, what
    ``/usr/bin/time -v`` reports, reset at entry through /proc/self/clear_refs) and ``anon``
    (RssAnon, sampled every 20 ms by a thread). The two differ by the file pages a memmap has
    mapped: page cache, shared and reclaimable, not memory the analysis holds."""

    def __enter__(self) -> PeakMemory:
        import threading

        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        self.anon = status_bytes("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.anon = max(self.anon, status_bytes("RssAnon"))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.anon = max(self.anon, status_bytes("RssAnon"))
        self.rss = vm_hwm()


def status_bytes(field: str, pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field}")


def vm_rss(pid: int | str = "self") -> int:
    return status_bytes("VmRSS", pid)


def start_daemon(data_dir: Path, connect: str, **env: str):  # type: ignore[no-untyped-def]
    """``python -m edxlive.service serve`` as a subprocess on ephemeral ports, connected to one
    publisher. Analysis warm-up off; returns the Popen once daemon.json is written."""
    import json
    import subprocess
    import sys

    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "edxlive.service", "serve", "--pub", "tcp://127.0.0.1:0", "--control",
           "tcp://127.0.0.1:0", "--metrics-port", "0", "--data-dir", str(data_dir), "--connect", connect]
    child = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg", EDXLIVE_ANALYSIS__WARMUP="false", **env)
    log = open(data_dir / "daemon.log", "a")  # noqa: SIM115 - the child keeps the descriptor
    # its own process group: stop_daemon ends the daemon and everything it started, and nothing else
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child, start_new_session=True)
    runtime = data_dir / "daemon.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not runtime.exists():
        if proc.poll() is not None:
            raise RuntimeError((data_dir / "daemon.log").read_text())
        time.sleep(0.05)
    proc.runtime = json.loads(runtime.read_text())  # type: ignore[attr-defined]
    return proc


def stop_daemon(proc) -> None:  # type: ignore[no-untyped-def]
    """Stop a daemon started by ``start_daemon`` and its analysis workers (its process group), so
    shutdown does not wait for an analysis the benchmark does not measure."""
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_for_file(folder: Path, pattern: str, timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
        time.sleep(0.05)
    raise TimeoutError(f"no {pattern} under {folder} after {timeout:.0f} s")

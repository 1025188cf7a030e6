"""Scan-end analysis, off the ingest path, in worker processes or on a Dask cluster.

The engine hands over an AnalysisJob that names files (the binned cube and dose map it saved),
so only paths cross the process boundary. Workers are *spawned*, not forked: a forked child
would inherit the daemon's ZeroMQ threads. A worker that dies (or is killed) fails its job with
the reason; the pool is rebuilt and the daemon goes on.

``analysis.executor = "tcp://scheduler:8786"`` sends the jobs to an existing Dask cluster
instead (DaskRunner): the same paths are sent, so the data folder must be mounted at the same
path on every Dask worker (docs/analysis.md, "Analysis on a Dask cluster").
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from edxlive.service.config import ConfigError, Settings
from edxlive.service.session import AnalysisJob

log = logging.getLogger("edxlive.analysis")


def params_for(settings: Settings, overrides: dict[str, Any]) -> dict[str, Any]:
    """AnalysisParams fields from the config, with a reanalysis request's overrides on top."""
    a, q = settings.analysis, settings.quant
    params: dict[str, Any] = dict(
        workflows=list(a.workflows), scaling=a.scaling, gmm_k=a.gmm_k, gmm_k_max=a.gmm_k_max,
        min_cluster_size=a.min_cluster_size, umap_epochs=a.umap_epochs, random_state=a.random_state,
        smoothing_px=a.smoothing_px, elements=list(q.elements),
        kfactors=str(q.kfactors) if q.kfactors else None, anions=list(q.anions),
    )
    allowed = {"gmm_k", "min_cluster_size", "workflows", "scaling", "elements", "random_state", "umap_epochs",
               "smoothing_px"}
    params.update({k: v for k, v in overrides.items() if k in allowed})
    return params


def run_job(job: AnalysisJob, params: dict[str, Any], spectrum_format: str) -> dict[str, Any]:
    """In the worker: write the spectrum image, analyse, write every output; return result.json's analysis part."""
    from edxlive.service import report, storage
    from edxlive.service.pipeline.analyze import analyze_cube
    from edxlive.service.pipeline.results import AnalysisParams

    if not job.folder.is_dir():
        import socket

        raise FileNotFoundError(f"{job.folder}: not found on analysis host {socket.gethostname()}; mount the "
                                "daemon's data folder at the same path on every Dask worker")
    if job.cube_path is not None and job.cube_path.exists():
        cube = np.load(job.cube_path, mmap_mode="r")
        storage.write_spectrum_image(job.folder, np.asarray(cube), job.meta, spectrum_format)
    else:
        cube, _ = storage.load_spectrum_image(job.folder)
    dose = np.load(job.dose_path) if job.dose_path is not None and job.dose_path.exists() else None
    p = dict(params)
    p["kfactors"] = Path(p["kfactors"]) if p.get("kfactors") else None
    result = analyze_cube(np.asarray(cube), job.meta, AnalysisParams(**p), dose=dose)
    report.write_analysis_outputs(job.folder, result)
    analysis = result.to_json()
    analysis["revision"] = job.revision
    doc = storage.result_document(job.meta, np.asarray(cube), analysis, spectrum_format)
    storage.write_result_json(job.folder, doc)
    if job.cube_path is not None and job.cube_path.exists():
        job.cube_path.unlink()  # the spectrum image now holds these counts
    return analysis


def _init_worker(numba_cache: str, warm: bool) -> None:
    from edxlive.service.logs import quiet_third_party_warnings

    quiet_third_party_warnings()
    os.environ.setdefault("NUMBA_CACHE_DIR", numba_cache)
    os.environ.setdefault("MPLBACKEND", "Agg")
    if warm:
        warm_up()


def warm_up() -> float:
    from edxlive.service.pipeline.umap_hdbscan import warm_up as warm

    return warm()


Outcome = tuple[AnalysisJob, dict[str, Any] | BaseException, float]


def AnalysisRunner(settings: Settings) -> LocalRunner | DaskRunner:
    """The runner the config asks for: the local process pool, or a Dask cluster."""
    if settings.analysis.executor == "local":
        return LocalRunner(settings)
    return DaskRunner(settings)


class LocalRunner:
    """A small process pool for analysis jobs, rebuilt if a worker dies."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.numba_cache = os.environ.get("NUMBA_CACHE_DIR") or str(Path(settings.storage.data_dir) / ".numba-cache")
        self.futures: dict[Future, AnalysisJob] = {}
        self.warm: Future | None = None
        self._start_pool()

    def _start_pool(self) -> None:
        a = self.settings.analysis
        self.pool = ProcessPoolExecutor(max_workers=a.workers, mp_context=mp.get_context("spawn"),
                                        initializer=_init_worker, initargs=(self.numba_cache, False))
        if a.warmup:
            self.warm = self.pool.submit(warm_up)

    @property
    def ready(self) -> bool:
        """True once the warm-up (numba JIT) has finished, or failed: READY for systemd."""
        return self.warm is None or self.warm.done()

    def submit(self, job: AnalysisJob) -> None:
        params = params_for(self.settings, job.params)
        try:
            fut = self.pool.submit(run_job, job, params, self.settings.storage.spectrum_format)
        except (BrokenProcessPool, RuntimeError):
            self._restart()
            fut = self.pool.submit(run_job, job, params, self.settings.storage.spectrum_format)
        fut.started_at = time.monotonic()  # type: ignore[attr-defined]
        self.futures[fut] = job

    def done(self) -> list[Outcome]:
        """Finished jobs with their outcome (the analysis document, or the exception) and duration."""
        out = []
        broken = False
        for fut in [f for f in self.futures if f.done()]:
            job = self.futures.pop(fut)
            exc = fut.exception()
            broken |= isinstance(exc, BrokenProcessPool)
            took = time.monotonic() - fut.started_at  # type: ignore[attr-defined]
            out.append((job, exc if exc is not None else fut.result(), took))
        if broken:
            self._restart()
        return out

    def _restart(self) -> None:
        log.error("analysis worker died; restarting the pool")
        self.pool.shutdown(wait=False, cancel_futures=True)
        self._start_pool()

    def shutdown(self, wait: bool = True) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=not wait)



class DaskRunner:
    """The same interface on an existing Dask cluster: jobs go to ``analysis.executor``.

    Futures of distributed's Client behave like concurrent ones (done, exception, result). A
    worker that dies is handled by the scheduler (the task is retried elsewhere, then fails with
    KilledWorker, which ends that job with the reason). The daemon keeps a single Client.
    """

    def __init__(self, settings: Settings, connect_timeout: float = 10.0) -> None:
        from distributed import Client

        self.settings = settings
        self.futures: dict[Any, tuple[AnalysisJob, float]] = {}
        self.failed: list[Outcome] = []
        address = settings.analysis.executor
        try:
            self.client = Client(address, timeout=connect_timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"analysis.executor {address}: no Dask scheduler answers ({exc}); start the "
                               "scheduler or set analysis.executor = \"local\"") from None
        log.info("analysis on the Dask cluster at %s", address)
        self.warm = self.client.submit(warm_up, pure=False) if settings.analysis.warmup else None

    @property
    def ready(self) -> bool:
        return self.warm is None or self.warm.done()

    def submit(self, job: AnalysisJob) -> None:
        params = params_for(self.settings, job.params)
        try:
            fut = self.client.submit(run_job, job, params, self.settings.storage.spectrum_format, pure=False,
                                     key=f"edxlive-{job.scan_id}-r{job.revision}-{time.time_ns()}")
        except Exception as exc:  # a lost scheduler fails this job, never the daemon
            self.failed.append((job, RuntimeError(f"Dask scheduler {self.settings.analysis.executor}: {exc}"), 0.0))
            return
        self.futures[fut] = (job, time.monotonic())

    def done(self) -> list[Outcome]:
        out, self.failed = self.failed, []
        for fut in [f for f in self.futures if f.done()]:
            job, started = self.futures.pop(fut)
            exc = fut.exception()
            out.append((job, exc if exc is not None else fut.result(), time.monotonic() - started))
        return out

    def shutdown(self, wait: bool = True) -> None:
        if not wait and self.futures:
            self.client.cancel(list(self.futures))
        elif self.futures:
            from distributed import wait as wait_all

            wait_all(list(self.futures))
        self.client.close()


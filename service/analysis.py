"""Scan-end analysis, off the ingest path, in worker processes.

The engine hands over an AnalysisJob that names files (the binned cube and dose map it saved),
so only paths cross the process boundary. Workers are *spawned*, not forked: a forked child
would inherit the daemon's ZeroMQ threads. A worker that dies (or is killed) fails its job with
the reason; the pool is rebuilt and the daemon goes on.
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

from edxlive.service.config import Settings
from edxlive.service.session import AnalysisJob

log = logging.getLogger("edxlive.analysis")


def params_for(settings: Settings, overrides: dict[str, Any]) -> dict[str, Any]:
    """AnalysisParams fields from the config, with a reanalysis request's overrides on top."""
    a, q = settings.analysis, settings.quant
    params: dict[str, Any] = dict(
        workflows=list(a.workflows), scaling=a.scaling, gmm_k=a.gmm_k, gmm_k_max=a.gmm_k_max,
        min_cluster_size=a.min_cluster_size, umap_epochs=a.umap_epochs, random_state=a.random_state,
        elements=list(q.elements), kfactors=str(q.kfactors) if q.kfactors else None, anions=list(q.anions),
    )
    allowed = {"gmm_k", "min_cluster_size", "workflows", "scaling", "elements", "random_state", "umap_epochs"}
    params.update({k: v for k, v in overrides.items() if k in allowed})
    return params


def run_job(job: AnalysisJob, params: dict[str, Any], spectrum_format: str) -> dict[str, Any]:
    """In the worker: write the spectrum image, analyse, write every output; return result.json's analysis part."""
    from edxlive.service import report, storage
    from edxlive.service.pipeline.analyze import analyze_cube
    from edxlive.service.pipeline.results import AnalysisParams

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


class AnalysisRunner:
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

    def done(self) -> list[tuple[AnalysisJob, dict[str, Any] | BaseException, float]]:
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


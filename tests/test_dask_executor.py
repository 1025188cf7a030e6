"""analysis.executor = tcp://…: scan-end analysis and `edxlive analyze` over many files on a real Dask cluster.

The cluster is a real ``distributed.LocalCluster`` (one in-process worker, so the test stays fast);
the scheduler is reached through its TCP address exactly as a remote one would be.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from edxlive.clients.phantoms import make_phantom
from edxlive.service.analysis import AnalysisRunner, DaskRunner
from edxlive.service.config import ConfigError, Settings
from edxlive.service.offline import run_many
from edxlive.service.pipeline.accumulate import offline_bin
from edxlive.service.session import AnalysisJob

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def scheduler() -> str:
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                                  protocol="tcp") as cluster:
        yield cluster.scheduler_address


def _job(tmp_path: Path, scan_id: str) -> AnalysisJob:
    ph = make_phantom("tiny", seed=1, shape=(32, 32), channels=1024, counts_per_pixel=40.0)
    ph.meta.binning = 2
    ph.meta.scan_id = scan_id
    folder = tmp_path / scan_id
    folder.mkdir()
    np.save(folder / "cube.npy", offline_bin(ph.counts, 2))
    return AnalysisJob(scan_id, folder, ph.meta, folder / "cube.npy", None, 1, {"workflows": ["pca_gmm"]})


def _wait(runner, n: int, timeout: float = 60) -> list:
    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out += runner.done()
        time.sleep(0.05)
    assert len(out) == n, f"{len(out)} of {n} jobs finished"
    return out


def test_scan_end_analysis_runs_on_the_cluster(scheduler: str, tmp_path: Path) -> None:
    settings = Settings(storage={"data_dir": tmp_path, "spectrum_format": "hspy"},
                        analysis={"executor": scheduler, "warmup": False})
    runner = AnalysisRunner(settings)
    assert isinstance(runner, DaskRunner) and runner.ready
    try:
        good = _job(tmp_path, "good")
        runner.submit(good)
        missing = _job(tmp_path, "gone")
        missing.folder = tmp_path / "not-mounted"  # as on a worker that lacks the shared data folder
        runner.submit(missing)
        outcomes = {job.scan_id: outcome for job, outcome, _ in _wait(runner, 2)}
    finally:
        runner.shutdown()
    assert outcomes["good"]["workflows"]["pca_gmm"]["params"]["k"] >= 2
    doc = json.loads((good.folder / "result.json").read_text())
    assert doc["revision"] == 1
    assert not good.cube_path.exists()  # the spectrum image now holds the counts
    assert isinstance(outcomes["gone"], FileNotFoundError)
    assert "same path on every Dask worker" in str(outcomes["gone"])


def test_unreachable_scheduler_is_one_clear_error(tmp_path: Path) -> None:
    settings = Settings(storage={"data_dir": tmp_path}, analysis={"executor": "tcp://127.0.0.1:9", "warmup": False})
    with pytest.raises(ConfigError, match="no Dask scheduler answers"):  # the daemon prints it in one line
        DaskRunner(settings, connect_timeout=1)


def test_analyze_many_files_on_the_cluster(scheduler: str, shared_data: Path, tmp_path: Path) -> None:
    files = [shared_data / "bruker" / "test_TEM.bcf", shared_data / "hspy" / "SiO2_HAADF_Image.hspy"]
    options = dict(elements=None, kfactors=None, workflow="pca_gmm", gmm_k=None, min_cluster_size=None,
                   binning=2, scaling=None, anions=None, seed=0, quiet=True)
    outcomes = run_many(files, tmp_path / "out", scheduler, **options)
    (first, folder), (_, error) = outcomes
    assert first == files[0] and folder == (tmp_path / "out" / "test_TEM").resolve()
    assert json.loads((folder / "result.json").read_text())["workflows"]["pca_gmm"]["n_clusters"] >= 1
    assert isinstance(error, str) and "SiO2_HAADF_Image.hspy" in error  # a bad file fails alone

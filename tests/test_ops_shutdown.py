"""SIGTERM (systemctl stop) mid-scan is a graceful stop, with a real daemon process and a real scan.

What must hold: exit status 0 (systemd then records a clean stop, and Restart=on-failure leaves it
stopped); the counts received so far are in the scan's folder, every one of them; result.json
says the analysis was not run; and nothing half-written is left (atomic writes go through
``.<name>.<random>.part`` temporaries) in the whole data folder.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import numpy as np
import pytest

from tests import procs


def test_sigterm_mid_scan_saves_the_counts_and_leaves_no_partial_files(shared_data: Path, tmp_path: Path) -> None:
    # 8 frames over 30 s: the scan is still running when the daemon is stopped.
    sim, daemon, data, log = _scan_into_daemon(shared_data, tmp_path, "--frames", "8", "--scan-seconds", "30",
                                               "--scan-id", "term-1")
    with procs.running(sim):
        try:
            # Wait until counts have arrived: the first live update comes after some chunks.
            procs.wait_for(lambda: "term-1: acquiring" in log.read_text(), timeout=60, what="the scan to start")
            procs.wait_for(lambda: _events(daemon.metrics) > 0, timeout=30, what="counts to arrive")
        finally:
            code = procs.stop(daemon.proc, signal.SIGTERM)
        assert sim.proc.poll() is None, "the scan should still have been running at SIGTERM"
    assert code == 0, log.read_text()[-3000:]

    text = log.read_text()
    match = re.search(r"scan term-1: aborted \(daemon stopped\), (\d+) events", text)
    assert match, text[-3000:]
    received = int(match.group(1))
    assert received > 0
    folders = [p for p in data.iterdir() if p.is_dir() and p.name.endswith("_term-1")]
    assert len(folders) == 1
    folder = folders[0]
    cube = np.load(folder / "accumulated.npy")
    assert int(cube.sum()) == received  # every count received before the stop is on disk
    assert np.load(folder / "dose.npy").shape[:2] == cube.shape[:2]
    result = json.loads((folder / "result.json").read_text())
    assert result["status"] == "aborted" and result["analysis"] == "not run: daemon stopped"
    assert result["scan_id"] == "term-1" and result["frames_completed"] < 8

    assert _partial(data) == []  # no temporaries, no half-written files
    assert not (data / "daemon.json").exists()  # clients are not pointed at a daemon that is gone
    assert "security open (localhost only)" in text  # open mode says so at start
    assert "shutting down" in text and "Traceback" not in text


def _scan_into_daemon(shared_data: Path, tmp_path: Path, *sim_args: str):  # type: ignore[no-untyped-def]
    """test_TEM.bcf from a simulator into a daemon (GMM only, no warm-up): (sim, daemon, data, log)."""
    sim = procs.start_simulator(str(shared_data / "bruker" / "test_TEM.bcf"), *sim_args)
    env = procs.child_env(EDXLIVE_ANALYSIS__WORKFLOWS='["pca_gmm"]', EDXLIVE_ANALYSIS__WARMUP="false")
    data = tmp_path / "data"
    daemon = procs.start_daemon(data, [sim.endpoint], env=env)
    return sim, daemon, data, data / "daemon.log"


def _partial(data: Path) -> list[str]:
    """Temporaries of storage.atomic_write (``.<name>.<random>.part``) and of the spectrum image writer
    (``.spectrum_image.part.zspy``): any of them left means a write was cut short."""
    return [str(p.relative_to(data)) for p in data.rglob("*") if ".part" in p.name]


def _events(metrics_url: str | None) -> float:
    import urllib.request

    assert metrics_url
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    found = re.search(r"^edxlive_xray_events_ingested_total (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.slow
def test_sigterm_during_analysis_lets_it_finish(shared_data: Path, tmp_path: Path) -> None:
    """Stopped while a scan-end analysis runs: the daemon waits for it (the unit's TimeoutStopSec covers
    this), so the result folder is complete and holds no temporaries."""
    sim, daemon, data, log = _scan_into_daemon(shared_data, tmp_path, "--frames", "2", "--fast", "--scan-id", "term-2")
    with procs.running(sim):
        try:
            procs.wait_for(lambda: "term-2: completed" in log.read_text(), timeout=60, what="the scan to end")
        finally:
            code = procs.stop(daemon.proc, signal.SIGTERM, timeout=240)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert text.index("shutting down") < text.index("scan term-2: analysis done"), text[-3000:]
    folder = next(p for p in data.iterdir() if p.is_dir() and p.name.endswith("_term-2"))
    result = json.loads((folder / "result.json").read_text())
    assert result["status"] == "completed" and "pca_gmm" in result["workflows"]
    assert (folder / "spectrum_image.zspy").is_dir()
    assert _partial(data) == []

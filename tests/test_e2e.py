"""One scan from the simulator, through a real daemon process, to a result folder HyperSpy opens.

This is the default run's end-to-end path: real subprocesses, real ZeroMQ sockets on ephemeral
localhost ports, the real analysis stack.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import hyperspy.api as hs
import numpy as np
import pytest

from edxlive.service import hsio
from edxlive.service.pipeline.accumulate import offline_bin
from tests import procs


def _source_cube(shared_data: Path) -> tuple[Path, np.ndarray]:
    path = shared_data / "bruker" / "test_TEM.bcf"
    sig = hsio.load_eds(path)
    return path, np.asarray(sig.data)


def test_scan_to_result_folder(shared_data: Path, tmp_path: Path) -> None:
    path, cube = _source_cube(shared_data)
    sim = procs.start_simulator(str(path), "--frames", "4", "--fast", "--seed", "3", "--scan-id", "e2e-1")
    daemon = procs.start_daemon(tmp_path / "data", [sim.endpoint])
    with procs.running(sim, daemon):
        docs = procs.tail(daemon.control, "--until", "scan.finished")
        sim.wait()
    finished = docs[-1]
    assert finished["topic"] == "scan.finished" and finished["status"] == "completed"
    folder = Path(finished["folder"])
    result = json.loads((folder / "result.json").read_text())
    assert result["scan_id"] == "e2e-1"
    si = hs.load(folder / "spectrum_image.zspy")
    assert si.metadata.Signal.signal_type == "EDS_TEM"
    # Every count the simulator sent is in the saved spectrum image, binned as configured (×2).
    expected = offline_bin(cube, result["binning"])
    np.testing.assert_array_equal(np.asarray(si.data), expected)
    assert {"pca_gmm", "umap_hdbscan"} <= set(result["workflows"])
    # test_TEM.bcf is nearly homogeneous: the clusters agree within 3σ and no follow-up is asked for.
    assert result["verdict"]["follow_up"] is False
    assert result["incomplete_fraction"] == 0.0
    topics = {d["topic"] for d in docs}
    assert {"scan.started", "scan.progress", "scan.live", "scan.result"} <= topics


@pytest.mark.slow
def test_back_to_back_with_faults(shared_data: Path, tmp_path: Path) -> None:
    path, _ = _source_cube(shared_data)
    sim = procs.start_simulator(str(path), "--frames", "5", "--scan-seconds", "3", "--seed", "1",
                                "--drop", "0.05", "--duplicate", "0.05", "--scans", "2")
    daemon = procs.start_daemon(tmp_path / "data", [sim.endpoint])
    with procs.running(sim, daemon):
        procs.wait_for(lambda: len(list((tmp_path / "data").rglob("result.json"))) >= 2, timeout=400,
                       what="two result folders")
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "data").rglob("result.json"))]
    assert all(r["incomplete_fraction"] > 0 for r in results)


@pytest.mark.slow
def test_demo_runs_without_a_terminal(tmp_path: Path) -> None:
    """The README's first command, minus the dashboard (no TTY here): a phantom scan to a result folder."""
    out = subprocess.run([*procs.CMD, "demo", "--no-dashboard", "--frames", "3", "--scan-seconds", "4",
                          "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=600,
                         env=procs.child_env(), check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "results: " in out.stdout
    assert list(tmp_path.rglob("result.json"))

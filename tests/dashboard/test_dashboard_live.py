"""The dashboard against a real daemon and simulator (Textual Pilot), and its import weight."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from textual.widgets import DataTable

from edxlive.clients.dashboard.app import Dashboard
from tests import procs


async def _until(pilot, predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await pilot.pause(0.2)
    raise AssertionError("timed out waiting for the dashboard")


def test_scan_progress_then_result(tmp_path: Path) -> None:
    sim = procs.start_simulator("tiny", "--frames", "4", "--scan-seconds", "6", "--seed", "1")
    daemon = procs.start_daemon(tmp_path / "data", [sim.endpoint])

    async def drive() -> None:
        app = Dashboard(daemon.control)
        async with app.run_test(size=(120, 40)) as pilot:
            await _until(pilot, lambda: app.state.connected and app.state.progress is not None, 60)
            assert app.state.scan_id and app.state.progress.frames == 4
            await _until(pilot, lambda: app.state.result is not None and app.state.finished is not None, 240)
            assert app.state.result.verdict.get("reasons")
            await pilot.press("2")
            await pilot.pause(0.5)
            tables = list(app.query(DataTable))
            assert tables and any(t.row_count > 0 for t in tables)

    with procs.running(sim, daemon):
        asyncio.run(drive())


def test_dashboard_imports_no_heavy_science() -> None:
    heavy = ("umap", "numba", "sklearn", "hyperspy", "exspy", "hdbscan")
    code = f"import sys; import edxlive.clients.dashboard.app; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

"""The dashboard (Textual Pilot) against a real daemon and simulator on ephemeral ports.

Nothing is mocked: ``tests/procs.py`` starts ``edxlive simulate`` and ``edxlive serve`` as
subprocesses, and the app runs its own feed thread. Where a test needs the daemon's own account
(what progress it published), a second, independent Feed records it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from textual.widgets import ContentSwitcher, DataTable, ProgressBar, Static

from edxlive.clients.dashboard.app import Dashboard
from edxlive.clients.dashboard.format import pm
from edxlive.clients.dashboard.halfblock import HalfBlockImage
from edxlive.clients.dashboard.maps import MapView
from edxlive.clients.dashboard.state import WORKFLOWS
from edxlive.clients.feed import Feed
from edxlive.service import protocol as p
from tests import procs


async def until(pilot, predicate: Callable[[], object], timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    """Let the app run until ``predicate`` holds (checked between Textual's message batches)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await pilot.pause(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def text(app: Dashboard, selector: str) -> str:
    return str(app.query_one(selector, Static).content)


def image(app: Dashboard, selector: str) -> HalfBlockImage:
    return app.query_one(selector, MapView).query_one(HalfBlockImage)


class Recorder(threading.Thread):
    """An independent client of the daemon: every progress document it published, by seq."""

    def __init__(self, control: str) -> None:
        super().__init__(daemon=True)
        self.control = control
        self.progress: dict[int, p.ScanProgress] = {}
        self.last: p.ScanProgress | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        with Feed(self.control) as feed:
            while not self._halt.is_set():
                for item in feed.poll(100):
                    if isinstance(item, p.Message) and isinstance(item.header, p.ScanProgress):
                        self.progress[item.header.seq] = item.header
                        self.last = item.header

    def __enter__(self) -> Recorder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self.join(5)


@contextmanager
def killed_with_its_children(daemon: procs.Daemon) -> Iterator[None]:
    """SIGKILL leaves the daemon no chance to stop its analysis worker: the test ends it too."""
    children = _children(daemon.proc.pid)
    try:
        yield
    finally:
        for pid in children:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def test_attach_mid_scan_shows_the_daemons_progress(tmp_path: Path) -> None:
    """A dashboard started halfway through a scan shows the same frame and fraction as the daemon
    published (checked against an independent client, seq by seq), and keeps up with it."""
    # 30 s, though the test needs a few: the daemon's loop stalls for several seconds on its first
    # live update (it imports exspy then), and a dashboard must still find the scan running after it.
    sim = procs.start_simulator("tiny", "--frames", "10", "--scan-seconds", "30", "--seed", "1")
    daemon = procs.start_daemon(tmp_path / "data", [sim.endpoint])

    async def drive(ref: Recorder) -> None:
        app = Dashboard(daemon.control)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.state.progress is not None, 30, "the first progress")
            first = app.state.progress
            assert first is not None and first.frame >= 2 and first.fraction < 0.9, "attached too late to test"
            assert app.state.started is not None and app.state.started.scan_id == first.scan_id  # from the snapshot
            for _ in range(3):  # the progress shown is the daemon's, at every step
                before = ref.last.seq  # type: ignore[union-attr]
                await until(pilot, lambda b=before: ref.last.seq > b, 5, "the daemon to publish more progress")
                want = ref.last.seq  # type: ignore[union-attr]
                await until(pilot, lambda w=want: app.state.progress.seq >= w, 5, "the dashboard to catch up")
                shown = app.state.progress
                await until(pilot, lambda s=shown: s.seq in ref.progress, 5, "the reference to record it")
                published = ref.progress[shown.seq]
                assert (shown.frame, shown.frames, shown.fraction) == (published.frame, published.frames,
                                                                       published.fraction)
                assert f"frame {published.frame + 1}/{published.frames}" in text(app, "#frame-count")
                bar = app.query_one("#progress", ProgressBar)
                assert bar.percentage == pytest.approx(published.fraction)
                assert f"{published.counts_per_pixel:.2f} counts/px" in text(app, "#stats")
            assert "acquiring" in text(app, "#scan-line") and first.scan_id in text(app, "#scan-line")
            assert image(app, "#count-map")._rgb is not None

    with procs.running(sim, daemon), Recorder(daemon.control) as ref:
        procs.wait_for(lambda: ref.last is not None and ref.last.frame >= 2, 60, what="the scan's third frame")
        assert ref.last is not None and ref.last.fraction < 0.7, "the machine is too slow to attach mid-scan"
        asyncio.run(drive(ref))


@pytest.fixture(scope="module")
def short_scan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Daemon]:
    """A daemon whose 4-second scan starts at once. The scan-end test watches it finish; the
    re-analysis test then reuses its result instead of waiting for a first analysis of its own."""
    sim = procs.start_simulator("tiny", "--frames", "4", "--scan-seconds", "4", "--seed", "1")
    daemon = procs.start_daemon(tmp_path_factory.mktemp("short_scan") / "data", [sim.endpoint])
    with procs.running(sim, daemon):
        yield daemon


def test_scan_end_shows_maps_table_and_verdict(short_scan: procs.Daemon) -> None:
    """At scan end: the live view reads 100 %, the results view has both cluster maps, the
    quantification table (one row per cluster, at% ± σ as published) and the verdict."""
    daemon = short_scan

    async def drive() -> None:
        app = Dashboard(daemon.control)
        async with app.run_test(size=(120, 40)) as pilot:
            st = app.state
            await until(pilot, lambda: st.result is not None and st.finished is not None, 120, "the result")
            assert st.result is not None and st.result.status == "ok"
            assert "frame 4/4" in text(app, "#frame-count")
            assert app.query_one("#progress", ProgressBar).percentage == pytest.approx(1.0)
            assert "done" in text(app, "#scan-line")

            await pilot.press("2")
            assert app.query_one("#views", ContentSwitcher).current == "results"
            assert f"revision {st.result.revision}" in text(app, "#result-head")
            binned = tuple(st.started.binned_shape) if st.started else None
            for wf in WORKFLOWS:
                rgb = image(app, f"#map-{wf}")._rgb
                assert rgb is not None and rgb.shape[:2] == binned == st.labels[wf].shape
                for cluster in st.clusters(wf):
                    assert f"{cluster['id']} " in text(app, f"#legend-{wf}")
            _check_table(app, "pca_gmm")

            verdict = text(app, "#verdict")
            assert ("FOLLOW UP" if st.result.verdict["follow_up"] else "no follow-up") in verdict
            assert st.result.verdict["reasons"][0] in verdict.replace("\n", " ")

            await pilot.press("w")  # the table follows the workflow
            _check_table(app, "umap_hdbscan")

    asyncio.run(drive())


def _check_table(app: Dashboard, workflow: str) -> None:
    table = app.query_one("#quant", DataTable)
    clusters = app.state.clusters(workflow)
    assert table.row_count == len(clusters) > 0
    labels = [str(c.label) for c in table.columns.values()]
    for cluster in clusters:
        row = table.get_row(str(cluster["id"]))
        for el, (value, sigma) in cluster["composition_at_pct"].items():
            assert row[labels.index(f"{el} at%")] == pm(value, sigma)


def test_new_gmm_k_from_the_keyboard_brings_a_new_result(short_scan: procs.Daemon) -> None:
    """`+` sends reanalyze with k+1 for the scan on screen; the daemon's new revision arrives
    and is shown, with the new k. (The other keys, and the debounce: test_dashboard_units.py.)"""
    daemon = short_scan

    async def drive() -> None:
        app = Dashboard(daemon.control)
        async with app.run_test(size=(120, 40)) as pilot:
            st = app.state
            await until(pilot, lambda: st.result is not None and st.result.status == "ok", 120, "the first result")
            await pilot.press("2")
            k0 = int(st.result_param("pca_gmm", "k"))
            rev0 = st.result.revision  # type: ignore[union-attr]

            await pilot.press("plus")
            assert "sending shortly" in text(app, "#control")
            await until(pilot, lambda: st.result.revision > rev0, 60, "the reanalysed result")  # type: ignore[union-attr]
            assert st.result_param("pca_gmm", "k") == k0 + 1
            assert st.result.workflows["pca_gmm"]["params"]["k_source"] == "user"  # type: ignore[union-attr]
            assert f"revision {rev0 + 1}" in text(app, "#result-head")
            title = app.query_one("#map-pca_gmm", MapView).query_one(".map-title", Static)
            assert f"k={k0 + 1}" in str(title.content)
            await until(pilot, lambda: f"revision {rev0 + 1} arrived" in text(app, "#control"), 5, "the control line")

    asyncio.run(drive())


def test_killed_daemon_shows_disconnected_then_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL the daemon: the dashboard says DISCONNECTED. A new daemon on the same data folder
    (new ephemeral ports, found through daemon.json) brings it back without help."""
    data = tmp_path / "data"
    monkeypatch.setenv("EDXLIVE_STORAGE__DATA_DIR", str(data))  # the dashboard finds the daemon by daemon.json
    first = procs.start_daemon(data, ["tcp://127.0.0.1:9"])  # no acquisition PC: nothing listens on port 9

    async def drive() -> None:
        nonlocal second
        app = Dashboard(None, stale_after_s=1.5)
        async with app.run_test(size=(80, 24)) as pilot:
            st = app.state
            uid1 = first.runtime["daemon_uid"]
            await until(pilot, lambda: st.connected and st.daemon_uid == uid1, 30, "the first daemon")
            assert not app.query_one("#banner", Static).display

            with killed_with_its_children(first):
                procs.stop(first.proc, signal.SIGKILL)
            await until(pilot, lambda: not st.connected, 10, "the dashboard to notice")
            banner = app.query_one("#banner", Static)
            assert banner.display and "DISCONNECTED" in text(app, "#banner")

            second = procs.start_daemon(data, ["tcp://127.0.0.1:9"])
            assert second.control != first.control
            uid2 = second.runtime["daemon_uid"]
            await until(pilot, lambda: st.connected and st.daemon_uid == uid2, 30, "the restarted daemon")
            assert not banner.display
            await until(pilot, lambda: st.status is not None and st.status.source == uid2, 5, "its status")
            assert st.status.control_endpoint == second.control  # type: ignore[union-attr]
            assert app.sub_title == second.control

    second: procs.Daemon | None = None
    try:
        asyncio.run(drive())
    finally:
        for daemon in (first, second):
            if daemon is not None:
                procs.stop(daemon.proc)

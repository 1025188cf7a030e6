"""The dashboard starts fast and light, and `edxlive dashboard` runs in a real terminal (a pty)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from contextlib import suppress

from tests import procs

# Top-level packages the dashboard must never load (import contract; DESIGN.md: "start in about a
# second, over SSH"), and the service modules it may not use.
HEAVY = ("umap", "numba", "sklearn", "hyperspy", "exspy", "hdbscan", "fast_hdbscan", "scipy", "rsciio", "matplotlib")
SERVICE_INTERNALS = ("edxlive.service.pipeline", "edxlive.service.daemon", "edxlive.service.session",
                     "edxlive.service.analysis", "edxlive.service.storage", "edxlive.service.metrics")
# Loaded only after the first frame: the protocol (pydantic) and numpy with the feed's first
# documents, the results and service views (textual-plotext, DataTable) when first shown.
AFTER_FIRST_FRAME = ("numpy", "pydantic", "pydantic_core", "pydantic_settings", "edxlive.service.protocol",
                     "edxlive.service.config", "edxlive.clients.feed", "edxlive.clients.dashboard.results",
                     "edxlive.clients.dashboard.service_view", "edxlive.clients.dashboard.help", "textual_plotext",
                     "plotext", "textual.widgets._data_table")
STARTUP_LIMIT_S = 3.0  # measured about 1.2 s here; the margin is for a loaded CI machine

# Run in a fresh interpreter: the test process itself has long since imported the science stack.
PROBE = f"""
import time
t0 = time.perf_counter()
import asyncio, json, sys
from edxlive.clients.dashboard.app import Dashboard
from tests.dashboard import scenario

async def main():
    app = Dashboard("tcp://127.0.0.1:9")  # the feed thread runs (nothing listens on port 9)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        started = time.perf_counter() - t0
        app.apply_items(scenario.scan_done())  # draw every view, so their lazy imports happen too
        for key in ("2", "3", "question_mark", "escape", "1"):
            await pilot.press(key)
        await pilot.pause(0.5)
    loaded = [m for m in sys.modules if m.split(".")[0] in {HEAVY!r} or m.startswith({SERVICE_INTERNALS!r})]
    print(json.dumps({{"started_s": started, "loaded": sorted(loaded)}}))

asyncio.run(main())
"""


def _probe(code: str) -> dict:
    """Run a probe in a fresh interpreter; its last line is a JSON report."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=procs.REPO, env=procs.child_env(), check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_starts_in_about_a_second_without_heavy_modules() -> None:
    report = _probe(PROBE)
    assert report["loaded"] == []
    assert report["started_s"] < STARTUP_LIMIT_S, f"the dashboard took {report['started_s']:.2f} s to start"


# The first frame, without a feed (with one, its thread starts right after this frame and loads
# the protocol at a time of its own).
FIRST_FRAME = f"""
import asyncio, json, sys
from edxlive.clients.dashboard.app import Dashboard

async def main():
    app = Dashboard(feed=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        shown = str(app.query_one("#banner").render())
    loaded = [m for m in sys.modules if m in {AFTER_FIRST_FRAME!r} or m.split(".")[0] in {AFTER_FIRST_FRAME!r}]
    print(json.dumps({{"banner": shown, "loaded": sorted(loaded)}}))

asyncio.run(main())
"""


def test_the_first_frame_waits_for_neither_the_protocol_nor_numpy_nor_the_other_views() -> None:
    report = _probe(FIRST_FRAME)
    assert report["loaded"] == []
    assert report["banner"].startswith("CONNECTING")


def test_dashboard_command_refuses_without_a_terminal() -> None:
    out = subprocess.run([*procs.CMD, "dashboard", "--connect", "tcp://127.0.0.1:9"], capture_output=True,
                         text=True, timeout=60, env=procs.child_env(), check=False)
    assert out.returncode == 2 and "needs a terminal" in out.stderr


def test_dashboard_command_runs_in_a_terminal_and_quits_on_q() -> None:
    """`edxlive dashboard` in an 80x24 pseudo-terminal: draws, says it is connecting, quits on `q`."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen([*procs.CMD, "dashboard", "--connect", "tcp://127.0.0.1:9"], stdin=slave,
                            stdout=slave, stderr=slave, env=procs.child_env(TERM="xterm-256color"),
                            start_new_session=True)
    os.close(slave)
    try:
        _read_until(master, proc, (b"CONNECTING", b"Quit"), timeout=30)  # the banner and the footer
        os.write(master, b"q")
        _read_until(master, proc, (), timeout=15)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def _read_until(fd: int, proc: subprocess.Popen, markers: tuple[bytes, ...], timeout: float) -> bytes:
    """Drain the terminal (a full pty would block the app) until every marker has shown, or, with
    no markers, until the app has exited."""
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        chunk = b""
        if ready:
            with suppress(OSError):  # the child closed the terminal
                chunk = os.read(fd, 65536)
            seen += chunk
        if markers and all(m in seen for m in markers):
            return seen
        if not markers and not chunk and proc.poll() is not None:
            return seen
    raise AssertionError(f"no {markers!r} from `edxlive dashboard` within {timeout:.0f} s: {seen[-2000:]!r}")

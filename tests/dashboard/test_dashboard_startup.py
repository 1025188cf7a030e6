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

import pytest

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
    return _probe_args(code)


def _probe_args(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
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


# The first frame of the command a user types, in a pseudo-terminal: what was loaded by then, and
# whether the footer's keys were in it. The typed command's own path (typer, the CURVE key check,
# the graphics probe) comes before the app: typer converts its options with pydantic (so pydantic
# itself is there), but neither the protocol, the configuration, numpy nor zmq (clients/curve.py).
BEFORE_FIRST_FRAME_OF_COMMAND = (*(m for m in AFTER_FIRST_FRAME if m not in ("pydantic", "pydantic_core")), "zmq")
COMMAND_FIRST_FRAME = f"""
import gc, json, runpy, sys
from textual.app import App

report, done = sys.argv[1], []
_display = App._display

def display(self, screen, renderable):
    _display(self, screen, renderable)
    if renderable is not None and not done:
        done.append(1)
        from textual.widgets._footer import FooterKey
        loaded = [m for m in sys.modules if m in {BEFORE_FIRST_FRAME_OF_COMMAND!r}
                  or m.split(".")[0] in {BEFORE_FIRST_FRAME_OF_COMMAND!r}]
        keys = [k.description for k in self.screen.query(FooterKey)]
        banner = str(self.screen.query_one("#banner").render())
        with open(report, "w") as f:
            json.dump({{"loaded": sorted(loaded), "keys": keys, "banner": banner, "gc": gc.isenabled()}}, f)

App._display = display
sys.argv = ["edxlive", "dashboard", "--connect", "tcp://127.0.0.1:9"]
runpy.run_module("edxlive.service", run_name="__main__")
"""


def test_dashboard_command_draws_a_complete_first_frame_before_the_feeds_imports(tmp_path) -> None:
    report = tmp_path / "first_frame.json"
    _run_and_quit([sys.executable, "-c", COMMAND_FIRST_FRAME, str(report)])
    first = json.loads(report.read_text())
    assert first["loaded"] == []
    assert "Quit" in first["keys"] and "Help" in first["keys"]  # the footer is in the first frame
    assert first["banner"] == "CONNECTING: connecting to tcp://127.0.0.1:9…"
    assert first["gc"] is False  # paused for the start (clients/dashboard/app.py, run_dashboard)


# The feed thread starts once Textual's start-up refreshes are over (the footer's first bindings
# signal); with no such signal (a terminal without the focus), FEED_START_LATEST_S after mount.
# The garbage collector, paused for the start, runs again once the feed's imports are done, with
# what the start made frozen.
FEED_START = """
import asyncio, gc, json, sys
gc.disable()
from edxlive.clients.dashboard import app as dash

dash.FEED_START_LATEST_S = float(sys.argv[1])
seen = {}
shown = dash.Dashboard.on_keys_footer_shown

def on_shown(self):
    seen.setdefault("feed_loaded_at_signal", "edxlive.clients.feed" in sys.modules)
    if sys.argv[2] == "signal":
        shown(self)

dash.Dashboard.on_keys_footer_shown = on_shown
endpoint = dash.Dashboard.on_endpoint

def on_endpoint(self, event):  # posted by the feed thread once it runs
    seen["endpoint"] = event.endpoint
    endpoint(self, event)

dash.Dashboard.on_endpoint = on_endpoint

async def main():
    app = dash.Dashboard("tcp://127.0.0.1:9", gc_paused=True)
    async with app.run_test(size=(80, 24)) as pilot:
        for _ in range(400):
            await pilot.pause(0.05)
            if "endpoint" in seen:
                break
        seen["sub_title"] = app.sub_title
        seen["gc"] = [gc.isenabled(), gc.get_freeze_count() > 0]
    print(json.dumps(seen))

asyncio.run(main())
"""


@pytest.mark.parametrize(("latest_s", "signal"), [(600, "signal"), (0.2, "none")])
def test_the_feed_starts_after_the_start_up_refreshes(latest_s: float, signal: str) -> None:
    report = _probe_args(FEED_START, str(latest_s), signal)
    assert report["endpoint"] == report["sub_title"] == "tcp://127.0.0.1:9"
    assert report["gc"] == [True, True]
    if signal == "signal":
        assert report["feed_loaded_at_signal"] is False


def test_dashboard_key_options_are_checked_before_it_starts(tmp_path) -> None:
    """--client-key/--server-key: paths (resolved in the message), both or neither, one-line errors."""
    keys = tmp_path / "keys"
    subprocess.run([*procs.CMD, "keys", str(keys)], check=True, capture_output=True, timeout=60,
                   env=procs.child_env())
    base = [*procs.CMD, "dashboard", "--connect", "tcp://127.0.0.1:9"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                              env=procs.child_env(), check=False)

    ok = run("--client-key", str(keys / "client.key_secret"), "--server-key", str(keys / "server.key"))
    assert ok.returncode == 2 and "needs a terminal" in ok.stderr  # the keys passed; no tty here
    one = run("--client-key", str(keys / "client.key_secret"))
    assert one.returncode == 2
    assert one.stderr.strip() == "edxlive: error: give both --client-key and --server-key, or neither"
    missing = run("--client-key", "nope.key_secret", "--server-key", str(keys / "server.key"))
    assert missing.returncode == 2 and f"cannot read CURVE key {tmp_path / 'nope.key_secret'}" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_dashboard_command_refuses_without_a_terminal() -> None:
    out = subprocess.run([*procs.CMD, "dashboard", "--connect", "tcp://127.0.0.1:9"], capture_output=True,
                         text=True, timeout=60, env=procs.child_env(), check=False)
    assert out.returncode == 2 and "needs a terminal" in out.stderr


def test_dashboard_command_runs_in_a_terminal_and_quits_on_q() -> None:
    """`edxlive dashboard` in an 80x24 pseudo-terminal: draws, says it is connecting, quits on `q`."""
    _run_and_quit([*procs.CMD, "dashboard", "--connect", "tcp://127.0.0.1:9"])


def _run_and_quit(cmd: list[str]) -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, cwd=procs.REPO,
                            env=procs.child_env(TERM="xterm-256color"), start_new_session=True)
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

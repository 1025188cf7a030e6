"""Dashboard cold start: process launch -> first frame drawn with the daemon's snapshot.

A real daemon subprocess (`edxlive serve`) ingests a small scan and analyses it (pca_gmm), so its
snapshot holds status, progress, live and result documents. Then, in a fresh interpreter each time,
the dashboard (`Dashboard(control endpoint)`, headless through Textual's `run_test` at 80×24, with
the garbage collector paused for the start as `edxlive dashboard` does) starts, connects, receives
the snapshot and draws it. Measured from the parent's launch of the interpreter (so imports count) to
(a) the first frame painted: the first screen update Textual hands to its driver (``App._display``),
(b) the first frame as `run_test` sees it: the first ``pilot.pause()``, which returns once the
    process has gone idle, so it also waits for the feed thread's connection and first documents,
(c) the first frame drawn with the scan's result on screen, as `run_test` sees it (a ``pause()``
    after the result arrived), and (d) painted: the first update handed to the driver after the
    feed's batch with the result was applied.
Baseline, same method and run: a bare Textual app (one Static) to its first frame, (a) and (b).
Each also gives the child's CPU seconds (all threads) by then: less sensitive to a shared machine's
load than the wall clock, and about what the wall clock would be on an idle one.

``--terminal`` adds the command a user types, ``edxlive dashboard --connect ...``, in a
pseudo-terminal (80×24, TERM=xterm-256color), from launch to the first frame's bytes on the terminal
(the footer) and to the scan's line from the daemon's snapshot; the parent answers the terminal
queries the way a terminal without Sixel or Kitty graphics does (DA1 only); also to the first
frame's own first bytes ("CONNECTING"), which may come before the footer's keys. Baseline: a bare
Textual app's first frame (its footer's "Quit"; its "hello") on the same pseudo-terminal. The
child's CPU seconds (all threads, from /proc, 10 ms ticks) by each mark are given too.

``--bytecode`` (with ``--terminal``) measures the terminal rows again with the project's modules
compiled to bytecode beforehand, as a pip install leaves them. On a machine with
PYTHONDONTWRITEBYTECODE set (or a read-only checkout) an editable install compiles every module
of the project at each launch; the bytecode written here is removed afterwards.

``--earlier DIR`` (with ``--terminal``) also runs an earlier version of the dashboard, interleaved
with this one: the ``edxlive`` package in DIR, put first on PYTHONPATH.

    python benchmarks/bench_dashboard.py [--repeat 5] [--terminal [--bytecode] [--earlier DIR]]
"""

from __future__ import annotations

import argparse
import compileall
import fcntl
import json
import os
import pty
import select
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

from common import machine, start_daemon, stop_daemon, wait_for_file

REPO = Path(__file__).resolve().parents[1]

# (wall, CPU) of every update Textual hands to its driver (headless: the driver discards it).
PAINTED = """
import time
from textual.app import App
PAINTED = []
_display = App._display
def _display_timed(self, screen, renderable):
    _display(self, screen, renderable)
    if renderable is not None and not self._batch_count:
        PAINTED.append((time.time(), time.process_time()))
App._display = _display_timed
"""

BARE = PAINTED + """
import asyncio, time
from textual.app import App
from textual.widgets import Static

class Bare(App):
    def compose(self):
        yield Static("hello")

async def main():
    async with Bare().run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        print(PAINTED[0][0], time.time())
        print(PAINTED[0][1], time.process_time())

asyncio.run(main())
"""

# As `edxlive dashboard` starts it: the collector paused before the app's import (service/cli.py).
DASHBOARD = PAINTED + """
import asyncio, gc, sys, time
gc.disable()
from edxlive.clients.dashboard.app import Dashboard

async def main():
    app = Dashboard(sys.argv[1], gc_paused=True)
    applied = []  # when the feed's batch with the result had been applied
    apply = app.apply_items
    def apply_items(items):
        apply(items)
        if app.state.result is not None and not applied:
            applied.append(time.time())
    app.apply_items = apply_items
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        first, first_cpu = time.time(), time.process_time()
        deadline = time.monotonic() + 30
        while app.state.result is None and time.monotonic() < deadline:
            await pilot.pause(0.005)
        await pilot.pause()  # the frame that shows it
        shown, shown_cpu = (time.time(), time.process_time()) if app.state.result is not None else (-1, -1)
        painted = next(((w, c) for w, c in PAINTED if applied and w >= applied[0]), (-1, -1))
        print(PAINTED[0][0], first, shown, painted[0])
        print(PAINTED[0][1], first_cpu, shown_cpu, painted[1])

asyncio.run(main())
"""


# The same first frame on a pseudo-terminal: a footer, so its "Quit" marks the arrival of a complete
# frame. Textual fills a footer a refresh or two after the first frame (the dashboard's is in its
# first frame), so the first frame's own bytes are timed too: "hello" here, "CONNECTING" there.
TERMINAL_BARE = """
from textual.app import App
from textual.widgets import Footer, Static

class Bare(App):
    BINDINGS = [("q", "quit", "Quit")]

    def compose(self):
        yield Static("hello")
        yield Footer()

Bare().run()
"""
DA1_QUERY, DA1_ANSWER = b"\x1b[c", b"\x1b[?62;22c"  # a VT220-class terminal: no Sixel (no 4)


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a running process, all its threads (user + system)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return -1.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def in_terminal(cmd: list[str], markers: tuple[bytes, ...], timeout: float = 60, **env: str) -> list[float]:
    """Seconds from launch until each marker has appeared on an 80x24 pseudo-terminal (-1: never),
    then the child's CPU seconds by then."""
    master, slave = pty.openpty()
    # rows, columns and the pixel size, so textual-image reads its cell size without asking
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 800, 480))
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, cwd=REPO, start_new_session=True,
                            env=dict(os.environ, TERM="xterm-256color", **env))
    os.close(slave)
    seen, answered = b"", 0
    times = [-1.0] * len(markers)
    cpu = [-1.0] * len(markers)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and min(times) < 0:
            if not select.select([master], [], [], 0.05)[0]:
                continue
            try:
                seen += os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            while seen.count(DA1_QUERY) > answered:  # answer as the terminal would
                os.write(master, DA1_ANSWER)
                answered += 1
            for i, marker in enumerate(markers):
                if times[i] < 0 and marker in seen:
                    times[i] = time.time() - t0
                    cpu[i] = cpu_seconds(proc.pid)
        os.write(master, b"q")
        end = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < end:  # drain: a full terminal would block the app
            if select.select([master], [], [], 0.05)[0]:
                try:
                    os.read(master, 65536)
                except OSError:
                    break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)
    return times + cpu


def launch(code: str, *args: str) -> list[float]:
    """Seconds from launch to each time the child prints on its first line, then the child's CPU
    seconds (all threads) at the same moments, from its second line."""
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                         cwd=REPO, check=False)
    if out.returncode:
        raise RuntimeError(out.stderr)
    wall, cpu = out.stdout.splitlines()[-2:]
    return [float(x) - t0 for x in wall.split()] + [float(x) for x in cpu.split()]


def small_scan(endpoint_pub) -> None:  # type: ignore[no-untyped-def]
    from common import event_chunks

    pub = endpoint_pub
    pub.wait_for_subscribers(1, 60)
    time.sleep(0.3)
    pub.start(scan_id="dash", shape=(64, 64), channels=1024, energy_offset_kev=0.0, energy_scale_kev=0.01, frames=2,
              elements=["Fe", "S", "Cu"])
    for frame, first, n, pix, chan in event_chunks(64, 1024, 64 * 64 * 50, 2, 64 * 8):
        pub.chunk_events("dash", frame, first, n, pix, chan)
    pub.end("dash", 2)


def terminal_rounds(control: str, repeat: int, earlier: Path | None = None) -> list[list[list[float]]]:
    """The bare app, `edxlive dashboard` and, from ``earlier`` when given, an earlier version of it in
    a pseudo-terminal, interleaved."""
    bare, dash, old = [], [], []
    cmd = [sys.executable, "-m", "edxlive.service", "dashboard", "--connect", control]
    marks = (b"Quit", b"scan dash", b"CONNECTING")
    for _ in range(repeat):
        bare.append(in_terminal([sys.executable, "-c", TERMINAL_BARE], (b"Quit", b"hello")))
        dash.append(in_terminal(cmd, marks))
        if earlier is not None:  # found first on the path, before the installed edxlive
            old.append(in_terminal(cmd, marks, PYTHONPATH=str(earlier)))
    return [bare, dash, old]


def compile_project() -> list[Path]:
    """Bytecode for the project's modules, as a pip install writes it; returns the new __pycache__ folders."""
    before = set(REPO.glob("service/**/__pycache__")) | set(REPO.glob("clients/**/__pycache__"))
    for package in ("service", "clients"):
        compileall.compile_dir(REPO / package, quiet=1)
    after = set(REPO.glob("service/**/__pycache__")) | set(REPO.glob("clients/**/__pycache__"))
    return sorted(after - before)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--terminal", action="store_true", help="also `edxlive dashboard` in a pseudo-terminal")
    ap.add_argument("--bytecode", action="store_true", help="the terminal rows again with the project's bytecode")
    ap.add_argument("--earlier", type=Path, help="with --terminal: also the edxlive package in this folder (an "
                    "earlier version: mkdir -p DIR/edxlive; git archive REV service clients | tar -x -C DIR/edxlive)")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    from edxlive.clients.publisher import AcquisitionPublisher

    data_dir = Path(tempfile.mkdtemp(prefix="edxlive-dash-"))
    with AcquisitionPublisher("tcp://127.0.0.1:0") as pub:
        daemon = start_daemon(data_dir, pub.endpoint, EDXLIVE_ANALYSIS__WORKFLOWS='["pca_gmm"]')
        try:
            small_scan(pub)
            wait_for_file(data_dir, "*_dash/result.json", timeout=300)
            time.sleep(1.0)  # the daemon publishes scan.result after writing result.json
            control = json.loads((data_dir / "daemon.json").read_text())["control"]
            bare, dash, term_bare, term_dash, term_old, byte_bare, byte_dash = [], [], [], [], [], [], []
            for _ in range(args.repeat):  # interleaved, so that a change of load touches both alike
                bare.append(launch(BARE))
                dash.append(launch(DASHBOARD, control))
                if args.terminal:
                    b, d, o = terminal_rounds(control, 1, args.earlier)
                    term_bare += b
                    term_dash += d
                    term_old += o
            if args.terminal and args.bytecode:
                created = compile_project()
                try:
                    byte_bare, byte_dash, _ = terminal_rounds(control, args.repeat)
                finally:
                    for folder in created:
                        shutil.rmtree(folder, ignore_errors=True)
        finally:
            stop_daemon(daemon)
    print(f"load average after the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    def row(name: str, values: list[float], base: float | None = None, cpu: list[float] | None = None) -> float:
        m = statistics.median(values)
        ratio = f"  ({m / base:.2f}x the bare app)" if base else ""
        used = f"  CPU {statistics.median(cpu):.2f} s" if cpu else ""
        print(f"{name:58s}: {m:5.2f} s{ratio}  [{min(values):.2f}-{max(values):.2f}]{used}")
        return m

    b_paint = row("bare Textual app, launch -> first frame painted (baseline)", [x[0] for x in bare],
                  cpu=[x[2] for x in bare])
    b_idle = row("bare Textual app, launch -> first pause() (baseline)", [x[1] for x in bare], cpu=[x[3] for x in bare])
    first = row("edxlive dashboard, launch -> first frame painted", [d[0] for d in dash], b_paint, [d[4] for d in dash])
    row("edxlive dashboard, launch -> first pause()", [d[1] for d in dash], b_idle, [d[5] for d in dash])
    shown = row("edxlive dashboard, launch -> daemon's result drawn (pause)", [d[2] for d in dash], b_idle,
                [d[6] for d in dash])
    row("edxlive dashboard, launch -> daemon's result painted", [d[3] for d in dash], b_paint, [d[7] for d in dash])
    print(f"target <= 1 s: first frame painted {'met' if 0 < first <= 1.0 else 'NOT met'}; "
          f"the daemon's result drawn {'met' if 0 < shown <= 1.0 else 'NOT met'}")
    for label, t_bare, t_dashes in (("", term_bare, [("", term_dash), ("earlier ", term_old)]),
                                    (" (bytecode)", byte_bare, [("", byte_dash)])):
        if not t_bare:
            continue
        t_first = row(f"bare Textual app in a terminal{label}, launch -> first bytes", [x[1] for x in t_bare],
                      cpu=[x[3] for x in t_bare])
        t_base = row(f"bare Textual app in a terminal{label}, launch -> first frame", [x[0] for x in t_bare],
                     cpu=[x[2] for x in t_bare])
        for which, t_dash in t_dashes:
            if not t_dash:
                continue
            name = f"{which}`edxlive dashboard` in a terminal{label}"
            row(f"{name}, launch -> first bytes", [x[2] for x in t_dash], t_first, [x[5] for x in t_dash])
            row(f"{name}, launch -> first frame", [x[0] for x in t_dash], t_base, [x[3] for x in t_dash])
            row(f"{name}, -> the daemon's scan", [x[1] for x in t_dash], t_base, [x[4] for x in t_dash])
    print(f"(medians of {args.repeat} launches, [min-max]; CPU: the child's CPU seconds, all threads, by then)")


if __name__ == "__main__":
    main()

"""Dashboard cold start: process launch -> first frame drawn with the daemon's snapshot.

A real daemon subprocess (`edxlive serve`) ingests a small scan and analyses it (pca_gmm), so its
snapshot holds status, progress, live and result documents. Then, in a fresh interpreter each time,
the dashboard (`Dashboard(control endpoint)`, headless through Textual's `run_test` at 80×24)
starts, connects, receives the snapshot and draws it. Measured from the parent's launch of the
interpreter (so imports count) to (a) the first frame drawn and (b) the first frame drawn with the
scan's result on screen. Baseline, same method and run: a bare Textual app (one Static) to its first
frame. Median of ``--repeat`` launches each.

    python benchmarks/bench_dashboard.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, start_daemon, stop_daemon, wait_for_file

REPO = Path(__file__).resolve().parents[1]

BARE = """
import asyncio, time
from textual.app import App
from textual.widgets import Static

class Bare(App):
    def compose(self):
        yield Static("hello")

async def main():
    async with Bare().run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        print(time.time())

asyncio.run(main())
"""

DASHBOARD = """
import asyncio, sys, time
from edxlive.clients.dashboard.app import Dashboard

async def main():
    app = Dashboard(sys.argv[1])
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        first = time.time()
        deadline = time.monotonic() + 30
        while app.state.result is None and time.monotonic() < deadline:
            await pilot.pause(0.005)
        await pilot.pause()  # the frame that shows it
        print(first, time.time() if app.state.result is not None else -1)

asyncio.run(main())
"""


def launch(code: str, *args: str) -> list[float]:
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                         cwd=REPO, check=False)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return [float(x) - t0 for x in out.stdout.split()]


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
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
            bare = [launch(BARE)[0] for _ in range(args.repeat)]
            dash = [launch(DASHBOARD, control) for _ in range(args.repeat)]
        finally:
            stop_daemon(daemon)
    b = statistics.median(bare)
    first = statistics.median(d[0] for d in dash)
    shown = statistics.median(d[1] for d in dash)
    print(f"bare Textual app, launch -> first frame (baseline)   : {b:5.2f} s")
    print(f"edxlive dashboard, launch -> first frame             : {first:5.2f} s  ({first / b:.2f}x the bare app)")
    print(f"edxlive dashboard, launch -> daemon's result drawn   : {shown:5.2f} s  ({shown / b:.2f}x the bare app); "
          f"target <= 1 s: {'met' if 0 < shown <= 1.0 else 'NOT met'}")
    print(f"(medians of {args.repeat} launches; all: bare {[round(x, 2) for x in bare]}, "
          f"dashboard {[[round(x, 2) for x in d] for d in dash]})")


if __name__ == "__main__":
    main()

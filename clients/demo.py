"""`edxlive demo`: a daemon, the simulator and the dashboard on localhost, nothing to configure.

The simulator binds an ephemeral port and prints it; the daemon connects to it and binds its own
ephemeral ports, which it writes to daemon.json in the data folder; the dashboard (or, without a
terminal, a progress printer) attaches to the daemon. Everything stops when the demo ends.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CMD = [sys.executable, "-m", "edxlive.service"]


def _wait_line(proc: subprocess.Popen, prefix: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line[len(prefix):].strip()
        if not line and proc.poll() is not None:
            break
    raise RuntimeError(f"the simulator did not start (exit {proc.poll()})")


def _wait_file(path: Path, proc: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited early (status {proc.returncode})")
        time.sleep(0.1)
    raise RuntimeError(f"the daemon did not write {path} within {timeout:.0f} s")


def run_demo(*, frames: int, scan_seconds: float, phantom: str, dashboard: bool, data_dir: Path | None) -> int:
    data = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="edxlive-demo-"))
    data.mkdir(parents=True, exist_ok=True)
    print(f"edxlive demo: phantom {phantom!r}, {frames} frames over {scan_seconds:.0f} s; results in {data}",
          flush=True)
    show = dashboard and sys.stdout.isatty() and _dashboard_available()
    # Under the dashboard the terminal is the dashboard's: the children's log lines go to a file.
    log = open(data / "demo.log", "a") if show else None  # noqa: SIM115 - closed in finally
    sim = subprocess.Popen([*CMD, "simulate", phantom, "--endpoint", "tcp://127.0.0.1:0", "--frames", str(frames),
                            "--scan-seconds", str(scan_seconds), "--wait-timeout", "120", "-q"],
                           stdout=subprocess.PIPE, stderr=log, text=True)
    daemon = None
    try:
        endpoint = _wait_line(sim, "endpoint: ", 60)
        daemon = subprocess.Popen([*CMD, "serve", "--connect", endpoint, "--pub", "tcp://127.0.0.1:0",
                                   "--control", "tcp://127.0.0.1:0", "--metrics-port", "0", "--data-dir", str(data)],
                                  stderr=log)
        runtime = _wait_file(data / "daemon.json", daemon, 60)
        if not show:
            return _follow(runtime["control"])
        from edxlive.clients.dashboard.app import run_dashboard

        status = run_dashboard(runtime["control"])
    finally:
        for proc in (sim, daemon):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if log is not None:
            log.close()
    _print_results(data)
    return status


def _print_results(data: Path) -> None:
    """After the daemon's graceful stop, so an analysis it finished on the way out is listed too."""
    folders = sorted({p.parent for p in data.rglob("result.json")})
    for folder in folders:
        print(f"results: {folder}", flush=True)
    if not folders:
        print(f"results: none yet (no scan was analysed); data in {data}", flush=True)
    print(f"log: {data / 'demo.log'}", flush=True)


def _dashboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("edxlive.clients.dashboard.app") is not None


def _follow(control: str) -> int:
    """Without a dashboard: one line per progress step, then where the results are."""
    from edxlive.clients.feed import Feed, FeedEvent

    feed = Feed(control, stale_after_s=30)
    last = ""
    try:
        while True:
            for item in feed.poll(500):
                if isinstance(item, FeedEvent):
                    continue
                h = item.header
                if item.topic == "scan.progress":
                    line = f"scan {h.scan_id}: frame {h.frame + 1}/{h.frames}, {100 * h.fraction:.0f} %"
                    if line != last:
                        print(line, flush=True)
                        last = line
                elif item.topic == "scan.result":
                    verdict = h.verdict.get("summary", h.reason)
                    print(f"analysis of {h.scan_id}: {h.status}; {verdict}", flush=True)
                elif item.topic == "scan.finished":
                    print(f"results: {h.folder}", flush=True)
                    return 0 if h.status != "failed" else 1
    finally:
        feed.close()

"""Regenerate the text screenshots in docs/img/ (Textual's SVG export) from a real run.

    python -m tests.dashboard.screenshots [--phantom sulfide] [--out docs/img]

Starts the simulator (a built-in phantom) and a daemon on ephemeral ports, as the Pilot tests do,
drives the dashboard through each view and saves what it shows: the live view halfway through
the scan, then the results, service and help views once the analysis is in. Takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from edxlive.clients.dashboard.app import Dashboard
from tests import procs

SIZE = (100, 32)  # columns, rows: large enough to read, small enough for a page
NARROW = (80, 24)


async def _until(pilot, predicate: Callable[[], object], timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the daemon did not get there in time")
        await pilot.pause(0.2)


async def _shoot(control: str, out: Path, size: tuple[int, int], names: dict[str, str]) -> None:
    app = Dashboard(control)
    async with app.run_test(size=size) as pilot:
        st = app.state
        if "live" in names:
            await _until(pilot, lambda: st.progress is not None and 0.45 < st.progress.fraction < 0.9
                         and st.live is not None, 120)
            app.save_screenshot(names["live"], str(out))
        await _until(pilot, lambda: st.result is not None and st.finished is not None, 300)
        await _until(pilot, lambda: st.status is not None and st.status.state == "idle", 30)
        for key, view in (("2", "results"), ("3", "service"), ("question_mark", "help")):
            if view in names:
                await pilot.press(key)
                await pilot.pause(0.5)
                app.save_screenshot(names[view], str(out))
        await pilot.press("escape")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantom", default="sulfide")
    parser.add_argument("--out", type=Path, default=procs.REPO / "docs" / "img")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edxlive-screenshots-") as tmp:
        sim = procs.start_simulator(args.phantom, "--frames", "10", "--scan-seconds", "30", "--seed", "7",
                                    "--scan-id", "demo-001")
        daemon = procs.start_daemon(Path(tmp) / "data", [sim.endpoint])
        with procs.running(sim, daemon):
            asyncio.run(_shoot(daemon.control, args.out, SIZE, {
                view: f"dashboard-{view}.svg" for view in ("live", "results", "service", "help")}))
            asyncio.run(_shoot(daemon.control, args.out, NARROW, {"results": "dashboard-results-80x24.svg"}))
    print(f"screenshots written to {args.out}")


if __name__ == "__main__":
    main()

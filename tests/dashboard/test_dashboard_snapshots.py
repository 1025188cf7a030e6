"""Snapshots (pytest-textual-snapshot) of every view, at 80x24 and 120x40.

The app runs without a feed and is given a fixed sequence of real protocol documents
(``scenario.py``), so each SVG depends on the code alone. After a deliberate change to the
layout, look at the report, then accept with ``pytest tests/dashboard --snapshot-update``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from edxlive.clients.dashboard.app import Dashboard
from tests.dashboard import scenario

SIZES = {"80x24": (80, 24), "120x40": (120, 40)}
# view -> (key that opens it, the documents the dashboard holds)
VIEWS: dict[str, tuple[str, Callable[[], list[Any]]]] = {
    "live": ("1", scenario.mid_scan),  # the scan filling in
    "results": ("2", scenario.scan_done),
    "service": ("3", scenario.scan_done),
    "help": ("question_mark", scenario.mid_scan),
}


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The service view shows local clock times: pin the zone so the snapshots do not depend on it."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _show(items: list[Any], *keys: str):  # type: ignore[no-untyped-def]
    async def run_before(pilot) -> None:  # type: ignore[no-untyped-def]
        pilot.app.apply_items(items)
        for key in keys:
            await pilot.press(key)
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("view", VIEWS)
def test_view(snap_compare, view: str, size: str) -> None:  # type: ignore[no-untyped-def]
    key, documents = VIEWS[view]
    assert snap_compare(Dashboard(feed=False), terminal_size=SIZES[size], run_before=_show(documents(), key))


def test_disconnected_banner(snap_compare) -> None:  # type: ignore[no-untyped-def]
    """The daemon fell silent mid-scan: a red line says so, and the last picture stays."""
    items = [*scenario.mid_scan(), scenario.disconnected()]
    assert snap_compare(Dashboard(feed=False), terminal_size=(80, 24), run_before=_show(items, "1"))


def test_other_workflow_and_pending_reanalysis(snap_compare) -> None:  # type: ignore[no-untyped-def]
    """`w` puts UMAP+HDBSCAN in the table and spectra; `+` shows the request about to be sent."""
    items = scenario.scan_done()
    assert snap_compare(Dashboard(feed=False), terminal_size=(120, 40), run_before=_show(items, "2", "w", "plus"))

"""The daemon's loop survives a fault in its own periodic work (real sockets, in this process)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edxlive.service.config import Settings
from edxlive.service.daemon import Daemon


def test_a_fault_in_the_periodic_work_is_logged_once_and_the_loop_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(storage={"data_dir": tmp_path}, inbound={"endpoints": ["tcp://127.0.0.1:0"]},  # type: ignore[arg-type]
                        outbound={"pub": "tcp://127.0.0.1:0", "control": "tcp://127.0.0.1:0"},
                        metrics={"enabled": False}, analysis={"warmup": False})
    daemon = Daemon(settings)
    try:
        calls = []

        def broken() -> list:
            calls.append(1)
            raise ValueError("injected")

        monkeypatch.setattr(daemon.engine, "tick", broken)
        with caplog.at_level(logging.ERROR, logger="edxlive"):
            for _ in range(3):
                daemon.tick()
        assert len(calls) == 3
        logged = [r.getMessage() for r in caplog.records if "periodic work" in r.getMessage()]
        assert logged == ["internal error in the periodic work: ValueError: injected [logged once while it repeats]"]
        assert daemon.recent_errors == ["internal error in the periodic work: ValueError: injected"]
        monkeypatch.undo()
        daemon.tick()  # healthy again: a later fault is logged anew
    finally:
        assert daemon.shutdown() == 0

"""Logging: journald-friendly lines by default, JSON lines as an option; one line per scan state
change; rejected input logged once per reason per scan (and counted every time)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edxlive.clients.publisher import AcquisitionPublisher
from edxlive.service.config import LoggingConfig
from edxlive.service.logs import JournalFormatter, JsonFormatter, setup_logging
from tests import procs


def _record(level: int, message: str, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            exc_info = sys.exc_info()
    return logging.LogRecord("edxlive.daemon", level, __file__, 1, message, (), exc_info)


def test_journal_lines_carry_the_priority_on_every_line() -> None:
    fmt = JournalFormatter()
    assert fmt.format(_record(logging.WARNING, "rejected (bad_json)")) == "<4>edxlive.daemon: rejected (bad_json)"
    assert fmt.format(_record(logging.INFO, "scan x: acquiring")).startswith("<6>")
    lines = fmt.format(_record(logging.ERROR, "internal error", exc=True)).splitlines()
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)  # the traceback is not lost
    assert lines[-1] == "<3>RuntimeError: boom"


def test_json_lines_are_one_object_each() -> None:
    line = JsonFormatter().format(_record(logging.ERROR, "analysis failed", exc=True))
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["level"] == "error" and doc["logger"] == "edxlive.daemon" and doc["message"] == "analysis failed"
    assert doc["time"].endswith("Z") and "RuntimeError: boom" in doc["exception"]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.mark.usefixtures("restore_logging")
def test_format_follows_the_config_and_journal_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")  # systemd sets this when stderr is the journal
    setup_logging(LoggingConfig())
    assert isinstance(logging.getLogger().handlers[0].formatter, JournalFormatter)
    setup_logging(LoggingConfig(format="json", level="DEBUG"))
    assert isinstance(logging.getLogger().handlers[0].formatter, JsonFormatter)
    assert logging.getLogger().level == logging.DEBUG
    monkeypatch.delenv("JOURNAL_STREAM")
    setup_logging(LoggingConfig())
    assert not isinstance(logging.getLogger().handlers[0].formatter, JournalFormatter | JsonFormatter)


def test_a_scan_logs_its_state_changes_and_each_rejection_reason_once(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "bruker" / "test_TEM.bcf"
    sim = procs.start_simulator(str(source), "--frames", "2", "--scan-seconds", "3", "--scan-id", "log-1")
    with AcquisitionPublisher("tcp://127.0.0.1:0") as bad:
        env = procs.child_env(EDXLIVE_LOGGING__FORMAT="json", EDXLIVE_ANALYSIS__WORKFLOWS='["pca_gmm"]',
                              EDXLIVE_ANALYSIS__WARMUP="false")
        daemon = procs.start_daemon(tmp_path / "data", [sim.endpoint, bad.endpoint], env=env)
        with procs.running(sim, daemon):
            assert bad.wait_for_subscribers(1, timeout=30)
            log = tmp_path / "data" / "daemon.log"
            procs.wait_for(lambda: "log-1: acquiring" in log.read_text(), timeout=30, what="the scan to start")
            for _ in range(3):
                bad.send_raw([b"scan.chunk", b"{not json"])
                bad.send_raw([b"scan.end"])  # a message without a header: another reason
            procs.wait_for(lambda: "log-1: analysis done" in log.read_text(), timeout=120, what="the analysis")
    # The daemon's own lines are JSON objects (analysis workers' stray warnings aside: see docs/operations.md).
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    messages = [r["message"] for r in records if r["logger"].startswith("edxlive")]
    for state_change in ("scan log-1: acquiring", "scan log-1: completed", "scan log-1: analysis done"):
        assert sum(m.startswith(state_change) for m in messages) == 1, (state_change, messages)
    rejected = [r for r in records if r["message"].startswith("rejected (")]
    assert sorted(r["message"].split(")")[0] for r in rejected) == ["rejected (bad_json", "rejected (frames"]
    assert all(r["level"] == "warning" and "once per reason per scan" in r["message"] for r in rejected)

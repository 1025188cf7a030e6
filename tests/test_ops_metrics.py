"""Prometheus metrics, scraped over HTTP from a real daemon while a real scan streams in.

The simulator drops and duplicates a few chunks, and a second publisher sends malformed
messages, so that every counter family has a reason to move.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from edxlive.clients.feed import Feed
from edxlive.clients.publisher import AcquisitionPublisher
from edxlive.service import metrics as service_metrics
from tests import procs
from tests.test_ops_grafana import DASHBOARD, SELECTOR, expressions

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample on /metrics, keyed by name and sorted labels."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


class Scraper(threading.Thread):
    """Scrapes every 0.2 s until stopped, keeping every scrape."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.scrapes: list[Samples] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.scrapes.append(scrape(self.url))


def test_counters_move_during_a_scan(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "bruker" / "test_TEM.bcf"
    sim = procs.start_simulator(str(source), "--frames", "4", "--scan-seconds", "5", "--seed", "2", "--drop", "0.03",
                                "--duplicate", "0.03", "--scan-id", "metrics-1")
    with AcquisitionPublisher("tcp://127.0.0.1:0") as bad:
        env = procs.child_env(EDXLIVE_ANALYSIS__WORKFLOWS='["pca_gmm"]', EDXLIVE_ANALYSIS__WARMUP="false")
        daemon = procs.start_daemon(tmp_path / "data", [sim.endpoint, bad.endpoint], env=env)
        assert daemon.metrics and daemon.metrics.startswith("http://127.0.0.1:")  # localhost by default
        scraper = Scraper(daemon.metrics)
        with procs.running(sim, daemon), Feed(daemon.control) as feed:
            before = scrape(daemon.metrics)
            scraper.start()
            assert bad.wait_for_subscribers(1, timeout=30)
            procs.wait_for(lambda: value(scrape(daemon.metrics), "edxlive_scan_state", state="acquiring") == 1,
                           timeout=60, what="the scan to start")
            for _ in range(3):
                bad.send_raw([b"scan.chunk", b"{not json"])
            while not any(getattr(i, "topic", "") == "scan.finished" for i in feed.poll(500)):
                pass  # the feed is a connected client meanwhile
            scraper.done.set()
            scraper.join()
            # The state gauge is set just after scan.finished is published: wait for it, briefly.
            after = procs.wait_for(lambda: _idle(scrape(daemon.metrics)), timeout=10, what="the idle state")
    _check_during(scraper.scrapes)
    _check_after(before, after)


def _idle(samples: Samples) -> Samples | None:
    return samples if value(samples, "edxlive_scan_state", state="idle") == 1 else None


def _check_during(scrapes: list[Samples]) -> None:
    acquiring = [s for s in scrapes if value(s, "edxlive_scan_state", state="acquiring") == 1]
    assert len(acquiring) >= 3, "the scan should have been scraped several times while acquiring"
    events = [value(s, "edxlive_xray_events_ingested_total") for s in acquiring]
    progress = [value(s, "edxlive_scan_progress_ratio") for s in acquiring]
    chunks = [value(s, "edxlive_messages_received_total", topic="scan.chunk") for s in acquiring]
    assert events == sorted(events) and events[-1] > events[0] > 0  # counters move, and only up
    assert chunks[-1] > chunks[0]
    assert 0 < max(progress) <= 1
    assert any(value(s, "edxlive_ingest_lag_seconds") > 0 for s in acquiring)
    assert any(value(s, "edxlive_clients_connected") >= 1 for s in scrapes)


def _check_after(before: Samples, after: Samples) -> None:
    assert total(after, "edxlive_xray_events_ingested_total") > total(before, "edxlive_xray_events_ingested_total")
    assert value(after, "edxlive_scan_state", state="idle") == 1
    assert value(after, "edxlive_scans_total", outcome="completed") == 1
    assert value(after, "edxlive_messages_received_total", topic="scan.end") == 1
    assert value(after, "edxlive_messages_rejected_total", reason="bad_json") == 3
    assert value(after, "edxlive_chunks_missing_total") > 0
    assert value(after, "edxlive_chunks_duplicated_total") > 0
    assert value(after, "edxlive_analysis_duration_seconds_count", stage="total", workflow="all") == 1
    assert any(n == "edxlive_analysis_duration_seconds_count" and dict(labels).get("workflow") == "pca_gmm"
               for n, labels in after)
    assert value(after, "edxlive_build_info", version=service_metrics.__version__,
                 python=_python_version()) == 1
    assert value(after, "process_resident_memory_bytes") > 0
    # Every metric the Grafana dashboard charts is in this real daemon's scrape.
    scraped = {name for name, _ in after}
    charted = {name for expr in expressions(json.loads(DASHBOARD.read_text()))
               for name, _ in SELECTOR.findall(expr)} - {"up"}
    assert charted <= scraped, charted - scraped


def _python_version() -> str:
    import platform

    return platform.python_version()

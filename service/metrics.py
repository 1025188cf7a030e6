"""Prometheus metrics, named by Prometheus conventions with the prefix ``edxlive_``.

A registry of our own (not the process-global one), served over HTTP on a configurable address
that defaults to 127.0.0.1. Counters get ``_total`` in the exposition (``edxlive_scans_total``),
units are in the names (``_seconds``, ``_ratio``). The standard ``process_*`` metrics (memory,
CPU, open files, start time) of the daemon's own process are included: for a service that runs
for months, memory against the unit's MemoryMax is the first thing to watch.
docs/operations.md lists every metric; docs/grafana-edxlive.json charts them.
"""

from __future__ import annotations

import platform

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    start_http_server,
)

from edxlive.service import __version__
from edxlive.service.config import ConfigError

STATES = ("idle", "acquiring", "analysing")
# Label values known in advance start at 0, so their series exist (and rate() works) from the first
# scrape; a series that appears only at its first event hides that event from increase().
OUTCOMES = ("completed", "aborted", "failed")
DIRECTIONS = ("inbound", "outbound")
STORAGE_WRITES = ("folder", "checkpoint", "save")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self._received = Counter("edxlive_messages_received", "Inbound messages received, by topic", ["topic"],
                                 registry=r)
        self._rejected = Counter("edxlive_messages_rejected", "Inbound messages rejected, by reason", ["reason"],
                                 registry=r)
        self._events = Counter("edxlive_xray_events_ingested", "X-ray events accumulated", registry=r)
        self._missing = Counter("edxlive_chunks_missing", "Inbound messages lost (sequence gaps)", registry=r)
        self._duplicated = Counter("edxlive_chunks_duplicated", "Duplicate inbound messages ignored", registry=r)
        self._state = Gauge("edxlive_scan_state", "1 for the daemon's current state", ["state"], registry=r)
        self._progress = Gauge("edxlive_scan_progress_ratio", "Fraction of the current scan received", registry=r)
        self._lag = Gauge("edxlive_ingest_lag_seconds", "Now minus the send time of the last chunk", registry=r)
        self._duration = Histogram("edxlive_analysis_duration_seconds", "Analysis duration by stage and workflow",
                                   ["stage", "workflow"], registry=r,
                                   buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600))
        self._outcome = Counter("edxlive_scans", "Scans finished, by outcome", ["outcome"], registry=r)
        self._clients = Gauge("edxlive_clients_connected", "Subscribers connected to the outbound PUB", registry=r)
        self._refused = Counter("edxlive_curve_refused", "Connections refused by CURVE authentication",
                                ["direction"], registry=r)
        self._storage = Counter("edxlive_storage_failures", "Failed writes into the data folder, by what "
                                "(folder, checkpoint, save)", ["what"], registry=r)
        self._unsaved = Gauge("edxlive_scans_unsaved", "Finished scans held in memory, not yet written", registry=r)
        self._checkpoints = Counter("edxlive_checkpoints_written", "Checkpoints of the running scan written",
                                    registry=r)
        self._inbound = Counter("edxlive_inbound_disconnects", "Inbound connections dropped by ZeroMQ (an "
                                "oversized message over MAXMSGSIZE, or the publisher going away)", registry=r)
        Info("edxlive_build", "Build information", registry=r).info(
            {"version": __version__, "python": platform.python_version()})
        ProcessCollector(registry=r)
        self.scan_state("idle")
        for outcome in OUTCOMES:
            self._outcome.labels(outcome)
        for what in STORAGE_WRITES:
            self._storage.labels(what)
        for direction in DIRECTIONS:
            self._refused.labels(direction)

    def start_server(self, address: str, port: int) -> int:
        """Serve /metrics; returns the port (0 picks a free one). ConfigError if it cannot listen there."""
        try:
            server, _thread = start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"metrics.address/metrics.port: cannot listen on {address}:{port} ({exc.strerror}); "
                              "choose another metrics.port, or stop what uses it") from None
        return int(server.server_address[1])

    def messages_received(self, topic: str) -> None:
        self._received.labels(topic).inc()

    def message_rejected(self, reason: str) -> None:
        self._rejected.labels(reason).inc()

    def events_ingested(self, n: int) -> None:
        self._events.inc(n)

    def chunks_missing(self, n: int) -> None:
        self._missing.inc(n)

    def chunks_duplicated(self, n: int) -> None:
        self._duplicated.inc(n)

    def scan_state(self, state: str) -> None:
        for s in STATES:
            self._state.labels(s).set(1.0 if s == state else 0.0)

    def scan_progress(self, fraction: float) -> None:
        self._progress.set(fraction)

    def ingest_lag(self, seconds: float) -> None:
        self._lag.set(seconds)

    def analysis_duration(self, stage: str, workflow: str, seconds: float) -> None:
        self._duration.labels(stage, workflow).observe(seconds)

    def scan_outcome(self, outcome: str) -> None:
        self._outcome.labels(outcome).inc()

    def clients_connected(self, n: int) -> None:
        self._clients.set(n)

    def curve_refused(self, direction: str) -> None:
        self._refused.labels(direction).inc()

    # ---------------------------------------------------------------- reliability (issue 7)

    def storage_failure(self, what: str) -> None:
        self._storage.labels(what).inc()

    def scans_unsaved(self, n: int) -> None:
        self._unsaved.set(n)

    def checkpoint_written(self) -> None:
        self._checkpoints.inc()

    def inbound_disconnected(self, n: int = 1) -> None:
        self._inbound.inc(n)

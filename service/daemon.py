"""The daemon: the one place where the parts are wired together.

Follow one scan: receiver.py decodes what the acquisition PC sends -> session.Engine accumulates
it and says what to publish -> publisher.Outbound sends it to the clients -> at scan end
analysis.AnalysisRunner analyses it in a worker process -> storage/report write the result
folder -> the engine publishes scan.result and scan.finished.

The loop never blocks on analysis, a client or a bad message.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from edxlive.service import __version__, storage
from edxlive.service import protocol as p
from edxlive.service.analysis import AnalysisRunner
from edxlive.service.config import ConfigError, Settings
from edxlive.service.logs import setup_logging
from edxlive.service.metrics import Metrics
from edxlive.service.publisher import Outbound
from edxlive.service.receiver import Receiver
from edxlive.service.sdnotify import notify, watchdog_interval
from edxlive.service.session import AnalysisJob, Effect, Engine, LogEvent, Publish, Rejection, StorageFailure

log = logging.getLogger("edxlive.daemon")
RUNTIME_FILE = "daemon.json"


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = Path(settings.storage.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("NUMBA_CACHE_DIR", str(self.data_dir / ".numba-cache"))
        self.started = time.monotonic()
        self.ctx = zmq.Context()
        self.metrics = Metrics()
        # First, so that a port already in use fails before sockets and analysis workers exist.
        self.metrics_endpoint = ""
        if settings.metrics.enabled:
            port = self.metrics.start_server(settings.metrics.address, settings.metrics.port)
            self.metrics_endpoint = f"http://{settings.metrics.address}:{port}/metrics"
        # the live PCA's updates and refreshes on a thread of their own, beside decoding and accumulation
        self.engine = Engine(settings, live_thread=True)
        # the ingest loops' JIT (numba, or its disk cache) and the live refresh's BLAS set-up: at start,
        # not in the first scan's chunks
        from edxlive.service.pipeline import livepca, scatter

        scatter.warm_up()
        livepca.warm_up()
        if settings.live.element_maps:  # the line database imports exspy: seconds, so before READY, not mid-scan
            from edxlive.service.pipeline.xray import known_elements

            known_elements()
        self.curve = _curve(settings, self.ctx, self.metrics)
        self.outbound = Outbound(self.ctx, settings.outbound.pub, settings.outbound.control, settings.outbound.sndhwm,
                                 p.new_source_id("edxlive"), curve=self.curve)
        lim = settings.limits
        limits = p.Limits(max_header_bytes=lim.max_header_bytes, max_message_bytes=lim.max_message_bytes,
                          max_pixels=lim.max_pixels, max_channels=lim.max_channels, max_frames=lim.max_frames)
        self.receiver = Receiver(self.ctx, settings.inbound.endpoints, limits, lim.max_message_bytes, curve=self.curve)
        self.analysis = AnalysisRunner(settings)
        self.stopping = False
        self.recent_errors: list[str] = []
        self._ready_sent = False
        self._tick_error: str | None = None  # the last periodic-work fault logged (Daemon.tick)
        self._checkpoints = 0

    # ------------------------------------------------------------------ effects

    def apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Publish):
                self.outbound.publish(effect.model, effect.fields, effect.arrays)
                if effect.model is p.ScanProgress:
                    self.metrics.scan_progress(effect.fields["fraction"])
            elif isinstance(effect, AnalysisJob):
                self.analysis.submit(effect)
            elif isinstance(effect, Rejection):
                self._rejected(effect)
            elif isinstance(effect, LogEvent):
                log.log(effect.level, effect.message)
            elif isinstance(effect, StorageFailure):
                self._storage_failed(effect)
        self.metrics.scan_state(self.engine.state)
        self.metrics.scans_unsaved(len(self.engine.unsaved))
        checkpoints = self.engine.counters.checkpoints
        for _ in range(checkpoints - self._checkpoints):
            self.metrics.checkpoint_written()
        self._checkpoints = checkpoints

    def _storage_failed(self, f: StorageFailure) -> None:
        self.metrics.storage_failure(f.what)
        if f.first:
            log.error(f.detail)
            self._remember(f.detail)

    def _remember(self, line: str) -> None:
        """The last ten error lines, for the status document."""
        self.recent_errors = [*self.recent_errors[-9:], line]

    def _rejected(self, r: Rejection) -> None:
        self.metrics.message_rejected(r.reason)
        if r.first_for_scan:
            line = f"rejected ({r.reason}){' in scan ' + r.scan_id if r.scan_id else ''}: {r.detail}"
            log.warning(line + " [logged once per reason per scan]")
            self._remember(line)

    # ------------------------------------------------------------------ loop steps

    def ingest(self) -> None:
        before_gaps, before_dups = self.engine.counters.gaps, self.engine.counters.duplicates
        for item in self.receiver.drain():
            if isinstance(item, p.ProtocolError):
                self.apply(self.engine.reject(item))
                continue
            self.metrics.messages_received(item.topic)
            events_before = self.engine.counters.events
            try:
                self.apply(self.engine.handle(item))
            except Exception as exc:
                log.exception("internal error handling %s", item.topic)
                self.apply(self.engine.reject(p.ProtocolError("internal", f"{type(exc).__name__}: {exc}")))
            self.metrics.events_ingested(self.engine.counters.events - events_before)
            if item.topic == "scan.chunk":
                self.metrics.ingest_lag(max(0.0, time.time() - item.header.time))
        self.metrics.chunks_missing(self.engine.counters.gaps - before_gaps)
        self.metrics.chunks_duplicated(self.engine.counters.duplicates - before_dups)

    def tick(self) -> None:
        """The engine's timed work. A fault in it is a bug: logged (once while it repeats), and the
        loop goes on receiving, so no client or message can end the daemon through it."""
        try:
            self.apply(self.engine.tick())
            self._tick_error = None
        except Exception as exc:
            line = f"internal error in the periodic work: {type(exc).__name__}: {exc}"
            if line != self._tick_error:
                log.exception(line + " [logged once while it repeats]")
                self._remember(line)
            self._tick_error = line

    def collect_analyses(self) -> None:
        for job, outcome, took in self.analysis.done():
            failed = isinstance(outcome, BaseException)
            self.metrics.analysis_duration("total", "all", took)
            if not failed:
                for name, wf in outcome.get("workflows", {}).items():  # type: ignore[union-attr]
                    for stage, seconds in wf.get("durations_s", {}).items():
                        self.metrics.analysis_duration(stage, name, float(seconds))
            self.metrics.scan_outcome("failed" if failed else job.meta.status)
            self.apply(self.engine.analysis_finished(job, outcome))

    def control(self, req: p.Request) -> p.Reply:
        if req.kind == "status":
            return self.outbound.reply(req, True, self.status_fields())
        if req.kind == "flush":
            self.apply(self.engine.flush())
            return self.outbound.reply(req, not self.engine.unsaved, {"unsaved": sorted(self.engine.unsaved)},
                                       error="data folder still not writable" if self.engine.unsaved else None)
        effects = self.engine.reanalyze(req.params.get("scan_id"), req.params)
        rejected = [e for e in effects if isinstance(e, Rejection)]
        self.apply(effects)
        if rejected:
            return self.outbound.reply(req, False, error=rejected[0].detail)
        job = next(e for e in effects if isinstance(e, AnalysisJob))
        return self.outbound.reply(req, True, {"scan_id": job.scan_id, "revision": job.revision})

    def status_fields(self) -> dict[str, Any]:
        st = self.engine.status()
        return dict(
            state=st["state"], version=__version__, uptime_s=time.monotonic() - self.started,
            pub_endpoint=self.outbound.pub_endpoint, control_endpoint=self.outbound.control_endpoint,
            metrics_endpoint=self.metrics_endpoint, current_scan=st["current_scan"], counters=st["counters"],
            rejected=st["rejected"], recent_errors=self.recent_errors,
            scans=[{k: v for k, v in s.items() if k != "meta"} for s in st["scans"]],
            security="curve" if self.curve else "open",
        )

    def publish_status(self) -> None:
        self.outbound.poll_monitor()
        self.metrics.inbound_disconnected(self.receiver.poll_monitor())
        for endpoint in self.receiver.abandoned():
            for _ in range(1000):  # what that connection delivered is queued: read it all before reconnecting
                if not self.receiver.pending():
                    break
                self.ingest()
            self.receiver.reconnect(endpoint)
            log.warning("inbound connection to %s was closed by ZeroMQ and not retried (a message over "
                        "limits.max_message_bytes?); reconnected, anything lost shows as a seq gap", endpoint)
        if self.curve is not None:
            self.curve.poll()  # count refused handshakes, reconnect publishers, re-read key folders
        self.metrics.clients_connected(self.outbound.clients)
        self.outbound.publish(p.ServiceStatus, self.status_fields())

    def write_runtime_file(self) -> Path:
        doc = {"pid": os.getpid(), "daemon_uid": self.outbound.daemon_uid, "pub": self.outbound.pub_endpoint,
               "control": self.outbound.control_endpoint, "metrics": self.metrics_endpoint,
               "inbound": self.receiver.endpoints, "data_dir": str(self.data_dir), "version": __version__}
        return storage.write_json(self.data_dir / RUNTIME_FILE, doc)

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        self.apply(self.engine.load_checkpoints(self.data_dir))
        self.write_runtime_file()
        log.info("edxlive %s: inbound %s, pub %s, control %s, metrics %s, data %s, security %s", __version__,
                 ",".join(self.receiver.endpoints), self.outbound.pub_endpoint, self.outbound.control_endpoint,
                 self.metrics_endpoint or "off", self.data_dir, "CURVE" if self.curve else "open (localhost only)")
        poller = zmq.Poller()
        poller.register(self.receiver.socket, zmq.POLLIN)
        poller.register(self.outbound.router, zmq.POLLIN)
        next_tick = next_status = next_watchdog = 0.0
        dog = watchdog_interval()
        while not self.stopping:
            poller.poll(50)
            self.ingest()
            self.outbound.serve_control(self.control)
            self.collect_analyses()
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + 0.1
                self.tick()
                self._ready()
            if now >= next_status:
                next_status = now + self.settings.outbound.status_interval_s
                self.publish_status()
            if dog and now >= next_watchdog:
                next_watchdog = now + dog
                notify("WATCHDOG=1")
        return self.shutdown()

    def _ready(self) -> None:
        if not self._ready_sent and self.analysis.ready:
            self._ready_sent = True
            notify("READY=1")
            log.info("ready (analysis warm-up done)")

    def shutdown(self) -> int:
        notify("STOPPING=1")
        log.info("shutting down")
        if self.engine.scan is not None:
            self.apply(self.engine.interrupt("daemon stopped"))
        self.engine.close()
        self.apply(self.engine.flush())
        for scan_id in self.engine.unsaved:
            log.critical("scan %s: the data folder is still not writable; its counts are lost when the daemon "
                         "exits (make %s writable and send `flush` before stopping)", scan_id, self.data_dir)
        self.analysis.shutdown(wait=True)
        self.collect_analyses()
        self.publish_status()
        self.receiver.close()
        self.outbound.close()
        if self.curve is not None:
            self.curve.close()
        self.ctx.term()
        (self.data_dir / RUNTIME_FILE).unlink(missing_ok=True)
        return 0


def _curve(settings: Settings, ctx: zmq.Context, metrics: Metrics) -> Any:
    from edxlive.service.security import curve_setup, require_localhost

    if settings.security.server_secret_key is None:
        require_localhost(settings)  # open mode never leaves this machine
        return None
    return curve_setup(settings.security, ctx, on_refused=metrics.curve_refused)


def serve_forever(settings: Settings) -> int:
    setup_logging(settings.logging)
    try:
        daemon = Daemon(settings)
    except ConfigError as exc:  # security settings are checked against the files only here
        print(f"edxlive: error: {exc}", file=sys.stderr)
        return 2
    except zmq.ZMQError as exc:  # an endpoint that cannot be bound (in use) or parsed: one line, no traceback
        print(f"edxlive: error: cannot open a ZeroMQ endpoint: {exc}; check inbound.endpoints, outbound.pub "
              "and outbound.control", file=sys.stderr)
        return 2

    def stop(signum: int, _frame: object) -> None:
        daemon.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return daemon.run()


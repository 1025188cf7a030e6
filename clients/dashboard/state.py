"""The dashboard's picture of the daemon: a pure model that applies protocol Messages.

No sockets, no widgets: ``DashboardState.apply`` takes decoded outbound documents and feed
events and returns which sections changed, so the app redraws only those. Tests feed it real
protocol documents (built with the protocol models, encoded and decoded).

The protocol (pydantic) and numpy are imported only where documents are applied: the dashboard's
first frame must not wait for them (docs/performance.md, "Dashboard start").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from edxlive.service import protocol as p

SECTIONS = ("connection", "status", "scan", "progress", "live", "result", "control")
WORKFLOWS = ("pca_gmm", "umap_hdbscan")


@dataclass
class Control:
    """What the user asked the daemon to do, and what came of it."""

    gmm_k: int | None = None
    min_cluster_size: int | None = None
    pending_revision: int | None = None  # a reanalysis the daemon accepted and has not published yet
    in_flight: bool = False  # a request is on its way
    message: str = ""
    # Every knob the user has set, sent with each reanalysis: the daemon starts from its config for
    # anything not given, so sending only the knob just changed would undo the user's other choice.
    asked: dict[str, int] = field(default_factory=dict)


@dataclass
class DashboardState:
    connected: bool = False
    daemon_uid: str | None = None
    connection_detail: str = "connecting…"
    status: p.ServiceStatus | None = None
    rates: dict[str, float] = field(default_factory=dict)  # per second, between the last two statuses
    started: p.ScanStarted | None = None
    progress: p.ScanProgress | None = None
    count_map: np.ndarray | None = None
    live: p.ScanLive | None = None
    live_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    result: p.ScanResult | None = None
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    spectra: dict[str, np.ndarray] = field(default_factory=dict)
    finished: p.ScanFinished | None = None
    control: Control = field(default_factory=Control)
    updated: dict[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------------ applying

    def apply(self, item: Any) -> set[str]:
        """Apply one Message or FeedEvent; returns the names of the sections that changed."""
        from edxlive.service import protocol as p  # loaded already: the feed decoded ``item``

        kind = getattr(item, "kind", None)
        if kind in ("connected", "disconnected") and not isinstance(item, p.Message):
            return self._on_feed_event(kind, item.daemon_uid, item.detail)
        if not isinstance(item, p.Message):
            return set()
        handler = _HANDLERS.get(item.topic)
        if handler is None:
            return set()
        changed = handler(self, item)
        now = time.monotonic()
        for name in changed:
            self.updated[name] = now
        return changed

    def _on_feed_event(self, kind: str, uid: str | None, detail: str) -> set[str]:
        self.connected = kind == "connected"
        self.connection_detail = detail
        if self.connected and uid != self.daemon_uid and self.daemon_uid is not None:
            # A restarted daemon: its snapshot replaces the old picture, but keep the last result on
            # screen until the new snapshot says otherwise.
            self.status = None
        self.daemon_uid = uid or self.daemon_uid
        if not self.connected:
            # A daemon that went away will never publish the revision it accepted.
            self.control.in_flight = False
            self.control.pending_revision = None
        return {"connection", "control"}

    def _on_status(self, msg: p.Message) -> set[str]:
        new: p.ServiceStatus = msg.header  # type: ignore[assignment]
        self.rates = _rates(self.status, new)
        self.status = new
        return {"status"}

    def _on_started(self, msg: p.Message) -> set[str]:
        h: p.ScanStarted = msg.header  # type: ignore[assignment]
        new_scan = self.started is None or self.started.scan_id != h.scan_id
        self.started = h
        changed = {"scan"}
        if new_scan:  # a new scan: the previous scan's live picture goes; its result stays until replaced
            self.progress, self.count_map, self.live, self.live_arrays = None, None, None, {}
            self.finished = None
            changed |= {"progress", "live"}
        return changed

    def _on_progress(self, msg: p.Message) -> set[str]:
        self.progress = msg.header  # type: ignore[assignment]
        self.count_map = msg.arrays.get("count_map")
        return {"progress"}

    def _on_live(self, msg: p.Message) -> set[str]:
        self.live = msg.header  # type: ignore[assignment]
        self.live_arrays = dict(msg.arrays)
        return {"live"}

    def _on_result(self, msg: p.Message) -> set[str]:
        h: p.ScanResult = msg.header  # type: ignore[assignment]
        old = self.result
        same_run = old is not None and old.scan_id == h.scan_id and old.source == h.source
        if same_run and h.revision < old.revision:  # type: ignore[union-attr]
            return set()  # an older revision arriving late (snapshot replay): keep the newer one
        if old is None or old.scan_id != h.scan_id:
            self.control.asked = {}  # choices made for another scan do not carry over
        self.result = h
        self.labels = {k.split("/", 1)[1]: v for k, v in msg.arrays.items() if k.startswith("labels/")}
        self.spectra = {k.split("/", 1)[1]: v for k, v in msg.arrays.items() if k.startswith("spectra/")}
        c = self.control
        if c.pending_revision is not None and h.revision >= c.pending_revision:
            c.pending_revision = None
            c.message = f"revision {h.revision} arrived" + ("" if h.status == "ok" else f": failed ({h.reason})")
        c.gmm_k = self.result_param("pca_gmm", "k", c.gmm_k)
        c.min_cluster_size = self.result_param("umap_hdbscan", "min_cluster_size", c.min_cluster_size)
        return {"result", "control"}

    def _on_finished(self, msg: p.Message) -> set[str]:
        self.finished = msg.header  # type: ignore[assignment]
        return {"scan"}

    # ------------------------------------------------------------------ derived views

    @property
    def scan_id(self) -> str | None:
        if self.started is not None:
            return self.started.scan_id
        return self.progress.scan_id if self.progress is not None else None

    @property
    def sample(self) -> str:
        if self.started is None:
            return ""
        return self.started.scan.sample or ""

    @property
    def scan_phase(self) -> str:
        """acquiring | analysing | done | idle, from the documents seen so far."""
        sid = self.scan_id
        if sid is None:
            return "idle"
        if self.finished is not None and self.finished.scan_id == sid:
            return "done"
        if self.status is not None and self.status.current_scan == sid:
            return "acquiring"
        if self.progress is not None and self.progress.fraction < 1.0 and self.status is None:
            return "acquiring"
        return "analysing"

    def result_param(self, workflow: str, key: str, default: Any = None) -> Any:
        if self.result is None:
            return default
        value = self.result.workflows.get(workflow, {}).get("params", {}).get(key)
        return default if value is None else value

    def clusters(self, workflow: str) -> list[dict[str, Any]]:
        if self.result is None:
            return []
        return list(self.result.workflows.get(workflow, {}).get("clusters", []))

    def workflows(self) -> list[str]:
        """Workflows of the current result, the two standard ones first."""
        names = list(self.result.workflows) if self.result is not None else []
        return [w for w in WORKFLOWS if w in names] + [w for w in names if w not in WORKFLOWS]

    def energy_axis(self, channels: int) -> np.ndarray:
        import numpy as np

        r = self.result
        off, scale = (r.energy_offset_kev, r.energy_scale_kev) if r is not None else (0.0, 0.01)
        return off + scale * np.arange(channels)

    def ask(self, knob: str, value: int) -> None:
        """Record a value the user chose for ``gmm_k`` or ``min_cluster_size``."""
        setattr(self.control, knob, value)
        self.control.asked[knob] = value

    def reanalyze_params(self) -> dict[str, Any]:
        """The ``reanalyze`` request: the scan on screen (not whichever the daemon finished last)
        and every knob the user has set."""
        params: dict[str, Any] = dict(self.control.asked)
        if self.result is not None and self.result.scan_id:
            params["scan_id"] = self.result.scan_id
        return params


def _rates(old: p.ServiceStatus | None, new: p.ServiceStatus) -> dict[str, float]:
    """Counter rates from two statuses of the same daemon, timed by its own uptime clock."""
    if old is None or old.source != new.source:
        return {}
    dt = new.uptime_s - old.uptime_s
    if dt <= 0:
        return {}
    return {k: (v - old.counters[k]) / dt for k, v in new.counters.items() if k in old.counters}


_HANDLERS = {
    "service.status": DashboardState._on_status,
    "scan.started": DashboardState._on_started,
    "scan.progress": DashboardState._on_progress,
    "scan.live": DashboardState._on_live,
    "scan.result": DashboardState._on_result,
    "scan.finished": DashboardState._on_finished,
}

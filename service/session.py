"""The engine: every scan's state, synchronous and socket-free, with the clock injected.

The runner (daemon.py) hands it decoded messages and the passing of time; it answers with
effects for the runner to carry out: documents to publish, analysis jobs to start, rejections
to count and log. Nothing here blocks on I/O except writing the final cube at scan end.

States: idle -> acquiring -> analysing -> idle. A scan moves on to analysis when its scan.end
arrives, when another scan starts (the old one is aborted), or when its publisher falls silent
for longer than ``inbound.heartbeat_timeout_s`` (aborted, partial results).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edxlive.service import checkpoint, storage
from edxlive.service import protocol as p
from edxlive.service.config import Settings
from edxlive.service.liveworker import LiveTaskFailed, LiveWorker
from edxlive.service.pipeline.accumulate import Accumulator, ChunkDelta, zero_spares
from edxlive.service.pipeline.livepca import LiveComponents, LivePCA
from edxlive.service.pipeline.meta import DetectorMeta, ScanMeta


@dataclass
class Publish:
    model: type[p.Header]
    fields: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class AnalysisJob:
    scan_id: str
    folder: Path
    meta: ScanMeta
    cube_path: Path | None
    dose_path: Path | None
    revision: int
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rejection:
    reason: str
    detail: str
    scan_id: str | None
    first_for_scan: bool


@dataclass
class LogEvent:
    level: int
    message: str


@dataclass
class StorageFailure:
    """A write into the data folder failed; the counts stay in memory and the write is retried."""

    scan_id: str
    what: str  # "folder", "checkpoint" or "save"
    detail: str
    first: bool  # the first failure of this kind for this scan: log it


Effect = Publish | AnalysisJob | Rejection | LogEvent | StorageFailure

# threaded live worker: chunks smaller than this are handed over together (one hand-over per chunk
# of 610-5 k events cost more than the chunk's own live work: wake-ups and GIL hand-offs)
LIVE_BATCH_EVENTS = 100_000
MAX_KEV = 1000.0  # an energy axis beyond this is not an X-ray spectrum (a 300 kV beam tops out at 300)
RETRY_S = 2.0  # how often unsaved scans are retried (a `flush` request retries at once)


@dataclass
class Counters:
    messages: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    events: int = 0
    gaps: int = 0  # messages missing, by seq
    duplicates: int = 0
    late: int = 0
    checkpoints: int = 0

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = {f"messages.{k}": v for k, v in self.messages.items()}
        out |= {"events": self.events, "gaps": self.gaps, "duplicates": self.duplicates, "late": self.late}
        return out


class Scan:
    """One scan being acquired: its description, accumulator, live PCA and bookkeeping."""

    def __init__(self, start: p.ScanStart, settings: Settings, folder: Path, now: float) -> None:
        self.start, self.folder = start, folder
        self.meta = meta_from_start(start, settings.binning.factor, settings.quant.beam_energy_kev)
        self.acc = Accumulator(start.shape, start.channels, settings.binning.factor, start.frames)
        live = settings.live
        self.live = LivePCA(self.acc.binned_shape, start.channels, start.energy_offset_kev, start.energy_scale_kev,
                            live.energy_min_kev, live.energy_max_kev)
        self.t_start = self.last_message = now
        self.frame = 0
        self.live_frame = -1
        self.gaps = self.duplicates = self.rejected = 0
        self.reasons_logged: set[str] = set()
        self.rate = _Rate(now)
        self.dirty = False  # counts or coverage changed since the last checkpoint
        self.status, self.reason, self.expected = "acquiring", None, start.frames
        self.failures: set[str] = set()  # storage failures already logged for this scan
        self.batch: list[ChunkDelta] = []  # chunks not yet handed to the live worker (Engine._hand_over)
        self.batch_events = 0

    @property
    def scan_id(self) -> str:
        return self.start.scan_id


class _Rate:
    """Events per second over a sliding few seconds, for the progress display."""

    def __init__(self, now: float) -> None:
        self.samples: list[tuple[float, int]] = [(now, 0)]

    def add(self, now: float, total: int) -> None:
        self.samples.append((now, total))
        while len(self.samples) > 2 and now - self.samples[0][0] > 3.0:
            self.samples.pop(0)

    def per_s(self) -> float:
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def meta_from_start(start: p.ScanStart, binning: int, beam_energy_kev: float | None = None) -> ScanMeta:
    """``beam_energy_kev`` (quant.beam_energy_kev) overrides what scan.start says, for a bridge that
    reports none or a wrong one: the k-factors and the fitted energy range follow it."""
    d = start.detector
    return ScanMeta(
        scan_id=start.scan_id, shape=tuple(start.shape), channels=start.channels,  # type: ignore[arg-type]
        energy_offset_kev=start.energy_offset_kev, energy_scale_kev=start.energy_scale_kev,
        beam_energy_kev=beam_energy_kev or start.beam_energy_kev, binning=binning, frames=start.frames,
        frames_completed=0,
        dwell_time_s=start.dwell_time_s, pixel_size_nm=start.pixel_size_nm,
        detector=DetectorMeta(d.name, d.elevation_deg, d.azimuth_deg, d.count, d.energy_resolution_mn_ka_ev),
        elements=list(start.elements), microscope=start.microscope, sample=start.sample,
    )


class Engine:
    """``live_thread``: the live PCA's per-event updates and refreshes run on a thread of their own
    (the daemon); by default they run in place, and every call's effects are deterministic. Both
    publish the same refreshes, in the same order: threaded, a refresh's ``scan.live`` comes with a
    later ``handle`` or ``tick`` (at the latest the next frame's, or the scan's end)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic, *,
                 live_thread: bool = False) -> None:
        self.settings, self.clock = settings, clock
        self.live_worker = LiveWorker(threaded=live_thread)
        # requested refreshes not yet published: (result, the scan.live fields, element maps)
        self._live_pending: deque[tuple[Future[LiveComponents], dict[str, Any], np.ndarray | None]] = deque()
        self._live_errors: list[str] = []  # live PCA failures not yet reported (_live_failed)
        self.scan: Scan | None = None
        self.counters = Counters()
        self.last_seq: dict[str, int] = {}
        self.ended: dict[str, Path] = {}  # scan_id -> folder, for late chunks and reanalysis
        self.refused: set[str] = set()
        self.logged: set[tuple[str | None, str]] = set()  # rejections logged for scans not being acquired
        self.restarts: dict[str, p.ScanStart] = {}  # scan.start for a finished scan id, awaiting its chunk
        self.pending: dict[str, AnalysisJob] = {}
        self.history: list[dict[str, Any]] = []
        self.revisions: dict[str, int] = {}
        self._next_progress = self._next_live = 0.0
        self.resumable: dict[str, tuple[Path, float]] = {}  # scan_id -> (folder, resume deadline)
        self.unsaved: dict[str, Scan] = {}  # finished scans whose files could not be written yet
        self._next_checkpoint = self._next_retry = 0.0
        self.writer = checkpoint.Writer()

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> str:
        if self.scan is not None:
            return "acquiring"
        return "analysing" if self.pending else "idle"

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "current_scan": self.scan.scan_id if self.scan else None,
            "counters": self.counters.as_dict(),
            "rejected": dict(self.counters.rejected),
            "scans": self.history[-20:],
            "unsaved": sorted(self.unsaved),
            "resumable": sorted(self.resumable),
        }

    # ------------------------------------------------------------------ inbound

    def handle(self, msg: p.Message) -> list[Effect]:
        h = msg.header
        self.counters.messages[h.topic] = self.counters.messages.get(h.topic, 0) + 1
        effects = self._maybe_resume(msg) if self.resumable else []
        more, fresh = self._sequence(h)
        effects += more
        if not fresh:
            return effects
        if self.scan is not None and h.source:
            self.scan.last_message = self.clock()
        handler = {
            "scan.start": self._on_start, "scan.chunk": self._on_chunk, "scan.end": self._on_end,
        }.get(h.topic)
        if handler is not None:
            effects += handler(msg)
        return effects

    def _sequence(self, h: p.Header) -> tuple[list[Effect], bool]:
        """Gap and duplicate detection by (source, seq). A new source is a restart, not a gap."""
        last = self.last_seq.get(h.source)
        self.last_seq[h.source] = max(h.seq, last or 0)
        if last is None or h.seq == last + 1:
            return [], True
        if h.seq <= last:
            self.counters.duplicates += 1
            if self.scan is not None:
                self.scan.duplicates += 1
            return [], False
        missing = h.seq - last - 1
        self.counters.gaps += missing
        if self.scan is not None:
            self.scan.gaps += missing
        return [LogEvent(logging.WARNING, f"gap: {missing} message(s) from {h.source} lost before seq {h.seq}")], True

    def reject(self, err: p.ProtocolError, scan_id: str | None = None) -> list[Effect]:
        self.counters.rejected[err.reason] = self.counters.rejected.get(err.reason, 0) + 1
        scan = self.scan if self.scan is not None and scan_id in (None, self.scan.scan_id) else None
        if scan is not None:
            scan.rejected += 1
            first = err.reason not in scan.reasons_logged
            scan.reasons_logged.add(err.reason)
        else:  # a finished, refused or unknown scan: still log each reason once per scan id
            first = (scan_id, err.reason) not in self.logged
            if len(self.logged) < 10_000:  # bounded: a flood of made-up ids cannot grow it for ever
                self.logged.add((scan_id, err.reason))
        return [Rejection(err.reason, err.detail, scan_id, first)]

    def _on_start(self, msg: p.Message) -> list[Effect]:
        h: p.ScanStart = msg.header  # type: ignore[assignment]
        if self.scan is not None and self.scan.scan_id == h.scan_id:
            return self._check_repeat(h)
        if h.scan_id in self.refused:
            return []
        if h.scan_id in self.ended and self._same_scan(h):
            # The repeat before a late frame, or a new scan under a reused id? Its next chunk says:
            # frame 0 begins the new scan, any later frame is late for the finished one.
            self.restarts[h.scan_id] = h
            return []
        effects: list[Effect] = []
        if self.scan is not None:
            effects += self._finish("aborted", f"superseded by scan {h.scan_id}")
        return effects + self._begin(h)

    def _same_scan(self, h: p.ScanStart) -> bool:
        """Does this scan.start describe the finished scan of the same id (shape, channels, frames)?"""
        entry = next((e for e in reversed(self.history) if e["scan_id"] == h.scan_id), None)
        if entry is None:
            return False
        m = entry["meta"]
        return (list(h.shape), h.channels, h.frames) == (list(m["shape"]), m["channels"], m["frames"])

    def _check_repeat(self, h: p.ScanStart) -> list[Effect]:
        s = self.scan.start  # type: ignore[union-attr]
        if (tuple(h.shape), h.channels, h.frames) != (tuple(s.shape), s.channels, s.frames):
            return self.reject(p.ProtocolError("inconsistent_start", f"repeated scan.start for {h.scan_id} "
                                               "changes shape, channels or frames; the first one stands"), h.scan_id)
        return []

    def _begin(self, h: p.ScanStart) -> list[Effect]:
        top = h.energy_offset_kev + h.energy_scale_kev * h.channels
        if not (-MAX_KEV < h.energy_offset_kev < MAX_KEV and 0 < top < MAX_KEV):
            self.refused.add(h.scan_id)
            return self.reject(p.ProtocolError("out_of_range", f"scan {h.scan_id}: energy axis {h.energy_offset_kev:g} "
                                               f"+ {h.energy_scale_kev:g} keV x {h.channels} channels is not an X-ray "
                                               f"spectrum (must end between 0 and {MAX_KEV:g} keV); check the "
                                               "calibration sent in scan.start"), h.scan_id)
        need = Accumulator.nbytes_for(tuple(h.shape), h.channels, self.settings.binning.factor, h.frames)  # type: ignore[arg-type]
        if self.settings.storage.checkpoint_interval_s > 0:  # the checkpoint writer copies the non-zero cells
            shape = tuple(h.shape)
            need += Accumulator.nonzero_nbytes_for(shape, h.channels, self.settings.binning.factor)  # type: ignore[arg-type]
        budget = self.settings.limits.memory_budget_bytes
        if need > budget:
            self.refused.add(h.scan_id)
            return self.reject(p.ProtocolError("limits", f"scan {h.scan_id} needs {_size(need)}, over the memory "
                                               f"budget {_size(budget)}; bin more or raise "
                                               "limits.memory_budget_bytes"), h.scan_id)
        effects: list[Effect] = []
        try:
            folder = storage.scan_folder(self.settings.storage.data_dir, h.scan_id)
        except OSError as exc:  # acquire anyway, in memory: the folder is created when it can be
            folder = storage.scan_folder(self.settings.storage.data_dir, h.scan_id, create=False)
            effects.append(StorageFailure(h.scan_id, "folder", f"scan {h.scan_id}: cannot create {folder} ({exc}); "
                                          "acquiring in memory, the files are written when the folder is writable",
                                          True))
        self.scan = Scan(h, self.settings, folder, self.clock())
        if effects:
            self.scan.failures.add("folder")
        self._next_progress = self._next_live = 0.0
        self._next_checkpoint = self.clock() + self.settings.storage.checkpoint_interval_s
        started = Publish(p.ScanStarted, dict(scan_id=h.scan_id, scan=h, binning=self.settings.binning.factor,
                                              binned_shape=list(self.scan.acc.binned_shape), folder=str(folder)))
        log = LogEvent(logging.INFO, f"scan {h.scan_id}: acquiring {h.shape[0]}x{h.shape[1]}x{h.channels}, "
                                     f"{h.frames} frames -> {folder}")
        return [*effects, log, started]

    def _on_chunk(self, msg: p.Message) -> list[Effect]:
        h: p.ScanChunk = msg.header  # type: ignore[assignment]
        scan = self.scan
        if scan is None or scan.scan_id != h.scan_id:
            effects = self._stray_chunk(h)
            if self.scan is None or self.scan.scan_id != h.scan_id:
                return effects
            return effects + self._on_chunk(msg)  # the chunk that began a scan under a reused id
        try:
            p.check_chunk_against_scan(h, msg.arrays, scan.start)
        except p.ProtocolError as err:
            return self.reject(err, h.scan_id)
        if h.encoding == "events":
            delta = scan.acc.add_events(h.frame, h.first_pixel, h.n_pixels, msg.arrays["pixel"], msg.arrays["channel"])
        else:
            delta = scan.acc.add_dense(h.frame, h.first_pixel, msg.arrays["counts"])
        if delta.duplicate:
            scan.duplicates += 1
            self.counters.duplicates += 1
            return []
        self._hand_over(scan, delta)
        scan.dirty = True
        self.counters.events += delta.n_events
        scan.rate.add(self.clock(), scan.acc.events)
        effects: list[Effect] = []
        if h.frame > scan.frame:
            scan.frame = h.frame
            # the previous frame is complete: refresh at least once per frame (threaded: at most two
            # refreshes in flight, so a worker slower than the frames holds ingest back, not memory)
            effects += self._live_results(keep=1) + self._live(scan)
        return effects

    def _stray_chunk(self, h: p.ScanChunk) -> list[Effect]:
        reused = self.restarts.pop(h.scan_id, None) if h.frame == 0 else None
        if reused is not None:
            self.ended.pop(h.scan_id, None)
            effects: list[Effect] = [LogEvent(logging.WARNING, f"scan id {h.scan_id} reused by a new scan; "
                                              "the finished one keeps its own folder")]
            if self.scan is not None:
                effects += self._finish("aborted", f"superseded by scan {h.scan_id}")
            return effects + self._begin(reused)
        if h.scan_id in self.ended:
            self.counters.late += 1
            return self.reject(p.ProtocolError("late", f"chunk for scan {h.scan_id} after its scan.end"), h.scan_id)
        if h.scan_id in self.refused:
            return []
        return self.reject(p.ProtocolError("no_scan", f"chunk for scan {h.scan_id} before its scan.start; "
                                           "waiting for the next repeated scan.start"), h.scan_id)

    def _on_end(self, msg: p.Message) -> list[Effect]:
        h: p.ScanEnd = msg.header  # type: ignore[assignment]
        if self.scan is None or self.scan.scan_id != h.scan_id:
            return []
        # the publisher's own count, clamped: a wrong or hostile number must not distort the dose
        self.scan.meta.frames_completed = min(h.frames_completed, self.scan.start.frames)
        return self._finish(h.status, h.reason)

    # ------------------------------------------------------------------ time

    def tick(self) -> list[Effect]:
        effects = self._housekeeping()
        scan = self.scan
        if scan is None:
            zero_spares()  # idle: zero a finished scan's memory now, so the next scan starts at once
            return effects
        now = self.clock()
        if now - scan.last_message > self.settings.inbound.heartbeat_timeout_s:
            return effects + self._finish("aborted", f"no message from the acquisition PC for "
                                                     f"{self.settings.inbound.heartbeat_timeout_s:.0f} s")
        return effects + self._acquiring_tick(scan, now)

    def _housekeeping(self) -> list[Effect]:
        """Retry unsaved scans; finish checkpoints whose scan did not come back after a restart."""
        now, effects = self.clock(), self._checkpoint_results(self.writer.poll())
        if self.unsaved and now >= self._next_retry:
            self._next_retry = now + RETRY_S
            effects += self.flush()
        for scan_id, (_, deadline) in list(self.resumable.items()):
            if now > deadline and (self.scan is None or self.scan.scan_id != scan_id):
                scan, more = self._restore(scan_id)
                effects += more
                if scan is not None:
                    effects += self._finish("aborted", "the daemon restarted and the scan did not resume "
                                                       f"within {self.settings.inbound.heartbeat_timeout_s:.0f} s",
                                            scan)
        return effects

    def _acquiring_tick(self, scan: Scan, now: float) -> list[Effect]:
        self._hand_over(scan)
        effects: list[Effect] = self._live_results()
        if now >= self._next_progress:
            self._next_progress = now + self.settings.outbound.progress_interval_s
            effects.append(self._progress(scan))
        if now >= self._next_live and not self._live_pending:
            effects += self._live(scan)
        interval = self.settings.storage.checkpoint_interval_s
        if interval > 0 and now >= self._next_checkpoint:
            self._next_checkpoint = now + interval
            effects += self.checkpoint()
        return effects

    def _progress(self, scan: Scan) -> Publish:
        acc, start = scan.acc, scan.start
        fraction = float(acc.coverage.mean())
        elapsed = self.clock() - scan.t_start
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        fields = dict(scan_id=scan.scan_id, frame=scan.frame, frames=start.frames, fraction=fraction,
                      counts_per_pixel=acc.events / start.n_pixels, events_per_s=scan.rate.per_s(), eta_s=eta,
                      gaps=scan.gaps, duplicates=scan.duplicates, rejected=scan.rejected,
                      incomplete_fraction=_lost_fraction(acc, scan.frame))
        return Publish(p.ScanProgress, fields, {"count_map": _downsample(acc.counts_map.reshape(acc.binned_shape))})

    def _live(self, scan: Scan, keep: int | None = None) -> list[Effect]:
        """Request a live refresh over every count so far; the element maps are read now, from the
        cube. Returns the refreshes finished so far as ``scan.live`` publications (inline: this
        one too); ``keep``: first wait until at most that many are still running."""
        self._next_live = self.clock() + self.settings.outbound.live_interval_s
        self._hand_over(scan)
        if scan.acc.events:
            try:
                elements, maps = _element_maps(scan) if self.settings.live.element_maps else ([], None)
            except Exception as exc:
                self._live_failed(exc)
                elements, maps = [], None
            fields = dict(scan_id=scan.scan_id, frame=scan.frame, elements=elements,
                          energy_offset_kev=scan.start.energy_offset_kev, energy_scale_kev=scan.start.energy_scale_kev)
            comps = self.live_worker.submit(scan.live.refresh, self.settings.live.pca_components)
            self._live_pending.append((comps, fields, maps))
        return self._live_results(keep)

    def _live_results(self, keep: int | None = None) -> list[Effect]:
        """The finished refreshes, in the order requested; ``keep``: wait until at most that many
        are still running (None: none waited for). A failed refresh is logged and skipped."""
        effects: list[Effect] = []
        while self._live_pending:
            future, fields, maps = self._live_pending[0]
            if not future.done() and (keep is None or len(self._live_pending) <= keep):
                break
            self._live_pending.popleft()
            if (exc := future.exception()) is not None:
                self._live_failed(exc)
                continue
            comps = future.result()
            arrays = {"scree": comps.explained_variance_ratio[:32].astype(np.float32),
                      "components": comps.maps.astype(np.float32)}
            if maps is not None:
                arrays["element_maps"] = maps
            effects.append(Publish(p.ScanLive, {**fields, "n_components": int(comps.maps.shape[0])}, arrays))
        return self._live_error_effects() + effects

    def _live_failed(self, exc: BaseException) -> None:
        """The live PCA is a preview: its failure must cost neither the counts nor the daemon."""
        if isinstance(exc, LiveTaskFailed) and exc.__cause__ is not None:
            exc = exc.__cause__
        self._live_errors.append(f"live PCA failed ({type(exc).__name__}: {exc}); the live view skips it, "
                                 "the counts and the scan-end analysis are unaffected")

    def _live_error_effects(self) -> list[Effect]:
        errors, self._live_errors = self._live_errors, []
        return [LogEvent(logging.ERROR, e) for e in errors]

    def _wait_live(self) -> None:
        try:
            self.live_worker.wait()
        except Exception as exc:
            self._live_failed(exc)

    def _hand_over(self, scan: Scan, delta: ChunkDelta | None = None) -> None:
        """A chunk's counts to the live worker (None: those held back). Threaded, chunks under
        ``LIVE_BATCH_EVENTS`` go together; a refresh request or a tick hands over what is held."""
        if delta is not None:
            scan.batch.append(delta)
            scan.batch_events += delta.n_events
            if self.live_worker.threaded and scan.batch_events < LIVE_BATCH_EVENTS:
                return
        if scan.batch:
            batch, events = scan.batch, scan.batch_events
            scan.batch, scan.batch_events = [], 0
            try:
                self.live_worker.post(_add_live, scan.live, batch, events=events)
            except Exception as exc:  # inline: this batch's failure; threaded: an earlier one's
                self._live_failed(exc)

    def drain_live(self) -> list[Effect]:
        """Wait until the live worker has added every count received and finished every refresh
        requested; their publications."""
        if self.scan is not None:
            self._hand_over(self.scan)
        self._wait_live()
        return self._live_results(keep=0)

    def close(self) -> None:
        """Stop the live worker's thread (threaded mode), after the work handed over."""
        self.live_worker.close()

    # ------------------------------------------------------------------ scan end and analysis

    def _finish(self, status: str, reason: str | None, scan: Scan | None = None) -> list[Effect]:
        """End a scan (the current one, or one restored from a checkpoint) and save its counts."""
        current = scan is None or scan is self.scan
        scan = scan or self.scan
        assert scan is not None
        if current:
            self.scan = None
        meta = scan.meta
        scan.expected = scan.start.frames if status == "completed" else max(meta.frames_completed, scan.frame + 1)
        scan.status, scan.reason = status, reason
        meta.status = status
        meta.frames_completed = meta.frames_completed or (scan.frame + 1 if scan.acc.events else 0)
        meta.incomplete_fraction = scan.acc.incomplete_fraction(scan.expected)
        self.ended[scan.scan_id] = scan.folder
        self.history.append({"scan_id": scan.scan_id, "folder": str(scan.folder), "status": status,
                             "incomplete_fraction": meta.incomplete_fraction, "finished": None,
                             "reason": reason, "meta": meta.to_dict()})
        missing = scan.acc.missing_by_frame(scan.expected)
        msg = (f"scan {scan.scan_id}: {status}" + (f" ({reason})" if reason else "") +
               f", {scan.acc.events} events, incomplete {meta.incomplete_fraction:.2%}"
               + (f", missing pixels by frame {missing}" if missing else "") + "; analysing")
        effects: list[Effect] = [LogEvent(logging.INFO, msg)]
        if current:
            effects += [self._progress(scan), *self._live(scan, keep=0)]
            self._wait_live()  # and the worker holds none of its arrays: the next scan reuses them
            effects += self._live_error_effects()
        return effects + self._save(scan)

    def _save(self, scan: Scan) -> list[Effect]:
        """Write a finished scan's cube and dose map, then hand it to analysis. If the data folder
        cannot be written, the scan stays in memory (``unsaved``) and is retried."""
        try:
            scan.folder.mkdir(parents=True, exist_ok=True)
            acc = scan.acc  # written block by block: a sparse store never becomes one dense cube in memory
            cube_path = storage.save_array_blocks(scan.folder / storage.CUBE_NPY, (*acc.binned_shape, acc.channels),
                                                  acc.cube_dtype(), acc.row_blocks())
            dose_path = storage.save_array(scan.folder / storage.DOSE_NPY, scan.acc.dose(scan.expected))
        except OSError as exc:
            first = scan.scan_id not in self.unsaved
            self.unsaved[scan.scan_id] = scan
            detail = (f"scan {scan.scan_id}: cannot write its counts to {scan.folder} ({exc}); they stay in "
                      f"memory and are written when the folder is writable again (retried every {RETRY_S:.0f} s, "
                      "or at once on a `flush` request)")
            return [StorageFailure(scan.scan_id, "save", detail, first)]
        effects: list[Effect] = []
        if self.unsaved.pop(scan.scan_id, None) is not None:
            effects.append(LogEvent(logging.WARNING, f"scan {scan.scan_id}: counts written to {scan.folder} "
                                                     "after the storage failure"))
        effects += self._checkpoint_results(self.writer.wait())  # a write in flight must not outlive the scan
        checkpoint.remove(scan.folder)  # the saved cube supersedes it
        return [*effects, self._job(scan.scan_id, scan.folder, scan.meta, cube_path, dose_path, {})]

    def flush(self) -> list[Effect]:
        """Try again to write every scan whose files could not be written."""
        effects: list[Effect] = []
        for scan in list(self.unsaved.values()):
            effects += self._save(scan)
        return effects

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self, wait: bool = False) -> list[Effect]:
        """Start writing the running scan's checkpoint (a copy, on the writer thread), if anything
        changed since the last one; ``wait``: finish it before returning (tests, a crash simulation)."""
        effects = self._checkpoint_results(self.writer.wait() if wait else self.writer.poll())
        scan = self.scan
        if scan is not None and scan.dirty and not self.writer.busy:
            try:
                scan.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                return effects + self._checkpoint_results([(scan.scan_id, exc)])
            ck = checkpoint.Checkpoint(scan.start, *scan.acc.nonzero_cells(), scan.acc.coverage.copy(), scan.frame,
                                       scan.gaps, scan.duplicates, scan.rejected, dict(self.last_seq), scan.acc.events)
            self.writer.submit(scan.scan_id, scan.folder, ck)
            scan.dirty = False
        if wait:
            effects += self._checkpoint_results(self.writer.wait())
        return effects

    def _checkpoint_results(self, results: list[tuple[str, BaseException | None]]) -> list[Effect]:
        effects: list[Effect] = []
        for scan_id, exc in results:
            scan = self.scan if self.scan is not None and self.scan.scan_id == scan_id else None
            if exc is None:
                self.counters.checkpoints += 1
                continue
            if scan is not None:
                scan.dirty = True  # try again at the next interval
            first = scan is None or "checkpoint" not in scan.failures
            if scan is not None:
                scan.failures.add("checkpoint")
            effects.append(StorageFailure(scan_id, "checkpoint", f"scan {scan_id}: cannot write a checkpoint "
                                          f"({type(exc).__name__}: {exc}); the counts are safe in memory, retrying",
                                          first))
        return effects

    def load_checkpoints(self, data_dir: Path) -> list[Effect]:
        """At start-up: scans a previous daemon left unfinished. Each resumes when its publisher
        sends anything for it, or is finished as aborted after ``heartbeat_timeout_s``."""
        effects: list[Effect] = []
        deadline = self.clock() + self.settings.inbound.heartbeat_timeout_s
        for part in Path(data_dir).glob(f"*/.{checkpoint.FILE}.*.part"):  # a write the crash interrupted
            part.unlink(missing_ok=True)
        for path in checkpoint.find(data_dir):
            try:
                head = checkpoint.read_header(path)
                scan_id = head["start"]["scan_id"]
            except Exception as exc:  # a damaged file must not stop the daemon; leave it for a person
                effects.append(LogEvent(logging.ERROR, f"checkpoint {path} cannot be read ({exc}); left as it is"))
                continue
            self.resumable[scan_id] = (path.parent, deadline)
            for source, seq in head["last_seq"].items():  # so the chunks missed while down count as a gap
                self.last_seq[source] = max(int(seq), self.last_seq.get(source, 0))
            effects.append(LogEvent(logging.WARNING, f"scan {scan_id}: unfinished, checkpoint in {path.parent} "
                                                     f"({head['events']} events up to frame {head['frame']}); "
                                                     "resuming when its publisher sends"))
        return effects

    def _maybe_resume(self, msg: p.Message) -> list[Effect]:
        h = msg.header
        if h.scan_id not in self.resumable or h.topic not in ("scan.start", "scan.chunk", "scan.end"):
            return []
        if self.scan is not None and (h.topic != "scan.start" or self.scan.scan_id == h.scan_id):
            return []  # only a scan.start supersedes the scan being acquired
        effects: list[Effect] = []
        scan, more = self._restore(h.scan_id)
        effects += more
        if scan is None:
            return effects
        if isinstance(h, p.ScanStart) and (tuple(h.shape), h.channels, h.frames) != (
                tuple(scan.start.shape), scan.start.channels, scan.start.frames):
            # a reused scan id for a different scan: finish the old one, the new one starts afresh
            return effects + self._finish("aborted", "daemon restarted; the scan id was reused by a new scan", scan)
        if self.scan is not None:
            effects += self._finish("aborted", f"superseded by scan {h.scan_id}")
        self.scan = scan
        self._next_progress = self._next_live = 0.0
        self._next_checkpoint = self.clock() + self.settings.storage.checkpoint_interval_s
        missing = scan.acc.missing_by_frame(scan.frame + 1)
        effects.append(LogEvent(logging.WARNING, f"scan {scan.scan_id}: resumed from its checkpoint after a "
                                                 f"daemon restart ({scan.acc.events} events kept, up to frame "
                                                 f"{scan.frame}; pixels missing so far by frame {missing})"))
        effects.append(Publish(p.ScanStarted, dict(scan_id=scan.scan_id, scan=scan.start,
                                                   binning=self.settings.binning.factor,
                                                   binned_shape=list(scan.acc.binned_shape), folder=str(scan.folder))))
        return effects

    def _restore(self, scan_id: str) -> tuple[Scan | None, list[Effect]]:
        folder, _ = self.resumable.pop(scan_id)
        try:
            ck = checkpoint.load(checkpoint.path_in(folder))
            scan = Scan(ck.start, self.settings, folder, self.clock())
            scan.acc.restore(ck.keys, ck.counts, ck.coverage)
        except Exception as exc:
            return None, [LogEvent(logging.ERROR, f"scan {scan_id}: checkpoint in {folder} cannot be restored "
                                                  f"({type(exc).__name__}: {exc}); left as it is")]
        # The live PCA's statistics are sums over the binned counts: rebuilt exactly from the cube.
        channels = scan.start.channels
        if ck.keys.size:
            scan.live.update(ck.keys // channels, ck.keys % channels, ck.counts.astype(np.int64))
        scan.frame, scan.gaps, scan.duplicates, scan.rejected = ck.frame, ck.gaps, ck.duplicates, ck.rejected
        scan.meta.frames_completed = 0
        return scan, []

    def interrupt(self, reason: str) -> list[Effect]:
        """End the current scan without analysing it (daemon shutdown): its counts are saved, and
        result.json says the analysis was not run, so `edxlive analyze` or a reanalysis can follow."""
        effects = self._finish("aborted", reason)
        job = next((e for e in effects if isinstance(e, AnalysisJob)), None)
        if job is None:  # the folder is not writable: StorageFailure says so
            return effects
        self.pending.pop(f"{job.scan_id}#{job.revision}", None)
        cube = np.load(job.cube_path) if job.cube_path else np.zeros(0)
        storage.write_result_json(job.folder, storage.result_document(
            job.meta, cube, {"analysis": f"not run: {reason}"}))
        return [e for e in effects if not isinstance(e, AnalysisJob)]

    def _job(self, scan_id: str, folder: Path, meta: ScanMeta, cube_path: Path | None, dose_path: Path | None,
             params: dict[str, Any]) -> AnalysisJob:
        rev = self.revisions.get(scan_id, -1) + 1
        self.revisions[scan_id] = rev
        job = AnalysisJob(scan_id, folder, meta, cube_path, dose_path, rev, params)
        self.pending[f"{scan_id}#{rev}"] = job
        return job

    def analysis_finished(self, job: AnalysisJob, outcome: dict[str, Any] | BaseException) -> list[Effect]:
        self.pending.pop(f"{job.scan_id}#{job.revision}", None)
        failed = isinstance(outcome, BaseException)
        reason = f"{type(outcome).__name__}: {outcome}" if failed else None
        entry = next((e for e in reversed(self.history) if e["scan_id"] == job.scan_id), None)
        if entry is not None:
            entry["finished"] = time.time()
            entry["analysis"] = "failed" if failed else "ok"
        doc: dict[str, Any] = {} if failed else outcome  # type: ignore[assignment]
        effects: list[Effect] = self._record_failure(job, reason) if failed else []
        fields = dict(scan_id=job.scan_id, revision=job.revision, status="failed" if failed else "ok",
                      reason=reason, workflows=doc.get("workflows", {}), agreement=doc.get("agreement", {}),
                      verdict=doc.get("verdict", {}), energy_offset_kev=job.meta.energy_offset_kev,
                      energy_scale_kev=job.meta.energy_scale_kev, folder=str(job.folder))
        paths = sorted(str(x) for x in job.folder.iterdir() if not x.name.startswith("."))
        level = logging.ERROR if failed else logging.INFO
        outcome = f"failed: {reason}" if failed else "done"
        text = f"scan {job.scan_id}: analysis {outcome} (revision {job.revision})"
        return [*effects, LogEvent(level, text), Publish(p.ScanResult, fields, _result_arrays(job.folder, doc)),
                Publish(p.ScanFinished, dict(scan_id=job.scan_id, status=job.meta.status if not failed else "failed",
                                             folder=str(job.folder), paths=paths,
                                             incomplete_fraction=job.meta.incomplete_fraction))]

    def _record_failure(self, job: AnalysisJob, reason: str | None) -> list[Effect]:
        """A failed analysis still leaves a result.json that says so, unless an earlier revision's stands."""
        path = job.folder / storage.RESULT_JSON
        if path.exists() and job.revision > 0:
            return []
        try:
            cube = np.load(job.cube_path, mmap_mode="r") if job.cube_path and job.cube_path.exists() else np.zeros(0)
            storage.write_result_json(job.folder, storage.result_document(
                job.meta, cube, {"analysis": "failed", "analysis_error": reason, "revision": job.revision}))
        except OSError as exc:
            return [StorageFailure(job.scan_id, "save", f"scan {job.scan_id}: cannot write result.json ({exc})", True)]
        return []

    def reanalyze(self, scan_id: str | None, params: dict[str, Any]) -> list[Effect]:
        entry = next((e for e in reversed(self.history) if scan_id in (None, e["scan_id"])), None)
        if entry is None:
            return self.reject(p.ProtocolError("reanalyze", f"no finished scan {scan_id or ''} to re-analyse"))
        folder = Path(entry["folder"])
        meta = ScanMeta.from_dict(entry["meta"])
        cube = folder / storage.CUBE_NPY
        dose = folder / storage.DOSE_NPY
        return [self._job(entry["scan_id"], folder, meta, cube if cube.exists() else None,
                          dose if dose.exists() else None, params)]


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def _lost_fraction(acc: Accumulator, frame: int) -> float:
    """Share of (pixel, frame) pairs lost so far, over the frames already finished."""
    if frame <= 0:
        return 0.0
    return acc.incomplete_fraction(frame)


def _downsample(image: np.ndarray, limit: int = 128) -> np.ndarray:
    step = max(1, -(-max(image.shape) // limit))
    ny, nx = (-(-image.shape[0] // step)) * step, (-(-image.shape[1] // step)) * step
    padded = np.zeros((ny, nx), dtype=np.float64)
    padded[: image.shape[0], : image.shape[1]] = image
    return padded.reshape(ny // step, step, nx // step, step).sum(axis=(1, 3)).astype(np.float32)


def _element_maps(scan: Scan) -> tuple[list[str], np.ndarray | None]:
    """Line-window maps (±1 FWHM around each element's main line) from the binned cube."""
    from edxlive.service.pipeline.xray import main_line_window

    names, windows = [], []
    for el in scan.start.elements:
        window = main_line_window(el, scan.meta)
        if window is None:
            continue
        names.append(el)
        windows.append(window)
    maps = list(scan.acc.channel_sums(windows).reshape(len(windows), *scan.acc.binned_shape)) if windows else []
    return names, (np.array(maps, dtype=np.float32) if maps else None)


def _add_live(live: LivePCA, deltas: list[ChunkDelta]) -> None:
    for delta in deltas:
        live.add(delta)


def _result_arrays(folder: Path, doc: dict[str, Any]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for name in doc.get("workflows", {}):
        labels = folder / f"labels_{name}.npy"
        spectra = folder / f"mean_spectra_{name}.npy"
        if labels.exists():
            arrays[f"labels/{name}"] = np.load(labels).astype(np.int16)
        if spectra.exists():
            arrays[f"spectra/{name}"] = np.load(spectra).astype(np.float32)
    return arrays

"""`edxlive simulate`: the stand-in for the acquisition PC.

It binds, prints ``endpoint: <address>`` first (so scripts and tests can read the port), waits for
the daemon to subscribe, then replays scans: scan.start before every frame, the frame's chunks,
scan.end. Pacing spreads the chunks over ``--scan-seconds``; ``--fast`` sends as fast as the socket
takes them. ``--drop`` and ``--duplicate`` inject faults.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from edxlive.clients.publisher import AcquisitionPublisher
from edxlive.clients.sources import ScanSource, load_source


class SimulateError(ValueError):
    """Bad input to the simulator (one line, names the problem and the remedy)."""


@dataclass
class Tally:
    frames: int = 0
    chunks: int = 0
    events: int = 0
    dropped: int = 0
    duplicated: int = 0


@dataclass
class Plan:
    """How to replay: chunking, encoding, pacing and faults."""

    chunk_pixels: int
    encoding: str
    seconds: float
    fast: bool
    drop: float
    duplicate: float
    rng: np.random.Generator


def run_simulate(*, source: str, endpoint: str, frames: int | None, scan_seconds: float, fast: bool,
                 chunk_pixels: int | None, encoding: str, loop: bool, scans: int, drop: float,
                 duplicate: float, seed: int | None, scan_id: str | None, wait_subscribers: int,
                 wait_timeout: float, bin_energy: int, downsample: int, list_phantoms: bool,
                 quiet: bool) -> int:
    if list_phantoms:
        from edxlive.clients.phantoms import PHANTOMS

        for name, text in PHANTOMS.items():
            print(f"{name:12s} {text}")
        return 0
    _check_options(encoding, drop, duplicate, frames, scans, scan_seconds)
    scan = _load(source, frames, seed, bin_energy, downsample, scan_id)
    nx = scan.meta.shape[1]
    plan = Plan(chunk_pixels or nx, encoding, scan_seconds, fast, drop, duplicate, np.random.default_rng(seed))
    with _publisher(endpoint) as pub:
        print(f"endpoint: {pub.endpoint}", flush=True)
        if wait_subscribers and not pub.wait_for_subscribers(wait_subscribers, wait_timeout):
            raise SimulateError(f"no daemon subscribed to {pub.endpoint} within {wait_timeout:.0f} s; "
                                "start `edxlive serve --connect` to it, or raise --wait-timeout")
        index = 0
        while loop or index < scans:
            sid = scan.meta.scan_id if scans == 1 and not loop else f"{scan.meta.scan_id}-{index + 1}"
            tally, took = _send_scan(pub, scan, sid, plan, quiet)
            print(_summary(sid, tally, took), flush=True)
            index += 1
        time.sleep(0.2)  # let the last messages leave before the socket closes
    return 0


def _check_options(encoding: str, drop: float, duplicate: float, frames: int | None, scans: int,
                   seconds: float) -> None:
    if encoding not in ("events", "dense"):
        raise SimulateError(f"--encoding {encoding!r} is not known; use events or dense")
    for name, value in (("--drop", drop), ("--duplicate", duplicate)):
        if not 0.0 <= value < 1.0:
            raise SimulateError(f"{name} {value} is not a probability; give a value in [0, 1)")
    if frames is not None and frames < 1:
        raise SimulateError(f"--frames {frames} must be at least 1")
    if scans < 1 or seconds < 0:
        raise SimulateError("--scans must be >= 1 and --scan-seconds >= 0")


def _load(source: str, frames: int | None, seed: int | None, bin_energy: int, downsample: int,
          scan_id: str | None) -> ScanSource:
    from edxlive.service.hsio import LoadError

    try:
        return load_source(source, frames=frames, seed=seed, bin_energy=bin_energy, downsample=downsample,
                           scan_id=scan_id)
    except LoadError as exc:
        raise SimulateError(str(exc)) from None
    except KeyError as exc:
        raise SimulateError(str(exc.args[0]) if exc.args else "unknown source") from None


def _publisher(endpoint: str) -> AcquisitionPublisher:
    import zmq

    try:
        return AcquisitionPublisher(endpoint)
    except zmq.ZMQError as exc:
        raise SimulateError(f"cannot bind {endpoint} ({exc}); choose a free port, or port 0") from None


def scan_fields(scan: ScanSource, scan_id: str) -> dict[str, Any]:
    m = scan.meta
    det = m.detector
    return dict(
        scan_id=scan_id, shape=list(m.shape), channels=m.channels, energy_offset_kev=m.energy_offset_kev,
        energy_scale_kev=m.energy_scale_kev, beam_energy_kev=m.beam_energy_kev, frames=len(scan.frames),
        dwell_time_s=m.dwell_time_s, pixel_size_nm=m.pixel_size_nm, elements=list(m.elements),
        microscope=m.microscope, sample=m.sample or scan.name,
        detector=dict(name=det.name, elevation_deg=det.elevation_deg, azimuth_deg=det.azimuth_deg,
                      count=det.count, energy_resolution_mn_ka_ev=det.energy_resolution_mn_ka_ev),
    )


def _send_scan(pub: AcquisitionPublisher, scan: ScanSource, scan_id: str, plan: Plan,
               quiet: bool) -> tuple[Tally, float]:
    fields = scan_fields(scan, scan_id)
    npix = scan.meta.shape[0] * scan.meta.shape[1]
    starts = range(0, npix, plan.chunk_pixels)
    total_chunks = len(scan.frames) * len(starts)
    interval = 0.0 if plan.fast else plan.seconds / max(total_chunks, 1)
    tally, t0 = Tally(), time.monotonic()
    last_beat = t0
    with _progress(quiet, total_chunks, scan_id) as advance:
        for f, frame in scan.iter_frames():
            pub.start(**fields)
            for first in starts:
                _send_chunk(pub, scan, scan_id, f, frame, first, min(first + plan.chunk_pixels, npix), plan, tally)
                advance()
                last_beat = _pace(pub, t0, tally.chunks, interval, last_beat)
            tally.frames += 1
        pub.end(scan_id, frames_completed=tally.frames)
    return tally, time.monotonic() - t0


def _send_chunk(pub: AcquisitionPublisher, scan: ScanSource, scan_id: str, f: int, frame: Any, first: int,
                stop: int, plan: Plan, tally: Tally) -> None:
    tally.chunks += 1
    if plan.drop and plan.rng.random() < plan.drop:
        pub.skip_seq()
        tally.dropped += 1
        return
    if plan.encoding == "events":
        pix, chan = frame.events(first, stop)
        pub.chunk_events(scan_id, f, first, stop - first, pix, chan)
        tally.events += int(pix.size)
    else:
        counts = frame.dense(first, stop, scan.meta.channels)
        pub.chunk_dense(scan_id, f, first, counts)
        tally.events += int(counts.sum())
    if plan.duplicate and plan.rng.random() < plan.duplicate:
        pub.repeat_last()
        tally.duplicated += 1


def _pace(pub: AcquisitionPublisher, t0: float, sent: int, interval: float, last_beat: float) -> float:
    now = time.monotonic()
    if interval > 0:
        delay = t0 + sent * interval - now
        if delay > 0:
            time.sleep(delay)
            now = time.monotonic()
    if now - last_beat >= 1.0:
        pub.heartbeat("acquiring")
        pub.drain_subscriptions()
        return now
    return last_beat


class _progress:
    """A rich progress bar on stderr when it is a terminal; otherwise nothing."""

    def __init__(self, quiet: bool, total: int, label: str) -> None:
        self.enabled = not quiet and sys.stderr.isatty()
        self.total, self.label = total, label

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._bar = Progress("[bold]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                             console=Console(stderr=True), transient=True)
        self._bar.__enter__()
        task = self._bar.add_task(self.label, total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.__exit__(*exc)


def _summary(scan_id: str, t: Tally, took: float) -> str:
    return (f"sent scan {scan_id}: {t.frames} frames, {t.chunks} chunks, {t.events:,} events "
            f"(dropped {t.dropped} chunks, duplicated {t.duplicated}) in {took:.1f} s")


"""Sustained ingest through a real socket: X-ray events/s, `events` encoding, against the detector.

Baseline: the fastest EDX detectors, ~2 M counts/s (a fixed reference, printed for the ratio),
and, measured in this run, the raw ZeroMQ transfer of the same frames with no decoding.
Figure: publisher (a separate process, `AcquisitionPublisher`) -> tcp://127.0.0.1 -> the daemon's
receive path in this process: `protocol.decode`, `Engine.handle` (binned accumulation with
per-frame coverage and the live-PCA statistics). Loss is checked: every event sent is counted.

    python benchmarks/bench_ingest.py [--size 256] [--channels 2048] [--events-per-px 20] [--frames 4]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq
from common import machine

DETECTOR_RATE = 2e6


def _chunks(size: int, channels: int, per_px: float, frames: int, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    n_pix = size * size
    rows = []
    for frame in range(frames):
        for y in range(size):
            n = rng.poisson(per_px / frames * size)
            rows.append((frame, y * size, np.sort(rng.integers(0, size, n)).astype("<u4"),
                         rng.integers(0, channels, n).astype("<u2")))
    return n_pix, rows


def publisher(endpoint_q: mp.Queue, args: argparse.Namespace, raw: bool) -> None:
    from edxlive.clients.publisher import AcquisitionPublisher

    _, rows = _chunks(args.size, args.channels, args.events_per_px, args.frames)
    with AcquisitionPublisher("tcp://127.0.0.1:0", sndhwm=0) as pub:
        endpoint_q.put(pub.endpoint)
        pub.wait_for_subscribers(1, 30)
        time.sleep(0.2)
        scan = dict(scan_id="bench", shape=(args.size, args.size), channels=args.channels, energy_offset_kev=0.0,
                    energy_scale_kev=0.01, frames=args.frames)
        pub.start(**scan)
        for frame, first, pix, chan in rows:
            pub.chunk_events("bench", frame, first, args.size, pix, chan)
        pub.end("bench", args.frames)
        time.sleep(1.0)


def receive(args: argparse.Namespace, raw: bool) -> tuple[float, int, int]:
    from edxlive.service import protocol as p
    from edxlive.service.config import Settings
    from edxlive.service.session import Engine

    q: mp.Queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=publisher, args=(q, args, raw))
    proc.start()
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(q.get(timeout=60))
    engine = Engine(Settings(storage={"data_dir": Path(tempfile.mkdtemp())}))  # type: ignore[arg-type]
    events = 0
    t0 = None
    while True:
        frames = sub.recv_multipart(copy=True)
        t0 = t0 or time.perf_counter()
        if frames[0] == b"scan.end":
            break
        if raw:
            if frames[0] == b"scan.chunk":
                events += len(frames[2]) // 4
            continue
        msg = p.decode(frames)
        engine.handle(msg)
    seconds = time.perf_counter() - t0
    proc.join()
    if not raw:
        events = engine.counters.events
    return seconds, events, engine.counters.gaps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--channels", type=int, default=2048)
    ap.add_argument("--events-per-px", type=float, default=20.0)
    ap.add_argument("--frames", type=int, default=4)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    _, rows = _chunks(args.size, args.channels, args.events_per_px, args.frames)
    sent = sum(r[2].size for r in rows)
    print(f"{args.size}x{args.size} px x {args.channels} ch, {args.frames} frames, {sent:,} events in "
          f"{len(rows)} chunks (one scan line each)")
    raw_s, raw_n, _ = receive(args, raw=True)
    s, n, gaps = receive(args, raw=False)
    print(f"raw ZeroMQ transfer (baseline) : {raw_n / raw_s / 1e6:8.1f} M events/s")
    print(f"edxlive ingest                 : {n / s / 1e6:8.1f} M events/s  "
          f"({n / s / (raw_n / raw_s):.2f}x raw transfer, {n / s / DETECTOR_RATE:.1f}x a 2 M counts/s detector)")
    print(f"loss: {sent - n} of {sent:,} events, {gaps} sequence gaps")


if __name__ == "__main__":
    main()

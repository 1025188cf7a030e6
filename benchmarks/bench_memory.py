"""Peak memory of the daemon ingesting a large scan, and how ingest cost grows with scan size.

Default: a real daemon subprocess (`edxlive serve`) ingests a 1024×1024 × 4096-channel scan in 20
frames at ~10 counts per pixel (a realistic sparse STEM-EDX stream, ~10 M X-rays), sent by a
publisher in this process at 20 M counts/s in chunks of 16 scan lines; element maps on. Figure:
the daemon process's peak RSS (VmHWM, read from /proc when its saved cube appears, i.e. after the
scan-end write). Baseline: the dense uint32 cube such a scan needs without binning (16 GiB) and the
binned one (4 GiB). Exactness: the saved cube holds exactly the counts sent, per binned pixel.
The analysis worker (a separate process) is stopped before it starts: it is not the daemon.

``--scaling``: ingest rate (per CPU-second) and peak RSS of the receive path (`protocol.decode` +
`Engine.handle`, a live refresh per frame) in a fresh subprocess per size, for 128², 256², 512² and
1024² binned pixels × 1024, 2048 and 4096 channels, ~10 counts per raw pixel over 4 frames.

    python benchmarks/bench_memory.py [--size 1024] [--channels 4096] [--frames 20] [--counts 10]
    python benchmarks/bench_memory.py --scaling
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq
from common import event_chunks, machine, start_daemon, stop_daemon, vm_hwm, vm_rss, wait_for_file

GIB = 2**30
ELEMENTS = ["Fe", "S", "Cu"]


def _scan(size: int, channels: int, frames: int, scan_id: str = "mem") -> dict:
    return dict(scan_id=scan_id, shape=(size, size), channels=channels, energy_offset_kev=0.0,
                energy_scale_kev=0.01, frames=frames, elements=ELEMENTS)


def daemon_peak(args: argparse.Namespace) -> None:
    from edxlive.clients.publisher import AcquisitionPublisher

    size, ch, frames = args.size, args.channels, args.frames
    events = args.counts * size * size
    data_dir = Path(tempfile.mkdtemp(prefix="edxlive-mem-"))
    with AcquisitionPublisher("tcp://127.0.0.1:0", sndhwm=0) as pub:
        daemon = start_daemon(data_dir, pub.endpoint, EDXLIVE_ANALYSIS__WORKFLOWS='["pca_gmm"]')
        try:
            time.sleep(1.0)
            rest = vm_rss(daemon.pid)
            pub.wait_for_subscribers(1, 60)
            time.sleep(0.3)
            pub.start(**_scan(size, ch, frames))
            expected = np.zeros(size * size, np.int64)
            sent, t0 = 0, time.perf_counter()
            for frame, first, n, pix, chan in event_chunks(size, ch, events, frames, 16 * size, seed=1):
                pub.chunk_events("mem", frame, first, n, pix, chan)
                expected[first:first + n] += np.bincount(pix, minlength=n)
                sent += pix.size
                if sent / args.rate > time.perf_counter() - t0:
                    time.sleep(sent / args.rate - (time.perf_counter() - t0))
            send_s = time.perf_counter() - t0
            pub.end("mem", frames)
            cube_path = wait_for_file(data_dir, "*_mem/accumulated.npy", timeout=600)
            ingest_s = time.perf_counter() - t0
            peak = vm_hwm(daemon.pid)
        finally:
            stop_daemon(daemon)
    cube = np.load(cube_path, mmap_mode="r")
    per_bin = np.concatenate([np.asarray(cube[r:r + 32]).sum(axis=2, dtype=np.int64).ravel()
                              for r in range(0, cube.shape[0], 32)])
    binned = expected.reshape(size // 2, 2, size // 2, 2).sum(axis=(1, 3)).ravel()
    dense, dense_binned = size * size * ch * 4, (size // 2) ** 2 * ch * 4
    print(f"{size}x{size} px x {ch} ch, {frames} frames, {sent:,} events ({sent / size / size:.1f} counts/px), "
          f"sent in {send_s:.1f} s, cube saved {ingest_s:.1f} s after the first chunk")
    print(f"baseline: dense uint32 cube {dense / GIB:.1f} GiB (binned 2x2: {dense_binned / GIB:.1f} GiB)")
    print(f"edxlive daemon peak RSS (VmHWM): {peak / GIB:.2f} GiB  (at rest before the scan {rest / GIB:.2f} GiB)  "
          f"-> {dense / peak:.1f}x less than the dense cube, {dense_binned / peak:.1f}x less than the binned one; "
          f"target <= 2 GiB: {'met' if peak <= 2 * GIB else 'NOT met'}")
    print(f"saved cube {cube.shape} {cube.dtype}: {int(per_bin.sum()):,} counts, equal per binned pixel to what "
          f"was sent: {bool(np.array_equal(per_bin, binned))}")
    cube_path.unlink(missing_ok=True)


def _engine_run(size: int, ch: int, counts: float, frames: int, out: mp.Queue) -> None:
    """In a fresh process: decode + Engine.handle for one scan; CPU seconds, events, VmHWM."""
    from edxlive.service import protocol as p
    from edxlive.service.config import Settings
    from edxlive.service.pipeline import scatter
    from edxlive.service.pipeline.xray import known_elements
    from edxlive.service.session import Engine

    known_elements()
    scatter.warm_up()  # the daemon compiles its ingest loops at start
    seq = p.Sequencer("bench")
    engine = Engine(Settings(storage={"data_dir": Path(tempfile.mkdtemp())}))  # type: ignore[arg-type]
    # a tiny scan first: the one-off costs of a fresh daemon (lazy imports, BLAS set-up) are not per scan
    engine.handle(p.decode(p.encode(seq.make(p.ScanStart, **_scan(8, ch, 2, "warm")))))
    for frame, first, n, pix, chan in event_chunks(8, ch, 640, 2, 16):
        engine.handle(p.decode(p.encode(seq.make(p.ScanChunk, scan_id="warm", frame=frame, first_pixel=first,
                                                 n_pixels=n, encoding="events"), {"pixel": pix, "channel": chan})))
    engine.scan.live.refresh()  # type: ignore[union-attr]
    base = vm_hwm()
    engine.handle(p.decode(p.encode(seq.make(p.ScanStart, **_scan(size, ch, frames)))))
    cpu = 0.0
    lines = max(1, 8192 // size)
    for frame, first, n, pix, chan in event_chunks(size, ch, counts * size * size, frames, lines * size):
        frames_out = [bytes(f) for f in p.encode(seq.make(p.ScanChunk, scan_id="mem", frame=frame, first_pixel=first,
                                                          n_pixels=n, encoding="events"),
                                                 {"pixel": pix, "channel": chan})]
        t0 = time.process_time()
        engine.handle(p.decode(frames_out))
        cpu += time.process_time() - t0
    t0 = time.process_time()
    engine.scan.live.refresh()  # type: ignore[union-attr]  # the scan's last frame
    cpu += time.process_time() - t0
    out.put((cpu, engine.counters.events, vm_hwm(), base, engine.scan.acc.sparse))  # type: ignore[union-attr]


def scaling(args: argparse.Namespace) -> None:
    ctx = mp.get_context("spawn")
    print(f"receive path (decode + Engine.handle), {args.counts:g} counts per raw pixel, 4 frames, binning 2x2, "
          "a fresh process per row")
    print(f"{'binned':>10} {'channels':>8} {'store':>7} {'events':>11} {'M ev/CPU-s':>10} {'peak RSS':>9} "
          f"{'at rest':>8} {'dense cube':>10}")
    for binned in (128, 256, 512, 1024):
        for ch in (1024, 2048, 4096):
            q: mp.Queue = ctx.Queue()
            proc = ctx.Process(target=_engine_run, args=(2 * binned, ch, args.counts, 4, q))
            proc.start()
            cpu, events, peak, base, sparse = q.get(timeout=900)
            proc.join()
            dense = binned * binned * ch * 4
            print(f"{binned:>6}^2 {ch:>8} {'sparse' if sparse else 'dense':>7} {events:>11,} "
                  f"{events / cpu / 1e6:>10.1f} {peak / GIB:>7.2f} G {base / GIB:>6.2f} G {dense / GIB:>8.2f} G",
                  flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024, help="raw scan size (square); binned x2")
    ap.add_argument("--channels", type=int, default=4096)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--counts", type=float, default=10.0, help="counts per raw pixel over the scan")
    ap.add_argument("--rate", type=float, default=20e6, help="publisher pace, counts/s")
    ap.add_argument("--scaling", action="store_true")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    if args.scaling:
        scaling(args)
    else:
        daemon_peak(args)
    zmq.Context.instance().term()


if __name__ == "__main__":
    main()

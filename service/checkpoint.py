"""A running scan's checkpoint: what a restarted daemon needs to resume it, in one file.

``<scan folder>/checkpoint.npz`` holds the binned counts as their non-zero cells (flat index and
count: at EDX doses a small share of the cube, and never a dense copy of a sparse store), the
per-(frame, pixel) coverage (bit packed), and a JSON header: the scan.start document, the frame
reached, the gap/duplicate/rejection counts and the last seq seen per publisher. It is written
atomically (a temporary name, fsync, rename), so a kill -9 at any moment leaves either the previous
checkpoint or the new one.

The live PCA is not stored: its sufficient statistics (X and XᵀX) are integer sums of the binned
counts, so rebuilding them from the restored cube is exact and costs one pass over the nonzeros.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edxlive.service import protocol as p
from edxlive.service import storage

FILE = "checkpoint.npz"
VERSION = 2  # 2: non-zero cells instead of the dense cube


@dataclass
class Checkpoint:
    start: p.ScanStart
    keys: np.ndarray  # flat (binned pixel × channel) indices of the non-zero cells
    counts: np.ndarray  # their counts
    coverage: np.ndarray  # (frames, raw pixels) bool
    frame: int = 0
    gaps: int = 0
    duplicates: int = 0
    rejected: int = 0
    last_seq: dict[str, int] = field(default_factory=dict)
    events: int = 0


def path_in(folder: Path) -> Path:
    return Path(folder) / FILE


def save(folder: Path, ck: Checkpoint) -> Path:
    header = {"version": VERSION, "start": ck.start.model_dump(mode="json"), "frame": ck.frame, "gaps": ck.gaps,
              "duplicates": ck.duplicates, "rejected": ck.rejected, "last_seq": ck.last_seq, "events": ck.events,
              "coverage_shape": list(ck.coverage.shape)}
    raw = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, header=raw, keys=ck.keys, counts=ck.counts, coverage=np.packbits(ck.coverage, axis=None))
            fh.flush()
            os.fsync(fh.fileno())  # the rename must not overtake the data on a crash

    return storage.atomic_write(path_in(folder), write)


def read_header(path: Path) -> dict[str, Any]:
    with np.load(path) as z:
        return json.loads(bytes(z["header"]).decode())


def load(path: Path) -> Checkpoint:
    with np.load(path) as z:
        header = json.loads(bytes(z["header"]).decode())
        if header.get("version") != VERSION:
            raise ValueError(f"checkpoint version {header.get('version')}, this daemon reads {VERSION}")
        keys, counts = z["keys"], z["counts"]
        frames, npix = header["coverage_shape"]
        coverage = np.unpackbits(z["coverage"], count=frames * npix).astype(bool).reshape(frames, npix)
    start = p.ScanStart.model_validate(header["start"])
    return Checkpoint(start, keys, counts, coverage, header["frame"], header["gaps"], header["duplicates"],
                      header["rejected"], {k: int(v) for k, v in header["last_seq"].items()}, header["events"])


def find(data_dir: Path) -> list[Path]:
    """Checkpoints left by a daemon that did not finish its scan (newest folder last)."""
    return sorted(Path(data_dir).glob(f"*/{FILE}"))


def remove(folder: Path) -> None:
    path_in(folder).unlink(missing_ok=True)


class Writer:
    """Writes checkpoints on a background thread, one at a time, so a large cube never stalls ingest.

    The engine hands over copies (``submit``); results come back through ``poll``. A submission
    while a write is still running is refused, and the engine simply tries again at the next tick.
    """

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edxlive-checkpoint")
        self._running: tuple[str, Any] | None = None  # (scan_id, future)

    @property
    def busy(self) -> bool:
        return self._running is not None and not self._running[1].done()

    def submit(self, scan_id: str, folder: Path, ck: Checkpoint) -> bool:
        if self.busy:
            return False
        self._running = (scan_id, self._pool.submit(save, folder, ck))
        return True

    def poll(self) -> list[tuple[str, BaseException | None]]:
        """The finished write, if any: (scan_id, None) or (scan_id, the exception)."""
        if self._running is None or not self._running[1].done():
            return []
        scan_id, fut = self._running
        self._running = None
        return [(scan_id, fut.exception())]

    def wait(self) -> list[tuple[str, BaseException | None]]:
        """Block until the running write (if any) is done; its result as ``poll`` gives it."""
        if self._running is not None:
            self._running[1].exception()  # waits, never raises the write's own error
        return self.poll()

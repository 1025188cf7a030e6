"""Fault handling inside the engine (no sockets): checkpoint and resume, storage failures, reused ids.

The same faults are exercised with real processes in tests/test_reliability.py; here each path is
checked exactly, array by array.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from edxlive.service import checkpoint, storage
from edxlive.service import protocol as p
from edxlive.service.config import Settings
from edxlive.service.pipeline.accumulate import offline_bin
from edxlive.service.pipeline.livepca import LivePCA
from edxlive.service.session import Engine, LogEvent, StorageFailure
from tests.test_session import CHANNELS, FRAMES, SHAPE, Acquisition, Clock, _jobs, _run


def _settings(tmp_path: Path, interval: float = 1.0) -> Settings:
    return Settings(storage={"data_dir": tmp_path, "checkpoint_interval_s": interval})  # type: ignore[arg-type]


@pytest.fixture
def cube() -> np.ndarray:
    return np.random.default_rng(1).poisson(0.5, size=(FRAMES, *SHAPE, CHANNELS))


@contextmanager
def immutable(folder: Path) -> Iterator[None]:
    """A folder nobody can write into, root included: the ext4 immutable attribute (chattr +i).

    Tests run as root, and root ignores permission bits (chmod), so this is the real read-only
    folder available here. Skipped where the file system or the container does not allow it."""
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i is not available here (needs ext4/xfs and CAP_LINUX_IMMUTABLE)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_checkpoint_then_restart_resumes_with_the_missed_chunks_as_a_gap(tmp_path: Path, cube: np.ndarray) -> None:
    clock = Clock()
    first, acq = Engine(_settings(tmp_path), clock), Acquisition(cube)
    _run(first, [acq.start(), *acq.chunks(0)])
    clock.now += 2
    first.tick()  # the periodic checkpoint, written on the writer thread
    first.checkpoint(wait=True)
    folder = first.scan.folder  # type: ignore[union-attr]
    assert checkpoint.path_in(folder).exists()
    # kill -9: the first engine is gone. Frame 1 is sent while nothing listens.
    down = [acq.start(), *acq.chunks(1)]
    torn = folder / f".{checkpoint.FILE}.x1y2.part"
    torn.write_bytes(b"half a checkpoint")  # a write interrupted by the kill
    second = Engine(_settings(tmp_path), clock)
    found = second.load_checkpoints(tmp_path)
    assert not torn.exists()
    assert any(isinstance(e, LogEvent) and "resuming" in e.message for e in found)
    effects = _run(second, [acq.start(), *acq.chunks(2), acq.end()])
    assert any(isinstance(e, LogEvent) and "resumed" in e.message for e in effects)
    assert second.counters.gaps == len(down)  # every message sent while down, by seq
    (job,) = _jobs(effects)
    assert job.folder == folder
    np.testing.assert_array_equal(np.load(job.cube_path), offline_bin(cube[0] + cube[2], 2))
    assert job.meta.incomplete_fraction == pytest.approx(1 / 3)  # frame 1: a gap, not zeros passed off as data
    np.testing.assert_allclose(np.load(job.dose_path), 2 / 3)
    assert not checkpoint.path_in(folder).exists()  # the saved cube supersedes it


def test_resumed_live_pca_equals_one_fed_everything(tmp_path: Path, cube: np.ndarray) -> None:
    clock = Clock()
    first, acq = Engine(_settings(tmp_path), clock), Acquisition(cube)
    _run(first, [acq.start(), *acq.chunks(0), *acq.chunks(1)])
    clock.now += 2
    first.tick()
    first.checkpoint(wait=True)
    second = Engine(_settings(tmp_path), clock)
    second.load_checkpoints(tmp_path)
    _run(second, [acq.start(), *acq.chunks(2)])
    live = second.scan.live  # type: ignore[union-attr]
    live.flush()
    ref = LivePCA(live.binned_shape, CHANNELS, 0.0, 0.1)
    total = offline_bin(cube.sum(axis=0), 2).reshape(-1, CHANNELS)
    rows, cols = np.nonzero(total)
    ref.update(rows, cols, total[rows, cols].astype(np.int64))
    ref.flush()
    np.testing.assert_array_equal(live.X, ref.X)
    np.testing.assert_array_equal(live.S, ref.S)  # integer sums in float64: exact, not approximately equal



def _checkpointed_then_restarted(tmp_path: Path, cube: np.ndarray) -> tuple[Clock, Acquisition, Engine]:
    """Frame 0 received and checkpointed by one engine; a second engine (the restarted daemon) loads it."""
    clock = Clock()
    first, acq = Engine(_settings(tmp_path), clock), Acquisition(cube)
    _run(first, [acq.start(), *acq.chunks(0)])
    clock.now += 2
    first.tick()
    first.checkpoint(wait=True)
    second = Engine(_settings(tmp_path), clock)
    second.load_checkpoints(tmp_path)
    return clock, acq, second

def test_a_checkpoint_that_never_resumes_is_finished_as_aborted(tmp_path: Path, cube: np.ndarray) -> None:
    clock, _acq, second = _checkpointed_then_restarted(tmp_path, cube)
    assert not _jobs(second.tick())
    clock.now += second.settings.inbound.heartbeat_timeout_s + 1
    (job,) = _jobs(second.tick())
    assert job.meta.status == "aborted"
    np.testing.assert_array_equal(np.load(job.cube_path), offline_bin(cube[0], 2))
    assert second.history[-1]["reason"].startswith("the daemon restarted")


def test_a_reused_scan_id_after_a_restart_does_not_mix_two_scans(tmp_path: Path, cube: np.ndarray) -> None:
    _clock, acq, second = _checkpointed_then_restarted(tmp_path, cube)
    other = acq.msg(p.ScanStart, scan_id="s1", shape=(4, 4), channels=CHANNELS, energy_offset_kev=0.0,
                    energy_scale_kev=0.1, frames=1)
    effects = second.handle(other)
    (old,) = _jobs(effects)
    np.testing.assert_array_equal(np.load(old.cube_path), offline_bin(cube[0], 2))
    assert second.scan is not None and second.scan.start.shape == (4, 4) and second.scan.folder != old.folder


def test_checkpoint_interval_zero_writes_none(tmp_path: Path, cube: np.ndarray) -> None:
    clock = Clock()
    engine, acq = Engine(_settings(tmp_path, interval=0), clock), Acquisition(cube)
    _run(engine, [acq.start(), *acq.chunks(0)])
    clock.now += 100
    engine.tick()
    assert not list(tmp_path.rglob(checkpoint.FILE))


def test_read_only_data_folder_keeps_the_scan_in_memory_until_it_can_be_written(tmp_path: Path,
                                                                                cube: np.ndarray) -> None:
    clock = Clock()
    data = tmp_path / "data"
    data.mkdir()
    engine, acq = Engine(_settings(data), clock), Acquisition(cube)
    messages = [acq.start(), *[c for f in range(FRAMES) for c in acq.chunks(f)], acq.end()]
    with immutable(data):
        effects = _run(engine, messages[:4])
        assert [e.what for e in effects if isinstance(e, StorageFailure)] == ["folder"]
        clock.now += 2
        failed = [e for e in engine.tick() if isinstance(e, StorageFailure)]
        assert [e.what for e in failed] == ["checkpoint"]
        effects = _run(engine, messages[4:])
        assert not _jobs(effects)
        (fail,) = [e for e in effects if isinstance(e, StorageFailure)]
        assert fail.what == "save" and "stay in memory" in fail.detail and "Operation not permitted" in fail.detail
        assert engine.unsaved == {"s1": engine.unsaved["s1"]} and not list(data.iterdir())
        clock.now += 10
        assert not _jobs(engine.tick())  # retried, still read-only
    (job,) = _jobs(engine.flush())  # space is back: written on request (or by the next retry)
    np.testing.assert_array_equal(np.load(job.cube_path), offline_bin(cube.sum(axis=0), 2))
    assert not engine.unsaved


def test_a_file_where_the_folder_should_be_is_a_storage_failure_too(tmp_path: Path, cube: np.ndarray) -> None:
    clock = Clock()
    data = tmp_path / "data"
    engine, acq = Engine(_settings(data), clock), Acquisition(cube)
    data.write_text("not a folder")  # root cannot mkdir through a regular file either
    effects = _run(engine, [acq.start(), *[c for f in range(FRAMES) for c in acq.chunks(f)], acq.end()])
    assert {e.what for e in effects if isinstance(e, StorageFailure)} == {"folder", "save"}
    data.unlink()
    clock.now += 5
    (job,) = _jobs(engine.tick())  # the timer retry
    np.testing.assert_array_equal(np.load(job.cube_path), offline_bin(cube.sum(axis=0), 2))
    doc = storage.result_document(job.meta, np.load(job.cube_path), None)
    assert json.loads(json.dumps(doc))["incomplete_fraction"] == 0.0


def test_a_late_frame_after_scan_end_is_late_not_a_new_scan(tmp_path: Path, cube: np.ndarray) -> None:
    engine, acq = Engine(_settings(tmp_path), Clock()), Acquisition(cube)
    assert len(_jobs(_run(engine, [acq.start(), *[c for f in range(FRAMES) for c in acq.chunks(f)], acq.end()]))) == 1
    effects = _run(engine, [acq.start(), *acq.chunks(1)])  # the repeat before a frame, and the frame: late
    assert engine.scan is None and engine.counters.late == len(acq.chunks(1))
    assert {e.reason for e in effects if hasattr(e, "reason")} == {"late"}
    assert len(list(tmp_path.iterdir())) == 1


def test_a_reused_scan_id_starts_a_new_scan_in_its_own_folder(tmp_path: Path, cube: np.ndarray) -> None:
    engine, acq = Engine(_settings(tmp_path), Clock()), Acquisition(cube)
    (first,) = _jobs(_run(engine, [acq.start(), *[c for f in range(FRAMES) for c in acq.chunks(f)], acq.end()]))
    again = Acquisition(cube[::-1].copy(), source="acq-2")  # the same id, a new acquisition from frame 0
    (second,) = _jobs(_run(engine, [again.start(), *[c for f in range(FRAMES) for c in again.chunks(f)],
                                    again.end()]))
    assert second.folder != first.folder and second.scan_id == first.scan_id == "s1"
    np.testing.assert_array_equal(np.load(first.cube_path), offline_bin(cube.sum(axis=0), 2))
    np.testing.assert_array_equal(np.load(second.cube_path), offline_bin(cube.sum(axis=0), 2))
    assert second.meta.incomplete_fraction == 0.0

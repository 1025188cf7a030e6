"""The scan state machine, driven by decoded messages and an injected clock (no sockets)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edxlive.service import protocol as p
from edxlive.service import storage
from edxlive.service.config import Settings
from edxlive.service.pipeline.accumulate import offline_bin
from edxlive.service.session import AnalysisJob, Engine, LogEvent, Publish, Rejection


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


SHAPE, CHANNELS, FRAMES = (6, 8), 32, 3


def _settings(tmp_path: Path, **limits: int) -> Settings:
    return Settings(storage={"data_dir": tmp_path}, limits=limits or {})  # type: ignore[arg-type]


class Acquisition:
    """A publisher's messages, decoded as the receiver would hand them to the engine."""

    def __init__(self, cube: np.ndarray, scan_id: str = "s1", source: str = "acq-1") -> None:
        self.cube, self.scan_id, self.seq = cube, scan_id, p.Sequencer(source)

    def msg(self, model: type[p.Header], arrays: dict | None = None, **fields: object) -> p.Message:
        frames = p.encode(self.seq.make(model, **fields), arrays)
        return p.decode([bytes(f) for f in frames])

    def start(self, **kw: object) -> p.Message:
        return self.msg(p.ScanStart, scan_id=self.scan_id, shape=SHAPE, channels=CHANNELS, energy_offset_kev=0.0,
                        energy_scale_kev=0.1, frames=FRAMES, **kw)

    def chunks(self, frame: int, rows: int = 2) -> list[p.Message]:
        nx = SHAPE[1]
        out = []
        for y in range(0, SHAPE[0], rows):
            counts = self.cube[frame, y:y + rows].reshape(-1, CHANNELS).astype("<u4")
            out.append(self.msg(p.ScanChunk, {"counts": counts}, scan_id=self.scan_id, frame=frame,
                                first_pixel=y * nx, n_pixels=counts.shape[0], encoding="dense"))
        return out

    def end(self, status: str = "completed", frames_completed: int = FRAMES) -> p.Message:
        return self.msg(p.ScanEnd, scan_id=self.scan_id, frames_completed=frames_completed, status=status)


@pytest.fixture
def cube() -> np.ndarray:
    return np.random.default_rng(0).poisson(0.4, size=(FRAMES, *SHAPE, CHANNELS))


def _run(engine: Engine, messages: list[p.Message]) -> list:
    effects: list = []
    for m in messages:
        effects += engine.handle(m)
    return effects


def _jobs(effects: list) -> list[AnalysisJob]:
    return [e for e in effects if isinstance(e, AnalysisJob)]


def test_complete_scan_goes_idle_acquiring_analysing_idle(tmp_path: Path, cube: np.ndarray) -> None:
    engine, acq = Engine(_settings(tmp_path), Clock()), Acquisition(cube)
    assert engine.state == "idle"
    effects = engine.handle(acq.start())
    assert engine.state == "acquiring"
    assert any(isinstance(e, Publish) and e.model is p.ScanStarted for e in effects)
    effects = _run(engine, [c for f in range(FRAMES) for c in acq.chunks(f)] + [acq.end()])
    assert engine.state == "analysing"
    (job,) = _jobs(effects)
    np.testing.assert_array_equal(np.load(job.cube_path), offline_bin(cube.sum(axis=0), 2))
    assert job.meta.status == "completed" and job.meta.incomplete_fraction == 0.0
    # a live refresh at least once per frame (frame 0 -> 1 -> 2, then at scan end)
    assert sum(isinstance(e, Publish) and e.model is p.ScanLive for e in effects) >= FRAMES
    done = engine.analysis_finished(job, {"workflows": {}, "verdict": {"follow_up": False}})
    assert engine.state == "idle"
    finished = [e for e in done if isinstance(e, Publish) and e.model is p.ScanFinished]
    assert finished[0].fields["status"] == "completed"


def test_gaps_and_duplicates(tmp_path: Path, cube: np.ndarray) -> None:
    engine, acq = Engine(_settings(tmp_path), Clock()), Acquisition(cube)
    engine.handle(acq.start())
    msgs = [c for f in range(FRAMES) for c in acq.chunks(f)]
    lost = msgs.pop(4)  # frame 1, rows 2-3
    msgs.insert(2, msgs[1])  # an exact repeat (same seq): dropped by sequence
    effects = _run(engine, [*msgs, acq.end()])
    assert engine.counters.gaps == 1 and engine.counters.duplicates == 1
    assert any(isinstance(e, LogEvent) and "gap" in e.message for e in effects)
    (job,) = _jobs(effects)
    expected = cube.sum(axis=0)
    expected[2:4] -= cube[1, 2:4]
    np.testing.assert_array_equal(np.load(job.cube_path), offline_bin(expected, 2))
    assert job.meta.incomplete_fraction == pytest.approx(lost.header.n_pixels / (FRAMES * SHAPE[0] * SHAPE[1]))
    dose = np.load(job.dose_path)
    assert dose.min() == pytest.approx(2 / 3) and dose.max() == 1.0


def test_resent_chunk_with_a_new_seq_is_a_duplicate(tmp_path: Path, cube: np.ndarray) -> None:
    engine, acq = Engine(_settings(tmp_path), Clock()), Acquisition(cube)
    engine.handle(acq.start())
    _run(engine, acq.chunks(0) + acq.chunks(0)[:1])  # re-sent with fresh seq numbers
    assert engine.counters.duplicates == 1
    np.testing.assert_array_equal(engine.scan.acc.binned_cube(), offline_bin(cube[0], 2))  # type: ignore[union-attr]


def test_late_join_waits_for_the_next_repeated_start(tmp_path: Path, cube: np.ndarray) -> None:
    engine, acq = Engine(_settings(tmp_path), Clock()), Acquisition(cube)
    acq.start()  # sent before the daemon was listening
    effects = _run(engine, acq.chunks(0))
    assert {e.reason for e in effects if isinstance(e, Rejection)} == {"no_scan"}
    _run(engine, [acq.start(), *acq.chunks(1), acq.start(), *acq.chunks(2), acq.end()])
    assert engine.state == "analysing"
    (job,) = [j for j in engine.pending.values()]
    np.testing.assert_array_equal(np.load(job.cube_path), offline_bin(cube[1:].sum(axis=0), 2))
    assert job.meta.incomplete_fraction == pytest.approx(1 / 3)


def test_silent_publisher_aborts_with_partial_results(tmp_path: Path, cube: np.ndarray) -> None:
    clock = Clock()
    engine, acq = Engine(_settings(tmp_path), clock), Acquisition(cube)
    _run(engine, [acq.start(), *acq.chunks(0)])
    clock.now += engine.settings.inbound.heartbeat_timeout_s + 1
    (job,) = _jobs(engine.tick())
    assert job.meta.status == "aborted"
    np.testing.assert_array_equal(np.load(job.cube_path), offline_bin(cube[0], 2))


def test_a_new_scan_supersedes_the_current_one(tmp_path: Path, cube: np.ndarray) -> None:
    engine = Engine(_settings(tmp_path), Clock())
    first, second = Acquisition(cube, "s1"), Acquisition(cube, "s2", source="acq-2")
    effects = _run(engine, [first.start(), *first.chunks(0), second.start()])
    (job,) = _jobs(effects)
    assert job.scan_id == "s1" and job.meta.status == "aborted"
    assert engine.scan is not None and engine.scan.scan_id == "s2"


def test_late_and_invalid_chunks_are_rejected_without_harm(tmp_path: Path, cube: np.ndarray) -> None:
    engine, acq = Engine(_settings(tmp_path), Clock()), Acquisition(cube)
    _run(engine, [acq.start(), *acq.chunks(0)])
    before = engine.scan.acc.binned_cube().copy()  # type: ignore[union-attr]
    wide = acq.msg(p.ScanChunk, {"counts": np.ones((2, CHANNELS + 1), "<u4")}, scan_id="s1", frame=1,
                   first_pixel=0, n_pixels=2, encoding="dense")
    outside = acq.msg(p.ScanChunk, {"counts": np.ones((2, CHANNELS), "<u4")}, scan_id="s1", frame=FRAMES,
                      first_pixel=0, n_pixels=2, encoding="dense")
    rejected = [e for e in _run(engine, [wide, outside]) if isinstance(e, Rejection)]
    assert [r.reason for r in rejected] == ["buffer_mismatch", "out_of_range"]
    np.testing.assert_array_equal(engine.scan.acc.binned_cube(), before)  # type: ignore[union-attr]
    _run(engine, [acq.end()])
    late = [e for e in _run(engine, acq.chunks(1)[:1]) if isinstance(e, Rejection)]
    assert late[0].reason == "late"


def test_scan_over_the_memory_budget_is_refused_before_allocation(tmp_path: Path, cube: np.ndarray) -> None:
    engine, acq = Engine(_settings(tmp_path, memory_budget_bytes=1024**2), Clock()), Acquisition(cube)
    big = acq.msg(p.ScanStart, scan_id="huge", shape=(2048, 2048), channels=4096, energy_offset_kev=0.0,
                  energy_scale_kev=0.01, frames=10)
    (rej,) = engine.handle(big)
    assert isinstance(rej, Rejection) and rej.reason == "limits" and "memory budget" in rej.detail
    assert engine.scan is None and engine.state == "idle"


def test_interrupt_saves_counts_and_says_analysis_did_not_run(tmp_path: Path, cube: np.ndarray) -> None:
    engine, acq = Engine(_settings(tmp_path), Clock()), Acquisition(cube)
    _run(engine, [acq.start(), *acq.chunks(0)])
    folder = engine.scan.folder  # type: ignore[union-attr]
    effects = engine.interrupt("daemon shutting down")
    assert not _jobs(effects)

    doc = json.loads((folder / "result.json").read_text())
    assert doc["status"] == "aborted" and "not run" in doc["analysis"]
    np.testing.assert_array_equal(np.load(folder / storage.CUBE_NPY), offline_bin(cube[0], 2))


def test_reanalyze_makes_a_new_revision(tmp_path: Path, cube: np.ndarray) -> None:
    engine, acq = Engine(_settings(tmp_path), Clock()), Acquisition(cube)
    (job,) = _jobs(_run(engine, [acq.start(), *[c for f in range(FRAMES) for c in acq.chunks(f)], acq.end()]))
    (again,) = engine.reanalyze("s1", {"gmm_k": 3})
    assert isinstance(again, AnalysisJob)
    assert again.revision == job.revision + 1 and again.params == {"gmm_k": 3}
    (rej,) = engine.reanalyze("nope", {})
    assert isinstance(rej, Rejection)


def test_configured_beam_energy_overrides_the_scan_start(tmp_path: Path, cube: np.ndarray) -> None:
    """quant.beam_energy_kev is for a bridge that reports a wrong beam energy: the analysis gets the configured one."""
    settings = Settings(storage={"data_dir": tmp_path}, quant={"beam_energy_kev": 300.0})  # type: ignore[arg-type]
    engine, acq = Engine(settings, Clock()), Acquisition(cube)
    effects = _run(engine, [acq.start(beam_energy_kev=80.0), *acq.chunks(0), acq.end(frames_completed=1)])
    [job] = _jobs(effects)
    assert job.meta.beam_energy_kev == 300.0
    engine2, acq2 = Engine(_settings(tmp_path / "b"), Clock()), Acquisition(cube, scan_id="s2")
    [job2] = _jobs(_run(engine2, [acq2.start(beam_energy_kev=80.0), *acq2.chunks(0), acq2.end(frames_completed=1)]))
    assert job2.meta.beam_energy_kev == 80.0


def _event_chunks(acq: Acquisition, frame: int, rows: int = 2) -> list[p.Message]:
    """The frame as ``events`` chunks (one (pixel offset, channel) pair per X-ray), as detectors send it."""
    nx, out = SHAPE[1], []
    for y in range(0, SHAPE[0], rows):
        counts = acq.cube[frame, y:y + rows].reshape(-1, CHANNELS)
        pix, chan = np.nonzero(counts)
        reps = counts[pix, chan]
        arrays = {"pixel": np.repeat(pix, reps).astype("<u4"), "channel": np.repeat(chan, reps).astype("<u2")}
        out.append(acq.msg(p.ScanChunk, arrays, scan_id=acq.scan_id, frame=frame, first_pixel=y * nx,
                           n_pixels=counts.shape[0], encoding="events"))
    return out


def _live(effects: list) -> list[Publish]:
    return [e for e in effects if isinstance(e, Publish) and e.model is p.ScanLive]


@pytest.mark.parametrize("encoding", ["events", "dense"])
def test_a_live_thread_publishes_the_same_refreshes(tmp_path: Path, cube: np.ndarray, encoding: str) -> None:
    """The daemon runs the live PCA on a thread of its own: each frame's refresh sees exactly the
    counts before the frame ended, so the publications are those of the engine that runs it in
    place, bit for bit, in the same order (a refresh per frame, then the scan's end)."""
    acq = Acquisition(cube)
    chunks = _event_chunks if encoding == "events" else Acquisition.chunks
    messages = [acq.start(elements=["S"]), *[c for f in range(FRAMES) for c in chunks(acq, f)], acq.end()]
    inline = Engine(_settings(tmp_path / "inline"), Clock())
    threaded = Engine(_settings(tmp_path / "threaded"), Clock(), live_thread=True)
    try:
        a, b = _live(_run(inline, messages)), _live(_run(threaded, messages))
    finally:
        threaded.close()
    assert len(a) == len(b) == FRAMES  # frames 1 and 2 began, then the scan ended
    assert [x.fields["frame"] for x in b] == [1, 2, 2]
    for x, y in zip(a, b, strict=True):
        assert x.fields == y.fields and x.arrays.keys() == y.arrays.keys()
        for name in x.arrays:
            np.testing.assert_array_equal(x.arrays[name], y.arrays[name])


def test_a_live_threads_refresh_is_published_by_the_next_tick(tmp_path: Path, cube: np.ndarray) -> None:
    clock, acq = Clock(), Acquisition(cube)
    engine = Engine(_settings(tmp_path), clock, live_thread=True)
    try:
        _run(engine, [acq.start(), *acq.chunks(0), *acq.chunks(1)])  # frame 1 began: a refresh requested
        engine.live_worker.wait()
        (live,) = _live(engine.tick())
        assert live.fields["frame"] == 1
        assert not _live(engine.tick())  # published once; the next periodic refresh is not due yet
        assert not _live(engine.drain_live())
    finally:
        engine.close()


@pytest.mark.parametrize("threaded", [False, True])
def test_a_failing_live_pca_is_logged_and_costs_neither_counts_nor_scan(
        tmp_path: Path, cube: np.ndarray, threaded: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The live PCA is a preview: when its update or refresh fails (here: out of memory, injected),
    the engine logs one error line per failure and goes on; the scan's counts are saved whole
    and handed to the scan-end analysis."""
    from edxlive.service.pipeline.livepca import LivePCA

    def out_of_memory(*_: object) -> None:
        raise MemoryError("injected")

    monkeypatch.setattr(LivePCA, "add", out_of_memory)
    monkeypatch.setattr(LivePCA, "refresh", out_of_memory)
    clock, acq = Clock(), Acquisition(cube)
    engine = Engine(_settings(tmp_path), clock, live_thread=threaded)
    try:
        effects = _run(engine, [acq.start(), *acq.chunks(0), *acq.chunks(1)])
        effects += engine.tick() + engine.drain_live()
        effects += _run(engine, [*acq.chunks(2), acq.end()])
    finally:
        engine.close()
    errors = [e.message for e in effects if isinstance(e, LogEvent) and e.level >= 40]
    assert errors and all(m.startswith("live PCA failed (MemoryError: injected)") for m in errors)
    assert not _live(effects)
    (job,) = [e for e in effects if isinstance(e, AnalysisJob)]
    np.testing.assert_array_equal(np.load(job.folder / storage.CUBE_NPY), offline_bin(cube.sum(0), 2))

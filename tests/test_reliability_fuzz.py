"""Hypothesis fuzzing of the session: random message sequences through the real decoder into the Engine.

Messages are built as raw frames (JSON headers written by hand, so NaN, negative, huge and
wrongly typed values reach the decoder), in any order: scan.start/chunk/end for two scan ids from
two publishers, duplicates, seq jumps, garbage frames, the passing of time (timeouts, periodic
checkpoints) and daemon crashes with a resume from the checkpoint.

Invariants after every step: nothing raises; the running scan's cube equals an independent model
built from the chunks the engine accepted (and only those); a rejected or duplicate chunk changes
nothing; every cube saved at scan end equals the model of its scan.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edxlive.service import protocol as p
from edxlive.service.config import Settings
from edxlive.service.pipeline.meta import binned_shape
from edxlive.service.session import AnalysisJob, Engine, Rejection

REASONS = {"frames", "unknown_topic", "bad_json", "version", "schema", "buffer_mismatch", "out_of_range",
           "too_large", "inconsistent_start", "limits", "late", "no_scan"}
LIMITS = p.Limits(max_pixels=4096, max_channels=64, max_frames=8, max_events=10_000)

weird_ints = st.sampled_from([-1, 0, 2**31, 2**63, 2**70, -(2**63)])
weird_floats = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 1e308])


def rarely(valid: st.SearchStrategy[Any], weird: st.SearchStrategy[Any], odds: int = 10) -> st.SearchStrategy[Any]:
    """``valid``, except once in ``odds`` draws ``weird``: sequences must get far enough to accept chunks."""
    return st.integers(1, odds).flatmap(lambda k: weird if k == 1 else valid)


def small(lo: int, hi: int) -> st.SearchStrategy[Any]:
    """Mostly valid small integers, sometimes NaN, negative, huge or the wrong type."""
    return rarely(st.integers(lo, hi), st.one_of(weird_ints, weird_floats, st.just("3"), st.none()))


starts = st.fixed_dictionaries({
    "scan_id": rarely(st.sampled_from(["a", "b"]), st.just("bad id!")),
    "shape": rarely(st.tuples(st.integers(3, 6), st.integers(3, 6)).map(list),
                    st.sampled_from([[0, 3], [-1, 2], [10**6, 10**6], [2]])),
    "channels": small(1, 12),
    "frames": small(1, 3),
    "energy_offset_kev": rarely(st.just(0.0), weird_floats),
    "energy_scale_kev": rarely(st.just(0.1), weird_floats),
})


@st.composite
def chunks(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    fields = {"scan_id": draw(rarely(st.just("a"), st.just("b"))),
              "frame": draw(rarely(st.integers(0, 1), small(0, 3), 20)),
              "first_pixel": draw(rarely(st.integers(0, 8), small(0, 36), 20)),
              "n_pixels": draw(rarely(st.integers(1, 8), small(1, 8), 20)),
              "encoding": draw(rarely(st.sampled_from(["events", "dense"]), st.just("sparse")))}
    n = fields["n_pixels"] if isinstance(fields["n_pixels"], int) and 1 <= fields["n_pixels"] <= 40 else 4
    if fields["encoding"] == "dense":
        dtype = draw(rarely(st.sampled_from(["<u4", "<u2"]), st.sampled_from(["<f4", "<i4"])))
        c = draw(rarely(st.sampled_from([3, 12]), st.integers(0, 14)))
        values = draw(rarely(st.just("small"), st.sampled_from(["huge", "special"])))
        if values == "small":
            counts = np.asarray(draw(st.lists(st.integers(0, 3), min_size=n * c, max_size=n * c)))
        elif values == "huge":
            counts = np.full(n * c, np.iinfo(np.uint32).max if dtype == "<u4" else 1000)
        else:
            counts = np.full(n * c, np.nan if dtype == "<f4" else -1)
        arr = counts.astype(np.dtype(dtype), casting="unsafe") if counts.size else np.zeros(0, dtype)
        return fields, {"counts": arr.reshape(n, c)}
    k = draw(st.integers(0, 20))
    pix = np.asarray(draw(st.lists(rarely(st.integers(0, n - 1), st.integers(0, n + 1)), min_size=k,
                                   max_size=k)), dtype="<u4")
    chan_dtype = draw(rarely(st.just("<u2"), st.sampled_from(["<i4", "<f4"])))
    chan = np.asarray(draw(st.lists(rarely(st.integers(0, 2), st.integers(0, 13)), min_size=k,
                                    max_size=k))).astype(chan_dtype)
    return fields, {"pixel": pix, "channel": chan}


ends = st.fixed_dictionaries({"scan_id": st.sampled_from(["a", "b"]), "frames_completed": small(0, 3),
                              "status": st.sampled_from(["completed", "aborted", "exploded"])})

ARGS: dict[str, st.SearchStrategy[Any]] = {
    "start": starts, "chunk": chunks(), "end": ends, "tick": rarely(st.floats(0, 3), st.floats(0, 15)),
    "repeat": st.none(), "seq": st.integers(-3, 5), "garbage": st.lists(st.binary(max_size=40), max_size=4),
    "crash": st.none(),
}
KINDS = ["start", "end", "tick", "repeat", "seq", "garbage", "crash", *["chunk"] * 12]  # mostly chunks
ops = st.sampled_from(KINDS).flatmap(lambda kind: st.tuples(st.just(kind), ARGS[kind]))


def _frames(topic: str, source: str, seq: int, fields: dict[str, Any],
            arrays: dict[str, np.ndarray] | None = None) -> list[bytes]:
    arrays = arrays or {}
    specs = [{"name": k, "dtype": v.dtype.str, "shape": list(v.shape)} for k, v in arrays.items()]
    body = {"protocol": p.PROTOCOL, "source": source, "seq": seq, "time": 1.0, **fields, "arrays": specs}
    head = json.dumps(body).encode()  # NaN and Infinity go out as the bare words: the decoder must refuse them
    return [topic.encode(), head, *[np.ascontiguousarray(v).tobytes() for v in arrays.values()]]


class Model:
    """What each scan's binned cube must hold: the chunks the engine accepted, binned independently."""

    def __init__(self) -> None:
        self.cubes: dict[Path, np.ndarray] = {}

    def cube_for(self, engine: Engine) -> np.ndarray:
        scan = engine.scan
        assert scan is not None
        if scan.folder not in self.cubes:
            nb = binned_shape(tuple(scan.start.shape), engine.settings.binning.factor)  # type: ignore[arg-type]
            self.cubes[scan.folder] = np.zeros((*nb, scan.start.channels), dtype=object)
        return self.cubes[scan.folder]

    def add(self, engine: Engine, msg: p.Message) -> None:
        scan, h = engine.scan, msg.header
        assert scan is not None and isinstance(h, p.ScanChunk)
        cube, f, nx = self.cube_for(engine), engine.settings.binning.factor, scan.start.shape[1]
        if h.encoding == "events":
            flat = h.first_pixel + msg.arrays["pixel"].astype(np.int64)
            for px, ch in zip(flat, msg.arrays["channel"].astype(np.int64), strict=True):
                cube[px // nx // f, px % nx // f, ch] += 1
        else:
            counts = msg.arrays["counts"]
            for i, j in zip(*np.nonzero(counts), strict=True):
                px = h.first_pixel + int(i)
                cube[px // nx // f, px % nx // f, j] += int(counts[i, j])


def _check_running(engine: Engine, model: Model) -> None:
    scan = engine.scan
    if scan is None:
        return
    acc = scan.acc
    assert int(acc.cube.sum(dtype=np.uint64)) == acc.events == int(acc.counts_map.sum())
    expected = model.cube_for(engine).astype(np.uint64)
    np.testing.assert_array_equal(acc.binned_cube().astype(np.uint64), expected)


def _check_effects(effects: list, model: Model) -> None:
    for e in effects:
        if isinstance(e, Rejection):
            assert e.reason in REASONS, e
        if isinstance(e, AnalysisJob) and e.cube_path is not None:
            expected = model.cubes.get(e.folder)
            saved = np.load(e.cube_path)
            if expected is None:  # a scan that never accepted a chunk
                assert saved.sum() == 0
            else:
                np.testing.assert_array_equal(saved.astype(np.uint64), expected.astype(np.uint64))


def _run_sequence(sequence: list[tuple[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        clock = [1000.0]
        config = Settings(storage={"data_dir": Path(tmp), "checkpoint_interval_s": 5.0},  # type: ignore[arg-type]
                          limits={"max_pixels": 4096, "max_channels": 64, "max_frames": 8})
        engine, model = Engine(config, lambda: clock[0]), Model()
        seqs = {"p1": 0, "p2": 0}
        last: list[bytes] = []
        for i, (kind, arg) in enumerate(sequence):
            source = "p1" if i % 3 else "p2"
            if kind == "tick":
                clock[0] += arg
                _check_effects(engine.tick(), model)
            elif kind == "seq":
                seqs[source] = max(0, seqs[source] + arg)
            elif kind == "crash":  # kill -9 after a checkpoint: a new engine finds it and resumes
                engine.checkpoint(wait=True)
                engine = Engine(config, lambda: clock[0])
                engine.load_checkpoints(Path(tmp))
            else:
                if kind == "repeat":
                    frames = last
                elif kind == "garbage":
                    frames = arg
                else:
                    seqs[source] += 1
                    fields, arrays = arg if kind == "chunk" else (arg, None)
                    topic = {"start": "scan.start", "chunk": "scan.chunk", "end": "scan.end"}[kind]
                    frames = _frames(topic, source, seqs[source], fields, arrays)
                last = frames
                _deliver(engine, model, frames)
            _check_running(engine, model)
        engine.writer.wait()  # a checkpoint still being written must not race the folder's removal


def _deliver(engine: Engine, model: Model, frames: list[bytes]) -> None:
    try:
        msg = p.decode(frames, LIMITS, p.INBOUND_TOPICS)
    except p.ProtocolError as err:
        assert err.reason in REASONS
        _check_effects(engine.reject(err), model)
        return
    scan_before, duplicates = engine.scan, engine.counters.duplicates
    before = scan_before.acc.binned_cube().copy() if scan_before is not None else None
    effects = engine.handle(msg)
    _check_effects(effects, model)
    scan = engine.scan
    if msg.topic != "scan.chunk" or scan is None or scan.scan_id != msg.header.scan_id:
        return
    # Accepted: no rejection, not a duplicate (by seq or by coverage), and a scan of that id runs.
    accepted = not any(isinstance(e, Rejection) for e in effects) and engine.counters.duplicates == duplicates
    if accepted:
        model.add(engine, msg)
    elif scan is scan_before:  # rejected or a duplicate: nothing changed
        np.testing.assert_array_equal(scan.acc.binned_cube(), before)


valid_start = st.fixed_dictionaries({
    "scan_id": st.just("a"), "shape": st.tuples(st.integers(3, 6), st.integers(3, 6)).map(list),
    "channels": st.sampled_from([3, 12]), "frames": st.integers(1, 3), "energy_offset_kev": st.just(0.0),
    "energy_scale_kev": st.just(0.1)})
# Each sequence opens with a valid scan.start, so that most of what follows can reach the accumulator.
sequences = st.tuples(st.tuples(st.just("start"), valid_start), st.lists(ops, min_size=5, max_size=60)).map(
    lambda t: [t[0], *t[1]])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sequences)
def test_fuzz_engine_message_sequences(sequence: list[tuple[str, Any]]) -> None:
    _run_sequence(sequence)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 10 000 sequences: 6 min on the idle 2-core machine, 22 min under load
@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sequences)
def test_fuzz_engine_message_sequences_long(sequence: list[tuple[str, Any]]) -> None:
    _run_sequence(sequence)

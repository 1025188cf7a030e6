"""Protocol v1: every topic round-trips; anything malformed is a ProtocolError, never a crash."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edxlive.service import protocol as p

SEQ = p.Sequencer("test-source")


def _start(**kw: object) -> p.ScanStart:
    fields = dict(scan_id="s1", shape=(4, 5), channels=64, energy_offset_kev=0.0, energy_scale_kev=0.01, frames=2)
    fields.update(kw)
    return SEQ.make(p.ScanStart, **fields)  # type: ignore[return-value]


def _events_chunk(pixel: np.ndarray, channel: np.ndarray, n_pixels: int = 10, **kw: object) -> list[bytes]:
    h = SEQ.make(p.ScanChunk, scan_id="s1", frame=0, first_pixel=0, n_pixels=n_pixels, encoding="events", **kw)
    return [bytes(f) for f in p.encode(h, {"pixel": pixel, "channel": channel})]


def _roundtrip(frames: list) -> p.Message:
    return p.decode([bytes(f) for f in frames])


def test_every_topic_round_trips() -> None:
    headers = [
        _start(),
        SEQ.make(p.ScanEnd, scan_id="s1", frames_completed=2),
        SEQ.make(p.Heartbeat, state="acquiring"),
    ]
    for h in headers:
        msg = _roundtrip(p.encode(h))
        assert msg.topic == h.topic
        assert msg.header.model_dump() == h.model_dump() | {"arrays": []}


def test_events_and_dense_chunks_round_trip() -> None:
    pix = np.array([0, 3, 3, 9], "<u4")
    chan = np.array([1, 2, 2, 63], "<u2")
    msg = p.decode(_events_chunk(pix, chan))
    np.testing.assert_array_equal(msg.arrays["pixel"], pix)
    np.testing.assert_array_equal(msg.arrays["channel"], chan)
    counts = np.arange(20 * 64, dtype="<u2").reshape(20, 64)
    h = SEQ.make(p.ScanChunk, scan_id="s1", frame=1, first_pixel=0, n_pixels=20, encoding="dense")
    dense = _roundtrip(p.encode(h, {"counts": counts}))
    np.testing.assert_array_equal(dense.arrays["counts"], counts)
    p.check_chunk_against_scan(dense.header, dense.arrays, _start())  # type: ignore[arg-type]


def test_big_endian_arrays_go_out_little_endian() -> None:
    frames = _events_chunk(np.array([1, 2], ">u4"), np.array([3, 4], ">u2"))
    msg = p.decode(frames)
    assert msg.arrays["pixel"].tolist() == [1, 2]


def test_unknown_fields_are_ignored() -> None:
    topic, head = p.encode(_start())
    body = json.loads(bytes(head))
    body["from_the_future"] = {"x": 1}
    msg = p.decode([bytes(topic), json.dumps(body).encode()])
    assert msg.header.scan_id == "s1"


def _with_header(frames: list[bytes], **changes: object) -> list[bytes]:
    body = json.loads(frames[1])
    body.update(changes)
    return [frames[0], json.dumps(body).encode(), *frames[2:]]


GOOD_CHUNK = _events_chunk(np.array([0, 1], "<u4"), np.array([5, 6], "<u2"))


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([b"scan.start"], "frames"),
        ([b"nope", b"{}"], "unknown_topic"),
        ([b"\xff", b"{}"], "unknown_topic"),
        ([b"scan.start", b"not json"], "bad_json"),
        ([b"scan.start", b"[1, 2]"], "bad_json"),
        ([b"scan.start", b'{"seq": NaN}'], "bad_json"),
        (_with_header(p.encode(SEQ.make(p.Heartbeat)), protocol="edxlive/2.0"), "version"),
        (_with_header(p.encode(SEQ.make(p.Heartbeat)), protocol="other/1.0"), "version"),
        (_with_header(p.encode(SEQ.make(p.Heartbeat)), seq=-1), "schema"),
        (GOOD_CHUNK[:3], "frames"),
        ([*GOOD_CHUNK[:2], GOOD_CHUNK[2][:-1], GOOD_CHUNK[3]], "buffer_mismatch"),
        (_events_chunk(np.array([0, 10], "<u4"), np.array([5, 6], "<u2")), "out_of_range"),
        (_events_chunk(np.array([0, 1], "<i4"), np.array([5, 6], "<u2")), "schema"),
        (_events_chunk(np.array([0, 1], "<f8"), np.array([5, 6], "<u2")), "schema"),
        (_with_header(GOOD_CHUNK, arrays=[{"name": "pixel", "dtype": "|O", "shape": [2]}]), "schema"),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(frames: list[bytes], reason: str) -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.decode([bytes(f) for f in frames])
    assert err.value.reason == reason
    assert "\n" not in str(err.value)


def test_limits_are_checked_before_allocation() -> None:
    small = p.Limits(max_header_bytes=200, max_pixels=100, max_events=3)
    with pytest.raises(p.ProtocolError, match="too_large"):
        p.decode([bytes(f) for f in p.encode(_start(sample="x" * 300))], small)
    with pytest.raises(p.ProtocolError, match="out_of_range"):
        p.decode([bytes(f) for f in p.encode(_start(shape=(11, 10)))], p.Limits(max_pixels=100))
    with pytest.raises(p.ProtocolError, match="too_large"):
        p.decode(_events_chunk(np.zeros(4, "<u4"), np.zeros(4, "<u2")), p.Limits(max_events=3))


def test_chunk_outside_the_scan_is_rejected() -> None:
    scan = _start(shape=(2, 3), channels=8, frames=1)
    msg = p.decode(_events_chunk(np.array([0], "<u4"), np.array([9], "<u2"), n_pixels=6))
    with pytest.raises(p.ProtocolError, match="channel 9"):
        p.check_chunk_against_scan(msg.header, msg.arrays, scan)  # type: ignore[arg-type]
    msg = p.decode(_events_chunk(np.array([0], "<u4"), np.array([1], "<u2"), n_pixels=7))
    with pytest.raises(p.ProtocolError, match="outside"):
        p.check_chunk_against_scan(msg.header, msg.arrays, scan)  # type: ignore[arg-type]


# ---------------------------------------------------------------- fuzzing

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
header_fields = st.sampled_from(
    ["protocol", "source", "seq", "time", "scan_id", "arrays", "shape", "channels", "frame", "first_pixel",
     "n_pixels", "encoding", "energy_scale_kev", "energy_offset_kev", "frames", "frames_completed", "status"]
)
topics = st.sampled_from([t.encode() for t in p.INBOUND_TOPICS] + [b"scan.result", b"", b"\x00"])


def _mutated(base: list[bytes], data: st.DataObject) -> list[bytes]:
    body = json.loads(base[1])
    for _ in range(data.draw(st.integers(0, 3))):
        body[data.draw(header_fields)] = data.draw(json_values)
    topic = base[0] if data.draw(st.booleans()) else data.draw(topics)
    frames = [topic, json.dumps(body).encode()]
    buffers = list(base[2:])
    action = data.draw(st.sampled_from(["keep", "truncate", "drop", "extra", "garbage"]))
    if action == "truncate" and buffers:
        buffers[0] = buffers[0][: data.draw(st.integers(0, max(len(buffers[0]) - 1, 0)))]
    elif action == "drop" and buffers:
        buffers.pop()
    elif action == "extra":
        buffers.append(data.draw(st.binary(max_size=64)))
    elif action == "garbage":
        buffers = [data.draw(st.binary(max_size=64)) for _ in buffers]
    return frames + buffers


BASES = [
    [bytes(f) for f in p.encode(_start())],
    GOOD_CHUNK,
    [bytes(f) for f in p.encode(SEQ.make(p.ScanChunk, scan_id="s1", frame=0, first_pixel=2, n_pixels=3,
                                         encoding="dense"), {"counts": np.ones((3, 64), "<u4")})],
    [bytes(f) for f in p.encode(SEQ.make(p.ScanEnd, scan_id="s1", frames_completed=1))],
]


def _decode_never_crashes(frames: list[bytes]) -> None:
    try:
        msg = p.decode(frames, p.Limits(max_pixels=10_000, max_events=10_000), p.INBOUND_TOPICS)
    except p.ProtocolError as exc:
        assert exc.reason in {"frames", "unknown_topic", "bad_json", "version", "schema", "buffer_mismatch",
                              "out_of_range", "too_large"}
        return
    # Accepted: the arrays agree with the header, so accumulating them cannot index out of bounds.
    if isinstance(msg.header, p.ScanChunk) and msg.header.encoding == "events":
        assert msg.arrays["pixel"].size == 0 or int(msg.arrays["pixel"].max()) < msg.header.n_pixels


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from(BASES), data=st.data())
def test_fuzz_mutated_messages(base: list[bytes], data: st.DataObject) -> None:
    _decode_never_crashes(_mutated(base, data))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=5))
def test_fuzz_random_frames(frames: list[bytes]) -> None:
    _decode_never_crashes(frames)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from(BASES), data=st.data())
def test_fuzz_mutated_messages_long(base: list[bytes], data: st.DataObject) -> None:
    _decode_never_crashes(_mutated(base, data))

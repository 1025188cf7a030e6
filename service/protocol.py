"""Wire protocol v1: the single source of the message schema, for encoder and decoder alike.

Every message is a ZeroMQ multipart message::

    [topic (ascii)] [header (UTF-8 JSON object)] [payload buffer]...

Payload buffers are raw little-endian arrays. The header declares each one in ``arrays``
(name, dtype, shape), in the order the buffers follow. Nothing is ever pickled.

One schema serves every document, inbound (acquisition PC -> daemon), outbound
(daemon -> clients) and control (client <-> daemon): a pydantic header model per topic,
plus named arrays. ``encode`` and ``decode`` are the only places that touch bytes.
See docs/protocol.md for the prose version.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PROTOCOL = "edxlive/1"
PROTOCOL_MAJOR = 1

# dtypes a buffer may carry; anything else is refused (no object arrays, no pickles).
ALLOWED_DTYPES = frozenset({"|u1", "<u2", "<u4", "<u8", "<i2", "<i4", "<i8", "<f4", "<f8", "|i1", "|b1"})


class ProtocolError(ValueError):
    """A message that cannot be accepted. ``reason`` is a short stable code for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    """Bounds the decoder enforces before it allocates anything."""

    max_header_bytes: int = 1 << 20
    max_message_bytes: int = 1 << 30
    max_events: int = 50_000_000
    max_pixels: int = 4096 * 4096
    max_channels: int = 16384
    max_frames: int = 100_000


DEFAULT_LIMITS = Limits()


def new_source_id(prefix: str = "src") -> str:
    """A publisher id, new each time a publisher starts."""
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


class ArraySpec(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)

    name: str = Field(min_length=1, max_length=64)
    dtype: str
    shape: tuple[int, ...]

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, v: str) -> str:
        if v not in ALLOWED_DTYPES:
            raise ValueError(f"dtype {v!r} is not allowed; use one of {sorted(ALLOWED_DTYPES)}")
        return v

    @field_validator("shape")
    @classmethod
    def _non_negative(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) > 4 or any(n < 0 for n in v):
            raise ValueError("shape must have at most 4 non-negative dimensions")
        return v

    @property
    def nbytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * math.prod(self.shape))


class Header(BaseModel):
    """Fields every message carries. Unknown fields are ignored, for forward compatibility."""

    model_config = ConfigDict(extra="ignore", defer_build=True)
    topic: ClassVar[str] = ""

    protocol: str = PROTOCOL
    source: str = Field(min_length=1, max_length=128)
    seq: int = Field(ge=0, lt=2**63)
    time: float = Field(default_factory=time.time, allow_inf_nan=False)
    scan_id: str | None = Field(default=None, min_length=1, max_length=128)
    arrays: list[ArraySpec] = Field(default_factory=list, max_length=64)

    @field_validator("protocol")
    @classmethod
    def _major_version(cls, v: str) -> str:
        name, _, version = v.partition("/")
        major = version.split(".")[0]
        if name != "edxlive" or major != str(PROTOCOL_MAJOR):
            raise ValueError(f"unsupported protocol {v!r}; this daemon speaks {PROTOCOL}")
        return v


# ---------------------------------------------------------------- inbound: acquisition -> daemon


class Detector(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)

    name: str = "Super-X"
    elevation_deg: float = Field(default=18.0, ge=-90, le=90)
    azimuth_deg: float = Field(default=0.0, ge=-360, le=360)
    count: int = Field(default=4, ge=1, le=64)
    energy_resolution_mn_ka_ev: float = Field(default=130.0, gt=0, le=1000)


class ScanStart(Header):
    topic: ClassVar[str] = "scan.start"

    scan_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    shape: tuple[int, int]
    channels: int = Field(ge=1)
    energy_offset_kev: float = Field(allow_inf_nan=False)
    energy_scale_kev: float = Field(gt=0, allow_inf_nan=False)
    beam_energy_kev: float = Field(default=200.0, gt=0, le=1000)
    frames: int = Field(default=1, ge=1)
    dwell_time_s: float = Field(default=1e-5, gt=0, allow_inf_nan=False)
    pixel_size_nm: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    detector: Detector = Field(default_factory=Detector)
    elements: list[str] = Field(default_factory=list, max_length=100)
    microscope: str | None = None
    sample: str | None = None

    @field_validator("shape")
    @classmethod
    def _positive_shape(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 1 or v[1] < 1:
            raise ValueError("shape must be [ny, nx] with both >= 1")
        return v

    @property
    def n_pixels(self) -> int:
        return self.shape[0] * self.shape[1]


class ScanChunk(Header):
    """One frame's raster range [first_pixel, first_pixel + n_pixels) (flat index y*nx + x).

    ``events``: arrays ``pixel`` (<u4, offset from first_pixel) and ``channel`` (<u2), one per X-ray.
    ``dense``: array ``counts`` of shape (n_pixels, channels), unsigned integers.
    A chunk with zero events still counts: its pixels were swept.
    """

    topic: ClassVar[str] = "scan.chunk"

    scan_id: str = Field(min_length=1, max_length=128)
    frame: int = Field(ge=0)
    first_pixel: int = Field(ge=0)
    n_pixels: int = Field(ge=1)
    encoding: Literal["events", "dense"]


class ScanEnd(Header):
    topic: ClassVar[str] = "scan.end"

    scan_id: str = Field(min_length=1, max_length=128)
    frames_completed: int = Field(ge=0)
    status: Literal["completed", "aborted"] = "completed"
    reason: str | None = None


class Heartbeat(Header):
    topic: ClassVar[str] = "heartbeat"

    state: str = "idle"


# ---------------------------------------------------------------- outbound: daemon -> clients
# ``source`` of every outbound message is the daemon_uid: a change means the daemon restarted.


class ServiceStatus(Header):
    topic: ClassVar[str] = "service.status"

    state: str
    version: str
    uptime_s: float
    pub_endpoint: str = ""
    control_endpoint: str = ""
    metrics_endpoint: str = ""
    current_scan: str | None = None
    counters: dict[str, float] = Field(default_factory=dict)
    rejected: dict[str, int] = Field(default_factory=dict)
    recent_errors: list[str] = Field(default_factory=list)
    scans: list[dict[str, Any]] = Field(default_factory=list)
    security: str = "open"


class ScanStarted(Header):
    topic: ClassVar[str] = "scan.started"

    scan: ScanStart
    binning: int
    binned_shape: tuple[int, int]
    folder: str


class ScanProgress(Header):
    """Arrays: ``count_map`` (<f4, downsampled total counts per pixel)."""

    topic: ClassVar[str] = "scan.progress"

    frame: int
    frames: int
    fraction: float
    counts_per_pixel: float
    events_per_s: float
    eta_s: float | None = None
    gaps: int = 0
    duplicates: int = 0
    rejected: int = 0
    incomplete_fraction: float = 0.0


class ScanLive(Header):
    """Arrays: ``scree`` (<f4, explained variance ratio), ``components`` (<f4, (k, ny, nx) score maps),
    ``element_maps`` (<f4, (n_elements, ny, nx) line-window maps) and optionally ``clusters`` (<i2)."""

    topic: ClassVar[str] = "scan.live"

    frame: int
    n_components: int
    elements: list[str] = Field(default_factory=list)
    energy_offset_kev: float = 0.0
    energy_scale_kev: float = 0.01


class ScanResult(Header):
    """One document per analysis run (``revision`` grows with each reanalysis).

    ``workflows`` maps a workflow name to its part of result.json (params, durations_s,
    clusters[], noise_fraction, ...). Arrays: ``labels/<workflow>`` (<i2, binned map, -1 noise)
    and ``spectra/<workflow>`` (<f4, (n_clusters, channels) cluster-mean spectra).
    """

    topic: ClassVar[str] = "scan.result"

    revision: int = 0
    status: Literal["ok", "failed"] = "ok"
    reason: str | None = None
    workflows: dict[str, dict[str, Any]] = Field(default_factory=dict)
    agreement: dict[str, Any] = Field(default_factory=dict)
    verdict: dict[str, Any] = Field(default_factory=dict)
    energy_offset_kev: float = 0.0
    energy_scale_kev: float = 0.01
    folder: str = ""


class ScanFinished(Header):
    topic: ClassVar[str] = "scan.finished"

    status: str
    folder: str
    paths: list[str] = Field(default_factory=list)
    incomplete_fraction: float = 0.0


# ---------------------------------------------------------------- control: client <-> daemon (ROUTER)


class Request(Header):
    """A control request. ``kind``: snapshot | status | reanalyze | flush (write unsaved scans now)."""

    topic: ClassVar[str] = "request"

    kind: Literal["snapshot", "status", "reanalyze", "flush"]
    request_id: str = Field(min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)


class Reply(Header):
    """The daemon's answer to ``status`` and ``reanalyze``.

    A ``snapshot`` is answered differently: the latest outbound document of each topic, each as
    its own message exactly as it was published, then one ``snapshot.end``."""

    topic: ClassVar[str] = "reply"

    request_id: str
    ok: bool
    error: str | None = None
    result: dict[str, Any] = Field(default_factory=dict)


class SnapshotEnd(Header):
    """Closes a snapshot; ``last_seq`` is the daemon's PUB seq the snapshot reflects."""

    topic: ClassVar[str] = "snapshot.end"

    request_id: str
    last_seq: int


MODELS: dict[str, type[Header]] = {
    m.topic: m
    for m in (
        ScanStart, ScanChunk, ScanEnd, Heartbeat,
        ServiceStatus, ScanStarted, ScanProgress, ScanLive, ScanResult, ScanFinished,
        Request, Reply, SnapshotEnd,
    )
}
INBOUND_TOPICS = ("scan.start", "scan.chunk", "scan.end", "heartbeat")
OUTBOUND_TOPICS = (
    "service.status", "scan.started", "scan.progress", "scan.live", "scan.result", "scan.finished",
)


@dataclass
class Message:
    """A decoded message: its validated header and its named arrays (read-only views)."""

    header: Header
    arrays: dict[str, np.ndarray]

    @property
    def topic(self) -> str:
        return self.header.topic


# ---------------------------------------------------------------- encode


def _as_wire_array(name: str, arr: np.ndarray) -> tuple[ArraySpec, memoryview]:
    arr = np.ascontiguousarray(arr)
    wire = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    arr = arr.astype(wire, copy=False)
    spec = ArraySpec(name=name, dtype=arr.dtype.str, shape=tuple(int(n) for n in arr.shape))
    return spec, memoryview(arr).cast("B")


def encode(header: Header, arrays: Mapping[str, np.ndarray] | None = None) -> list[bytes | memoryview]:
    """Frames for ``socket.send_multipart``; array buffers are sent without copying."""
    specs: list[ArraySpec] = []
    buffers: list[memoryview] = []
    for name, arr in (arrays or {}).items():
        spec, buf = _as_wire_array(name, arr)
        specs.append(spec)
        buffers.append(buf)
    body = header.model_dump(mode="json", exclude_none=False)
    body["arrays"] = [s.model_dump(mode="json") for s in specs]
    head = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    return [header.topic.encode("ascii"), head, *buffers]


# ---------------------------------------------------------------- decode


def _parse_header(raw: bytes, limits: Limits) -> dict[str, Any]:
    if len(raw) > limits.max_header_bytes:
        raise ProtocolError("too_large", f"header is {len(raw)} bytes, limit {limits.max_header_bytes}")
    try:
        body = json.loads(bytes(raw).decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise ProtocolError("bad_json", f"header is not a UTF-8 JSON object ({exc})") from None
    if not isinstance(body, dict):
        raise ProtocolError("bad_json", "header must be a JSON object")
    return body


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _validate(model: type[Header], body: dict[str, Any]) -> Header:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "header"
        reason = "version" if where == "protocol" else "schema"
        raise ProtocolError(reason, f"{where}: {err.get('msg', 'invalid')}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError("schema", str(exc)) from None


def _read_arrays(specs: Sequence[ArraySpec], buffers: Sequence[bytes], limits: Limits) -> dict[str, np.ndarray]:
    if len(specs) != len(buffers):
        raise ProtocolError("frames", f"header declares {len(specs)} buffers, message has {len(buffers)}")
    out: dict[str, np.ndarray] = {}
    total = 0
    for spec, buf in zip(specs, buffers, strict=True):
        n = len(buf)
        total += n
        if total > limits.max_message_bytes:
            raise ProtocolError("too_large", f"payload exceeds {limits.max_message_bytes} bytes")
        if n != spec.nbytes:
            raise ProtocolError("buffer_mismatch", f"array {spec.name!r}: {n} bytes, header says {spec.nbytes}")
        if spec.name in out:
            raise ProtocolError("schema", f"array {spec.name!r} declared twice")
        arr = np.frombuffer(buf, dtype=np.dtype(spec.dtype)).reshape(spec.shape)
        out[spec.name] = arr
    return out


def decode(frames: Sequence[bytes], limits: Limits = DEFAULT_LIMITS, topics: Sequence[str] | None = None) -> Message:
    """Validate and decode one multipart message. Raises ProtocolError and nothing else."""
    try:
        return _decode(frames, limits, topics)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError("schema", f"{type(exc).__name__}: {exc}") from None


def _decode(frames: Sequence[bytes], limits: Limits, topics: Sequence[str] | None) -> Message:
    if len(frames) < 2:
        raise ProtocolError("frames", f"expected [topic, header, buffers...], got {len(frames)} frame(s)")
    try:
        topic = bytes(frames[0]).decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("unknown_topic", "topic is not ASCII") from None
    model = MODELS.get(topic)
    if model is None or (topics is not None and topic not in topics):
        raise ProtocolError("unknown_topic", f"topic {topic[:40]!r} is not expected here")
    body = _parse_header(frames[1], limits)
    header = _validate(model, body)
    arrays = _read_arrays(header.arrays, frames[2:], limits)
    _check_semantics(header, arrays, limits)
    return Message(header, arrays)


def _check_semantics(header: Header, arrays: dict[str, np.ndarray], limits: Limits) -> None:
    if isinstance(header, ScanStart):
        _check_start(header, limits)
    elif isinstance(header, ScanChunk):
        _check_chunk(header, arrays, limits)


def _check_start(h: ScanStart, limits: Limits) -> None:
    if h.n_pixels > limits.max_pixels:
        raise ProtocolError("out_of_range", f"scan of {h.n_pixels} pixels exceeds the limit {limits.max_pixels}")
    if h.channels > limits.max_channels:
        raise ProtocolError("out_of_range", f"{h.channels} channels exceed the limit {limits.max_channels}")
    if h.frames > limits.max_frames:
        raise ProtocolError("out_of_range", f"{h.frames} frames exceed the limit {limits.max_frames}")


def _check_chunk(h: ScanChunk, arrays: dict[str, np.ndarray], limits: Limits) -> None:
    if h.first_pixel + h.n_pixels > limits.max_pixels:
        raise ProtocolError("out_of_range", "chunk extends past the largest allowed scan")
    if h.frame >= limits.max_frames:
        raise ProtocolError("out_of_range", f"frame {h.frame} exceeds the limit {limits.max_frames}")
    if h.encoding == "events":
        _check_events(h, arrays, limits)
    else:
        _check_dense(h, arrays)


def _check_events(h: ScanChunk, arrays: dict[str, np.ndarray], limits: Limits) -> None:
    if set(arrays) != {"pixel", "channel"}:
        raise ProtocolError("schema", f"events chunk needs arrays pixel and channel, got {sorted(arrays)}")
    pix, chan = arrays["pixel"], arrays["channel"]
    if pix.dtype != np.dtype("<u4") or chan.dtype != np.dtype("<u2"):
        raise ProtocolError("schema", "events arrays must be pixel <u4 and channel <u2")
    if pix.ndim != 1 or pix.shape != chan.shape:
        raise ProtocolError("buffer_mismatch", "pixel and channel must be 1-D and of equal length")
    if pix.size > limits.max_events:
        raise ProtocolError("too_large", f"{pix.size} events exceed the limit {limits.max_events}")
    if pix.size and int(pix.max()) >= h.n_pixels:
        raise ProtocolError("out_of_range", f"pixel offset {int(pix.max())} >= n_pixels {h.n_pixels}")


def _check_dense(h: ScanChunk, arrays: dict[str, np.ndarray]) -> None:
    if set(arrays) != {"counts"}:
        raise ProtocolError("schema", f"dense chunk needs one array counts, got {sorted(arrays)}")
    counts = arrays["counts"]
    if counts.dtype.kind != "u":
        raise ProtocolError("schema", f"dense counts must be unsigned integers, got {counts.dtype}")
    if counts.ndim != 2 or counts.shape[0] != h.n_pixels:
        raise ProtocolError("buffer_mismatch", f"dense counts shape {counts.shape} != (n_pixels, channels)")


def check_chunk_against_scan(chunk: ScanChunk, arrays: dict[str, np.ndarray], scan: ScanStart) -> None:
    """Range checks that need the scan's description (the session calls this)."""
    if chunk.first_pixel + chunk.n_pixels > scan.n_pixels:
        raise ProtocolError(
            "out_of_range",
            f"pixels {chunk.first_pixel}..{chunk.first_pixel + chunk.n_pixels - 1} outside a "
            f"{scan.shape[0]}x{scan.shape[1]} scan",
        )
    if chunk.frame >= scan.frames:
        raise ProtocolError("out_of_range", f"frame {chunk.frame} >= frames {scan.frames} of the scan")
    if chunk.encoding == "events":
        chan = arrays["channel"]
        if chan.size and int(chan.max()) >= scan.channels:
            raise ProtocolError("out_of_range", f"channel {int(chan.max())} >= channels {scan.channels}")
    elif arrays["counts"].shape[1] != scan.channels:
        got = arrays["counts"].shape[1]
        raise ProtocolError("buffer_mismatch", f"dense chunk has {got} channels, scan has {scan.channels}")


class Sequencer:
    """Stamps outgoing headers with this publisher's ``source`` and a ``seq`` that grows by one."""

    def __init__(self, source: str | None = None) -> None:
        self.source = source or new_source_id()
        self.seq = 0

    def next(self) -> dict[str, Any]:
        self.seq += 1
        return {"source": self.source, "seq": self.seq, "time": time.time()}

    def make(self, model: type[Header], **fields: Any) -> Header:
        return model(**self.next(), **fields)

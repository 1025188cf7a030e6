"""The acquisition-side publisher: start, chunk, end. The simulator and a real Velox bridge share it.

The socket is an XPUB that binds (DESIGN.md: the acquisition PC binds, the daemon connects).
XPUB rather than PUB so that the sender can wait until a daemon has subscribed: a PUB socket
silently drops everything sent before the subscription arrives (ZeroMQ's slow-joiner).

With CURVE (docs/operations.md) the publisher is a CURVE *client* although it binds: it
completes a handshake only with a daemon that holds the secret half of ``server.key``, so nobody
else can subscribe, and the daemon admits only publisher keys it lists. A subscriber that fails
the handshake never shows up in ``subscribers``.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np
import zmq

from edxlive.service import protocol as p


class CurveKeys(Protocol):
    """What the publisher needs to talk CURVE to the daemon: edxlive.clients.curve.ClientKeys."""

    def apply(self, socket: zmq.Socket) -> None: ...


class AcquisitionPublisher:
    """Publishes protocol v1 documents. One instance = one ``source`` id with its own ``seq``.

    ``curve``: this publisher's key pair and the daemon's public key, e.g.
    ``ClientKeys.load("publisher.key_secret", "server.key")``. When None, the keys come from the
    edxlive configuration (``security.publisher_secret_key`` and ``security.server_public_key``);
    without those the socket is plain, for a daemon on the same machine.
    """

    def __init__(
        self,
        endpoint: str = "tcp://127.0.0.1:5555",
        *,
        context: zmq.Context | None = None,
        source: str | None = None,
        sndhwm: int = 100_000,
        curve: CurveKeys | None = None,
    ) -> None:
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._sock = self._ctx.socket(zmq.XPUB)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        self._sock.setsockopt(zmq.LINGER, 5000)
        try:
            if curve is None:
                from edxlive.clients.curve import keys_from_config

                curve = keys_from_config("publisher")
            if curve is not None:
                curve.apply(self._sock)
            self._sock.bind(endpoint.replace(":0", ":*") if endpoint.endswith(":0") else endpoint)
        except BaseException:
            self.close()  # a port in use or a bad key must not leak the socket: its context could never terminate
            raise
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._seq = p.Sequencer(source or p.new_source_id("acq"))
        self.subscribers = 0
        self._last: list[bytes | memoryview] = []

    @property
    def source(self) -> str:
        return self._seq.source

    def wait_for_subscribers(self, n: int = 1, timeout: float = 30.0) -> bool:
        """Block until ``n`` subscriptions have arrived, or the timeout passes."""
        deadline = time.monotonic() + timeout
        while self.subscribers < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.drain_subscriptions(int(remaining * 1000))
        return True

    def drain_subscriptions(self, timeout_ms: int = 0) -> None:
        """Count (un)subscribe notifications; XPUB queues them and they must be read."""
        while self._sock.poll(timeout_ms, zmq.POLLIN):
            msg = self._sock.recv()
            if msg[:1] == b"\x01":
                self.subscribers += 1
            elif msg[:1] == b"\x00":
                self.subscribers = max(0, self.subscribers - 1)
            timeout_ms = 0

    def _send(self, model: type[p.Header], arrays: dict[str, np.ndarray] | None = None, **fields: Any) -> p.Header:
        header = self._seq.make(model, **fields)
        self._last = p.encode(header, arrays)
        self._sock.send_multipart(self._last, copy=False)
        return header

    def skip_seq(self) -> None:
        """Consume a seq without sending (fault injection: a chunk lost on the way)."""
        self._seq.seq += 1

    def repeat_last(self) -> None:
        """Send the previous message again, same seq (fault injection: a duplicated chunk)."""
        self._sock.send_multipart(self._last, copy=False)

    def start(self, **scan_fields: Any) -> p.ScanStart:
        """Publish scan.start. Send it again before every frame, so a late daemon can join."""
        return self._send(p.ScanStart, **scan_fields)  # type: ignore[return-value]

    def chunk_events(
        self, scan_id: str, frame: int, first_pixel: int, n_pixels: int, pixel: np.ndarray, channel: np.ndarray
    ) -> None:
        """One X-ray per entry: ``pixel`` is the offset from ``first_pixel``."""
        arrays = {"pixel": np.asarray(pixel, dtype="<u4"), "channel": np.asarray(channel, dtype="<u2")}
        self._send(p.ScanChunk, arrays, scan_id=scan_id, frame=frame, first_pixel=first_pixel,
                   n_pixels=n_pixels, encoding="events")

    def chunk_dense(self, scan_id: str, frame: int, first_pixel: int, counts: np.ndarray) -> None:
        counts = np.asarray(counts)
        if counts.dtype.kind != "u":
            counts = counts.astype("<u4")
        self._send(p.ScanChunk, {"counts": counts}, scan_id=scan_id, frame=frame, first_pixel=first_pixel,
                   n_pixels=int(counts.shape[0]), encoding="dense")

    def end(self, scan_id: str, frames_completed: int, status: str = "completed", reason: str | None = None) -> None:
        self._send(p.ScanEnd, scan_id=scan_id, frames_completed=frames_completed, status=status, reason=reason)

    def heartbeat(self, state: str = "acquiring") -> None:
        self._send(p.Heartbeat, state=state)

    def send_raw(self, frames: list[bytes]) -> None:
        """Send pre-built frames as they are (fault injection: duplicates, malformed messages)."""
        self._sock.send_multipart(frames)

    def close(self) -> None:
        self._sock.close()
        if self._own_context:
            self._ctx.term()

    def __enter__(self) -> AcquisitionPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

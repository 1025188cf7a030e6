"""Inbound: the SUB socket that connects to the acquisition PC(s) and decodes what arrives.

ZeroMQ's own MAXMSGSIZE drops an oversized message before it is read into memory. What ZeroMQ
(4.3) then does is drastic: it treats the message as a protocol error and closes that connection
*for good* (no automatic reconnect, unlike a network error), and the only sign of it is a
DISCONNECTED event on the socket monitor that no CONNECT_RETRIED follows. So the receiver
watches its monitor, counts every disconnect, and reconnects an endpoint that ZeroMQ gave up on
(after the daemon has read everything already queued: a disconnect() drops a pipe's unread
messages). The messages lost meanwhile show up as a seq gap.
Everything else is decoded and validated by protocol.decode.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import zmq

from edxlive.service import protocol as p
from edxlive.service.security import REFUSED_EVENTS


class Receiver:
    def __init__(self, context: zmq.Context, endpoints: list[str], limits: p.Limits, max_message_bytes: int,
                 *, curve: object | None = None) -> None:
        self.limits = limits
        self.socket = context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        # ingest must never drop what the network delivered: queue deep rather than discard
        self.socket.setsockopt(zmq.RCVHWM, 1_000_000)
        self.socket.setsockopt(zmq.LINGER, 0)
        # A socket has one monitor: the receiver's, which also hands CURVE refusals to the CURVE setup.
        self.curve = curve
        events = zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECTED
        if curve is not None:
            curve.apply_inbound(self.socket, monitor=False)  # type: ignore[attr-defined]
            events |= REFUSED_EVENTS
        self.monitor: zmq.Socket | None = self.socket.get_monitor_socket(events)
        self.disconnects = 0
        self._dropped: dict[str, float] = {}  # endpoint -> when it was dropped, until ZeroMQ retries it
        self._refused: set[str] = set()  # endpoints whose last handshake CURVE refused
        for topic in p.INBOUND_TOPICS:
            self.socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        for endpoint in endpoints:
            self.socket.connect(endpoint)
        self.endpoints = list(endpoints)

    def drain(self, budget: int = 2000) -> Iterator[p.Message | p.ProtocolError]:
        """Up to ``budget`` waiting messages, decoded; never blocks, never raises."""
        for _ in range(budget):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                yield p.decode([f.buffer for f in frames], self.limits, p.INBOUND_TOPICS)
            except p.ProtocolError as err:
                yield err

    def poll_monitor(self) -> int:
        """Read the monitor: returns how many inbound connections dropped since the last call."""
        from zmq.utils.monitor import recv_monitor_message

        n = 0
        while self.monitor is not None and self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            endpoint = event["endpoint"].decode()
            if event["event"] & REFUSED_EVENTS:  # the CURVE setup counts it and reconnects it after a pause
                self.curve.handshake_failed("inbound", event["event"], endpoint, self.socket)  # type: ignore[attr-defined]
                self._refused.add(endpoint)
                self._dropped.pop(endpoint, None)
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                if endpoint not in self._refused:
                    n += 1
                    self._dropped[endpoint] = time.monotonic()
            else:  # ZeroMQ is reconnecting it by itself (a network error, a publisher restart)
                self._dropped.pop(endpoint, None)
                if event["event"] == zmq.EVENT_CONNECTED:
                    self._refused.discard(endpoint)
        self.disconnects += n
        return n

    def abandoned(self, grace_s: float = 1.0) -> list[str]:
        """Endpoints dropped for longer than ``grace_s`` with no reconnect attempt by ZeroMQ."""
        now = time.monotonic()
        return [e for e, t in self._dropped.items() if now - t > grace_s and e in self.endpoints]

    def pending(self) -> bool:
        return bool(self.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN)

    def reconnect(self, endpoint: str) -> None:
        """Connect again to an endpoint ZeroMQ gave up on. Read what is queued first: this drops it."""
        self._dropped.pop(endpoint, None)
        with contextlib.suppress(zmq.ZMQError):
            self.socket.disconnect(endpoint)
        self.socket.connect(endpoint)

    def close(self) -> None:
        if self.monitor is not None:
            self.socket.disable_monitor()
            self.monitor.close(0)
        self.socket.close(0)

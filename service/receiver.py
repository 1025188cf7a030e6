"""Inbound: the SUB socket that connects to the acquisition PC(s) and decodes what arrives.

ZeroMQ's own MAXMSGSIZE drops an oversized message before it is read into memory (the peer is
disconnected and reconnects); everything else is decoded and validated by protocol.decode.
"""

from __future__ import annotations

from collections.abc import Iterator

import zmq

from edxlive.service import protocol as p


class Receiver:
    def __init__(self, context: zmq.Context, endpoints: list[str], limits: p.Limits, max_message_bytes: int,
                 *, curve: object | None = None) -> None:
        self.limits = limits
        self.socket = context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        # ingest must never drop what the network delivered: queue deep rather than discard
        self.socket.setsockopt(zmq.RCVHWM, 1_000_000)
        self.socket.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            curve.apply_inbound(self.socket)  # type: ignore[attr-defined]
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

    def close(self) -> None:
        self.socket.close(0)

"""Outbound: a PUB socket for updates and a ROUTER for snapshot and control (the Clone pattern).

Every document is stamped with this daemon's uid as ``source`` and a growing ``seq``. The latest
document of each topic is kept, exactly as published, so a client that attaches late asks for a
snapshot, gets those documents and a ``snapshot.end`` carrying the last seq, and then applies
only the updates newer than that.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from edxlive.service import protocol as p
from edxlive.service.security import REFUSED_EVENTS

log = logging.getLogger("edxlive.publisher")

ControlHandler = Callable[[p.Request], p.Reply | None]


def bind(socket: zmq.Socket, endpoint: str) -> str:
    """Bind, turning port 0 into an ephemeral port, and return the endpoint actually bound."""
    if endpoint.startswith("tcp://") and endpoint.rsplit(":", 1)[-1] == "0":
        endpoint = endpoint.rsplit(":", 1)[0] + ":*"
    socket.bind(endpoint)
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


class Outbound:
    def __init__(self, context: zmq.Context, pub: str, control: str, sndhwm: int, daemon_uid: str,
                 *, curve: object | None = None) -> None:
        self.seq = p.Sequencer(daemon_uid)
        self.pub = context.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, sndhwm)  # a slow subscriber loses updates, never stalls ingest
        self.pub.setsockopt(zmq.LINGER, 500)
        self.router = context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.SNDHWM, 10_000)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.router.setsockopt(zmq.LINGER, 0)
        self._curve = curve
        if curve is not None:  # a socket has one monitor: the PUB's is this one, which reports refusals
            curve.apply_outbound(self.pub, monitor=False)  # type: ignore[attr-defined]
            curve.apply_outbound(self.router)  # type: ignore[attr-defined]
        self.monitor = self.pub.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | REFUSED_EVENTS)
        self.pub_endpoint = bind(self.pub, pub)
        self.control_endpoint = bind(self.router, control)
        self.latest: dict[str, list[bytes]] = {}
        self.clients = 0

    @property
    def daemon_uid(self) -> str:
        return self.seq.source

    def publish(self, model: type[p.Header], fields: dict[str, Any],
                arrays: dict[str, np.ndarray] | None = None) -> None:
        header = model(**self.seq.next(), **fields)
        frames = [bytes(f) for f in p.encode(header, arrays)]
        self.latest[model.topic] = frames
        if model.topic == "scan.started":  # a new scan: the previous scan's documents are stale
            for topic in ("scan.progress", "scan.live", "scan.result", "scan.finished"):
                self.latest.pop(topic, None)
        with contextlib.suppress(zmq.Again):
            self.pub.send_multipart(frames, zmq.NOBLOCK)

    def poll_monitor(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)["event"]
            if event & REFUSED_EVENTS:  # a failed CURVE handshake; its connection's DISCONNECTED follows
                if self._curve is not None:
                    self._curve.handshake_failed("outbound", event)  # type: ignore[attr-defined]
                continue
            self.clients += 1 if event == zmq.EVENT_ACCEPTED else -1
            self.clients = max(self.clients, 0)

    def serve_control(self, handler: ControlHandler, budget: int = 100) -> None:
        """Answer waiting control requests; a malformed request gets an error reply, never a crash."""
        for _ in range(budget):
            try:
                identity, *frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = p.decode(frames, topics=("request",))
            except p.ProtocolError as err:
                self._reply(identity, p.Reply(**self.seq.next(), request_id="?", ok=False, error=str(err)))
                continue
            req: p.Request = msg.header  # type: ignore[assignment]
            if req.kind == "snapshot":
                self._snapshot(identity, req)
                continue
            reply = handler(req)
            if reply is not None:
                self._reply(identity, reply)

    def reply(self, req: p.Request, ok: bool, result: dict[str, Any] | None = None,
              error: str | None = None) -> p.Reply:
        return p.Reply(**self.seq.next(), request_id=req.request_id, ok=ok, result=result or {}, error=error)

    def _reply(self, identity: bytes, reply: p.Reply) -> None:
        self.router.send_multipart([identity, *[bytes(f) for f in p.encode(reply)]])

    def _snapshot(self, identity: bytes, req: p.Request) -> None:
        last = self.seq.seq
        for frames in list(self.latest.values()):
            self.router.send_multipart([identity, *frames])
        end = p.SnapshotEnd(**self.seq.next(), request_id=req.request_id, last_seq=last)
        self.seq.seq -= 1  # snapshot.end is private to this client: it must not open a gap in the PUB seq
        self._reply(identity, end)

    def close(self) -> None:
        self.pub.disable_monitor()
        self.monitor.close(0)
        self.pub.close()
        self.router.close(0)

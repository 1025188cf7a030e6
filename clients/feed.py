"""The client side of the Clone pattern, shared by the dashboard and ``edxlive tail``.

A client may attach at any time, also halfway through a scan, and must end up with the same
picture as one that was there from the start. The daemon keeps the latest document of each
outbound topic; the feed does, in order:

1. ``status`` on the control ROUTER (a DEALER here): learns the PUB endpoint and the daemon_uid;
2. SUB to the PUB endpoint, and at once ``snapshot``: the stored documents, then ``snapshot.end``
   with ``last_seq``;
3. hands out the snapshot documents, then the buffered updates with ``seq > last_seq``, then
   every further update;
4. checks the first update after the snapshot: ZeroMQ subscriptions take effect asynchronously,
   so an update published after the snapshot but before the subscription was live would be
   lost. Every document of the daemon carries the next ``seq``, so the first update must be
   ``last_seq + 1``; if it is later, the feed takes a second snapshot, now on a subscription known
   to be live (a gap can also be a control reply to another client: the second snapshot is then
   merely redundant). Waiting for the first update before the first snapshot would be just as
   safe, but would leave the screen empty for up to a second (status comes once a second).

A change of ``source`` (the daemon_uid) means the daemon restarted: the feed takes a fresh
snapshot. Silence for ``stale_after_s`` (the daemon publishes ``service.status`` every second)
means it is gone: the feed says ``disconnected`` and keeps retrying, re-reading daemon.json when
no endpoint was given (a restarted daemon may have new ephemeral ports).

Everything is non-blocking and driven by ``poll()``, so a Textual app can call it from a timer.
With CURVE, every socket of the feed is a CURVE client with the keys given, or else those in the
configuration (``security.client_secret_key`` and ``security.server_public_key``, see
clients/curve.py). A daemon that refuses the key simply never answers: the feed keeps retrying.
This module imports from the service only ``protocol`` and ``config`` (import-linter contract).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import zmq

from edxlive.clients.curve import ClientKeys, keys_from_config
from edxlive.service import protocol as p

log = logging.getLogger("edxlive.feed")

RUNTIME_FILE = "daemon.json"
CONTROL_TOPICS = (*p.OUTBOUND_TOPICS, "reply", "snapshot.end")
MAX_BUFFERED = 10_000  # updates held while the snapshot is in flight


@dataclass
class FeedEvent:
    kind: Literal["connected", "disconnected"]
    daemon_uid: str | None = None
    detail: str = ""


FeedItem = p.Message | FeedEvent


def runtime_file(data_dir: Path | None = None) -> Path:
    """Where a daemon using ``data_dir`` (default: the configured one) writes its endpoints."""
    if data_dir is None:
        from edxlive.service.config import Settings

        data_dir = Path(Settings().storage.data_dir)
    return Path(data_dir) / RUNTIME_FILE


def default_control_endpoint() -> str:
    """The local daemon's control endpoint: from daemon.json if a daemon is running, else the config."""
    from edxlive.service.config import Settings

    settings = Settings()
    try:
        doc = json.loads(runtime_file(Path(settings.storage.data_dir)).read_text())
        return str(doc["control"])
    except (OSError, ValueError, KeyError, TypeError):
        return settings.outbound.control


class Feed:
    """Snapshot + updates from one daemon, robust to late attach, restarts and silence."""

    def __init__(self, control: str | None = None, *, context: zmq.Context | None = None,
                 stale_after_s: float = 3.0, curve: ClientKeys | None = None) -> None:
        self._explicit = control
        self.curve = curve if curve is not None else keys_from_config("client")
        self.control = control or default_control_endpoint()
        self._own_context = context is None
        self.ctx = context or zmq.Context()
        self.stale_after_s = stale_after_s
        self.connected = False
        self.daemon_uid: str | None = None
        self.pub_endpoint: str | None = None
        self._dealer: zmq.Socket | None = None
        self._sub: zmq.Socket | None = None
        self._phase: Literal["idle", "status", "snapshot", "live"] = "idle"
        self._snapshot_seq = 0  # last_seq of the latest snapshot: older updates are in it
        self._unchecked = False  # the snapshot was taken before the SUB was known live (see step 4)
        self._request_id = ""
        self._snapshot: list[p.Message] = []
        self._buffer: list[p.Message] = []
        self._last_heard = time.monotonic()
        self._attempt_started = 0.0

    # ------------------------------------------------------------------ public

    def poll(self, timeout_ms: int = 100) -> list[FeedItem]:
        """Wait up to ``timeout_ms`` for news; returns what arrived (possibly nothing)."""
        deadline = time.monotonic() + timeout_ms / 1000
        out: list[FeedItem] = []
        while True:
            self._check_liveness(out)
            if self._phase == "idle":
                self._start_attempt()
            poller = zmq.Poller()
            for sock in (self._dealer, self._sub):
                if sock is not None:
                    poller.register(sock, zmq.POLLIN)
            remaining = max(0, int((deadline - time.monotonic()) * 1000))
            ready = dict(poller.poll(min(remaining, 100)))
            if self._dealer is not None and self._dealer in ready:
                self._drain_control(out)
            if self._sub is not None and self._sub in ready:
                self._drain_sub(out)
            if out or time.monotonic() >= deadline:
                return out

    def request(self, kind: str, params: dict[str, Any] | None = None, timeout_s: float = 5.0) -> p.Reply:
        """One control request on its own socket (so it never mixes with the feed's stream)."""
        sock = self._socket(zmq.DEALER)
        try:
            sock.connect(self.control)
            req = _request(kind, params or {})
            sock.send_multipart(p.encode(req))
            end = time.monotonic() + timeout_s
            while (left := end - time.monotonic()) > 0:
                if not sock.poll(int(left * 1000)):
                    break
                try:
                    msg = p.decode(sock.recv_multipart(), topics=CONTROL_TOPICS)
                except p.ProtocolError as err:
                    raise ConnectionError(f"bad reply from {self.control}: {err}") from None
                if isinstance(msg.header, p.Reply) and msg.header.request_id == req.request_id:
                    return msg.header
            hint = " and does it list this client's CURVE key?" if self.curve is not None else "?"
            raise TimeoutError(f"no reply from the daemon at {self.control} within {timeout_s:g} s; "
                               f"is `edxlive serve` running{hint}")
        finally:
            sock.close(0)

    def close(self) -> None:
        self._close_sockets()
        if self._own_context:
            self.ctx.term()

    def __enter__(self) -> Feed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ state machine

    def _start_attempt(self) -> None:
        self._close_sockets()
        if self._explicit is None:  # a restarted local daemon may have new ephemeral ports
            self.control = default_control_endpoint()
        self._dealer = self._socket(zmq.DEALER)
        self._dealer.connect(self.control)
        self._send(_request("status", {}))
        self._phase = "status"
        self._attempt_started = time.monotonic()

    def _send(self, req: p.Request) -> None:
        assert self._dealer is not None
        self._request_id = req.request_id
        with contextlib.suppress(zmq.Again):  # not connected yet: the liveness check retries
            self._dealer.send_multipart(p.encode(req), zmq.NOBLOCK)

    def _check_liveness(self, out: list[FeedItem]) -> None:
        now = time.monotonic()
        if self._phase == "live" and now - self._last_heard > self.stale_after_s:
            self.connected = False
            out.append(FeedEvent("disconnected", self.daemon_uid,
                                 f"nothing from the daemon for {self.stale_after_s:g} s; retrying {self.control}"))
            self._phase = "idle"
        elif self._phase not in ("idle", "live") and now - self._attempt_started > self.stale_after_s:
            self._phase = "idle"  # the attempt stalled (daemon down or restarting): start over

    def _drain_control(self, out: list[FeedItem]) -> None:
        assert self._dealer is not None
        while self._dealer is not None and self._dealer.poll(0):
            try:
                msg = p.decode(self._dealer.recv_multipart(), topics=CONTROL_TOPICS)
            except p.ProtocolError as err:
                log.debug("ignored control message: %s", err)
                continue
            h = msg.header
            if isinstance(h, p.Reply):
                if h.request_id == self._request_id and self._phase == "status":
                    self._on_status(h)
            elif isinstance(h, p.SnapshotEnd):
                if h.request_id == self._request_id and self._phase == "snapshot":
                    self._on_snapshot_end(h, out)
            elif self._phase == "snapshot":
                self._snapshot.append(msg)

    def _on_status(self, reply: p.Reply) -> None:
        pub = str(reply.result.get("pub_endpoint") or "")
        if not reply.ok or not pub:
            self._phase = "idle"
            return
        self.pub_endpoint = pub.replace("tcp://0.0.0.0:", f"tcp://{_host(self.control)}:")
        self.pub_endpoint = self.pub_endpoint.replace("tcp://*:", f"tcp://{_host(self.control)}:")
        self._sub = self._socket(zmq.SUB)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.connect(self.pub_endpoint)
        self._buffer = []
        self._snapshot_seq = 0  # a new attempt hands out the whole snapshot
        self._request_snapshot()

    def _request_snapshot(self) -> None:
        self._snapshot = []
        self._send(_request("snapshot", {}))
        self._phase = "snapshot"
        self._attempt_started = time.monotonic()

    def _on_snapshot_end(self, end: p.SnapshotEnd, out: list[FeedItem]) -> None:
        uid = end.source
        if not self.connected or uid != self.daemon_uid:
            out.append(FeedEvent("connected", uid, f"control {self.control}, pub {self.pub_endpoint}"))
        self.daemon_uid = uid
        self.connected = True
        # A second snapshot (step 4) holds again what the first held unless it changed since: only
        # documents newer than the first are handed out, so none is handed out twice.
        out.extend(sorted((m for m in self._snapshot if m.header.seq > self._snapshot_seq), key=lambda m: m.header.seq))
        ours = [m for m in self._buffer if m.header.source == uid]
        self._snapshot, self._buffer = [], []
        self._phase = "live"
        self._last_heard = time.monotonic()
        self._snapshot_seq = end.last_seq
        # An update older than the snapshot came on the SUB: it was live before the snapshot was taken.
        self._unchecked = not any(m.header.seq <= end.last_seq for m in ours)
        self._hand_out(ours, out)

    def _hand_out(self, updates: list[p.Message], out: list[FeedItem]) -> None:
        """Updates newer than the snapshot, the first of them checked for continuity (step 4)."""
        for i, msg in enumerate(updates):
            if msg.header.seq <= self._snapshot_seq:
                continue  # published before the snapshot, which holds it or a newer document of its topic
            if self._unchecked and msg.header.seq > self._snapshot_seq + 1:
                # An update may have been published before the subscription took effect: a second
                # snapshot, on the subscription now known to be live, brings the picture up to date.
                self._buffer = updates[i:]
                self._request_snapshot()
                return
            self._unchecked = False
            out.append(msg)

    def _drain_sub(self, out: list[FeedItem]) -> None:
        assert self._sub is not None
        while self._sub is not None and self._sub.poll(0):
            try:
                msg = p.decode(self._sub.recv_multipart(), topics=p.OUTBOUND_TOPICS)
            except p.ProtocolError as err:
                log.debug("ignored update: %s", err)
                continue
            self._last_heard = time.monotonic()
            if self._phase == "snapshot":
                if len(self._buffer) < MAX_BUFFERED:
                    self._buffer.append(msg)
            elif self._phase == "live":
                if msg.header.source != self.daemon_uid:  # the daemon restarted: start over
                    self._phase = "idle"
                    return
                self._hand_out([msg], out)

    def _socket(self, kind: int) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.apply(sock)
        return sock

    def _close_sockets(self) -> None:
        for sock in (self._dealer, self._sub):
            if sock is not None:
                sock.close(0)
        self._dealer = self._sub = None


def _request(kind: str, params: dict[str, Any]) -> p.Request:
    return p.Request(source="feed", seq=0, kind=kind, request_id=uuid.uuid4().hex[:16], params=params)  # type: ignore[arg-type]


def _host(endpoint: str) -> str:
    rest = endpoint.split("://", 1)[-1]
    return rest.rsplit(":", 1)[0]

"""The feed's snapshot, taken at once, and its continuity check (clients/feed.py, step 4).

The daemon's side is the daemon's own outbound (service/publisher.py: PUB + ROUTER) on ephemeral
localhost ports, driven here step by step so that each test decides what is published when.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from edxlive.clients.feed import Feed, FeedEvent
from edxlive.service import protocol as p
from edxlive.service.publisher import Outbound

UID = "edxlive-test-feed"


@pytest.fixture
def outbound() -> Iterator[Outbound]:
    ctx = zmq.Context()
    out = Outbound(ctx, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", 1000, UID)
    yield out
    out.close()
    ctx.term()


def status(out: Outbound, uptime: float) -> None:
    out.publish(p.ServiceStatus, {"state": "idle", "version": "test", "uptime_s": uptime,
                                  "pub_endpoint": out.pub_endpoint, "control_endpoint": out.control_endpoint})


def pump(feed: Feed, out: Outbound, got: list, until: Callable[[], bool], timeout: float = 10.0) -> None:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"the feed did not get there: {got!r}"
        out.serve_control(lambda req: out.reply(req, True, {"pub_endpoint": out.pub_endpoint}))
        got.extend(feed.poll(20))


def uptimes(got: list) -> list[float]:  # type: ignore[type-arg]
    return [m.header.uptime_s for m in got if isinstance(m, p.Message) and m.header.topic == "service.status"]


def test_the_snapshot_comes_at_once_and_the_next_update_follows_it(outbound: Outbound) -> None:
    """The picture is there without waiting for a first update (the daemon's status comes once a
    second); the update after the snapshot, seq last_seq + 1, is handed out without a second snapshot."""
    status(outbound, 1.0)
    got: list = []  # type: ignore[type-arg]
    with Feed(outbound.control_endpoint) as feed:
        pump(feed, outbound, got, lambda: feed.connected)
        assert isinstance(got[0], FeedEvent) and got[0].kind == "connected"
        assert uptimes(got) == [1.0]  # from the snapshot, before anything new was published
        seq = snapshot = outbound.seq.seq
        time.sleep(0.5)  # the subscription takes effect
        status(outbound, 2.0)
        pump(feed, outbound, got, lambda: uptimes(got) == [1.0, 2.0])
        assert got[-1].header.seq == seq + 1
        assert feed._phase == "live" and not feed._unchecked and feed._snapshot_seq == snapshot  # one snapshot


def test_a_gap_after_the_snapshot_brings_a_second_snapshot(outbound: Outbound) -> None:
    """An update that may have been lost between the snapshot and the subscription taking effect
    (here: its seq was spent, as a control reply to another client spends one) makes the feed ask
    for a second snapshot; the picture ends up as the daemon's, and nothing is handed out twice."""
    status(outbound, 1.0)
    outbound.publish(p.ScanFinished, {"scan_id": "s0", "status": "completed", "folder": "/tmp/s0"})
    got: list = []  # type: ignore[type-arg]
    with Feed(outbound.control_endpoint) as feed:
        pump(feed, outbound, got, lambda: feed.connected)
        assert uptimes(got) == [1.0] and feed._unchecked
        first_snapshot = feed._snapshot_seq
        time.sleep(0.5)
        outbound.seq.next()  # a document this feed never sees
        status(outbound, 2.0)
        pump(feed, outbound, got, lambda: feed._snapshot_seq > first_snapshot and feed._phase == "live")
        status(outbound, 3.0)
        pump(feed, outbound, got, lambda: uptimes(got)[-1:] == [3.0])
        finished = [m for m in got if isinstance(m, p.Message) and m.header.topic == "scan.finished"]
        assert [m.header.scan_id for m in finished] == ["s0"]  # in both snapshots, handed out once
        assert uptimes(got) == [1.0, 2.0, 3.0]  # in order, none repeated
        assert sum(isinstance(m, FeedEvent) for m in got) == 1  # still the same connection

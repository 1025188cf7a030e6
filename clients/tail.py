"""`edxlive tail`: the daemon's outbound stream as JSON lines, one message per line, for scripts.

Each line is the message header (as on the wire) plus ``topic``; arrays appear as
``{"name": {"dtype", "shape"}}``, or as nested lists with ``--arrays``. Connection events go to
stderr, so stdout stays pure JSON lines. It attaches through the shared Feed (snapshot first),
so it can start at any time.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

import numpy as np

from edxlive.clients.feed import Feed, FeedEvent
from edxlive.service import protocol as p


def message_json(msg: p.Message, arrays: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {"topic": msg.topic, **msg.header.model_dump(mode="json", exclude={"arrays"})}
    doc["arrays"] = {name: _array_json(arr, arrays) for name, arr in msg.arrays.items()}
    return doc


def _array_json(arr: np.ndarray, full: bool) -> Any:
    if full:
        return arr.tolist()
    return {"dtype": arr.dtype.str, "shape": list(arr.shape)}


def run_tail(connect: str | None, count: int | None = None, until: str | None = None,
             timeout: float | None = None, arrays: bool = False, *, out: TextIO | None = None,
             err: TextIO | None = None) -> int:
    """0 when ``count``/``until`` is reached (or on timeout without them); 1 when a goal was missed."""
    out = out or sys.stdout
    err = err or sys.stderr
    end = None if timeout is None else time.monotonic() + timeout
    seen = 0
    with Feed(connect) as feed:
        print(f"tail: attaching to {feed.control}", file=err, flush=True)
        while end is None or time.monotonic() < end:
            for item in feed.poll(200):
                if isinstance(item, FeedEvent):
                    print(f"tail: {item.kind} {item.daemon_uid or ''} {item.detail}".rstrip(), file=err, flush=True)
                    continue
                print(json.dumps(message_json(item, arrays), separators=(",", ":")), file=out, flush=True)
                seen += 1
                if (count is not None and seen >= count) or (until is not None and item.topic == until):
                    return 0
    if count is None and until is None:
        return 0
    goal = f"a {until} message" if until else f"{count} messages"
    print(f"tail: timed out after {timeout:g} s before {goal} ({seen} received); "
          "is the daemon running and a scan under way?", file=err, flush=True)
    return 1

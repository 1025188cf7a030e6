"""One round trip to the terminal, before Textual owns it: does it announce Sixel or Kitty graphics?

textual-image finds out with two queries of its own, each waiting up to 0.1 s. Most terminals
answer neither the Kitty graphics query (so that wait is always spent) nor speak Sixel, and
importing textual-image pulls in numpy and Pillow: about a quarter of a second before the first
frame, for nothing. Here the Kitty query is followed by a Device Attributes request (DA1), which
every terminal answers, and answers in order: a Kitty reply, if any, comes before the DA1 reply,
and a DA1 reply listing attribute 4 announces Sixel. The same two tests textual-image makes
(renderable/sixel.py and tgp.py), so ``maps.detect_graphics`` asks textual-image only where this
says yes, and textual-image keeps the last word.
"""

from __future__ import annotations

import os
import re
import select
import sys
import time

KITTY_QUERY = b"\x1b_Gi=31,s=1,v=1,a=q,t=d,f=24;AAAA\x1b\\"  # textual-image's query: a 1x1 RGB image
DA1 = b"\x1b[c"
DA1_REPLY = re.compile(rb"\x1b\[\?([\d;]*)c")
KITTY_REPLY = re.compile(rb"\x1b_G([^\x1b]*)\x1b\\")


def graphics_hint(timeout_s: float = 0.2) -> bool:
    """True when the terminal announced Sixel or the Kitty graphics protocol; False when it did not,
    did not answer within ``timeout_s``, or stdin/stdout are not a terminal."""
    try:
        import termios
        import tty
    except ImportError:  # not POSIX: let textual-image decide
        return True
    if not (sys.__stdin__ and sys.__stdout__ and sys.__stdin__.isatty() and sys.__stdout__.isatty()):
        return False
    stdin = sys.__stdin__.fileno()
    saved = termios.tcgetattr(stdin)
    try:
        tty.setcbreak(stdin, termios.TCSANOW)  # the reply must not echo, nor wait for a newline
        os.write(sys.__stdout__.fileno(), KITTY_QUERY + DA1)
        reply = _read_until_da1(stdin, timeout_s)
    finally:
        termios.tcsetattr(stdin, termios.TCSANOW, saved)
    return announces_graphics(reply)


def announces_graphics(reply: bytes) -> bool:
    """Sixel (attribute 4 in the DA1 reply) or a Kitty reply ending in OK, before the DA1 reply."""
    da1 = DA1_REPLY.search(reply)
    if da1 is None:
        return False
    kitty = KITTY_REPLY.search(reply, 0, da1.start())
    return b"4" in da1.group(1).split(b";") or (kitty is not None and kitty.group(1).endswith(b";OK"))


def _read_until_da1(fd: int, timeout_s: float) -> bytes:
    reply = b""
    deadline = time.monotonic() + timeout_s
    while not DA1_REPLY.search(reply):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        reply += os.read(fd, 1024)
    return reply

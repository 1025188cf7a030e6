"""The graphics probe (clients/dashboard/terminal.py): one round trip, answered here as terminals do."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from edxlive.clients.dashboard.terminal import DA1, KITTY_QUERY, announces_graphics
from tests import procs

PROBE = """
import json, sys
from edxlive.clients.dashboard.maps import detect_graphics
print(json.dumps({"graphics": detect_graphics(), "textual_image": "textual_image" in sys.modules}))
"""


@pytest.mark.parametrize(("reply", "graphics"), [
    (b"\x1b[?62;22c", False),  # a VT220-class terminal (xterm without Sixel, most emulators)
    (b"\x1b[?62;4;22c", True),  # Sixel
    (b"\x1b_Gi=31;OK\x1b\\\x1b[?62;22c", True),  # Kitty graphics
    (b"\x1b_Gi=31;EINVAL:unsupported\x1b\\\x1b[?62;22c", False),
    (b"\x1b[?64c", False),
    (b"", False),  # no answer at all
])
def test_what_a_reply_announces(reply: bytes, graphics: bool) -> None:
    assert announces_graphics(reply) is graphics


def run_in_terminal(answer: bytes | None) -> dict:  # type: ignore[type-arg]
    """The dashboard's detect_graphics in a child on a pseudo-terminal; this side plays the terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 800, 480))  # rows, columns, pixels
    proc = subprocess.Popen([sys.executable, "-c", PROBE], stdin=slave, stdout=slave, stderr=subprocess.PIPE,
                            cwd=procs.REPO, env=procs.child_env(), start_new_session=True)
    os.close(slave)
    seen, answered = b"", 0
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and b"}" not in seen:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                while answer is not None and seen.count(DA1) > answered:  # every DA1 request, in order
                    os.write(master, answer)
                    answered += 1
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        proc.stderr.close()
    assert proc.returncode == 0, err
    assert KITTY_QUERY + DA1 in seen  # one round trip, the Kitty query first
    return json.loads(seen[seen.index(b"{"):seen.index(b"}") + 1])


def test_a_terminal_without_graphics_is_told_apart_without_textual_image() -> None:
    assert run_in_terminal(b"\x1b[?62;22c") == {"graphics": False, "textual_image": False}


def test_a_terminal_that_does_not_answer_gets_half_blocks() -> None:
    assert run_in_terminal(None) == {"graphics": False, "textual_image": False}


def test_a_sixel_terminal_is_handed_to_textual_image() -> None:
    """textual-image then asks again, and has the last word."""
    assert run_in_terminal(b"\x1b[?62;4;22c") == {"graphics": True, "textual_image": True}

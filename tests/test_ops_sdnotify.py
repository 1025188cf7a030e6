"""systemd's notify protocol, against a real unix datagram socket standing in for systemd.

The daemon runs as systemd would run it under ``Type=notify`` with ``WatchdogSec=``: it gets
NOTIFY_SOCKET and WATCHDOG_USEC in its environment, must send READY=1 once the analysis
warm-up (numba JIT) is done, then WATCHDOG=1 from its main loop, and STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import procs


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "notify"
    assert len(str(path)) < 100, "AF_UNIX paths are limited to 108 bytes"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(1.0)
    try:
        yield sock, path
    finally:
        sock.close()


def _receive_until(sock: socket.socket, wanted: str, timeout: float, seen: list[str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen.extend(sock.recv(4096).decode().splitlines())
        except TimeoutError:
            continue
        if wanted in seen:
            return
    raise AssertionError(f"no {wanted} within {timeout:.0f} s; received {seen}")


def test_ready_after_warmup_then_watchdog_then_stopping(notify_socket: tuple[socket.socket, Path],
                                                        tmp_path: Path) -> None:
    sock, path = notify_socket
    # WatchdogSec=2: the daemon pings every second (half the interval, as sd_watchdog_enabled advises).
    env = procs.child_env(NOTIFY_SOCKET=str(path), WATCHDOG_USEC="2000000")
    daemon = procs.start_daemon(tmp_path / "data", [], env=env)
    with procs.running(daemon):
        seen: list[str] = []
        _receive_until(sock, "READY=1", timeout=120, seen=seen)
        log = tmp_path / "data" / "daemon.log"  # READY waited for the warm-up (logged just after it)
        procs.wait_for(lambda: "ready (analysis warm-up done)" in log.read_text(), timeout=5, what="the ready line")
        after_ready: list[str] = []
        _receive_until(sock, "WATCHDOG=1", timeout=5, seen=after_ready)
        assert procs.stop(daemon.proc, signal.SIGTERM) == 0
        _receive_until(sock, "STOPPING=1", timeout=5, seen=after_ready)
    assert "READY=1" not in after_ready  # READY is sent once

"""Real processes for end-to-end tests: the simulator and the daemon, on ephemeral localhost ports.

Nothing here is mocked: each helper starts ``python -m edxlive.service ...`` as a subprocess,
reads back the ports it bound (the simulator prints ``endpoint: ...``; the daemon writes
``daemon.json``) and stops it at the end of the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CMD = [sys.executable, "-m", "edxlive.service"]
REPO = Path(__file__).resolve().parents[1]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".cache" / "numba"))
    env.setdefault("MPLBACKEND", "Agg")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Simulator:
    proc: subprocess.Popen
    endpoint: str

    def wait(self, timeout: float = 120) -> str:
        """Wait for the simulator to finish; returns everything it printed after the endpoint line."""
        out, _ = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, f"simulator exited {self.proc.returncode}: {out}"
        return out


@dataclass
class Daemon:
    proc: subprocess.Popen
    data_dir: Path
    runtime: dict

    @property
    def control(self) -> str:
        return self.runtime["control"]

    @property
    def metrics(self) -> str | None:
        return self.runtime.get("metrics")


def start_simulator(source: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Simulator:
    proc = subprocess.Popen([*CMD, "simulate", source, "--endpoint", "tcp://127.0.0.1:0", "-q", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env or child_env())
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("endpoint: "):
            return Simulator(proc, line.split(":", 1)[1].strip())
        seen.append(line)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"simulator did not print its endpoint: {''.join(seen)}")


def start_daemon(data_dir: Path, connect: Sequence[str] = (), *args: str, env: dict[str, str] | None = None,
                 timeout: float = 120) -> Daemon:
    data_dir.mkdir(parents=True, exist_ok=True)
    runtime = data_dir / "daemon.json"
    if runtime.exists():
        runtime.unlink()
    cmd = [*CMD, "serve", "--pub", "tcp://127.0.0.1:0", "--control", "tcp://127.0.0.1:0", "--metrics-port", "0",
           "--data-dir", str(data_dir)]
    for endpoint in connect:
        cmd += ["--connect", endpoint]
    with open(data_dir / "daemon.log", "a") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([*cmd, *args], stdout=log, stderr=subprocess.STDOUT, text=True,
                                env=env or child_env())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if runtime.exists():
            return Daemon(proc, data_dir, json.loads(runtime.read_text()))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"daemon did not start: {(data_dir / 'daemon.log').read_text()}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return proc.returncode


@contextmanager
def running(*procs: Simulator | Daemon) -> Iterator[None]:
    try:
        yield
    finally:
        for item in procs:
            stop(item.proc)


def tail(control: str, *args: str, timeout: float = 240) -> list[dict]:
    """``edxlive tail`` as a subprocess: the daemon's outbound documents, one JSON object per line."""
    out = subprocess.run([*CMD, "tail", "--connect", control, *args], capture_output=True, text=True,
                         timeout=timeout, env=child_env(), check=False)
    assert out.returncode == 0, f"tail exited {out.returncode}: {out.stderr}"
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def wait_for(predicate, timeout: float = 60, interval: float = 0.1, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

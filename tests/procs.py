"""Real processes for end-to-end tests: the simulator and the daemon, on ephemeral localhost ports.

Nothing here is mocked: each helper starts ``python -m edxlive.service ...`` as a subprocess,
reads back the ports it bound (the simulator prints ``endpoint: ...``; the daemon writes
``daemon.json``) and stops it at the end of the test.
"""

from __future__ import annotations

import contextlib
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


def request(control: str, kind: str, params: dict | None = None, timeout: float = 10.0) -> dict:
    """One control request (status, reanalyze, flush) over a real DEALER socket; returns the reply."""
    import uuid

    import zmq

    from edxlive.service import protocol as p

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(control)
    try:
        req = p.Sequencer("test-request").make(p.Request, kind=kind, request_id=uuid.uuid4().hex[:12],
                                               params=params or {})
        sock.send_multipart(p.encode(req))
        if not sock.poll(int(timeout * 1000)):
            raise AssertionError(f"no reply to {kind} within {timeout:.0f} s")
        reply = p.decode(sock.recv_multipart()).header
        return reply.model_dump()
    finally:
        sock.close(0)


class Feeder:
    """The acquisition PC driven from the test: a real AcquisitionPublisher (XPUB, ephemeral port)
    replaying a ScanSource chunk by chunk, and recording exactly what it sent, so a test knows the
    counts the daemon must end up with."""

    def __init__(self, source: str = "tiny", frames: int = 3, seed: int = 0, scan_id: str = "rel-1",
                 source_id: str | None = None) -> None:
        import numpy as np

        from edxlive.clients.publisher import AcquisitionPublisher
        from edxlive.clients.simulate import scan_fields
        from edxlive.clients.sources import load_source

        self.scan = load_source(source, frames=frames, seed=seed, scan_id=scan_id)
        self.meta = self.scan.meta
        self.pub = AcquisitionPublisher("tcp://127.0.0.1:0", source=source_id)
        self.fields = scan_fields(self.scan, scan_id)
        self.scan_id = scan_id
        self.sent = np.zeros((*self.meta.shape, self.meta.channels), dtype=np.uint64)
        self.messages = 0

    @property
    def endpoint(self) -> str:
        return self.pub.endpoint

    def wait_subscribed(self, timeout: float = 60) -> None:
        from edxlive.service import protocol as p

        wait_for(lambda: (self.pub.drain_subscriptions(50), self.pub.subscribers >= len(p.INBOUND_TOPICS))[1],
                 timeout, 0.0, "the daemon to subscribe")

    def wait_unsubscribed(self, timeout: float = 30) -> None:
        wait_for(lambda: (self.pub.drain_subscriptions(50), self.pub.subscribers == 0)[1], timeout, 0.0,
                 "the daemon's subscription to go away")

    def send_frame(self, f: int, pixels: tuple[int, int] | None = None, chunk_pixels: int | None = None,
                   lose: bool = False) -> int:
        """scan.start, then frame ``f``'s chunks (pixels [a, b) only, if given); returns messages sent.
        ``lose``: the chunks are lost on the way (their seq numbers are used, nothing is sent)."""
        import numpy as np

        nx = self.meta.shape[1]
        npix = self.meta.shape[0] * nx
        step = chunk_pixels or nx
        a, b = pixels or (0, npix)
        frame = self.scan.frames[f]
        self.pub.start(**self.fields)
        n = 1
        for first in range(a, b, step):
            stop = min(first + step, b)
            n += 1
            if lose:
                self.pub.skip_seq()
                continue
            pix, chan = frame.events(first, stop)
            self.pub.chunk_events(self.scan_id, f, first, stop - first, pix, chan)
            y, x = divmod(first + pix.astype("int64"), nx)
            np.add.at(self.sent, (y, x, chan.astype("int64")), 1)
        self.messages += n
        return n

    def end(self, frames_completed: int | None = None) -> None:
        self.pub.end(self.scan_id, frames_completed if frames_completed is not None else len(self.scan.frames))
        self.messages += 1

    def restart(self, source_id: str) -> None:
        """The acquisition software restarts: a new socket on the same port, a new ``source``, seq from 1."""
        from edxlive.clients.publisher import AcquisitionPublisher

        endpoint = self.endpoint
        self.pub.close()

        def rebind() -> AcquisitionPublisher | None:
            try:
                return AcquisitionPublisher(endpoint, source=source_id)
            except Exception:  # the old socket may hold the port for a moment
                return None

        self.pub = wait_for(rebind, 30, 0.1, f"rebinding {endpoint}")

    def close(self) -> None:
        self.pub.close()


def kill_tree(daemon: Daemon) -> None:
    """SIGKILL the daemon and its analysis workers (a test that needs no analysis result)."""
    import psutil

    kids = psutil.Process(daemon.proc.pid).children(recursive=True)
    daemon.proc.kill()
    for kid in kids:
        with contextlib.suppress(psutil.NoSuchProcess):
            kid.kill()
    daemon.proc.wait(30)


def kill9(daemon: Daemon) -> None:
    """SIGKILL: no shutdown code runs, exactly as a crash or the OOM killer."""
    daemon.proc.kill()
    daemon.proc.wait(30)


def fast_env(**extra: str) -> dict[str, str]:
    """A daemon environment for fault tests: short intervals, one quick workflow, no JIT warm-up."""
    return child_env(EDXLIVE_ANALYSIS__WORKFLOWS='["pca_gmm"]', EDXLIVE_ANALYSIS__WARMUP="false",
                     EDXLIVE_LIVE__ELEMENT_MAPS="false",
                     EDXLIVE_OUTBOUND__STATUS_INTERVAL_S="0.2", **extra)


def metric(daemon: Daemon, name: str, **labels: str) -> float:
    """One sample from the daemon's Prometheus endpoint (0 when absent)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(daemon.metrics, timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0

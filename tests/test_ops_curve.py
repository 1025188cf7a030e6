"""CURVE authentication with real sockets: a real daemon process, real simulators and clients.

The keys are made the way an operator makes them: ``edxlive keys`` for the site (server,
publisher, client) and a separate run for an intruder's own keys, which no folder lists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr
import zmq

from edxlive.clients.curve import ClientKeys
from edxlive.clients.feed import Feed
from edxlive.clients.publisher import AcquisitionPublisher
from edxlive.service.security import RECONNECT_AFTER_S
from tests import procs


@dataclass
class Keys:
    site: Path
    rogue: Path

    def daemon_env(self, **extra: str) -> dict[str, str]:
        """The daemon's environment: CURVE on, and a short analysis so the test stays quick."""
        env = dict(EDXLIVE_SECURITY__SERVER_SECRET_KEY=str(self.site / "server.key_secret"),
                   EDXLIVE_SECURITY__PUBLISHER_KEYS_DIR=str(self.site / "publishers"),
                   EDXLIVE_SECURITY__CLIENT_KEYS_DIR=str(self.site / "clients"),
                   EDXLIVE_ANALYSIS__WORKFLOWS='["pca_gmm"]', EDXLIVE_ANALYSIS__WARMUP="false")
        return procs.child_env(**{**env, **extra})

    def args(self, role: str, secret: Path) -> list[str]:
        return [f"--{role}-key", str(secret), "--server-key", str(self.site / "server.key")]

    def client(self, name: str = "client") -> ClientKeys:
        folder = self.site if name == "client" else self.rogue
        return ClientKeys.load(folder / f"{name}.key_secret", self.site / "server.key")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    site, rogue = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("intruder")
    for folder, names in ((site, []), (rogue, ["--name", "publisher-rogue", "--name", "client-rogue"])):
        out = subprocess.run([*procs.CMD, "keys", str(folder), *names], capture_output=True, text=True,
                             env=procs.child_env(), timeout=60, check=False)
        assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (site / "clients").iterdir()) == ["client.key"]
    assert (site / "server.key_secret").stat().st_mode & 0o077 == 0  # secret keys are private
    return Keys(site, rogue)


def _refused(metrics_url: str) -> dict[str, float]:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    return {m[0]: float(m[1]) for m in re.findall(r'edxlive_curve_refused_total\{direction="(\w+)"\} (\S+)', text)}


def _tail_without_access(control: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*procs.CMD, "tail", "--connect", control, "--until", "scan.finished", "--timeout", "8",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=procs.child_env())


def test_only_listed_publishers_and_clients(shared_data: Path, keys: Keys, tmp_path: Path) -> None:
    source = shared_data / "bruker" / "test_TEM.bcf"
    rogue_args = keys.args("publisher", keys.rogue / "publisher-rogue.key_secret")
    good_args = keys.args("publisher", keys.site / "publisher.key_secret")
    with ThreadPoolExecutor(2) as pool:  # each simulator takes seconds to import its readers
        # The intruder sends all the time, with CURVE and the right server key but its own key.
        rogue_f = pool.submit(procs.start_simulator, "tiny", "--loop", "--wait-subscribers", "0",
                              "--scan-seconds", "5", "--frames", "2", "--scan-id", "rogue", *rogue_args)
        good_f = pool.submit(procs.start_simulator, str(source), "--frames", "2", "--fast", "--scan-id", "curve-1",
                             *good_args)
        rogue, good = rogue_f.result(), good_f.result()
    daemon = procs.start_daemon(tmp_path / "data", [rogue.endpoint, good.endpoint], env=keys.daemon_env())
    with procs.running(rogue, good, daemon):
        intruder = _tail_without_access(daemon.control, *keys.args("client", keys.rogue / "client-rogue.key_secret"))
        keyless = _tail_without_access(daemon.control)
        client_args = keys.args("client", keys.site / "client.key_secret")
        docs = procs.tail(daemon.control, "--until", "scan.finished", *client_args)
        for proc in (intruder, keyless):
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 1 and out == "", err  # an unlisted client gets nothing at all
        sent = int(re.search(r"([\d,]+) events", good.wait()).group(1).replace(",", ""))  # type: ignore[union-attr]
        metrics = urllib.request.urlopen(daemon.metrics, timeout=5).read().decode()
        refused = _refused(daemon.metrics)
        assert refused.get("inbound", 0) >= 1 and refused.get("outbound", 0) >= 2, refused
        # The service stays up and still answers a listed client.
        assert daemon.proc.poll() is None and rogue.proc.poll() is None
        with Feed(daemon.control, curve=keys.client()) as feed:
            assert feed.request("status").result["security"] == "curve"
    finished = docs[-1]
    assert finished["topic"] == "scan.finished" and finished["status"] == "completed"
    assert {d.get("scan_id") for d in docs} <= {"curve-1", None}  # the intruder's scans never started
    # The daemon took in exactly the authorised publisher's X-rays, and saved them all.
    assert f"edxlive_xray_events_ingested_total {float(sent)}" in metrics
    saved = zarr.open(str(Path(finished["folder"]) / "spectrum_image.zspy"), mode="r")
    assert int(np.asarray(saved["Experiments"]["curve-1"]["data"]).sum()) == sent
    log = (tmp_path / "data" / "daemon.log").read_text()
    assert "CURVE inbound: refused key" in log and "CURVE outbound: refused key" in log


def test_new_client_key_accepted_without_restart(keys: Keys, tmp_path: Path) -> None:
    """Dropping a public key into client_keys_dir admits that client within seconds."""
    clients = tmp_path / "clients"
    shutil.copytree(keys.site / "clients", clients)
    env = keys.daemon_env(EDXLIVE_SECURITY__CLIENT_KEYS_DIR=str(clients))
    daemon = procs.start_daemon(tmp_path / "data", [], env=env)
    with procs.running(daemon), Feed(daemon.control, curve=keys.client("client-rogue")) as feed:
        with pytest.raises(TimeoutError):
            feed.request("status", timeout_s=2)
        shutil.copy(keys.rogue / "clients" / "client-rogue.key", clients)
        reply = procs.wait_for(lambda: _status_or_none(feed), timeout=15, what="the new key to be accepted")
        assert reply.ok
        assert _refused(daemon.metrics).get("outbound", 0) >= 1


def _status_or_none(feed: Feed):  # type: ignore[no-untyped-def]
    try:
        return feed.request("status", timeout_s=1)
    except TimeoutError:
        return None


def test_publisher_fixed_after_a_failed_handshake(keys: Keys, tmp_path: Path) -> None:
    """A publisher first started without CURVE, then restarted with its keys on the same port, is picked up.

    libzmq gives up on an endpoint after a protocol-level handshake failure; the daemon retries it.
    """
    ctx = zmq.Context()
    plain = AcquisitionPublisher("tcp://127.0.0.1:0", context=ctx, curve=_NoCurve())
    endpoint = plain.endpoint
    daemon = procs.start_daemon(tmp_path / "data", [endpoint], env=keys.daemon_env())
    try:
        procs.wait_for(lambda: _refused(daemon.metrics).get("inbound", 0) >= 1, timeout=15,
                       what="the plain publisher to be refused")
        assert not plain.wait_for_subscribers(1, timeout=1)
        plain.close()
        publisher_keys = ClientKeys.load(keys.site / "publisher.key_secret", keys.site / "server.key")
        # the port is released asynchronously after close
        fixed = procs.wait_for(lambda: _bind_or_none(endpoint, ctx, publisher_keys), timeout=10, what="the port")
        try:
            assert fixed.wait_for_subscribers(1, timeout=RECONNECT_AFTER_S + 10)
        finally:
            fixed.close()
    finally:
        procs.stop(daemon.proc)
        ctx.destroy(linger=0)


def _bind_or_none(endpoint: str, ctx: zmq.Context, curve: ClientKeys) -> AcquisitionPublisher | None:
    try:
        return AcquisitionPublisher(endpoint, context=ctx, curve=curve)
    except zmq.ZMQError:
        return None


class _NoCurve:
    """A publisher that does not speak CURVE at all (as one configured by mistake would)."""

    def apply(self, socket: zmq.Socket) -> None:
        pass


def test_keys_again_adds_names_and_never_replaces_a_pair(tmp_path: Path) -> None:
    """A new server key would lock out every deployed peer, and a revoked key must stay revoked."""
    from edxlive.service.security import generate_keys

    generate_keys(tmp_path, ["server", "publisher", "client"])
    server_secret = (tmp_path / "server.key_secret").read_bytes()
    (tmp_path / "clients" / "client.key").unlink()  # revoked by the operator
    generate_keys(tmp_path, ["server", "client", "client-carol", "publisher-2"])
    assert (tmp_path / "server.key_secret").read_bytes() == server_secret
    assert sorted(p.name for p in (tmp_path / "clients").iterdir()) == ["client-carol.key"]
    assert sorted(p.name for p in (tmp_path / "publishers").iterdir()) == ["publisher-2.key", "publisher.key"]
    assert not (tmp_path / "clients" / "server.key").exists() and not (tmp_path / "publishers" / "server.key").exists()
    for secret in tmp_path.glob("*.key_secret"):
        assert secret.stat().st_mode & 0o077 == 0, secret


@pytest.mark.timeout(30)
def test_a_publisher_that_cannot_bind_leaves_nothing_open() -> None:
    """A port in use raises, and the half-made publisher's socket is closed: its context terminates."""
    ctx = zmq.Context()
    first = AcquisitionPublisher("tcp://127.0.0.1:0", context=ctx, curve=_NoCurve())
    try:
        with pytest.raises(zmq.ZMQError):
            AcquisitionPublisher(first.endpoint, context=ctx, curve=_NoCurve())
    finally:
        first.close()
    ctx.term()  # would block for ever on a leaked socket


def test_oversized_message_under_curve_is_counted_and_the_publisher_reconnected(keys: Keys, tmp_path: Path) -> None:
    """ZeroMQ closes a connection for good on a message over MAXMSGSIZE. Under CURVE, too, the daemon
    counts it and connects again (the receiver owns the socket's monitor and shares refusals with CURVE)."""
    data = tmp_path / "data"
    pub = AcquisitionPublisher("tcp://127.0.0.1:0", source="acq-big",
                               curve=ClientKeys.load(keys.site / "publisher.key_secret", keys.site / "server.key"))
    daemon = procs.start_daemon(data, [pub.endpoint], env=keys.daemon_env(
        EDXLIVE_LIMITS__MAX_MESSAGE_BYTES=str(64 * 1024)))
    base = dict(scan_id="big", shape=[4, 32], channels=1024, energy_offset_kev=0.0, energy_scale_kev=0.01, frames=1)
    try:
        assert pub.wait_for_subscribers(1, 60)
        pub.start(**base)
        pub.chunk_events("big", 0, 0, 32, np.arange(32, dtype="<u4"), np.full(32, 100, "<u2"))
        pub.chunk_dense("big", 0, 32, np.ones((32, 1024), "<u4"))  # 128 KiB, over MAXMSGSIZE 64 KiB
        procs.wait_for(lambda: procs.metric(daemon, "edxlive_inbound_disconnects_total") >= 1, 30,
                       what="the dropped connection to be counted")
        procs.wait_for(lambda: "closed by ZeroMQ and not retried" in (data / "daemon.log").read_text(), 30,
                       what="the daemon to connect again")
        time.sleep(1.0)  # the TCP, ZMTP and CURVE handshakes; what is sent before is lost (and counted by seq)
        pub.start(**base)
        for row in (2, 3):
            pub.chunk_events("big", 0, row * 32, 32, np.arange(32, dtype="<u4"), np.full(32, 100, "<u2"))
        pub.end("big", frames_completed=1)
        procs.wait_for(lambda: "scan big: completed" in (data / "daemon.log").read_text(), 60, what="the scan to end")
        refused = _refused(daemon.metrics)
    finally:
        procs.kill_tree(daemon)
        pub.close()
    assert refused.get("inbound", 0) == 0  # a dropped connection is not a CURVE refusal


def test_no_configuration_means_no_keys_without_loading_settings() -> None:
    """A client with no EDXLIVE_* variable (so no config file either) has no CURVE keys, and finds
    that out without pydantic-settings (0.4 s of `edxlive dashboard`'s start; the CLI and its
    logging module do not load it either)."""
    import os
    import sys

    code = ("import sys; import edxlive.service.cli, edxlive.service.logs; "
            "from edxlive.clients.curve import keys_from_config; "
            "assert keys_from_config('client') is None; assert 'pydantic_settings' not in sys.modules")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("EDXLIVE_")}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)

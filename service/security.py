"""CURVE authentication for the daemon's sockets (CurveZMQ + ZAP, through pyzmq's ``zmq.auth``).

Roles. The daemon is the CURVE *server* on all three of its sockets, and every peer is a CURVE
*client*, whichever side binds (CURVE roles are independent of bind/connect):

- outbound PUB and control ROUTER (the daemon binds): the clients are dashboards and ``tail``;
  ZAP lets in only the public keys found in ``security.client_keys_dir``;
- inbound SUB (the daemon *connects* to the acquisition PC's bind): the acquisition publisher is
  the CURVE client; ZAP lets in only the keys in ``security.publisher_keys_dir``.

Why this arrangement rather than the acquisition PC as CURVE server: one key pair to guard (the
daemon's), one public key to hand out (``server.key``), every authorisation decision in one place
(two folders on the daemon's machine), and the acquisition PC needs no ZAP handler of its own.
As a CURVE client it completes a handshake only with a peer that proves it holds the daemon's
secret key, so nobody else can subscribe and read the counts.

Refusals are counted (``edxlive_curve_refused_total{direction}``) from socket monitor events,
which see every failed handshake: an unlisted key (ZAP says no), a peer without CURVE, or one that
expects another server key. Each refused key is logged, once an hour at most.

Without keys the daemon runs open, and ``require_localhost`` refuses any endpoint off this machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from edxlive.service.config import ConfigError, SecurityConfig, Settings

log = logging.getLogger("edxlive.security")

INBOUND, OUTBOUND = "inbound", "outbound"
_DOMAIN = {INBOUND: "edxlive.inbound", OUTBOUND: "edxlive.outbound"}
# What counts as a refusal: ZAP said no (AUTH), or the peer could not do CURVE with this daemon's
# key (PROTOCOL). HANDSHAKE_FAILED_NO_DETAIL is left out: it is an I/O error mid-handshake, such
# as a peer that went away, and a peer without CURVE ends in a PROTOCOL failure anyway.
REFUSED_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
# After a protocol-level handshake failure (peer without CURVE, or a wrong server key) libzmq
# stops reconnecting that endpoint for good; the daemon reconnects it itself after this pause,
# so an acquisition PC whose keys are fixed is picked up without restarting the daemon.
RECONNECT_AFTER_S = 5.0
LOG_REPEAT_S = 3600.0

RefusedHook = Callable[[str], None]


# --------------------------------------------------------------------------- key files


def generate_keys(directory: Path, names: list[str]) -> list[Path]:
    """Create ``<name>.key`` (public) and ``<name>.key_secret`` for each name; return the files.

    ``server`` is the daemon's pair. Names starting with ``publisher`` are acquisition PCs: their
    new public key is also copied into ``publishers/``; every other name is a client (dashboard,
    tail) and goes into ``clients/``. Those two folders are what ``security.publisher_keys_dir``
    and ``security.client_keys_dir`` point at. An existing pair is kept, never overwritten (a new
    server key would lock out every deployed peer), and never copied again (a key deleted from a
    folder stays revoked), so running the command again only adds names.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in names:
        public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
        if secret.exists():
            written += [public, secret]
            continue
        public, secret = (Path(p) for p in zmq.auth.create_certificates(directory, name))
        secret.chmod(0o600)  # pyzmq writes with the umask; a secret key is for its owner only
        written += [public, secret]
        if name != "server":
            folder = directory / ("publishers" if name.startswith("publisher") else "clients")
            folder.mkdir(exist_ok=True)
            written.append(Path(shutil.copy2(public, folder / public.name)))
    return written


def _load_secret(path: Path, key: str) -> tuple[bytes, bytes]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"security.{key}: cannot read {path} ({exc}); create it with `edxlive keys DIR`") from None
    if not secret:
        raise ConfigError(f"security.{key}: {path} holds no secret key; point it at the .key_secret file")
    return public, secret


def _load_public_keys(folder: Path) -> dict[bytes, str]:
    """z85 public key -> file stem, for every ``*.key`` in ``folder``."""
    keys: dict[bytes, str] = {}
    for path in sorted(folder.glob("*.key")):
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            log.warning("skipped key file %s: %s", path, exc)
            continue
        keys[public] = path.stem
    return keys


# --------------------------------------------------------------------------- open mode


def is_local(endpoint: str) -> bool:
    """True for endpoints that never leave this machine: ipc, inproc, and tcp on a loopback address."""
    transport, _, rest = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    host = rest.rsplit(";", 1)[-1].rsplit(":", 1)[0].strip("[]")  # "src;dest:port" connects: the dest
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # an interface name, "*" or a host name: may be reachable from outside


def require_localhost(settings: Settings) -> None:
    """Without CURVE keys every endpoint must be local; raises ConfigError naming the first that is not."""
    endpoints = [(f"inbound.endpoints[{i}]", e) for i, e in enumerate(settings.inbound.endpoints)]
    endpoints += [("outbound.pub", settings.outbound.pub), ("outbound.control", settings.outbound.control)]
    for key, endpoint in endpoints:
        if not is_local(endpoint):
            raise ConfigError(f"{key} = {endpoint} is not on localhost, and without CURVE keys the daemon only "
                              "talks to this machine; set security.server_secret_key (docs/operations.md) "
                              "or use 127.0.0.1")


# --------------------------------------------------------------------------- the server side


class _Once:
    """True the first time a key is seen, and again after ``every`` seconds: keeps logs readable."""

    def __init__(self, every: float = LOG_REPEAT_S) -> None:
        self.every = every
        self.seen: dict[object, float] = {}

    def __call__(self, key: object) -> bool:
        now = time.monotonic()
        if now - self.seen.get(key, -self.every) < self.every:
            return False
        self.seen[key] = now
        return True


class _Allowlist:
    """The public keys in one folder, re-read when the folder changes (add a key, no restart).

    ``callback`` runs in the authenticator's thread; swapping the dict is atomic in CPython.
    """

    def __init__(self, direction: str, folder: Path) -> None:
        self.direction, self.folder = direction, folder
        self.mtime = -1.0
        self.keys: dict[bytes, str] = {}
        self._log_once = _Once()
        self.refresh()

    def refresh(self) -> None:
        try:
            mtime = self.folder.stat().st_mtime
        except OSError:
            return
        if mtime != self.mtime:
            self.mtime, self.keys = mtime, _load_public_keys(self.folder)
            log.info("CURVE %s: %d key(s) allowed from %s (%s)", self.direction, len(self.keys), self.folder,
                     ", ".join(sorted(self.keys.values())) or "none: every peer will be refused")

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        if self._log_once(key):
            log.warning("CURVE %s: refused key %s, not in %s [logged once an hour per key]",
                        self.direction, key.decode("ascii", "replace"), self.folder)
        return False


class CurveServer:
    """The daemon's CURVE setup: one key pair, a ZAP handler, and monitors that count refusals."""

    def __init__(self, cfg: SecurityConfig, context: zmq.Context, on_refused: RefusedHook | None = None) -> None:
        self.public, self.secret = _load_secret(cfg.server_secret_key, "server_secret_key")  # type: ignore[arg-type]
        self.allow = {INBOUND: _Allowlist(INBOUND, _folder(cfg.publisher_keys_dir, "publisher_keys_dir")),
                      OUTBOUND: _Allowlist(OUTBOUND, _folder(cfg.client_keys_dir, "client_keys_dir"))}
        self.on_refused = on_refused
        self.refusals = {INBOUND: 0, OUTBOUND: 0}
        self._monitors: list[tuple[str, zmq.Socket, zmq.Socket]] = []
        self._retry: dict[str, float] = {}  # inbound endpoint -> when to reconnect it
        self._inbound: zmq.Socket | None = None
        self._log_once = _Once()
        # The ZAP handler must run before any socket handshakes: libzmq lets CURVE peers in
        # unchecked when no handler is bound.
        self.auth = ThreadAuthenticator(context, log=logging.getLogger("edxlive.security.zap"))
        self.auth.start()
        for direction, allow in self.allow.items():
            self.auth.configure_curve_callback(_DOMAIN[direction], allow)

    def _server(self, socket: zmq.Socket, direction: str) -> None:
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True
        socket.zap_domain = _DOMAIN[direction].encode()

    def apply_inbound(self, socket: zmq.Socket, monitor: bool = True) -> None:
        """The SUB that connects to acquisition publishers: CURVE server, publisher keys only.
        ``monitor=False``: the receiver runs the socket's one monitor and reports to ``handshake_failed``."""
        self._server(socket, INBOUND)
        self._inbound = socket
        if monitor:
            self._monitor(INBOUND, socket)

    def apply_outbound(self, socket: zmq.Socket, monitor: bool = True) -> None:
        """PUB and ROUTER: CURVE server, client keys only. ``monitor=False`` for a socket whose owner
        runs its own monitor (a socket has one) and reports to ``handshake_failed``."""
        self._server(socket, OUTBOUND)
        if monitor:
            self._monitor(OUTBOUND, socket)

    def _monitor(self, direction: str, socket: zmq.Socket) -> None:
        self._monitors.append((direction, socket, socket.get_monitor_socket(REFUSED_EVENTS)))

    def handshake_failed(self, direction: str, event: int, endpoint: str = "",
                         socket: zmq.Socket | None = None) -> None:
        """One refused handshake, from a monitor here or in the socket's owner: count it, log it."""
        self.refusals[direction] += 1
        if self.on_refused is not None:
            self.on_refused(direction)
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return  # ZAP said no: the allowlist has logged the key
        inbound = socket is not None and socket.type == zmq.SUB
        who = f"the publisher at {endpoint}" if inbound else "a client"
        retry = f"; retrying in {RECONNECT_AFTER_S:g} s" if inbound else ""
        if self._log_once((direction, who)):
            log.warning("CURVE %s: handshake with %s failed: it does not use CURVE, or not with this daemon's "
                        "server.key%s [logged once an hour]", direction, who, retry)
        if inbound:
            self._retry.setdefault(endpoint, time.monotonic() + RECONNECT_AFTER_S)

    def poll(self) -> None:
        """From the daemon's loop (the sockets' thread): count refusals, reconnect, re-read key folders."""
        for direction, socket, monitor in self._monitors:
            while monitor.poll(0):
                event = recv_monitor_message(monitor)
                self.handshake_failed(direction, event["event"], event["endpoint"].decode(), socket)
        self._reconnect_due()
        for allow in self.allow.values():
            allow.refresh()

    def _reconnect_due(self) -> None:
        now = time.monotonic()
        sub = self._inbound
        for endpoint, when in list(self._retry.items()):
            if now < when or sub is None:
                continue
            del self._retry[endpoint]
            with contextlib.suppress(zmq.ZMQError):  # libzmq may already have dropped the endpoint
                sub.disconnect(endpoint)
            sub.connect(endpoint)

    def close(self) -> None:
        """Before the context terminates: the monitors and the ZAP thread hold sockets in it."""
        for _, socket, monitor in self._monitors:
            if not socket.closed:
                socket.disable_monitor()
            monitor.close(0)
        self._monitors = []
        self.auth.stop()


def _folder(path: Path | None, key: str) -> Path:
    if path is None or not Path(path).is_dir():
        raise ConfigError(f"security.{key}: {path} is not a folder; create it with `edxlive keys DIR`")
    return Path(path)


def curve_setup(cfg: SecurityConfig, context: zmq.Context | None = None,
                on_refused: RefusedHook | None = None) -> CurveServer:
    """The daemon's CURVE server; raises ConfigError (one line) for a missing or unreadable key."""
    return CurveServer(cfg, context or zmq.Context.instance(), on_refused)

"""Client-side CURVE: a peer's own key pair plus the daemon's public key (docs/operations.md).

Every peer of the daemon is a CURVE client, whether it binds (the acquisition publisher) or
connects (dashboard, tail): the daemon is the one CURVE server (service/security.py says why).
A client needs two files: its own ``<name>.key_secret`` and the daemon's ``server.key``.

Keys come either explicitly (``ClientKeys.load``) or from the edxlive configuration, so that the
dashboard, tail and the simulator pick them up without extra plumbing: ``[security]
client_secret_key`` (dashboard, tail) or ``publisher_secret_key`` (acquisition), each with
``server_public_key``, in the TOML file or as ``EDXLIVE_SECURITY__*`` environment variables.
Only zmq here, and only once keys are read: `edxlive dashboard` checks its keys before its first
frame and must start fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import zmq

Role = Literal["client", "publisher"]


class CurveKeyError(ValueError):
    """A key file that is missing or of the wrong kind (one line, with the remedy)."""


@dataclass(frozen=True)
class ClientKeys:
    public: bytes
    secret: bytes
    server: bytes

    @classmethod
    def load(cls, secret_file: Path, server_key_file: Path) -> ClientKeys:
        public, secret = _read(Path(secret_file))
        if not secret:
            raise CurveKeyError(f"{secret_file} holds no secret key; give the .key_secret file")
        server, _ = _read(Path(server_key_file))
        return cls(public, secret, server)

    def apply(self, socket: zmq.Socket) -> None:
        """Before bind/connect: this socket is a CURVE client that talks only to the daemon's key."""
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_serverkey = self.server


def _read(path: Path) -> tuple[bytes, bytes | None]:
    import zmq.auth

    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveKeyError(f"cannot read CURVE key {path} ({exc}); create keys with `edxlive keys DIR`") from None


def keys_from_config(role: Role) -> ClientKeys | None:
    """The configured keys for a ``client`` or ``publisher``; None when none are configured."""
    import os

    if not any(name.upper().startswith("EDXLIVE_") for name in os.environ):
        # Nothing configured (settings come only from EDXLIVE_* variables and the EDXLIVE_CONFIG
        # file): the defaults have no keys. Skips pydantic-settings, ~0.4 s of a client's start.
        return None
    from edxlive.service.config import ConfigError, load_settings

    try:
        sec = load_settings().security
    except ConfigError as exc:
        raise CurveKeyError(str(exc)) from None
    secret = sec.client_secret_key if role == "client" else sec.publisher_secret_key
    if secret is None:
        return None
    assert sec.server_public_key is not None  # SecurityConfig insists on it
    return ClientKeys.load(secret, sec.server_public_key)

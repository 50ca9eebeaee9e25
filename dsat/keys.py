"""CURVE key pairs of a multi-host topology, and the allow list of its hosts' public keys.

``dsat keys TOPOLOGY`` makes one key pair per ``[hosts]`` entry, as pyzmq's
:func:`zmq.auth.create_certificates` writes them, under ``[dsat] keys``::

    keys/public/HOST.key             the public key: copy the whole folder to every host
    keys/private/HOST.key_secret     the secret key: mode 0600, only on HOST itself

A host loads its own secret key and every host's public key (:class:`KeyRing`).
The binding side of a tcp link checks each connecting peer against the
:class:`AllowList` (the ZAP handler in :mod:`dsat.transport` asks it); the
allow list re-reads a public key file when it changes, so a host's new key is
accepted without restarting the hosts that check it.  Nothing here opens a
socket.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

from dsat.counters import Rejections
from dsat.errors import DsatError, KeyFileError
from dsat.topology.model import Topology

#: The ZAP domain every DSAT CURVE server socket asks about.
ZAP_DOMAIN = b"dsat"


def public_path(keys_dir: Path, host: str) -> Path:
    return keys_dir / "public" / f"{host}.key"


def secret_path(keys_dir: Path, host: str) -> Path:
    return keys_dir / "private" / f"{host}.key_secret"


def require_curve(topo: Topology, has: Callable[[str], bool] = zmq.has) -> None:
    """Refuse a multi-host topology that needs CURVE when the installed libzmq has none."""
    if topo.multi_host and not topo.insecure and not has("curve"):
        raise DsatError(
            f"{topo.path}: the installed libzmq {zmq.zmq_version()} has no CURVE, which every link between"
            " hosts needs; install a libzmq built with libsodium (the pyzmq wheels have it)"
        )


def create(topo: Topology, *, replace: Iterable[str] = ()) -> list[str]:
    """Make the key pairs of the hosts that have none (and of *replace*); returns the hosts keyed now."""
    renew = set(replace)
    unknown = sorted(renew - set(topo.hosts))
    if unknown:
        raise DsatError(f"{topo.path}: no host {unknown[0]!r} in [hosts]; hosts are: {', '.join(topo.hosts)}")
    keys_dir = topo.keys_dir
    public, private = keys_dir / "public", keys_dir / "private"
    public.mkdir(parents=True, exist_ok=True)
    private.mkdir(parents=True, exist_ok=True)
    private.chmod(0o700)
    made = []
    for host in topo.hosts:
        if host not in renew and public_path(keys_dir, host).exists() and secret_path(keys_dir, host).exists():
            continue
        with tempfile.TemporaryDirectory(dir=private) as scratch:
            public_file, secret_file = zmq.auth.create_certificates(scratch, host)
            os.chmod(secret_file, 0o600)
            os.replace(secret_file, secret_path(keys_dir, host))  # same file system: atomic
            shutil.move(public_file, public_path(keys_dir, host))
        made.append(host)
    return made


def load_public(path: Path) -> bytes:
    """The Z85 public key in a key file; KeyFileError saying what is wrong."""
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: cannot read the public key ({exc})", reason="bad_key_file") from None
    return public


def load_secret(path: Path) -> tuple[bytes, bytes]:
    """``(public, secret)`` from a secret key file that only its owner can read."""
    try:
        mode = path.stat().st_mode
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: cannot read the secret key ({exc})", reason="bad_key_file") from None
    if secret is None:
        raise KeyFileError(f"{path}: holds no secret key; take HOST.key_secret from dsat keys", reason="no_secret")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: others can read this secret key (mode {stat.filemode(mode)}); chmod 600 it", reason="open_secret"
        )
    return public, secret


def problems_for(topo: Topology, host: str) -> list[str]:
    """What keeps *host* from joining its topology's CURVE links: missing or unreadable key files."""
    if not topo.multi_host or topo.insecure:
        return []
    found = []
    try:
        load_secret(secret_path(topo.keys_dir, host))
    except KeyFileError as exc:
        found.append(f"{exc}; make it with dsat keys {topo.path.name} (on a safe machine) and copy it here")
    for peer in topo.hosts:
        try:
            load_public(public_path(topo.keys_dir, peer))
        except KeyFileError as exc:
            found.append(f"{exc}; copy {topo.keys_dir.name}/public/ from where dsat keys ran")
    return found


@dataclass(frozen=True)
class Curve:
    """One socket's CURVE keys: its own pair, and for a connecting socket the server's public key."""

    public: bytes
    secret: bytes
    server: bytes | None = None


class KeyRing:
    """A host's keys: its own pair and the public key of every host of the topology."""

    def __init__(self, topo: Topology, host: str) -> None:
        self.topology = topo
        self.host = host
        self.public, self.secret = load_secret(secret_path(topo.keys_dir, host))
        self.hosts = {peer: load_public(public_path(topo.keys_dir, peer)) for peer in topo.hosts}

    def curve_for(self, address: str, *, bind: bool) -> Curve | None:
        """The CURVE keys of a socket on *address*, or None when that link is not secured."""
        if not self.topology.secured(address):
            return None
        if bind:
            return Curve(self.public, self.secret)
        return Curve(self.public, self.secret, server=self.hosts[self.topology.tcp_binders[address]])

    def allow_list(self) -> AllowList:
        return AllowList(self.topology.keys_dir, list(self.topology.hosts))


class AllowList:
    """The public keys of a topology's hosts; ``check`` says whether a connecting peer is one of them.

    Each check first re-reads the key files whose modification time changed
    (a ``stat`` per host and handshake, not per message), so a key copied in
    place of the old one counts from the next connection on.  A file that
    cannot be read keeps its previous key and is reported by ``refresh``.
    """

    def __init__(self, keys_dir: Path, hosts: list[str]) -> None:
        self.keys_dir = keys_dir
        self.hosts = hosts
        self._keys: dict[str, bytes] = {}
        self._stamps: dict[str, int] = {}
        self.refresh()

    def refresh(self) -> list[str]:
        """Re-read changed key files; returns the problems of those that could not be read."""
        problems = []
        for host in self.hosts:
            path = public_path(self.keys_dir, host)
            try:
                stamp = path.stat().st_mtime_ns
            except OSError as exc:
                problems.append(f"{path}: {exc.strerror}")
                continue
            if self._stamps.get(host) == stamp:
                continue
            try:
                self._keys[host] = load_public(path)
            except KeyFileError as exc:
                problems.append(str(exc))
                continue
            self._stamps[host] = stamp
        return problems

    def check(self, mechanism: bytes, client_key: bytes | None) -> tuple[str | None, str | None]:
        """``(host, None)`` for an allowed peer, ``(None, reason)`` for a refused one.

        *client_key* is the Z85 public key the peer presented (CURVE only).
        """
        if mechanism != b"CURVE" or client_key is None:
            return None, "no_curve"
        self.refresh()
        for host, key in self._keys.items():
            if key == client_key:
                return host, None
        return None, "unknown_key"


def zap_reply(allow: AllowList, request: list[bytes], rejections: Rejections) -> list[bytes]:
    """The ZAP (RFC 27) reply to one request's frames: 200 for a known host's key, else 400, counted and logged."""
    if len(request) < 6 or request[0] != b"1.0":
        rejections.reject("bad_zap_request", f"a ZAP request of {len(request)} frames")
        return [b"1.0", request[1] if len(request) > 1 else b"", b"400", b"bad request", b"", b""]
    _version, request_id, _domain, address, _identity, mechanism, *credentials = request
    client_key = z85.encode(credentials[0]) if mechanism == b"CURVE" and credentials else None
    host, reason = allow.check(mechanism, client_key)
    if reason is not None:
        shown = f"key {client_key.decode()}" if client_key else f"mechanism {mechanism.decode('ascii', 'replace')}"
        rejections.reject(reason, f"peer {address.decode('ascii', 'replace')} refused on a CURVE link ({shown})")
        return [b"1.0", request_id, b"400", reason.encode(), b"", b""]
    return [b"1.0", request_id, b"200", b"OK", (host or "").encode(), b""]

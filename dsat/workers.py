"""Ingress workers: more processes serving the orchester's Graphite TCP listeners.

One Python process parses, rewrites and places datapoints on one core.  With
``[ingress] workers = N`` (or ``"auto"``: one per CPU) the orchester starts
N-1 more processes, ``dsat run TOPOLOGY orchester --worker I``, and it and
they open the plaintext, TLS and pickle listeners with ``SO_REUSEPORT`` on the
same ports: the kernel spreads the clients' connections over them.  Each
worker has its own carbon egress and its own spool (the spool file's name
with ``.wI`` before its suffix); placement depends on the name alone, so a
name reaches the same Carbon whichever process received it.

The orchester supervises its workers as ``dsat up`` does its steps
(:class:`dsat.supervisor.Supervisor`: a worker that dies is started again,
with a delay that doubles while it keeps dying young) and stops them when it
stops.  It forwards to them, on their standard input, the control frames of
``dsat route`` (so every process places names on the same destinations) and
SIGHUP; a worker whose standard input ends (its orchester is gone, even
killed) stops.

Each process passes the plaintext lines of the names another one owns to
that owner (:mod:`dsat.shards`), so one busy connection keeps every core
busy, not one.

What stays in the orchester alone: statsd (its aggregation must see every
sample), the plaintext UDP listener, the input from the satellites, the links
to the tracker.  A worker's own metrics are
``<prefix>.<where>.self.orchester.wI.*`` (:func:`worker_name`).
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver

from dsat.supervisor import Supervisor, step_command

if TYPE_CHECKING:
    from dsat.spool import Spool

#: Connections a listening socket queues before it accepts them (Twisted's listenTCP default).
BACKLOG = 50
#: A worker that ends sooner after it started is restarted after a delay that doubles each time (dsat.supervisor).
YOUNG_SECONDS = 10
#: The length prefix of each control frame on a worker's standard input (Int32StringReceiver's).
_LENGTH = struct.Struct("!I")
_log = Logger()


def worker_name(index: int) -> str:
    """Worker *index*'s name: in its log lines and its own metrics (``self.orchester.w1.points_in``)."""
    return f"orchester.w{index}"


def worker_command(topology_path: Path, index: int, host: str = "") -> list[str]:
    """The command line of worker *index* of the orchester of *topology_path*."""
    return [*step_command(topology_path, "orchester", host), "--worker", str(index)]


def worker_spool(path: Path | None, index: int) -> Path | None:
    """Worker *index*'s own spool file beside the orchester's: ``spool/carbon.db`` -> ``spool/carbon.w1.db``."""
    return path.with_name(f"{path.stem}.w{index}{path.suffix}") if path is not None else None


def stranded_spools(path: Path | None, count: int) -> list[tuple[Path, int]]:
    """Spools of workers that no longer run (``count`` lowered), with the datapoints they still hold."""
    import sqlite3

    from dsat.spool import TABLE

    if path is None:
        return []
    stranded = []
    for found in sorted(path.parent.glob(f"{path.stem}.w*{path.suffix}")):
        index = found.name[len(path.stem) + 2 : len(found.name) - len(path.suffix)]
        if not index.isdigit() or int(index) < count:
            continue
        try:
            db = sqlite3.connect(f"file:{found}?mode=ro", uri=True)
            try:
                (points,) = db.execute(f"SELECT COALESCE(SUM(points), 0) FROM {TABLE}").fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            points = -1  # unreadable: the operator looks at it
        if points:
            stranded.append((found, int(points)))
    return stranded


def adopt_stranded(spool: Spool, count: int) -> None:
    """The orchester's spool takes the batches of the workers that no longer run (``workers`` lowered to *count*).

    Each stranded file is emptied into *spool* and removed (:meth:`dsat.spool.Spool.adopt`), so what
    those workers spooled is replayed here.  What cannot be taken (the spool full under ``block``, a
    file that does not read) stays where it is, with an ``ALERT spool_stranded``.
    """
    for path, _points in stranded_spools(spool.path, count):
        taken, left = spool.adopt(path)
        if taken:
            _log.info(
                "spool {spool}: took {points} datapoints from {path}, the spool of a worker that no longer runs",
                spool=str(spool.path),
                points=taken,
                path=str(path),
            )
        if left:
            _log.critical(
                "ALERT spool_stranded: {path} holds {points} datapoints (-1: unreadable) of a worker that no"
                " longer runs ([ingress] workers = {workers}) and {spool} could not take them"
                " (full under policy block, or unreadable)",
                path=str(path),
                points=left,
                workers=count,
                spool=str(spool.path),
            )


def reuseport_socket(address: tuple[str, int], backlog: int = BACKLOG) -> socket.socket:
    """A listening TCP socket on *address* (``(interface, port)``) that other processes may bind too."""
    interface, port = address
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def listen_tcp(reactor: Any, address: tuple[str, int], factory: Any, *, reuse_port: bool) -> Any:
    """Listen on *address* with *factory*; with *reuse_port*, on a socket the workers share (the kernel balances)."""
    if not reuse_port:
        return reactor.listenTCP(address[1], factory, interface=address[0])
    sock = reuseport_socket(address)
    try:
        return reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
    finally:
        sock.close()  # the reactor listens on its own copy of the descriptor


class Discard:
    """A sending link to nowhere: a worker's task events and heartbeats (the tracker follows the orchester)."""

    dropped = 0

    def send(self, frame: bytes) -> None:
        pass

    def pending(self) -> int:
        return 0

    async def flush(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        pass


class Workers:
    """The orchester's ingress workers 1 to N-1, supervised: started, restarted with back-off, stopped with it."""

    def __init__(
        self,
        reactor: Any,
        topology_path: Path,
        count: int,
        *,
        host: str = "",
    ) -> None:
        self.supervisor = Supervisor(reactor)
        self.supervisor.monitor.threshold = YOUNG_SECONDS
        self.names = [worker_name(index) for index in range(1, count)]
        for index, name in enumerate(self.names, start=1):
            self.supervisor.add(name, worker_command(topology_path, index, host))

    def start(self) -> None:
        self.supervisor.start()

    def stop(self) -> Any:
        """SIGTERM every worker (killed if it does not end in time); fires when none is left."""
        return self.supervisor.stop()

    def describe(self) -> str:
        """How many of the orchester's processes run now, which workers do not, and their restarts by cause
        (a worker its watchdog killed is ``hung``): for its heartbeat."""
        down = [name for name in self.names if name not in self.supervisor.monitor.protocols]
        running = len(self.names) + 1 - len(down)
        restarts = [
            f"{name} " + ", ".join(f"{cause} {n}" for cause, n in sorted(counts.items()))
            for name, counts in sorted(self.supervisor.restarts.counts.items())
        ]
        return (
            f"{running} of {len(self.names) + 1} processes running"
            + (f"; down: {', '.join(down)}" if down else "")
            + (f"; restarted: {'; '.join(restarts)}" if restarts else "")
        )

    def _running(self) -> list[Any]:
        """The process transports of the workers running now."""
        return [proto.transport for proto in self.supervisor.monitor.protocols.values() if proto.transport]

    def send(self, frame: bytes) -> None:
        """Give *frame* (a control frame) to every running worker, on its standard input."""
        data = _LENGTH.pack(len(frame)) + frame
        for transport in self._running():
            transport.write(data)

    def forwarding(self, on_control: Callable[[bytes], object]) -> Callable[[bytes], None]:
        """*on_control* for the orchester's control channel, and the same frame to every worker.

        A frame longer than a worker reads (``ParentLink.MAX_LENGTH``) is the
        orchester's alone to reject: a worker would take it for a broken link.
        """

        def both(frame: bytes) -> None:
            on_control(frame)
            if len(frame) <= ParentLink.MAX_LENGTH:
                self.send(frame)

        return both

    def signal(self, signum: int) -> None:
        """Send *signum* (SIGHUP: reload the rules) to every running worker."""
        for transport in self._running():
            transport.signalProcess(signum)


class ParentLink(Int32StringReceiver):
    """A worker's standard input: the control frames its orchester forwards, and its end when the orchester goes."""

    structFormat = _LENGTH.format
    prefixLength = _LENGTH.size
    #: The longest control frame read; a longer one ends the link (a control change is a few hundred bytes).
    MAX_LENGTH = 1 << 20

    def __init__(self, on_frame: Callable[[bytes], object], reactor: Any) -> None:
        self.on_frame = on_frame
        self.reactor = reactor

    def stringReceived(self, frame: bytes) -> None:  # noqa: N802 (Twisted API)
        self.on_frame(frame)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 (Twisted API)
        """The orchester is gone (or stopping): stop too, gracefully (what is queued goes to Carbon or the spool)."""
        with contextlib.suppress(ReactorNotRunning):
            self.reactor.stop()

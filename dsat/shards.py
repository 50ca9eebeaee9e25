"""Name shards: with ``[ingress] workers``, every metric name has one owner process, which handles all of it.

The kernel gives each Graphite TCP connection to one of the orchester's
processes (:mod:`dsat.workers`), so without more one busy connection keeps
one core busy and leaves the others idle, and every process caches every
name.  With shards, the process that reads a chunk of plaintext lines keeps
the lines of the names it owns and passes the others, still as bytes, to
their owners over local links; each owner parses, rewrites, places and sends
its lines with its own egress.  The owner of a name is a function of the
name's bytes alone (:func:`owner_of`, Adler-32 modulo the number of processes),
the same in every process, so:

- one connection's work is spread over every core;
- each process caches only the names it owns (a share of the memory);
- the datapoints of a name sent on one connection reach Carbon in their
  order, since its lines always take the same way (a link keeps the order
  of what it carries), except while a link is down or full: then the
  lines are handled where they arrived, and counted (``shard.kept``).
  Across connections there is no order, as without workers.

Splitting costs one pass over the chunk inside C (``split``, ``findall``,
``map`` of :func:`zlib.adler32`, ``compress``, ``join``) and one list
comprehension.  A pickle client's datapoints are parsed where they arrive,
then those of other owners are passed on as plaintext lines.

The links are Unix stream sockets in Linux's abstract namespace (nothing on
disk to clean up), named after the topology file and host, one listener per
process; a link accepts only a process of the same user (``SO_PEERCRED``).
Each process connects to every other one, again and again while it is down.
A link holds at most :data:`LINK_BUFFER` bytes not yet written; the owner
stops reading its links while its egress is paused (:mod:`dsat.flow`), so a
full link moves the work back to the process that read the lines rather than
queueing without bound.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import struct
from collections.abc import Callable
from itertools import compress
from pathlib import Path
from typing import Any
from zlib import adler32

from twisted.internet.protocol import Protocol, ReconnectingClientFactory, ServerFactory
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver

from dsat.compiled import speedups
from dsat.datapoint import Datapoint
from dsat.flow import PausesTransport, Producers
from dsat.graphite_wire import encode_plaintext, plain_fields

#: Bytes a link to another process holds, written by this one and not yet by the kernel; past it lines stay here.
LINK_BUFFER = 4 * 1024 * 1024
#: The longest frame a link reads (a chunk of lines is at most a read's size, 64 KiB, plus one line).
MAX_FRAME = 4 * 1024 * 1024
#: Seconds between attempts to connect a link whose other end is not there (yet).
RECONNECT_SECONDS = 0.5
#: A frame is ``<peer length, 1 byte><peer><lines>``: the client's address, for the owner's rejection messages.
_PEER_LENGTH = struct.Struct("!B")
#: Where each line's name is: the non-whitespace at its start (``bytes.split()`` splits on the same whitespace).
_NAME = re.compile(rb"^\S*", re.MULTILINE)
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def owner_of(name: bytes, count: int) -> int:
    """The index of the process (0: the orchester, I: worker I) owning the metric *name* (its bytes, as sent)."""
    return adler32(name) % count


def split_by_owner(body: bytes, count: int) -> list[bytes]:
    """The complete lines of *body* (it ends with a newline) grouped by their names' owners, in their order.

    Part ``I`` holds the lines whose name process ``I`` owns
    (:func:`owner_of`), each ending with a newline; a line with no name (empty,
    or starting with whitespace) goes with the empty name, so it is still
    handled (and refused) once.  A plain body (three fields a line, single
    spaces, what clients send) has its names picked by one ``split``; any
    other by a regex (compiled: :mod:`dsat.compiled`).
    """
    if speedups is not None:
        split: list[bytes] | None = speedups.split_by_owner(body, count)
        if split is not None:
            return split
    lines = body.split(b"\n")
    lines.pop()  # empty: the body ends with a newline
    fields = plain_fields(body)
    if fields is not None:
        names = fields[0::3]
    else:
        names = _NAME.findall(body)
        names.pop()  # the empty match after the last newline
    owners = [digest % count for digest in map(adler32, names)]
    masks: list[list[Any]]
    if count == 2:
        masks = [[not owner for owner in owners], owners]
    else:
        masks = [[owner == index for owner in owners] for index in range(count)]
    parts = []
    for mask in masks:
        picked = b"\n".join(compress(lines, mask))
        parts.append(picked + b"\n" if picked or any(mask) else b"")
    return parts


def link_address(topology_path: Path, host: str, index: int) -> str:
    """The abstract Unix socket where process *index* of the orchester of *topology_path* on *host* listens."""
    digest = hashlib.sha256(f"{Path(topology_path).resolve()}\0{host}".encode()).hexdigest()[:16]
    return f"\0dsat-shards-{digest}-{index}"


def encode_frame(peer: str, lines: bytes) -> bytes:
    """One frame of a link: *lines* read from *peer* (its address, cut to 255 bytes)."""
    tag = peer.encode("utf-8", "replace")[:255]
    frame = _PEER_LENGTH.pack(len(tag)) + tag + lines
    return struct.pack("!I", len(frame)) + frame


def decode_frame(frame: bytes) -> tuple[str, bytes]:
    """The peer and the lines of *frame* (without its length prefix)."""
    (length,) = _PEER_LENGTH.unpack_from(frame)
    end = _PEER_LENGTH.size + length
    return frame[_PEER_LENGTH.size : end].decode("utf-8", "replace"), frame[end:]


Sections = list[tuple[str, bytes]]


class _Outgoing(Protocol):
    """This process's link to another one: it writes frames, and is full while the kernel has not taken them."""

    factory: _OutgoingFactory

    def __init__(self) -> None:
        self.full = False

    def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
        transport: Any = self.transport
        transport.bufferSize = LINK_BUFFER  # pauseProducing when more than this waits to be written
        transport.registerProducer(self, True)
        self.factory.shards.linked(self.factory.index, self)

    def connectionLost(self, reason: object = None) -> None:  # noqa: N802
        self.factory.shards.unlinked(self.factory.index, self)

    def pauseProducing(self) -> None:  # noqa: N802 (Twisted API)
        self.full = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.full = False

    def stopProducing(self) -> None:  # noqa: N802
        self.full = True

    def dataReceived(self, data: bytes) -> None:
        pass  # a link is one way; the other end never writes


class _OutgoingFactory(ReconnectingClientFactory):
    protocol = _Outgoing  # type: ignore[assignment]
    maxDelay = RECONNECT_SECONDS  # type: ignore[assignment]
    initialDelay = RECONNECT_SECONDS
    factor = 1.0
    noisy = False

    def __init__(self, shards: Shards, index: int) -> None:
        self.shards = shards
        self.index = index

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 (Twisted API)
        self.resetDelay()
        return super().buildProtocol(addr)


class _Incoming(PausesTransport, Int32StringReceiver):
    """A link from another process: the frames of the lines this one owns, handed on once per read."""

    MAX_LENGTH = MAX_FRAME
    factory: _IncomingFactory

    def __init__(self) -> None:
        self._sections: Sections = []

    def connectionMade(self) -> None:
        transport: Any = self.transport
        sock = transport.getHandle()
        _, uid, _ = _CREDENTIALS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size))
        if uid != os.getuid():
            self.factory.shards.log.warn("shard link from uid {uid} refused: not this user", uid=uid)
            transport.abortConnection()
            return
        transport.bufferSize = LINK_BUFFER  # read more at once: one batch per read
        producers = self.factory.shards.producers
        if producers is not None:
            producers.register(self)  # not read while the egress cannot take more

    def connectionLost(self, reason: object = None) -> None:
        producers = self.factory.shards.producers
        if producers is not None:
            producers.unregister(self)

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)  # calls stringReceived for each complete frame
        if self._sections:
            sections, self._sections = self._sections, []
            self.factory.shards.received(sections)

    def stringReceived(self, frame: bytes) -> None:  # noqa: N802 (Twisted API)
        self._sections.append(decode_frame(frame))

    def lengthLimitExceeded(self, length: int) -> None:  # noqa: N802
        self.factory.shards.log.error("shard link frame of {length} bytes: link closed", length=length)
        self.transport.loseConnection()


class _IncomingFactory(ServerFactory[_Incoming]):
    protocol = _Incoming
    noisy = False

    def __init__(self, shards: Shards) -> None:
        self.shards = shards


class Shards:
    """The links of process *index* of *count* to the others, and the split of each chunk of lines by owner."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        index: int,
        count: int,
        *,
        topology_path: Path,
        host: str = "",
        producers: Producers | None = None,
    ) -> None:
        self.reactor = reactor
        self.index = index
        self.count = count
        self.topology_path = topology_path
        self.host = host
        self.producers = producers
        self._deliver: Callable[[Sections], None] | None = None
        self._links: dict[int, _Outgoing] = {}
        self._connectors: list[Any] = []
        self._port: Any = None
        #: Lines passed to their owners, lines received from the others, lines of others kept here.
        self.sent = 0
        self.taken = 0
        self.kept = 0

    def start(self, deliver: Callable[[Sections], None]) -> None:
        """Listen for the others' links and connect to each other process (again while it is not there).

        *deliver* receives the lines other processes pass to this one, as
        ``[(peer, lines), ...]``, once per read of a link.
        """
        self._deliver = deliver
        self._port = self.reactor.listenUNIX(self.address(self.index), _IncomingFactory(self))
        for other in range(self.count):
            if other != self.index:
                factory = _OutgoingFactory(self, other)
                self._connectors.append(factory)
                self.reactor.connectUNIX(self.address(other), factory)

    def address(self, index: int) -> str:
        return link_address(self.topology_path, self.host, index)

    def stopListening(self) -> Any:  # noqa: N802 (closed with the listeners, as a port is)
        """Stop linking: close the listener and every link (lines of other owners are handled here from now)."""
        for factory in self._connectors:
            factory.stopTrying()
        for link in list(self._links.values()):
            link.transport.loseConnection()  # type: ignore[union-attr]
        self._links.clear()
        port, self._port = self._port, None
        return port.stopListening() if port is not None else None

    def linked(self, index: int, link: _Outgoing) -> None:
        self._links[index] = link
        self.log.info("shard link to {index} up", index=index)

    def unlinked(self, index: int, link: _Outgoing) -> None:
        if self._links.get(index) is link:
            del self._links[index]
            self.log.warn("shard link to {index} down: its names are handled here until it is back", index=index)

    def route(self, body: bytes, peer: str) -> bytes:
        """The lines of *body* to handle here; the others go to their owners (kept here when a link is down or full)."""
        parts = split_by_owner(body, self.count)
        here = [parts[self.index]]
        for index, part in enumerate(parts):
            if index != self.index and part and not self._pass_on(index, peer, part, part.count(b"\n")):
                here.append(part)
        return here[0] if len(here) == 1 else b"".join(here)

    def route_points(self, points: list[Datapoint], peer: str) -> list[Datapoint]:
        """The datapoints of *points* (a pickle's) to handle here; the others go to their owners as plaintext."""
        count, here_index = self.count, self.index
        owners = [owner_of(point[0].encode(), count) for point in points]
        if owners.count(here_index) == len(owners):
            return points
        groups: dict[int, list[Datapoint]] = {}
        for point, owner in zip(points, owners, strict=True):
            groups.setdefault(owner, []).append(point)
        here = groups.pop(here_index, [])
        for index, group in groups.items():
            if not self._pass_on(index, peer, group, len(group)):
                here.extend(group)
        return here

    def _pass_on(self, index: int, peer: str, lines: bytes | list[Datapoint], count: int) -> bool:
        """Write *lines* (*count* plaintext lines, or datapoints to encode as such) to owner *index*, counted sent;
        False, counted kept, if its link is down or full."""
        link = self._links.get(index)
        if link is None or link.full:
            self.kept += count
            return False
        frame = encode_frame(peer, lines if isinstance(lines, bytes) else encode_plaintext(lines))
        link.transport.write(frame)  # type: ignore[union-attr]
        self.sent += count
        return True

    def received(self, sections: Sections) -> None:
        self.taken += sum(lines.count(b"\n") for _, lines in sections)
        assert self._deliver is not None  # links are read only once started
        self._deliver(sections)

    def totals(self) -> dict[str, int]:
        """The counts, for the own metrics (``self.orchester.shard.*``)."""
        return {"shard.sent": self.sent, "shard.received": self.taken, "shard.kept": self.kept}

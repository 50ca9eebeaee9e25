"""The carbon egress: batches of clean datapoints to one or more carbon-caches.

Speaks carbon's pickle protocol (4-byte big-endian length, then a pickled
list of ``(path, (timestamp, value))``) or its plaintext protocol, encoded
by :mod:`dsat.graphite_wire`.  Each
destination is a :class:`twisted.application.internet.ClientService` that
reconnects with backoff; while a destination is down or slow its batches go
to the disk spool (:mod:`dsat.spool`) and are replayed when it is back (with
no spool they wait in a bounded memory queue, the oldest dropped and counted
when it is full).  Under the spool's ``block`` policy a destination whose
spool and memory queue are full pauses the orchester's inputs
(:mod:`dsat.flow`) until its queue is half empty again.  With several
destinations each path is placed with carbon's own ``carbon_ch``
consistent-hash ring, or carbon-c-relay's ``fnv1a_ch`` or ``jump_fnv1a_ch``
(``[carbon] hashing``, :mod:`dsat.placement`), so DSAT and the relay it
replaces agree on where a metric lives.  A destination removed at run time, or gone
from the topology, has what it still holds placed on the others.

A batch's ``on_written`` callback fires once all its datapoints are written
to the carbon socket: that is where a batch's journey ends (HAPPY_END).
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import endpoints
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from dsat.counters import should_log
from dsat.datapoint import Datapoint
from dsat.errors import ConfigError
from dsat.flow import Producers
from dsat.graphite_wire import ENCODERS, decode, encode_pickle, is_pickle
from dsat.placement import Placement, make_placement
from dsat.schedule import Repeat
from dsat.spool import Spool
from dsat.topology import CarbonConf, OrchesterConf, SpoolConf, parse_destination, placement_problems

#: Under the ``block`` policy: the inputs pause at ``max_queue`` datapoints in memory (high watermark) and
#: resume at ``max_queue // 2`` (low); up to HOLD_FACTOR x ``max_queue`` are held (what was already read,
#: UDP, statsd, DSAT's own metrics) and a batch past that is dropped and counted.
HOLD_FACTOR = 2
#: Seconds between two slices of replay.
REPLAY_TICK = 0.1
#: Seconds between two looks at the spool (failed deletes, its file deleted or replaced: Spool.check).
SPOOL_CHECK_EVERY = 1.0
#: Carbon's protocols have no acknowledgement: what was written in the last RESEND_SECONDS plus the
#: destination's timeout (at most RESEND_BYTES) before a connection was lost is sent again (Whisper
#: stores it once).  The timeout is in the window because the kernel gives up on a connection whose
#: writes went unacknowledged that long (:func:`watch_connection`): what it held is that old.
RESEND_SECONDS = 5.0
RESEND_BYTES = 32 * 1024 * 1024


def watch_connection(sock: socket.socket, timeout: float) -> None:
    """Make the kernel give up on a carbon that stops acknowledging, within about *timeout* seconds.

    Without this, a carbon host that vanishes (power cut, network partition: no RST) keeps its
    connection open until TCP stops retransmitting, some 15 minutes, while what it never
    acknowledged ages past any resend window.  ``TCP_USER_TIMEOUT`` aborts the connection once
    written data has waited *timeout* seconds for an acknowledgement; since Linux 5.7 that counts a
    window that stays shut too, so a carbon that is alive but reads nothing is given up as well,
    and what it held is sent again (tests/test_faults_disk.py: a carbon that reads nothing for two
    minutes).  Keepalive probes find a dead peer on an idle connection within about twice
    *timeout*.  Where the platform lacks an option, that part is left as the kernel has it.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    seconds = max(1, round(timeout))
    for name, value in (("TCP_KEEPIDLE", seconds), ("TCP_KEEPINTVL", max(1, seconds // 3)), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, round(timeout * 1000)))


@dataclass
class _Pending:
    data: bytes
    points: int
    on_written: Callable[[], None] | None


@implementer(IPushProducer)
class _CarbonProtocol(Protocol):
    """One connection to a carbon-cache; writes while the socket keeps up."""

    factory: _CarbonFactory

    def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
        self.paused = False
        assert self.transport is not None
        handle = getattr(self.transport, "getHandle", lambda: None)()
        if isinstance(handle, socket.socket):  # not in tests that give a StringTransport
            watch_connection(handle, self.factory.destination.timeout)
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
        self.factory.destination.connected(self)

    def connectionLost(self, reason: object = None) -> None:  # noqa: N802
        self.factory.destination.disconnected(self)

    def pauseProducing(self) -> None:  # noqa: N802
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False
        self.factory.destination.drain()

    def stopProducing(self) -> None:  # noqa: N802
        self.paused = True


class _CarbonFactory(Factory[_CarbonProtocol]):
    """Builds the connections of one :class:`Destination` (``buildProtocol`` sets each one's ``factory``)."""

    protocol = _CarbonProtocol
    noisy = False

    def __init__(self, destination: Destination) -> None:
        self.destination = destination


class Destination:
    """One carbon-cache: a reconnecting client, a bounded memory queue, and the spool behind it.

    While the destination is connected and keeps up, batches are written at
    once.  While it is down, or while more than ``max_queue`` datapoints wait
    in memory (it is slow), new batches go to the spool when there is one
    (and are counted as ended: the spool holds them durably), else the oldest
    are dropped and counted.  Once connected again, the spool is replayed in
    order at ``replay_rate`` datapoints a second at most, beside live traffic.
    Under the spool's ``block`` policy, a batch the spool refuses waits in
    memory: at ``max_queue`` datapoints the destination is ``blocked``
    (``on_blocked(True)``: the inputs pause), at ``max_queue // 2`` it is not
    (``on_blocked(False)``), and past ``HOLD_FACTOR * max_queue`` a batch is
    dropped and counted.

    Carbon never acknowledges: bytes written to a connection that then breaks
    (carbon-cache stopping, crashing, the network) may never have been read.
    So the batches written in the last :attr:`resend_seconds` are kept, and
    when a connection is lost that DSAT did not close itself they are sent
    again (queued first, or spooled).  The kernel is told to give up on a
    connection whose writes wait *timeout* seconds for an acknowledgement
    (:func:`watch_connection`), so what was lost is never older than that.
    Whisper stores a datapoint once per timestamp, so a batch that did
    arrive lands once.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        *,
        protocol: str = CarbonConf.protocol,
        max_queue: int = OrchesterConf.max_queue,
        timeout: float = CarbonConf.timeout,
        spool: Spool | None = None,
        replay_rate: float = SpoolConf.replay_rate,
        on_blocked: Callable[[bool], None] | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.name = f"{host}:{port}"
        self.timeout = timeout
        #: What was written this many seconds before a lost connection is sent again (RESEND_SECONDS).
        self.resend_seconds = RESEND_SECONDS + timeout
        self.clock = reactor
        self.encode = ENCODERS[protocol]
        self.max_queue = max_queue
        self.queue: deque[_Pending] = deque()
        self.queued_points = 0
        self.dropped = 0
        self.written = 0
        self.spool = spool
        self.spooled = 0
        self.replayed = 0
        self.replay_rate = replay_rate
        self.spool_pending = spool.pending(self.name) if spool is not None else 0
        self._blocking = spool is not None and spool.policy == "block"
        self.blocked = False
        #: Told True when the destination becomes ``blocked``, False when it no longer is.
        self.on_blocked = on_blocked
        self._proto: _CarbonProtocol | None = None
        self._recent: deque[tuple[float, bytes, int]] = deque()
        self._recent_bytes = 0
        self._stopping = False
        self._drops = 0
        #: Datapoints sent again because their connection broke soon after they were written.
        self.resent = 0
        self._replay_loop = Repeat(reactor, REPLAY_TICK, self.tick, name=f"carbon {self.name}: replay")
        #: Builds this destination's connections (``buildProtocol``), for the ClientService and for tests.
        self.factory = _CarbonFactory(self)
        endpoint = endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)
        self.service = ClientService(
            endpoint,
            self.factory,
            retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=30.0),
            clock=reactor,
        )

    def __repr__(self) -> str:
        return f"<Destination {self.name}>"

    def start(self) -> None:
        self.service.startService()
        if self.spool is not None:
            self._replay_loop.start()

    def retire(self) -> list[tuple[list[Datapoint], Callable[[], None] | None]]:
        """Stop for good (the destination is removed): the batches still in memory, decoded, with their callbacks.

        What the spool holds for it is the egress's to place elsewhere.
        """
        items = [(decode(item.data), item.on_written) for item in self.queue]
        self.queue.clear()
        self.queued_points = 0
        self.spool_pending = 0
        self._level()
        self.stop()
        return items

    def stop(self) -> object:
        """Stop connecting; what still waits in memory goes to the spool (if any)."""
        if self._replay_loop.running:
            self._replay_loop.stop()
        self._stopping = True
        self.spool_queue()
        return self.service.stopService()

    def send(self, points: Sequence[Datapoint], on_written: Callable[[], None] | None = None) -> None:
        """Take one batch: write it, queue it, spool it, or drop what the policy says and count it.

        A spool full under the ``block`` policy refuses the batch: it waits in
        memory (the inputs pause at ``max_queue``), or is dropped and counted
        past ``HOLD_FACTOR * max_queue``.  A spool whose disk refuses writes
        is full too, whatever the policy: under ``drop_oldest`` (and with no
        spool) the batch waits in memory, the oldest dropped and counted past
        ``max_queue``, and what waits is spooled once the disk takes writes.
        """
        item = _Pending(self.encode(points), len(points), on_written)
        if self.spool is not None and (self._proto is None or self.queued_points + item.points > self.max_queue):
            if self._to_spool(item):
                return
            if self._blocking:
                if self.queued_points + item.points > HOLD_FACTOR * self.max_queue:
                    self._count_drop(item.points, "spool and memory queue full (policy block)")
                    return
                self.queue.append(item)
                self.queued_points += item.points
                self.drain()
                return
        self.queue.append(item)
        self.queued_points += item.points
        while self.queued_points > self.max_queue and len(self.queue) > 1:
            old = self.queue.popleft()
            self.queued_points -= old.points
            why = "no spool" if self.spool is None else "spool refused"
            self._count_drop(old.points, f"memory queue full, {why}")
        self.drain()

    def _count_drop(self, points: int, why: str) -> None:
        self.dropped += points
        self._drops += 1
        if should_log(self._drops):
            self.log.warn(
                "carbon {name}: {why}: dropped {points} datapoints ({count} batches, {total} datapoints so far)",
                name=self.name,
                why=why,
                points=points,
                count=self._drops,
                total=self.dropped,
            )

    def _level(self) -> None:
        """Under ``block``: say when the memory queue crosses its high or low watermark."""
        if not self._blocking:
            return
        if self.blocked:
            if self.queued_points <= self.max_queue // 2:
                self.blocked = False
                if self.on_blocked is not None:
                    self.on_blocked(False)
        elif self.queued_points >= self.max_queue:
            self.blocked = True
            if self.on_blocked is not None:
                self.on_blocked(True)

    def _to_spool(self, item: _Pending) -> bool:
        assert self.spool is not None
        if not self.spool.put(self.name, item.data, item.points):
            return False
        self.spooled += item.points
        self.spool_pending += item.points
        if item.on_written is not None:
            item.on_written()
        return True

    def spool_queue(self) -> None:
        """Move every batch waiting in memory to the spool (on disconnect and on stop)."""
        if self.spool is None:
            return
        while self.queue:
            item = self.queue[0]
            if not self._to_spool(item):
                break
            self.queue.popleft()
            self.queued_points -= item.points
        self._level()

    def connected(self, proto: _CarbonProtocol) -> None:
        self.log.info("connected to carbon {name}", name=self.name)
        self._proto = proto
        self.drain()

    def disconnected(self, proto: _CarbonProtocol) -> None:
        if self._proto is proto:
            self._proto = None
            if not self._stopping:
                self._resend_recent()
            self.spool_queue()

    def _written(self, data: bytes, points: int) -> None:
        """Remember a write for :attr:`resend_seconds`, in case its connection breaks."""
        now = self.clock.seconds()
        recent = self._recent
        recent.append((now, data, points))
        self._recent_bytes += len(data)
        self.written += points
        while recent and (now - recent[0][0] > self.resend_seconds or self._recent_bytes > RESEND_BYTES):
            self._recent_bytes -= len(recent.popleft()[1])

    def _resend_recent(self) -> None:
        """The connection broke: what it carried lately may be lost; send it again, oldest first."""
        now = self.clock.seconds()
        recent = [(data, points) for at, data, points in self._recent if now - at <= self.resend_seconds]
        self._recent.clear()
        self._recent_bytes = 0
        if not recent:
            return
        for data, points in reversed(recent):
            self.queue.appendleft(_Pending(data, points, None))
            self.queued_points += points
        points = sum(p for _, p in recent)
        self.resent += points
        self._level()
        self.log.info(
            "connection to carbon {name} lost: sending again the {points} datapoints written in the last {s:g}s",
            name=self.name,
            points=points,
            s=self.resend_seconds,
        )

    def drain(self) -> None:
        proto = self._proto
        while proto is not None and self.queue and not proto.paused:
            item = self.queue.popleft()
            self.queued_points -= item.points
            proto.transport.write(item.data)  # type: ignore[union-attr]
            self._written(item.data, item.points)
            if item.on_written is not None:
                item.on_written()
        self._level()

    @property
    def replay_failures(self) -> int:
        """Replay ticks that raised since start (each logged; replay goes on)."""
        return self._replay_loop.failures

    def tick(self) -> None:
        """Every REPLAY_TICK: replay the spool while connected; while not, spool what the spool refused before."""
        if self._proto is None:
            if self.queue:
                self.spool_queue()
            return
        self.replay()

    def replay(self) -> None:
        """Write the next slice of the spool, oldest first, within the replay rate."""
        proto = self._proto
        if self.spool is None or proto is None or proto.paused or self.queue or not self.spool_pending:
            return
        batches = self.spool.peek(self.name, max(1, int(self.replay_rate * REPLAY_TICK)))
        for batch in batches:
            data = batch.data
            if is_pickle(data) != (self.encode is encode_pickle):  # spooled before [carbon] protocol changed
                data = self.encode(decode(data))
            proto.transport.write(data)  # type: ignore[union-attr]
            self._written(data, batch.points)
        self.spool.delete(self.name, batches)
        points = sum(b.points for b in batches)
        self.replayed += points
        self.spool_pending -= points


@dataclass
class _Member:
    """One destination of a :class:`CarbonEgress`: its client, its instance (None: none), whether new data is
    placed on it (False: draining), and whether it was removed for good."""

    destination: Destination
    instance: str | None
    placing: bool = True
    removed: bool = False

    @property
    def written(self) -> tuple[str, int, str | None]:
        """``(host, port, instance)``, as the topology writes the destination."""
        return (self.destination.host, self.destination.port, self.instance)


class CarbonEgress:
    """All carbon destinations; places each datapoint by *hashing* when there are several.

    With ``carbon_ch`` placement is carbon-relay's ``ConsistentHashingRouter``:
    the ring holds ``(host, instance)`` for each destination
    (``"host:port:instance"``; no instance is ``None``), and a path goes to
    the first ``replication`` distinct nodes after its position, so DSAT and
    a carbon-relay configured with the same DESTINATIONS and
    REPLICATION_FACTOR agree.  ``fnv1a_ch`` and ``jump_fnv1a_ch`` are
    carbon-c-relay's clusters of those names (:mod:`dsat.placement`).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        destinations: Sequence[tuple[str, int] | tuple[str, int, str | None]],
        *,
        protocol: str = CarbonConf.protocol,
        max_queue: int = OrchesterConf.max_queue,
        timeout: float = CarbonConf.timeout,
        spool: Spool | None = None,
        replay_rate: float = SpoolConf.replay_rate,
        replication: int = CarbonConf.replication,
        hashing: str = CarbonConf.hashing,
    ) -> None:
        if not destinations:
            raise ConfigError("carbon: at least one destination is needed")
        if protocol not in ENCODERS:
            raise ConfigError(f"carbon.protocol: {protocol!r} is not one of {sorted(ENCODERS)}")
        written = [(dest[0], dest[1], dest[2] if len(dest) > 2 else None) for dest in destinations]
        problems = placement_problems(hashing, written, replication)
        if problems:
            raise ConfigError("; ".join(f"{key}: {problem}" for key, problem in problems))
        self.replication = replication
        self.hashing = hashing
        self.spool = spool
        self._spool_check = (
            Repeat(reactor, SPOOL_CHECK_EVERY, self.check_spool, name="spool check") if spool is not None else None
        )
        #: The inputs (TCP clients, the ZeroMQ input link) paused while a destination is blocked.
        self.producers = Producers()
        self._make = partial(
            Destination,
            reactor,
            protocol=protocol,
            max_queue=max_queue,
            timeout=timeout,
            spool=spool,
            replay_rate=replay_rate,
            on_blocked=self._blocked_changed,
        )
        #: One record per destination, in the order they were added (``place`` gives indexes into it).
        self._members: list[_Member] = []
        self._started = False
        for host, port, instance in written:
            self._add(host, port, instance)
        self._rebuild()

    @property
    def destinations(self) -> list[Destination]:
        """Every destination, including those drained or removed, in the order :meth:`place` indexes them."""
        return [member.destination for member in self._members]

    def _add(self, host: str, port: int, instance: str | None) -> Destination:
        dest = self._make(host, port)
        self._members.append(_Member(dest, instance))
        return dest

    def _rebuild(self) -> None:
        """Place new data on the destinations it is placed on now (a new :class:`~dsat.placement.Placement`)."""
        members = [(member.written, i) for i, member in enumerate(self._members) if member.placing]
        #: Where each name goes: indexes into :attr:`destinations`.
        self.placement: Placement = make_placement(self.hashing, members, self.replication)

    @property
    def placing(self) -> list[str]:
        """Names of the destinations new data goes to."""
        return [member.destination.name for member in self._members if member.placing]

    def written_name(self, index: int) -> str:
        """Destination *index* as carbon-c-relay writes it: ``host:port=instance``, or ``host:port`` without one."""
        member = self._members[index]
        name = member.destination.name
        return name if member.instance is None else f"{name}={member.instance}"

    def add_destination(self, text: str) -> bool:
        """Place data on one more destination (``host:port[:instance]`` or ``host:port=instance``); False if it is."""
        parsed = parse_destination(text)
        if parsed is None:
            raise ConfigError(f"{text!r} is not host:port, host:port:instance or host:port=instance")
        host, port, instance = parsed
        for member in self._members:
            if (member.destination.host, member.destination.port) == (host, port):
                if member.removed:
                    raise ConfigError(f"{text} was removed; it comes back with a restart")
                if member.placing:
                    return False
                member.placing = True
                self._rebuild()
                return True
        placing = [member.written for member in self._members if member.placing]
        problems = placement_problems(self.hashing, [*placing, parsed], self.replication)
        if problems:
            raise ConfigError(f"{text}: " + "; ".join(problem for _, problem in problems))
        dest = self._add(host, port, instance)
        if self._started:
            dest.start()
        self._rebuild()
        return True

    def _find(self, text: str) -> _Member:
        parsed = parse_destination(text)
        for member in self._members:
            if member.destination.name == text or member.written == parsed:
                return member
        raise ConfigError(f"{text} is not a carbon destination; they are {', '.join(self.placing)}")

    def drain_destination(self, text: str) -> bool:
        """Place no new data on a destination; what it has queued or spooled still goes to it."""
        member = self._find(text)
        if not member.placing:
            return False
        if sum(member.placing for member in self._members) - 1 < self.replication:
            raise ConfigError(f"cannot drain {text}: fewer destinations than the replication factor would be left")
        member.placing = False
        self._rebuild()
        return True

    def remove_destination(self, text: str) -> bool:
        """Drain a destination and place what it still holds (memory and spool) on the others; False if it was.

        For a carbon-cache that is gone for good: nothing waits for it any more.
        """
        member = self._find(text)
        if member.removed:
            return False
        self.drain_destination(text)
        member.removed = True
        dest = member.destination
        queued = dest.retire()
        moved = self._place_spooled(dest.name)
        for points, on_written in queued:
            self.send(points, on_written)
        self.log.warn(
            "carbon {name} removed: {moved} spooled and {queued} queued datapoints placed on {others}",
            name=dest.name,
            moved=moved,
            queued=sum(len(points) for points, _ in queued),
            others=", ".join(self.placing),
        )
        return True

    def _place_spooled(self, name: str) -> int:
        """Move what the spool holds for *name* to the destinations it is now placed on; datapoints moved."""
        spool = self.spool
        if spool is None:
            return 0
        moved = 0
        while batches := spool.peek(name, 100_000):
            rows = []
            for batch in batches:
                points = decode(batch.data)
                if len(points) < batch.points:
                    self.log.error(
                        "spooled batch {id} for {name}: {lost} datapoints did not read back",
                        id=batch.id,
                        name=name,
                        lost=batch.points - len(points),
                    )
                for index, part in self.placement.split(points).items():
                    target = self._members[index].destination
                    rows.append((target.name, target.encode(part), len(part)))
                    target.spool_pending += len(part)
                moved += len(points)
            spool.move(batches, rows)
        return moved

    def start(self) -> None:
        self._started = True
        if self.spool is not None:
            names = {dest.name for dest in self.destinations}
            for gone in sorted(self.spool.destinations() - names):
                moved = self._place_spooled(gone)
                self.log.warn(
                    "the spool held {moved} datapoints for {gone}, no longer a destination: placed on {others}",
                    moved=moved,
                    gone=gone,
                    others=", ".join(self.placing),
                )
        for dest in self.destinations:
            dest.start()
        if self._spool_check is not None:
            self._spool_check.start()

    def check_spool(self) -> None:
        """Every second: :meth:`dsat.spool.Spool.check`; when it opened the spool again, each destination's count
        of what waits."""
        spool = self.spool
        if spool is not None and spool.check():
            for dest in self.destinations:
                dest.spool_pending = spool.pending(dest.name)

    def stop(self) -> list[object]:
        if self._spool_check is not None:
            self._spool_check.stop()
        return [dest.stop() for dest in self.destinations]

    @property
    def timer_failures(self) -> int:
        """Calls of the egress's periodic tasks (replay, spool check) that raised since start."""
        own = self._spool_check.failures if self._spool_check is not None else 0
        return own + sum(dest.replay_failures for dest in self.destinations)

    @property
    def queued_points(self) -> int:
        return sum(d.queued_points for d in self.destinations)

    @property
    def dropped(self) -> int:
        """Datapoints dropped unsent: memory queues full with no spool, and the spool's drop_oldest."""
        spool = self.spool
        return sum(d.dropped for d in self.destinations) + (spool.dropped if spool is not None else 0)

    @property
    def full(self) -> bool:
        """True while a destination cannot take more (a blocking spool and its memory queue are full)."""
        return any(d.blocked for d in self.destinations)

    def _blocked_changed(self, blocked: bool) -> None:
        if blocked:
            self.producers.pause()
        elif not self.full:
            self.producers.resume()

    @property
    def spooled(self) -> int:
        return sum(d.spooled for d in self.destinations)

    @property
    def replayed(self) -> int:
        return sum(d.replayed for d in self.destinations)

    @property
    def resent(self) -> int:
        return sum(d.resent for d in self.destinations)

    @property
    def spool_pending(self) -> int:
        return sum(d.spool_pending for d in self.destinations)

    def place(self, path: str) -> tuple[int, ...]:
        """Indexes of the destinations that hold *path* (``replication`` of them, by ``hashing``)."""
        return self.placement.place(path)

    def send(self, points: Sequence[Datapoint], on_written: Callable[[], None] | None = None) -> None:
        """Send one batch; ``on_written`` fires once every part is written (or spooled) at every destination."""
        if not points:
            if on_written is not None:
                on_written()
            return
        only = self.placement.only
        if only is not None:
            self._members[only].destination.send(points, on_written)
            return
        parts = self.placement.split(points)
        remaining = [len(parts)]

        def part_written() -> None:
            remaining[0] -= 1
            if remaining[0] == 0 and on_written is not None:
                on_written()

        for index, part in parts.items():
            self._members[index].destination.send(part, part_written)

"""Ingress: the listeners for carbon's plaintext (TCP and UDP) and pickle protocols and statsd over TCP.

Owns the Twisted protocols and factories that take what clients send and
hand it, a whole buffer at a time, to the parsers of
:mod:`dsat.graphite_wire` (:func:`~dsat.graphite_wire.parse_plaintext`,
:func:`~dsat.graphite_wire.parse_pickle`), then give the datapoints to the
sink and count each rejection, by reason, against the client it came from.
statsd's lines over TCP (:class:`StatsdFactory`) go, a chunk of complete
lines at a time, to the aggregator of :mod:`dsat.statsd`, as its UDP
datagrams do.
Each connection only ever handles its own bounded buffer, so a garbage
client cannot stall the others.

Connections are bounded too (:class:`IngressFactory`): at most
``max_connections`` per listener, and none past the process's descriptor
limit less :data:`RESERVED_DESCRIPTORS` (kept for the spool, the links and
Carbon).  A connection is *idle* while it sends no complete line (no
complete pickle frame): one idle for ``idle_timeout`` is closed, and at
either bound a new connection takes the place of the one idle the longest
if that one has been idle for ``idle_grace``, else the new one is refused.
So thousands of connections that never finish a line (slowloris) cost a
bounded number of descriptors and buffers, clients that send keep their
connections, and new ones get in.  Every refusal and closing is counted by
reason (``too_many_connections``, ``fd_limit``, ``idle_evicted``,
``idle_timeout``).  While the egress pauses the inputs (:mod:`dsat.flow`)
nobody is idle by choice: no connection is closed for idleness, and the
idle clocks start again at the resume.
"""

from __future__ import annotations

import resource
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import IAddress, IPushProducer, IReactorTime
from twisted.internet.protocol import DatagramProtocol, Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from dsat.counters import Rejections
from dsat.datapoint import Datapoint, Validator
from dsat.flow import PausesTransport, Producers
from dsat.graphite_wire import MAX_PICKLE_LENGTH, datagram_lines, parse_pickle, parse_plain, parse_plaintext
from dsat.schedule import Repeat
from dsat.shards import Shards
from dsat.topology import IngressConf

#: ``[ingress]`` defaults (dsat.topology.IngressConf holds them): connections per listener, idle timeout, grace.
MAX_CONNECTIONS = IngressConf.max_connections
IDLE_TIMEOUT = IngressConf.idle_timeout
IDLE_GRACE = IngressConf.idle_grace
#: Descriptors no client connection may take: what the spool, the ZeroMQ links and Carbon need under the limit.
RESERVED_DESCRIPTORS = 64
#: Plaintext lines waiting for the end of the reactor's turn are parsed at once past this (one busy read's worth).
BATCH_BYTES = 64 * 1024

Sink = Callable[[list[Datapoint]], None]


log = Logger()


def _report(rejections: Rejections, rejected: Counter[str], peer: str) -> None:
    for reason, count in rejected.items():
        rejections.reject(reason, f"{count} from {peer}", count)


def _peer(address: IAddress | None) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


def descriptor_limit() -> int | None:
    """The process's soft limit of open descriptors (``RLIMIT_NOFILE``), None when unlimited."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def _socket_transport(transport: Any) -> Any:
    """The transport that holds the socket under *transport* (a TLS layer's transport, say), None if none does."""
    for _ in range(4):
        if transport is None or callable(getattr(transport, "fileno", None)):
            return transport
        transport = getattr(transport, "transport", None)
    return None


def _descriptor(transport: Any) -> int | None:
    """The socket's descriptor under *transport*, None if it has none."""
    holder = _socket_transport(transport)
    if holder is None:
        return None
    try:
        number = holder.fileno()
    except (OSError, ValueError, AttributeError):
        return None
    return number if type(number) is int else None


def _abort(connection: Protocol) -> None:
    """Close *connection* at once, without writing or reading more (its buffers are dropped), its descriptor freed.

    ``abortConnection`` alone frees the descriptor at the reactor's next
    turn; in one burst of accepts (Twisted accepts many in one turn) the
    connections refused or evicted at the descriptor limit would hold theirs
    meanwhile and spend the reserve, until ``accept`` fails with ``EMFILE``.
    So the socket's transport is told now that its connection is lost, as
    the reactor would (Twisted's ``Connection.connectionLost`` runs once).
    """
    transport: Any = connection.transport
    if transport is None:
        return
    transport.abortConnection()
    holder = _socket_transport(transport)
    lost = getattr(holder, "connectionLost", None)
    if callable(lost):
        lost(Failure(ConnectionAborted()))


_Connection = TypeVar("_Connection", bound="LineProtocol | PickleProtocol")


class IngressFactory(ServerFactory[_Connection]):
    """What the connections of one TCP listener share: the rejections, the clock, the limits.

    With *producers* (:class:`dsat.flow.Producers`), every connection
    registers there as a push producer, so it stops being read while the
    egress cannot take more.  It keeps its connections least recently
    active first (the time of each one's last complete line), which is what
    the idle rules of the module's docstring need: the idlest is the first,
    a sweep every ``idle_timeout / 4`` seconds (at most 5 s) closes the
    expired from the front.  *descriptor_limit* gives the process's limit
    of open descriptors, read at each connection (``RLIMIT_NOFILE`` by
    default; a test passes its own): since the kernel gives a new socket the
    lowest free descriptor, a connection whose descriptor is within
    *reserved_descriptors* of the limit shows the reserve reached.  With
    *shards* (``[ingress] workers``), what other processes own is passed
    to them (:mod:`dsat.shards`).
    """

    def __init__(
        self,
        rejections: Rejections,
        clock: IReactorTime,
        *,
        max_connections: int = MAX_CONNECTIONS,
        producers: Producers | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        idle_grace: float = IDLE_GRACE,
        descriptor_limit: Callable[[], int | None] = descriptor_limit,
        reserved_descriptors: int = RESERVED_DESCRIPTORS,
        shards: Shards | None = None,
    ) -> None:
        self.rejections = rejections
        self.clock = clock
        self.max_connections = max_connections
        self.producers = producers
        self.idle_timeout = idle_timeout
        self.idle_grace = idle_grace
        self.descriptor_limit = descriptor_limit
        self.reserved_descriptors = reserved_descriptors
        #: Open connections -> the time of their last complete line (or of their start), least recent first.
        self._active: OrderedDict[LineProtocol | PickleProtocol, float] = OrderedDict()
        self._sweep = Repeat(clock, min(idle_timeout / 4, 5.0), self.close_idle, name="ingress idle sweep")
        self.shards = shards

    @property
    def connections(self) -> int:
        return len(self._active)

    def startFactory(self) -> None:  # noqa: N802 (Twisted API)
        if not self._sweep.running:
            self._sweep.start()

    def stopFactory(self) -> None:  # noqa: N802
        self._sweep.stop()

    def opened(self, connection: LineProtocol | PickleProtocol) -> bool:
        """Admit a connection just made, in the place of the idlest at a bound; False (counted) if refused."""
        bound = self._bound(connection)
        if bound is not None and not self._evict_idlest(connection, bound):
            reason, detail = bound
            self.rejections.reject(reason, f"{connection.peer} refused: {detail}")
            _abort(connection)
            return False
        self._active[connection] = self.clock.seconds()
        if self.producers is not None:
            self.producers.register(connection)
        return True

    def closed(self, connection: LineProtocol | PickleProtocol) -> None:
        if self._active.pop(connection, None) is not None and self.producers is not None:
            self.producers.unregister(connection)

    def active(self, connection: LineProtocol | PickleProtocol) -> None:
        """*connection* sent a complete line (or frame), or was resumed: its idle clock starts again."""
        if connection in self._active:
            self._active[connection] = self.clock.seconds()
            self._active.move_to_end(connection)

    def _bound(self, connection: LineProtocol | PickleProtocol) -> tuple[str, str] | None:
        """The bound *connection* reaches, as ``(reason, detail)``, or None."""
        if len(self._active) >= self.max_connections:
            return "too_many_connections", f"{len(self._active)} connections open, the most for this listener"
        limit = self.descriptor_limit()
        number = _descriptor(connection.transport)
        if limit is not None and number is not None and number >= limit - self.reserved_descriptors:
            return "fd_limit", (
                f"descriptor {number} of a limit of {limit} (RLIMIT_NOFILE), "
                f"{self.reserved_descriptors} kept for the process's own files"
            )
        return None

    def _paused(self) -> bool:
        return self.producers is not None and self.producers.paused

    def _evict_idlest(self, newcomer: LineProtocol | PickleProtocol, bound: tuple[str, str]) -> bool:
        """Close the connection idle the longest for *newcomer*, if it has been idle for the grace; True if so."""
        if not self._active or self._paused():
            return False
        idlest, since = next(iter(self._active.items()))
        idle = self.clock.seconds() - since
        if idle < self.idle_grace:
            return False
        self._close(
            idlest,
            "idle_evicted",
            f"{idlest.peer} closed, idle {idle:.0f} s, for {newcomer.peer} ({bound[0]}: {bound[1]})",
        )
        return True

    def close_idle(self) -> None:
        """Close the connections idle for ``idle_timeout`` or more (none while the egress pauses the inputs)."""
        if self._paused():
            return
        deadline = self.clock.seconds() - self.idle_timeout
        while self._active:
            connection, since = next(iter(self._active.items()))
            if since > deadline:
                return
            self._close(
                connection, "idle_timeout", f"{connection.peer} closed: no complete line for {self.idle_timeout:g} s"
            )

    def _close(self, connection: LineProtocol | PickleProtocol, reason: str, detail: str) -> None:
        self.closed(connection)
        held = connection.held()
        self.rejections.reject(reason, f"{detail}; {held} bytes of an unfinished line dropped" if held else detail)
        _abort(connection)


@implementer(IPushProducer)
class LineProtocol(PausesTransport, Protocol):
    """One TCP connection sending lines (carbon's plaintext, statsd); its complete lines go to the factory.

    Lines end with ``\\n``.  Each chunk's complete lines go to
    :meth:`LineFactory.take` together; the unfinished last line is kept for
    the next chunk.  When it grows past the line limit it is counted
    ``line_too_long`` and skipped up to its newline, so the connection
    buffers at most one line.  As a push producer it pauses by no longer
    reading its socket.
    """

    factory: LineFactory

    def __init__(self) -> None:
        self._buffer = b""
        self._skipping = False
        self.peer = "?"

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.peer = _peer(self.transport.getPeer())
        self.factory.opened(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.closed(self)

    def resumeProducing(self) -> None:  # noqa: N802 (Twisted API)
        super().resumeProducing()
        self.factory.active(self)

    def held(self) -> int:
        """Bytes of an unfinished line held."""
        return len(self._buffer)

    def dataReceived(self, data: bytes) -> None:
        factory = self.factory
        if self._skipping:
            end = data.find(b"\n")
            if end < 0:
                return
            data = data[end + 1 :]
            self._skipping = False
        data = self._buffer + data
        end = data.rfind(b"\n") + 1
        rest = data[end:]
        if len(rest) > factory.max_line_length:
            _report(factory.rejections, Counter(line_too_long=1), self.peer)
            rest = b""
            self._skipping = True
        self._buffer = rest
        if end:
            factory.active(self)
            lines = data[:end]
            if factory.shards is not None:  # the lines of names other processes own go to them
                lines = factory.shards.route(lines, self.peer)
            if lines:
                factory.take([(self.peer, lines)])


class LineFactory(IngressFactory[LineProtocol]):
    """What the connections of a line listener share: the line limit, and :meth:`take`, where their lines go."""

    protocol = LineProtocol

    def __init__(
        self,
        rejections: Rejections,
        clock: IReactorTime,
        *,
        max_line_length: int = IngressConf.max_line,
        **limits: Any,
    ) -> None:
        """*limits*: :class:`IngressFactory`'s (``max_connections``, ``idle_timeout``, ``producers``...)."""
        super().__init__(rejections, clock, **limits)
        self.max_line_length = max_line_length

    def take(self, sections: list[tuple[str, bytes]]) -> None:
        """Complete lines, as ``[(peer, lines), ...]``: what each kind of listener does with them."""
        raise NotImplementedError


class PlaintextFactory(LineFactory):
    """Carbon's plaintext over TCP, for ``reactor.listenTCP(2003, factory, interface=...)``."""

    def __init__(
        self,
        sink: Sink,
        rejections: Rejections,
        clock: IReactorTime,
        *,
        max_line_length: int = IngressConf.max_line,
        producers: Producers | None = None,
        shards: Shards | None = None,
        **limits: Any,
    ) -> None:
        """*limits*: :class:`IngressFactory`'s (``max_connections``, ``idle_timeout``, ``idle_grace``...)."""
        super().__init__(
            rejections, clock, max_line_length=max_line_length, producers=producers, shards=shards, **limits
        )
        self.sink = sink
        self.validator = Validator()
        self._pending: list[tuple[str, bytes]] = []
        self._pending_bytes = 0
        self._parse_call: Any = None

    def take(self, sections: list[tuple[str, bytes]]) -> None:
        """Complete lines, as ``[(peer, lines), ...]``, parsed together once the reactor has read what it could.

        Every connection's chunk and what the other processes pass to this
        one (:mod:`dsat.shards`) wait for the end of the reactor's turn
        (``callLater(0)``), so that the writes of ~20 lines of many clients
        cost one batch, not one each; at :data:`BATCH_BYTES` they are parsed
        at once, so that what the reactor reads before the egress can pause
        the inputs (:mod:`dsat.flow`) stays bounded.  Each connection's lines
        keep their order.
        """
        self._pending.extend(sections)
        self._pending_bytes += sum(len(lines) for _, lines in sections)
        if self._pending_bytes >= BATCH_BYTES:  # parsed now: the egress may pause the inputs before more is read
            if self._parse_call is not None:
                self._parse_call.cancel()
            self._parse_pending()
        elif self._parse_call is None:
            self._parse_call = self.clock.callLater(0, self._parse_pending)

    def _parse_pending(self) -> None:
        self._parse_call = None
        sections, self._pending, self._pending_bytes = self._pending, [], 0
        try:
            self.parse(sections)
        except Exception:
            # A fault of DSAT's own (in the parser or the sink), not of the input: logged with its traceback,
            # the batch's lines counted (some may have reached the sink before it), the listener goes on.
            log.failure("{owner}: a batch of ingress lines failed", owner=self.rejections.owner)
            for peer, lines in sections:
                count = lines.count(b"\n") or 1
                self.rejections.reject("internal_error", f"{count} lines from {peer}, see the traceback", count)

    def parse(self, sections: list[tuple[str, bytes]]) -> None:
        """Parse *sections* (``[(peer, lines), ...]``, complete lines) and give their datapoints to the sink.

        They are one batch when together they are plain and clean, as
        clients send them (:func:`~dsat.graphite_wire.parse_plain`); otherwise each section is
        parsed alone, so that one client's odd lines cost only its own, and
        each refusal names the client it came from.
        """
        now = self.clock.seconds()
        if len(sections) > 1:
            rejected: Counter[str] = Counter()
            body = b"".join([lines for _, lines in sections])
            points = parse_plain(body, self.max_line_length, self.validator, rejected)
            if points is not None and not rejected:
                if points:
                    self.sink(points)
                return
        for peer, lines in sections:
            points, rejected, _ = parse_plaintext(
                lines, now, max_line_length=self.max_line_length, validator=self.validator
            )
            if points:
                self.sink(points)
            _report(self.rejections, rejected, peer)


class StatsdFactory(LineFactory):
    """statsd's lines over TCP, for ``reactor.listenTCP(8125, factory, interface=...)`` beside the UDP listener.

    As etsy statsd's ``tcp`` server reads them: ``\\n``-ended lines, each
    chunk's complete ones handed as one packet to *receive*, the
    :meth:`dsat.statsd.StatsdAggregator.receive` the UDP listener feeds (it
    parses, aggregates and counts what it refuses); that listener's
    :class:`dsat.statsd.StatsdProtocol` flushes the aggregator.  The limits,
    idle rules and pauses are the Graphite listeners' (:class:`IngressFactory`).
    When the listener stops (the process stops, a pair's server goes
    passive), its connections are closed: what they sent is in the
    aggregator, whose last flush comes when the UDP listener stops, and what
    they would send next would reach an aggregator nobody flushes.
    """

    def __init__(
        self,
        receive: Callable[[bytes, str], None],
        rejections: Rejections,
        clock: IReactorTime,
        *,
        max_line_length: int = IngressConf.max_line,
        producers: Producers | None = None,
        **limits: Any,
    ) -> None:
        """*limits*: :class:`IngressFactory`'s (``max_connections``, ``idle_timeout``, ``idle_grace``...)."""
        super().__init__(rejections, clock, max_line_length=max_line_length, producers=producers, **limits)
        self.receive = receive

    def take(self, sections: list[tuple[str, bytes]]) -> None:
        """Each connection's complete lines go to the aggregator at once, as a datagram's would."""
        for peer, lines in sections:
            self.receive(lines, peer)

    def stopFactory(self) -> None:  # noqa: N802 (Twisted API)
        super().stopFactory()
        for connection in list(self._active):
            self.closed(connection)
            assert connection.transport is not None
            connection.transport.loseConnection()  # read no more; the client sees the end of the stream


class PlaintextDatagram(DatagramProtocol):
    """Carbon's line protocol over UDP: each datagram is one batch; its last line needs no newline.

    Give it to ``reactor.listenUDP(2003, protocol, interface=...)``.
    """

    def __init__(
        self, sink: Sink, rejections: Rejections, clock: IReactorTime, *, max_line_length: int = IngressConf.max_line
    ) -> None:
        self.sink = sink
        self.rejections = rejections
        self.clock = clock
        self.max_line_length = max_line_length
        self.validator = Validator()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        points, rejected, _ = parse_plaintext(
            datagram_lines(datagram),
            self.clock.seconds(),
            max_line_length=self.max_line_length,
            validator=self.validator,
        )
        if points:
            self.sink(points)
        _report(self.rejections, rejected, f"{addr[0]}:{addr[1]}")


class PickleProtocol(Int32StringReceiver):
    """One TCP connection speaking carbon's pickle protocol; each frame becomes one batch.

    A frame declared longer than the factory's ``max_length`` is counted
    ``frame_too_large`` and the connection dropped, before the frame is read.
    Paused (``Int32StringReceiver`` is a push producer), it stops reading its
    socket and handles no more of the frames it already holds.
    """

    factory: PickleFactory

    def __init__(self) -> None:
        self.peer = "?"

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.peer = _peer(self.transport.getPeer())
        self.MAX_LENGTH = self.factory.max_length
        self.factory.opened(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.closed(self)

    def resumeProducing(self) -> None:  # noqa: N802 (Twisted API)
        super().resumeProducing()
        self.factory.active(self)

    def held(self) -> int:
        """Bytes of an unfinished frame held."""
        return len(self._unprocessed)

    def stringReceived(self, frame: bytes) -> None:
        factory = self.factory
        factory.active(self)
        points, rejected = parse_pickle(frame, factory.clock.seconds(), validator=factory.validator)
        if points and factory.shards is not None:
            points = factory.shards.route_points(points, self.peer)
        if points:
            factory.sink(points)
        _report(factory.rejections, rejected, self.peer)

    def lengthLimitExceeded(self, length: int) -> None:
        self.factory.rejections.reject(
            "frame_too_large",
            f"{self.peer}: frame of {length} bytes, over {self.MAX_LENGTH}; connection dropped",
        )
        assert self.transport is not None
        self.transport.loseConnection()


class PickleFactory(IngressFactory[PickleProtocol]):
    """Builds :class:`PickleProtocol` connections for ``reactor.listenTCP(2004, factory, interface=...)``."""

    protocol = PickleProtocol

    def __init__(
        self,
        sink: Sink,
        rejections: Rejections,
        clock: IReactorTime,
        *,
        max_length: int = MAX_PICKLE_LENGTH,
        producers: Producers | None = None,
        shards: Shards | None = None,
        **limits: Any,
    ) -> None:
        """*limits*: :class:`IngressFactory`'s (``max_connections``, ``idle_timeout``, ``idle_grace``...)."""
        super().__init__(rejections, clock, producers=producers, shards=shards, **limits)
        self.sink = sink
        self.max_length = max_length
        self.validator = Validator()

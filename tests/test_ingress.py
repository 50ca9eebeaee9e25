"""Graphite ingress: the TCP and UDP listeners around the parsers of dsat.graphite_wire."""

from __future__ import annotations

import pickle
import struct
import time
from collections import Counter
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

from dsat.counters import Rejections
from dsat.datapoint import Datapoint
from dsat.graphite_wire import MAX_PICKLE_LENGTH
from dsat.ingress import (
    BATCH_BYTES,
    LineProtocol,
    PickleFactory,
    PickleProtocol,
    PlaintextDatagram,
    PlaintextFactory,
    StatsdFactory,
    _peer,
)
from dsat.statsd import StatsdAggregator

NOW = 1_700_000_100.0
TS = 1_700_000_000


# -- Twisted protocols -------------------------------------------------------

PEER = IPv4Address("TCP", "192.0.2.7", 40000)


class Capture:
    """A sink keeping every batch it is given."""

    def __init__(self) -> None:
        self.batches: list[list[Datapoint]] = []

    def __call__(self, points: list[Datapoint]) -> None:
        self.batches.append(points)


def plaintext(**limits: Any) -> tuple[PlaintextFactory, Capture, Rejections]:
    sink, rejections = Capture(), Rejections("test")
    clock = Clock()
    clock.advance(NOW)
    return PlaintextFactory(sink, rejections, clock, **limits), sink, rejections


def connect(
    factory: PlaintextFactory | PickleFactory | StatsdFactory,
) -> tuple[LineProtocol | PickleProtocol, StringTransport]:
    proto = factory.buildProtocol(PEER)
    assert proto is not None
    transport = StringTransport(peerAddress=PEER)
    proto.makeConnection(transport)
    return proto, transport


def test_tcp_chunks_split_mid_line_give_one_batch_per_turn_of_the_reactor() -> None:
    """The complete lines of each turn are one batch, parsed at its end; a line split across chunks is joined."""
    factory, sink, rejections = plaintext()
    proto, _ = connect(factory)
    proto.dataReceived(b"a 1 1700000000\nb 2 17")
    assert sink.batches == []  # parsed at the end of the turn
    factory.clock.advance(0)  # type: ignore[attr-defined]
    proto.dataReceived(b"00000000\nc 3 -1\nd")
    factory.clock.advance(0)  # type: ignore[attr-defined]
    proto.dataReceived(b" x 1700000000\n")
    factory.clock.advance(0)  # type: ignore[attr-defined]
    assert sink.batches == [
        [("a", 1_700_000_000.0, 1.0)],
        [("b", 1_700_000_000.0, 2.0), ("c", NOW, 3.0)],
    ]
    assert rejections == Counter({"bad_value": 1})


def test_tcp_many_connections_read_in_one_turn_are_one_batch_each_in_its_order() -> None:
    """Plain, clean chunks of many clients make one batch; a client's odd or bad lines are parsed alone, named."""
    factory, sink, rejections = plaintext()
    protos = [connect(factory)[0] for _ in range(3)]
    for k, proto in enumerate(protos):
        proto.dataReceived(b"c%d.a %d 1700000000\nc%d.b %d 1700000000\n" % (k, k, k, k))
    factory.clock.advance(0)  # type: ignore[attr-defined]
    assert sink.batches == [[(f"c{k}.{m}", TS, float(k)) for k in range(3) for m in "ab"]]
    seen: list[str] = []
    rejections.reject = lambda reason, error, count=1: seen.append(f"{reason}: {error}")  # type: ignore[method-assign]
    protos[0].dataReceived(b"d.a 1 1700000000\n")
    protos[1].dataReceived(b"d.b 2 1700000000\r\nbad\n")  # not plain: the batch is parsed by client
    protos[2].dataReceived(b"d.c 3 1700000000\n")
    factory.clock.advance(0)  # type: ignore[attr-defined]
    assert sink.batches[1:] == [[("d.a", TS, 1.0)], [("d.b", TS, 2.0)], [("d.c", TS, 3.0)]]
    assert seen == [f"invalid_line: 1 from {_peer(PEER)}"]


def test_tcp_lines_waiting_past_the_batch_size_are_parsed_at_once() -> None:
    """So the egress sees them, and can pause the inputs, before the reactor reads more in the same turn."""
    factory, sink, _ = plaintext()
    first, second = connect(factory)[0], connect(factory)[0]
    line = b"a.b 1 1700000000\n"
    small = line * 10
    first.dataReceived(small)
    assert sink.batches == []
    second.dataReceived(line * (BATCH_BYTES // len(line)))
    assert len(sink.batches) == 1 and len(sink.batches[0]) == 10 + BATCH_BYTES // len(line)
    factory.clock.advance(0)  # type: ignore[attr-defined]
    first.dataReceived(small)
    factory.clock.advance(0)  # type: ignore[attr-defined]
    assert [len(batch) for batch in sink.batches] == [10 + BATCH_BYTES // len(line), 10]


def test_a_batch_the_sink_fails_on_is_counted_and_the_next_one_flows() -> None:
    """A fault of DSAT's own while a batch is handled (here the sink raises) is logged with its traceback, the
    batch's lines are counted as ``internal_error`` by client, and the listener parses the next batch."""
    factory, sink, rejections = plaintext()
    first, second = connect(factory)[0], connect(factory)[0]
    failing = [True]

    def sink_that_fails_once(points: list[Datapoint]) -> None:
        if failing.pop() if failing else False:
            raise RuntimeError("a bug downstream")
        sink(points)

    factory.sink = sink_that_fails_once
    first.dataReceived(b"a 1 1700000000\nb 2 1700000000\n")
    second.dataReceived(b"c 3 1700000000\n")
    with capturedLogs() as events:
        factory.clock.advance(0)  # type: ignore[attr-defined]
    assert [e["log_failure"].type for e in events if "log_failure" in e] == [RuntimeError]
    assert rejections == Counter({"internal_error": 3}) and sink.batches == []
    first.dataReceived(b"d 4 1700000000\n")
    factory.clock.advance(0)  # type: ignore[attr-defined]
    assert sink.batches == [[("d", TS, 4.0)]]


def test_tcp_a_line_over_the_limit_is_skipped_up_to_its_newline() -> None:
    """An endless line is counted once and dropped as it arrives; the connection goes on after its newline."""
    factory, sink, rejections = plaintext(max_line_length=20)
    proto, transport = connect(factory)
    proto.dataReceived(b"a 1 1700000000\n" + b"x" * 30)
    proto.dataReceived(b"x" * 100)
    proto.dataReceived(b"xxx\nb 2 1700000000\n")
    factory.clock.advance(0)  # type: ignore[attr-defined]
    assert sink.batches == [[("a", 1_700_000_000.0, 1.0), ("b", 1_700_000_000.0, 2.0)]]
    assert rejections == Counter({"line_too_long": 1}) and not transport.disconnecting


def test_tcp_connections_over_the_limit_are_refused() -> None:
    """Past max_connections a new connection is refused, closed and counted while none has been idle for the grace;
    closing one makes room."""
    factory, _, rejections = plaintext(max_connections=1)
    proto, first = connect(factory)
    _, refused = connect(factory)
    assert refused.disconnected and not first.disconnecting
    assert rejections == Counter({"too_many_connections": 1}) and factory.connections == 1
    proto.connectionLost()
    _, third = connect(factory)
    assert not third.disconnecting and factory.connections == 1


def test_tcp_at_the_bound_a_new_connection_replaces_the_one_idle_the_longest() -> None:
    """At max_connections, the connection without a complete line for idle_grace seconds is closed (idle_evicted,
    with the bytes of its unfinished line) for the new one; one that keeps sending lines is never chosen."""
    factory, sink, rejections = plaintext(max_connections=2, idle_grace=5)
    sender, sender_transport = connect(factory)
    idle, idle_transport = connect(factory)
    idle.dataReceived(b"never.finished 1")
    factory.clock.advance(4)  # type: ignore[attr-defined]
    sender.dataReceived(b"a 1 1700000000\n")
    _, early = connect(factory)  # nobody idle for the grace yet: refused
    assert early.disconnected and rejections == Counter({"too_many_connections": 1})
    factory.clock.advance(2)  # type: ignore[attr-defined]
    newcomer, newcomer_transport = connect(factory)
    assert idle_transport.disconnected and not sender_transport.disconnecting
    assert not newcomer_transport.disconnecting and factory.connections == 2
    assert rejections == Counter({"too_many_connections": 1, "idle_evicted": 1})
    newcomer.dataReceived(b"b 2 1700000000\n")
    factory.clock.advance(0)  # type: ignore[attr-defined]
    assert [p for batch in sink.batches for p in batch] == [("a", TS, 1.0), ("b", TS, 2.0)]


class DescriptorTransport(StringTransport):
    """A transport on socket descriptor *number* that is told when its connection is lost, as a TCP connection."""

    def __init__(self, number: int) -> None:
        super().__init__(peerAddress=PEER)
        self.number = number
        self.lost = 0

    def fileno(self) -> int:
        return self.number

    def connectionLost(self, reason: object) -> None:  # noqa: N802 (Twisted API)
        self.lost += 1


def connect_on(factory: PlaintextFactory, number: int) -> tuple[LineProtocol, DescriptorTransport]:
    proto = factory.buildProtocol(PEER)
    assert proto is not None
    transport = DescriptorTransport(number)
    proto.makeConnection(transport)
    return proto, transport


def test_tcp_a_connection_within_the_reserved_descriptors_is_refused_as_fd_limit() -> None:
    """A connection whose descriptor is within reserved_descriptors of RLIMIT_NOFILE is refused (fd_limit) unless an
    idle connection gives it its place, and the one closed frees its descriptor at once; below that, connections are
    admitted."""
    factory, _, rejections = plaintext(descriptor_limit=lambda: 100, reserved_descriptors=10, idle_grace=5)
    _, low = connect_on(factory, 89)
    _, high = connect_on(factory, 90)
    assert not low.disconnecting and high.disconnected
    assert high.lost == 1  # its descriptor freed now, not at the reactor's next turn
    assert rejections == Counter({"fd_limit": 1})
    factory.clock.advance(5)  # type: ignore[attr-defined]
    _, replacing = connect_on(factory, 90)
    assert low.disconnected and low.lost == 1 and not replacing.disconnecting
    assert rejections == Counter({"fd_limit": 1, "idle_evicted": 1})
    unlimited, _, none = plaintext(descriptor_limit=lambda: None)
    _, any_number = connect_on(unlimited, 10**6)
    assert not any_number.disconnecting and not none


def test_tcp_connections_idle_for_the_timeout_are_closed_and_counted() -> None:
    """Once started, the factory closes every connection without a complete line for idle_timeout (idle_timeout),
    and one that sends lines, however slowly, stays."""
    factory, _, rejections = plaintext(idle_timeout=60)
    factory.doStart()
    slow, slow_transport = connect(factory)
    _, silent = connect(factory)
    for _ in range(4):
        factory.clock.advance(15)  # type: ignore[attr-defined]
        slow.dataReceived(b"a 1 1700000000\n")
    factory.clock.advance(15)  # type: ignore[attr-defined]
    assert silent.disconnected and not slow_transport.disconnecting
    assert rejections == Counter({"idle_timeout": 1}) and factory.connections == 1
    factory.doStop()


def test_tcp_no_connection_is_idle_while_the_egress_pauses_the_inputs() -> None:
    """Paused connections are neither timed out nor evicted; at the resume their idle clocks start again."""
    from dsat.flow import Producers

    producers = Producers()
    sink, rejections, clock = Capture(), Rejections("test"), Clock()
    factory = PlaintextFactory(
        sink, rejections, clock, producers=producers, max_connections=1, idle_timeout=60, idle_grace=5
    )
    factory.doStart()
    _, held = connect(factory)
    producers.pause()
    clock.advance(600)
    _, refused = connect(factory)
    assert not held.disconnecting and refused.disconnected
    assert rejections == Counter({"too_many_connections": 1})
    producers.resume()
    clock.advance(59)
    assert not held.disconnecting
    clock.advance(6)
    assert held.disconnected and rejections["idle_timeout"] == 1
    factory.doStop()


def test_pickle_a_complete_frame_is_activity_and_an_unfinished_one_is_not() -> None:
    """A pickle connection that sends whole frames is never the idlest; one holding half a frame is evicted, the
    bytes it held counted in the log."""
    factory, _, rejections = pickle_factory(max_connections=2, idle_grace=5)
    sender, sender_transport = connect(factory)
    stalled, stalled_transport = connect(factory)
    frame = pickle.dumps([("a", (TS, 1.0))], protocol=2)
    stalled.dataReceived(struct.pack("!L", len(frame)) + frame[:5])
    assert stalled.held() == 9  # type: ignore[union-attr]
    factory.clock.advance(10)  # type: ignore[attr-defined]
    sender.dataReceived(struct.pack("!L", len(frame)) + frame)
    connect(factory)
    assert stalled_transport.disconnected and not sender_transport.disconnecting
    assert rejections == Counter({"idle_evicted": 1})


def test_tcp_connections_stop_being_read_while_the_egress_is_full() -> None:
    """Every TCP connection is a producer of the factory's Producers: paused, its transport stops reading."""
    from dsat.flow import Producers

    producers = Producers()
    for make in (PlaintextFactory, PickleFactory):
        factory = make(Capture(), Rejections("test"), Clock(), producers=producers)
        _, first = connect(factory)
        producers.pause()
        _, second = connect(factory)  # connecting while paused: not read either
        assert (first.producerState, second.producerState) == ("paused", "paused")
        producers.resume()
        assert (first.producerState, second.producerState) == ("producing", "producing")
    assert len(producers) == 4


def test_a_paused_pickle_connection_handles_none_of_the_frames_it_holds() -> None:
    """Frames already read when the egress fills wait until resume, then come out in order."""
    from dsat.flow import Producers

    producers = Producers()
    sink = Capture()
    factory = PickleFactory(
        lambda points: (sink(points), producers.pause()), Rejections("test"), Clock(), producers=producers
    )
    proto, transport = connect(factory)
    frames = b"".join(
        struct.pack("!L", len(body)) + body
        for body in (pickle.dumps([(f"m{i}", (1_700_000_000, float(i)))], protocol=2) for i in range(3))
    )
    proto.dataReceived(frames)
    assert [b[0][0] for b in sink.batches] == ["m0"] and transport.producerState == "paused"
    producers.resume()
    assert [b[0][0] for b in sink.batches] == ["m0", "m1"]
    producers.resume()
    assert [b[0][0] for b in sink.batches] == ["m0", "m1", "m2"]


def test_udp_datagrams_are_batches_and_need_no_final_newline() -> None:
    """Each datagram is one batch; its last line counts even without a newline, as in carbon."""
    sink, rejections = Capture(), Rejections("test")
    clock = Clock()
    clock.advance(NOW)
    proto = PlaintextDatagram(sink, rejections, clock)
    proto.datagramReceived(b"a 1 1700000000\nb 2 -1", ("192.0.2.7", 5000))
    proto.datagramReceived(b"c 3 1700000000\n", ("192.0.2.7", 5000))
    proto.datagramReceived(b"garbage\n", ("192.0.2.7", 5000))
    assert sink.batches == [[("a", 1_700_000_000.0, 1.0), ("b", NOW, 2.0)], [("c", 1_700_000_000.0, 3.0)]]
    assert rejections == Counter({"invalid_line": 1})


def pickle_factory(**limits: Any) -> tuple[PickleFactory, Capture, Rejections]:
    sink, rejections = Capture(), Rejections("test")
    return PickleFactory(sink, rejections, Clock(), **limits), sink, rejections


def test_pickle_frames_split_across_chunks_each_give_a_batch() -> None:
    """Length-prefixed frames arriving in pieces are reassembled; each frame is one batch."""
    factory, sink, rejections = pickle_factory()
    proto, _ = connect(factory)
    frames = b"".join(
        struct.pack("!L", len(body)) + body
        for body in (pickle.dumps([("a", (TS, 1.0))], protocol=2), pickle.dumps([("b", (TS, 2.0))], protocol=2))
    )
    for i in range(0, len(frames), 7):
        proto.dataReceived(frames[i : i + 7])
    assert sink.batches == [[("a", TS, 1.0)], [("b", TS, 2.0)]] and rejections == Counter()


def test_pickle_bad_frames_are_counted_and_the_connection_goes_on() -> None:
    """A frame that is not a carbon pickle is counted bad_pickle; the next frame is still read."""
    factory, sink, rejections = pickle_factory()
    proto, transport = connect(factory)
    evil = b"cos\nsystem\n(S'true'\ntR."  # it would call os.system: refused
    good = pickle.dumps([("b", (TS, 2.0))], protocol=2)
    proto.dataReceived(struct.pack("!L", len(evil)) + evil + struct.pack("!L", len(good)) + good)
    assert sink.batches == [[("b", TS, 2.0)]]
    assert rejections == Counter({"bad_pickle": 1}) and not transport.disconnecting


def test_pickle_an_oversized_frame_drops_the_connection_unread() -> None:
    """A frame declared over max_length (1 MiB by default) counts frame_too_large and closes the connection."""
    factory, sink, rejections = pickle_factory()
    assert factory.max_length == MAX_PICKLE_LENGTH == 2**20
    proto, transport = connect(factory)
    proto.dataReceived(struct.pack("!L", MAX_PICKLE_LENGTH + 1) + b"\x80\x02")
    assert transport.disconnecting and sink.batches == []
    assert rejections == Counter({"frame_too_large": 1})


# -- tagged series ---------------------------------------------------------------


def test_tcp_a_tagged_batch_lands_and_its_refusals_are_counted() -> None:
    """Through the TCP protocol: tagged lines arrive canonical in one batch, a bad tag counted by the listener."""
    factory, sink, rejections = plaintext()
    proto, _ = connect(factory)
    proto.dataReceived(b"lat;region=eu;az=b 5 1700000000\nlat;region=~eu 6 1700000000\nlat 7 1700000000\n")
    factory.clock.advance(0)  # type: ignore[attr-defined]
    assert sink.batches == [[("lat;az=b;region=eu", TS, 5.0), ("lat", TS, 7.0)]]
    assert rejections == Counter({"bad_tag": 1})


def test_udp_a_tagged_datagram_lands_canonical_and_a_bad_tag_is_counted() -> None:
    """Over UDP too: a tagged line comes out canonical, a bad tag in the same datagram is counted alone."""
    sink, rejections = Capture(), Rejections("test")
    proto = PlaintextDatagram(sink, rejections, Clock())
    proto.datagramReceived(b"lat;region=eu;az=b 5 1700000000\nlat;=eu 6 1700000000", ("192.0.2.7", 5000))
    assert sink.batches == [[("lat;az=b;region=eu", TS, 5.0)]]
    assert rejections == Counter({"bad_tag": 1})


# -- statsd over TCP -------------------------------------------------------------


def statsd_stream(**limits: Any) -> tuple[StatsdFactory, StatsdAggregator, Rejections]:
    """A statsd TCP factory feeding a real aggregator, both counting into one Rejections, on a fixed clock."""
    rejections, clock = Rejections("test"), Clock()
    clock.advance(NOW)
    aggregator = StatsdAggregator(clock, rejections=rejections)
    return StatsdFactory(aggregator.receive, rejections, clock, **limits), aggregator, rejections


def test_statsd_tcp_lines_split_across_chunks_reach_the_aggregator_as_a_datagrams_would() -> None:
    """Each chunk's complete lines go to the aggregator at once; a line split across chunks is joined, bad lines are
    counted by the aggregator's reasons against the client."""
    factory, aggregator, rejections = statsd_stream()
    proto, _ = connect(factory)
    proto.dataReceived(b"hits:1|c\nlat:12|ms\nhi")
    assert aggregator.counters == {"hits": 1.0} and aggregator.timers == {"lat": [12.0]}
    proto.dataReceived(b"ts:2|c\nqueue:42|g\nbad:x|c\n")
    assert aggregator.counters == {"hits": 3.0} and aggregator.gauges == {"queue": 42.0}
    assert rejections == Counter({"bad_value": 1})
    assert [(name, value) for name, _, value in aggregator.flush() if name.endswith(".count")] == [
        ("stats.counters.hits.count", 3.0),
        ("stats.timers.lat.count", 1.0),
    ]


def test_statsd_tcp_a_line_over_the_limit_is_counted_and_skipped_up_to_its_newline() -> None:
    """The Graphite listeners' line limit: an endless statsd line is counted line_too_long once, the next line kept."""
    factory, aggregator, rejections = statsd_stream(max_line_length=20)
    proto, transport = connect(factory)
    proto.dataReceived(b"a:1|c\n" + b"x" * 30)
    proto.dataReceived(b"x" * 100 + b":1|c\nb:2|c\n")
    assert aggregator.counters == {"a": 1.0, "b": 2.0}
    assert rejections == Counter({"line_too_long": 1}) and not transport.disconnecting


def test_statsd_tcp_connections_pause_under_backpressure_and_obey_the_connection_limit() -> None:
    """A statsd connection is a producer of the egress's Producers (paused, not read), and past max_connections a new
    one is refused and counted, as on the Graphite listeners."""
    from dsat.flow import Producers

    producers = Producers()
    factory, _, rejections = statsd_stream(producers=producers, max_connections=1)
    _, first = connect(factory)
    producers.pause()
    assert first.producerState == "paused"
    producers.resume()
    assert first.producerState == "producing"
    _, refused = connect(factory)
    assert refused.disconnected and not first.disconnecting and factory.connections == 1
    assert rejections == Counter({"too_many_connections": 1})


def test_statsd_tcp_connections_are_closed_when_the_listener_stops() -> None:
    """Stopping the listener closes its connections: what they would send next would reach an aggregator that is no
    longer flushed."""
    factory, _, rejections = statsd_stream()
    factory.doStart()
    _, transport = connect(factory)
    factory.doStop()
    assert transport.disconnecting and factory.connections == 0 and not rejections


def test_statsd_tcp_stats_client_lands_in_the_same_aggregator_as_udp() -> None:
    """On a real reactor, the orchester's listeners take the statsd package's TCPStatsClient on the statsd port, into
    the aggregator the UDP StatsClient feeds (one counter, summed); closing the listeners closes the client's
    connection."""
    from types import SimpleNamespace

    import statsd
    from twisted.internet.selectreactor import SelectReactor

    from dsat.flow import Producers
    from dsat.process import Listeners
    from dsat.tools.stack import free_port
    from dsat.topology import IngressConf

    reactor = SelectReactor()
    port = free_port()
    landed: dict[str, float] = {}

    def ingest(points: list[Datapoint]) -> None:
        for name, _, value in points:
            landed[name] = landed.get(name, 0.0) + value if name.endswith(".count") else value

    orch = SimpleNamespace(ingest=ingest, rejected=Rejections("test"), egress=SimpleNamespace(producers=Producers()))
    topo = SimpleNamespace(ingress=IngressConf(statsd=("127.0.0.1", port), statsd_flush=0.2), path=None)
    listeners = Listeners(reactor, topo)  # type: ignore[arg-type]
    listeners.listen(orch)  # type: ignore[arg-type]
    tcp = statsd.TCPStatsClient("127.0.0.1", port, prefix="app", timeout=5)
    try:
        for _ in range(3):
            tcp.incr("hits")
        tcp.timing("render", 12)
        tcp.gauge("queue", 42)
        statsd.StatsClient("127.0.0.1", port, prefix="app").incr("hits")
        expected = {"stats.counters.app.hits.count": 4.0, "stats.timers.app.render.mean": 12.0}
        expected["stats.gauges.app.queue"] = 42.0
        deadline = time.monotonic() + 4
        while any(landed.get(name) != value for name, value in expected.items()) and time.monotonic() < deadline:
            reactor.iterate(0.05)
        assert {name: landed.get(name) for name in expected} == expected and not orch.rejected
        closed = listeners.close()
        done: list[object] = []
        closed.addBoth(done.append)
        while not done and time.monotonic() < deadline:
            reactor.iterate(0.05)
        assert done == [[None, None]]
        assert tcp._sock is not None and tcp._sock.recv(1) == b""  # the listener closed the client's connection
    finally:
        tcp.close()
        reactor.removeAll()
        reactor.waker.connectionLost(None)

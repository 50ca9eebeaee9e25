"""The carbon egress: connections, bounded queues, the spool, resending, and placement like carbon-relay's."""

from __future__ import annotations

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from dsat.carbon import CarbonEgress, Destination, _CarbonProtocol
from dsat.graphite_wire import encode_pickle
from dsat.testing import FakeProducer
from tests.harness import connect, sent_bytes, unpickle_messages


class OneWriteTransport(StringTransport):
    """A socket whose send buffer is full after every write: Twisted pauses its producer each time."""

    def write(self, data: bytes) -> None:
        super().write(data)
        self.producer.pauseProducing()


def lose(proto: _CarbonProtocol) -> None:
    """The carbon-cache closed the connection (or the network broke it)."""
    proto.connectionLost(Failure(ConnectionDone()))


def make_destination(max_queue: int = 1000) -> Destination:
    return Destination(MemoryReactorClock(), "127.0.0.1", 2004, max_queue=max_queue)


def test_a_connection_registers_as_a_streaming_producer_of_its_transport() -> None:
    """Built by the destination's factory, the connection registers with its transport so a full socket pauses it."""
    dest = make_destination()
    proto = connect(dest)
    assert isinstance(proto.transport, StringTransport)
    assert proto.transport.producer is proto and proto.transport.streaming
    assert proto.factory is dest.factory and dest.factory.destination is dest
    dest.send([("a", 1, 1.0)])
    assert sent_bytes(proto)
    lose(proto)
    dest.send([("b", 1, 1.0)])
    assert dest.queued_points == 2 and dest.resent == 1  # "a" may be lost with the connection; both wait


def test_destination_holds_batches_until_connected_then_writes_in_order() -> None:
    """Batches sent while down are queued and written, in order, on connection; callbacks fire then."""
    dest = make_destination()
    written: list[int] = []
    dest.send([("a", 1, 1.0)], lambda: written.append(1))
    dest.send([("b", 1, 2.0)], lambda: written.append(2))
    assert written == [] and dest.queued_points == 2
    proto = connect(dest)
    assert written == [1, 2] and dest.queued_points == 0
    got = unpickle_messages(sent_bytes(proto))
    assert got == [[("a", (1, 1.0))], [("b", (1, 2.0))]]


def test_destination_queue_is_bounded_and_drops_are_counted() -> None:
    """Past max_queue datapoints the oldest batches are dropped and counted, never silently."""
    dest = make_destination(max_queue=10)
    for i in range(5):
        dest.send([(f"m{i}.{j}", 1, 1.0) for j in range(4)])
    assert dest.queued_points <= 10
    assert dest.dropped == 20 - dest.queued_points


def test_destination_stops_writing_while_the_socket_is_paused() -> None:
    """A paused transport (carbon slow) keeps batches queued until resumeProducing."""
    dest = make_destination()
    proto = connect(dest)
    proto.pauseProducing()  # what Twisted does when the socket's send buffer is full
    dest.send([("a", 1, 1.0)])
    assert sent_bytes(proto) == b"" and dest.queued_points == 1
    proto.resumeProducing()
    assert dest.queued_points == 0 and sent_bytes(proto)


@pytest.mark.parametrize("replication", [1, 2, 3])
@pytest.mark.parametrize(
    "destinations",
    [
        [("127.0.0.1", 2004, "a"), ("127.0.0.1", 2104, "b"), ("10.0.0.2", 2004, "c")],
        [("10.0.0.1", 2004, None), ("10.0.0.2", 2004, None), ("10.0.0.3", 2004, None), ("10.0.0.4", 2004, None)],
    ],
)
def test_placement_matches_carbon_relay_consistent_hashing(destinations: list, replication: int) -> None:
    """For 20,000 names, every path goes to exactly the destinations carbon-relay's carbon_ch router picks."""
    from carbon.routers import ConsistentHashingRouter

    class Settings(dict):
        __getattr__ = dict.__getitem__

    router = ConsistentHashingRouter(
        Settings(REPLICATION_FACTOR=replication, DIVERSE_REPLICAS=False, ROUTER_HASH_TYPE="carbon_ch")
    )
    for dest in destinations:
        router.addDestination(dest)
    egress = CarbonEgress(MemoryReactorClock(), destinations, replication=replication)
    paths = []
    for i in range(20_000):
        if i % 5 == 0:
            paths.append(f"disk.used;dc=dc{i % 7};server=web{i}")  # a tagged series, in canonical form
        else:
            paths.append(f"servers.host{i % 50:03d}.cpu.core{i % 8}.user{i}" if i % 3 else f"app.{i}.é.p99")
    for path in paths:
        theirs = [(host, port) for host, port, _instance in router.getDestinations(path)]
        ours = [destinations[index][:2] for index in egress.place(path)]
        assert ours == theirs, path
    parts = egress.placement.split([(path, 1.0, 1.0) for path in paths])
    for index, part in parts.items():
        for path, _, _ in part:
            assert index in egress.place(path)
    assert sum(map(len, parts.values())) == replication * len(paths)


def test_replicated_batch_reaches_every_replica_and_ends_once() -> None:
    """With replication 2 each point is written to two destinations; the batch ends after both."""
    egress = CarbonEgress(MemoryReactorClock(), [("127.0.0.1", 2004, "a"), ("127.0.0.1", 2104, "b")], replication=2)
    done: list[int] = []
    egress.send([(f"m{i}", 1, 1.0) for i in range(10)], lambda: done.append(1))
    protos = [connect(dest) for dest in egress.destinations]
    assert done == [1]
    for proto in protos:
        assert len([p for m in unpickle_messages(sent_bytes(proto)) for p in m]) == 10


def test_empty_batch_is_written_at_once() -> None:
    """An empty batch (every point rejected) still ends: its callback fires immediately."""
    egress = CarbonEgress(MemoryReactorClock(), [("127.0.0.1", 2004, "a"), ("127.0.0.1", 2104, "b")])
    done: list[int] = []
    egress.send([], lambda: done.append(1))
    assert done == [1]


def test_split_batch_ends_once_every_part_is_written() -> None:
    """A batch split across destinations fires its callback once, after the last part."""
    egress = CarbonEgress(MemoryReactorClock(), [("127.0.0.1", 2004, "a"), ("127.0.0.1", 2104, "b")])
    done: list[int] = []
    egress.send([(f"m{i}", 1, 1.0) for i in range(50)], lambda: done.append(1))
    assert set(egress.placement.split([(f"m{i}", 1, 1.0) for i in range(50)])) == {0, 1}  # a real split
    assert done == []
    connect(egress.destinations[0])
    assert done == []
    connect(egress.destinations[1])
    assert done == [1]


def spooled_destination(tmp_path, **kw) -> tuple[Destination, MemoryReactorClock]:  # type: ignore[no-untyped-def]
    from dsat.spool import Spool

    reactor = MemoryReactorClock()
    dest = Destination(reactor, "127.0.0.1", 2004, spool=Spool(tmp_path / "s.db"), **kw)
    dest.start()
    return dest, reactor


def test_while_down_batches_go_to_the_spool_and_end_at_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With carbon down a batch is spooled durably and its callback fires (HAPPY_END) right away."""
    dest, _ = spooled_destination(tmp_path)
    done: list[int] = []
    dest.send([("a", 1, 1.0)], lambda: done.append(1))
    assert done == [1] and dest.spooled == 1 and dest.spool_pending == 1 and dest.queued_points == 0


def test_spool_is_replayed_in_order_within_the_rate_after_reconnect(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """On reconnection spooled batches are written oldest first, at most replay_rate points a second."""
    dest, reactor = spooled_destination(tmp_path, replay_rate=200)
    for i in range(10):
        dest.send([(f"m{i}.{j}", i, float(j)) for j in range(10)])
    proto = connect(dest)
    reactor.advance(0.1)
    assert dest.replayed == 20  # 200 points/s x 0.1 s
    for _ in range(10):
        reactor.advance(0.1)
    assert dest.replayed == 100 and dest.spool_pending == 0
    got = [p for m in unpickle_messages(sent_bytes(proto)) for p in m]
    assert [p[1][0] for p in got] == [i for i in range(10) for _ in range(10)]


def test_live_traffic_flows_beside_replay(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A live batch sent while the spool replays is written at once, not after the whole spool."""
    dest, reactor = spooled_destination(tmp_path, replay_rate=10)
    for i in range(5):
        dest.send([(f"old{i}", 1, 1.0)])
    proto = connect(dest)
    dest.send([("live", 2, 2.0)])
    assert b"live" in sent_bytes(proto) and dest.spool_pending == 5


def test_disconnect_and_stop_move_waiting_batches_to_the_spool(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Batches still in memory when the connection drops, or when stopping, are spooled, not lost."""
    dest, _ = spooled_destination(tmp_path)
    proto = connect(dest)
    proto.pauseProducing()
    done: list[int] = []
    dest.send([("a", 1, 1.0)], lambda: done.append(1))
    assert done == [] and dest.queued_points == 1
    lose(proto)
    assert done == [1] and dest.spool_pending == 1 and dest.queued_points == 0
    connect(dest).pauseProducing()
    dest.send([("b", 1, 1.0)])
    dest.stop()
    assert dest.spool_pending == 2


def test_a_slow_destination_spills_to_the_spool_past_max_queue(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Connected but paused (slow): past max_queue in memory, batches are spooled instead of dropped."""
    dest, _ = spooled_destination(tmp_path, max_queue=10)
    proto = connect(dest)
    proto.pauseProducing()
    for i in range(5):
        dest.send([(f"m{i}.{j}", 1, 1.0) for j in range(4)])
    assert dest.dropped == 0 and dest.queued_points + dest.spool_pending == 20


def test_a_full_blocking_spool_keeps_the_batch_and_pauses_the_inputs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Under `block` a batch the spool refuses waits in memory; at max_queue the inputs pause, connected, resume."""
    from dsat.spool import Spool

    reactor = MemoryReactorClock()
    spool = Spool(tmp_path / "s.db", max_bytes=400, policy="block")
    egress = CarbonEgress(reactor, [("127.0.0.1", 2004)], spool=spool, max_queue=20)
    inputs = [FakeProducer(), FakeProducer()]
    for i in inputs:
        egress.producers.register(i)
    done: list[int] = []
    i = 0
    while not egress.full:
        egress.send([(f"m{i}.{j}", 1, 1.0) for j in range(5)], lambda: done.append(1))
        i += 1
    assert all(i.paused for i in inputs) and egress.dropped == 0
    assert egress.queued_points == 20 and spool.refused == 4
    late = FakeProducer()
    egress.producers.register(late)
    assert late.paused  # a client connecting while paused is not read either
    assert len(done) == spool.pending() // 5 == i - 4  # only spooled batches have ended
    connect(egress.destinations[0])
    assert not egress.full and len(done) == i and not any(i.paused for i in [*inputs, late])


def test_under_block_past_the_hold_limit_a_batch_is_dropped_and_counted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """What cannot wait (UDP, statsd) and finds spool and memory past HOLD_FACTOR x max_queue is dropped, counted."""
    from dsat.carbon import HOLD_FACTOR
    from dsat.spool import Spool

    spool = Spool(tmp_path / "s.db", max_bytes=1, policy="block")
    dest = Destination(MemoryReactorClock(), "127.0.0.1", 2004, spool=spool, max_queue=10)
    for i in range(30):
        dest.send([(f"m{i}", 1, 1.0)])
    assert dest.queued_points == HOLD_FACTOR * 10 and dest.dropped == 30 - HOLD_FACTOR * 10 and dest.blocked


def test_blocked_destination_resumes_at_its_low_watermark(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The inputs resume once the memory queue is down to max_queue // 2, not at the first datapoint written."""
    from dsat.spool import Spool

    spool = Spool(tmp_path / "s.db", max_bytes=1, policy="block")
    changes: list[bool] = []
    dest = Destination(MemoryReactorClock(), "127.0.0.1", 2004, spool=spool, max_queue=10, on_blocked=changes.append)
    for i in range(10):
        dest.send([(f"m{i}", 1, 1.0)])
    assert changes == [True]
    proto = connect(dest, OneWriteTransport())  # one batch written, then the socket is full
    assert dest.queued_points == 9 and changes == [True]
    for level in range(8, -1, -1):
        proto.resumeProducing()  # carbon-cache read some: one more batch written
        assert dest.queued_points == level
        assert changes == ([True, False] if level <= 5 else [True]), level


def test_what_a_broken_connection_carried_lately_is_sent_again(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Carbon never acknowledges: batches written in the last seconds before a lost connection are spooled again.

    The last RESEND_SECONDS plus the timeout: the kernel gives up on unacknowledged writes after the timeout."""
    from dsat.carbon import RESEND_SECONDS

    dest, reactor = spooled_destination(tmp_path)
    assert dest.resend_seconds == RESEND_SECONDS + dest.timeout
    proto = connect(dest)
    dest.send([("old", 1, 1.0)])
    reactor.advance(RESEND_SECONDS + dest.timeout + 1)
    dest.send([("ten_seconds_old", 2, 1.0)])
    reactor.advance(dest.timeout)
    dest.send([("a", 2, 1.0), ("b", 2, 2.0)])
    dest.send([("c", 3, 3.0)])
    lose(proto)
    assert dest.resent == 4 and dest.spool_pending == 4
    again = connect(dest)
    reactor.advance(0.1)
    got = [p[0] for m in unpickle_messages(sent_bytes(again)) for p in m]
    assert got == ["ten_seconds_old", "a", "b", "c"]


def test_the_kernel_is_told_to_give_up_on_a_carbon_that_stops_acknowledging() -> None:
    """watch_connection on a real TCP socket: keepalive on, probes after the timeout, TCP_USER_TIMEOUT in ms."""
    import socket

    from dsat.carbon import watch_connection

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        watch_connection(sock, 2.5)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux, where the tests run
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 2500
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 2
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3


def test_a_connection_made_to_carbon_is_watched(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """connectionMade sets the options on the transport's socket (what the multihost link test relies on)."""
    import socket

    dest, _ = spooled_destination(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:

        class SocketTransport(StringTransport):
            def getHandle(self) -> socket.socket:  # noqa: N802
                return sock

        connect(dest, SocketTransport())
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1


def test_closing_the_connection_ourselves_resends_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """When DSAT stops, the connection it closes carried nothing to send again."""
    dest, _ = spooled_destination(tmp_path)
    proto = connect(dest)
    dest.send([("a", 2, 1.0)])
    dest.stop()
    lose(proto)
    assert dest.resent == 0 and dest.spool_pending == 0


def test_a_batch_spooled_under_the_other_protocol_is_replayed_in_the_current_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """[carbon] protocol changed from pickle to plaintext with data in the spool: replay writes plaintext."""
    dest, reactor = spooled_destination(tmp_path, protocol="plaintext")
    assert dest.spool is not None
    dest.spool.put(dest.name, encode_pickle([("old.pickled", 1_700_000_000, 1.5)]), 1)
    dest.spool_pending = 1
    proto = connect(dest)
    reactor.advance(0.1)
    assert sent_bytes(proto) == b"old.pickled 1.5 1700000000\n"


def disk_full_destination(tmp_path, policy: str, max_queue: int = 20):  # type: ignore[no-untyped-def]
    """A destination whose spool's disk refuses every write (dsat.testing.FailingDisk), carbon down."""
    from dsat.spool import Spool
    from dsat.testing import FailingDisk

    reactor = MemoryReactorClock()
    spool = Spool(tmp_path / "s.db", policy=policy, clock=reactor.seconds)
    disk = FailingDisk(spool.db)
    spool.db = disk  # type: ignore[assignment]
    egress = CarbonEgress(reactor, [("127.0.0.1", 2004)], spool=spool, max_queue=max_queue)
    egress.start()
    return egress, spool, disk, reactor


def test_under_block_a_full_spool_disk_pauses_the_inputs_and_delivers_everything_later(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The disk refuses the spool: batches wait in memory, the inputs pause at max_queue, nothing is dropped."""
    egress, spool, disk, reactor = disk_full_destination(tmp_path, "block")
    inputs = FakeProducer()
    egress.producers.register(inputs)
    done: list[int] = []
    sent = 0
    while not egress.full:
        egress.send([(f"m{sent}.{j}", 1, 1.0) for j in range(5)], lambda: done.append(1))
        sent += 1
    assert inputs.paused and egress.dropped == 0 and spool.disk_full and done == []
    proto = connect(egress.destinations[0])
    assert not inputs.paused and len(done) == sent
    written = [p for m in unpickle_messages(sent_bytes(proto)) for p in m]
    assert len(written) == 5 * sent


def test_under_drop_oldest_a_full_spool_disk_drops_the_oldest_in_memory_and_counts_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Sent = delivered + counted as dropped: memory keeps max_queue, the oldest beyond it are dropped and counted."""
    egress, spool, disk, reactor = disk_full_destination(tmp_path, "drop_oldest", max_queue=20)
    for i in range(30):
        egress.send([(f"m{i}", i, 1.0)])
    assert egress.queued_points == 20 and egress.dropped == 10 and spool.dropped == 0
    proto = connect(egress.destinations[0])
    written = [p for m in unpickle_messages(sent_bytes(proto)) for p in m]
    assert [ts for _, (ts, _) in written] == list(range(10, 30))
    assert len(written) + egress.dropped == 30


def test_what_waits_in_memory_is_spooled_once_the_disk_takes_writes_again(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Space comes back while carbon is still down: the replay tick moves the memory queue to the spool."""
    egress, spool, disk, reactor = disk_full_destination(tmp_path, "block")
    done: list[int] = []
    for i in range(4):
        egress.send([(f"m{i}", i, 1.0)], lambda: done.append(1))
    assert egress.queued_points == 4 and done == []
    disk.failing = False
    reactor.advance(1.0)  # DISK_RETRY: the next tick tries the disk again
    assert egress.queued_points == 0 and spool.pending() == 4 and done == [1] * 4 and not spool.disk_full


def test_replay_goes_on_when_the_spool_cannot_delete_what_it_replayed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The bug this fixes: a failed COMMIT of a delete stopped the replay LoopingCall for good."""
    from dsat.spool import Spool
    from dsat.testing import FailingDisk

    reactor = MemoryReactorClock()
    spool = Spool(tmp_path / "s.db")
    dest = Destination(reactor, "127.0.0.1", 2004, spool=spool, replay_rate=100)
    dest.start()
    for i in range(10):
        dest.send([(f"m{i}.{j}", i, float(j)) for j in range(5)])
    spool.db = FailingDisk(spool.db, fail_on=["COMMIT"])  # type: ignore[assignment]
    proto = connect(dest)
    for _ in range(10):
        reactor.advance(0.1)
    got = [p for m in unpickle_messages(sent_bytes(proto)) for p in m]
    assert sorted(ts for _, (ts, _) in got) == sorted(i for i in range(10) for _ in range(5))  # each once
    assert dest.replay_failures == 0 and dest.spool_pending == 0
    assert spool.pending() == 50  # not deleted yet
    spool.db = spool.db.db  # type: ignore[attr-defined]  (space came back)
    spool.check()  # the egress calls it every second
    assert spool.pending() == 0


def test_every_periodic_task_of_the_egress_runs_again_after_raising(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Replay and the spool check each raise once: counted in timer_failures, and both run again."""
    from dsat.spool import Spool

    reactor = MemoryReactorClock()
    spool = Spool(tmp_path / "s.db")
    egress = CarbonEgress(reactor, [("127.0.0.1", 2004)], spool=spool)
    egress.start()
    dest = egress.destinations[0]
    calls = {"tick": 0, "check": 0}
    real_tick, real_check = dest.tick, spool.check

    def tick() -> None:
        calls["tick"] += 1
        if calls["tick"] == 1:
            raise RuntimeError("tick")
        real_tick()

    def check() -> bool:
        calls["check"] += 1
        if calls["check"] == 1:
            raise OSError("check")
        return real_check()

    dest._replay_loop.fn = tick
    spool.check = check  # type: ignore[method-assign]
    reactor.pump([0.1] * 25)
    assert calls["tick"] >= 20 and calls["check"] >= 2
    assert egress.timer_failures == 2

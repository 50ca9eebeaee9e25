"""The carbon egress: carbon's own wire formats, bounded queues, placement like carbon-relay."""

from __future__ import annotations

import struct

from twisted.internet.testing import MemoryReactorClock, StringTransport

from dsat.carbon import POINTS_PER_MESSAGE, CarbonEgress, Destination, encode_pickle, encode_plaintext


def unpickle_messages(data: bytes) -> list[list]:
    """Split a byte stream into carbon pickle messages and load each with carbon's own safe unpickler."""
    from carbon.util import SafeUnpickler

    out = []
    while data:
        (size,) = struct.unpack("!L", data[:4])
        out.append(SafeUnpickler.loads(data[4 : 4 + size]))
        data = data[4 + size :]
    return out


def test_pickle_is_what_carbon_unpickles_in_chunks_of_500() -> None:
    """1,201 points become 3 length-prefixed messages carbon's SafeUnpickler reads back exactly."""
    points = [(f"a.b{i}", 1_700_000_000 + i, i * 0.5) for i in range(1201)]
    messages = unpickle_messages(encode_pickle(points))
    assert [len(m) for m in messages] == [POINTS_PER_MESSAGE, POINTS_PER_MESSAGE, 201]
    assert [p for m in messages for p in m] == [(path, (ts, v)) for path, ts, v in points]


def test_plaintext_lines_are_carbons_line_protocol() -> None:
    """Plaintext is `path value timestamp` per line, timestamps as integers."""
    assert encode_plaintext([("a.b", 1_700_000_000.7, 1.5), ("c", 5, 2)]) == b"a.b 1.5 1700000000\nc 2 5\n"


class FakeProto:
    def __init__(self) -> None:
        self.transport = StringTransport()
        self.paused = False


def make_destination(max_queue: int = 1000) -> Destination:
    return Destination(MemoryReactorClock(), "127.0.0.1", 2004, max_queue=max_queue)


def test_destination_holds_batches_until_connected_then_writes_in_order() -> None:
    """Batches sent while down are queued and written, in order, on connection; callbacks fire then."""
    dest = make_destination()
    written: list[int] = []
    dest.send([("a", 1, 1.0)], lambda: written.append(1))
    dest.send([("b", 1, 2.0)], lambda: written.append(2))
    assert written == [] and dest.queued_points == 2
    proto = FakeProto()
    dest.connected(proto)  # type: ignore[arg-type]
    assert written == [1, 2] and dest.queued_points == 0
    got = unpickle_messages(proto.transport.value())
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
    proto = FakeProto()
    dest.connected(proto)  # type: ignore[arg-type]
    proto.paused = True
    dest.send([("a", 1, 1.0)])
    assert proto.transport.value() == b"" and dest.queued_points == 1
    proto.paused = False
    dest.drain()
    assert dest.queued_points == 0 and proto.transport.value()


def test_placement_matches_carbon_relay_consistent_hashing() -> None:
    """With several destinations every path goes where carbon-relay's carbon_ch router sends it."""
    from carbon.routers import ConsistentHashingRouter

    class Settings(dict):
        __getattr__ = dict.__getitem__

    router = ConsistentHashingRouter(
        Settings(REPLICATION_FACTOR=1, DIVERSE_REPLICAS=False, ROUTER_HASH_TYPE="carbon_ch")
    )
    destinations = [("127.0.0.1", 2004), ("127.0.0.1", 2104), ("10.0.0.2", 2004)]
    for host, port in destinations:
        router.addDestination((host, port, str(port)))
    egress = CarbonEgress(MemoryReactorClock(), destinations)
    for i in range(2000):
        path = f"servers.host{i % 50}.cpu.core{i % 8}.user{i}"
        [(host, port, _instance)] = list(router.getDestinations(path))
        assert destinations[egress.place(path)] == (host, port)


def test_empty_batch_is_written_at_once() -> None:
    """An empty batch (every point rejected) still ends: its callback fires immediately."""
    egress = CarbonEgress(MemoryReactorClock(), [("127.0.0.1", 2004), ("127.0.0.1", 2104)])
    done: list[int] = []
    egress.send([], lambda: done.append(1))
    assert done == [1]


def test_split_batch_ends_once_every_part_is_written() -> None:
    """A batch split across destinations fires its callback once, after the last part."""
    egress = CarbonEgress(MemoryReactorClock(), [("127.0.0.1", 2004), ("127.0.0.1", 2104)])
    done: list[int] = []
    egress.send([(f"m{i}", 1, 1.0) for i in range(50)], lambda: done.append(1))
    assert done == []
    protos = [FakeProto(), FakeProto()]
    egress.destinations[0].connected(protos[0])  # type: ignore[arg-type]
    assert done == []
    egress.destinations[1].connected(protos[1])  # type: ignore[arg-type]
    assert done == [1]

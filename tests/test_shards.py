"""Name shards (dsat.shards): the split of a chunk by owner, the frames, the routing, the links' two ends.

Unit tests with fakes: no socket.  Real processes passing lines to each
other are in tests/test_workers.py.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport

from dsat.counters import Rejections
from dsat.datapoint import Datapoint
from dsat.flow import Producers
from dsat.ingress import LineProtocol, PickleFactory, PlaintextFactory
from dsat.shards import (
    MAX_FRAME,
    Shards,
    _Incoming,
    _IncomingFactory,
    _Outgoing,
    decode_frame,
    encode_frame,
    link_address,
    owner_of,
    split_by_owner,
)

NOW = 1_700_000_000.0

# -- the split ---------------------------------------------------------------------------------------


def _name(line: bytes) -> bytes:
    """A line's name as the split finds it: what precedes its first ASCII whitespace."""
    fields = line.split(None, 1)
    return fields[0] if fields and not line[:1].isspace() else b""


def _hostile_lines(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    plain = [b"servers.host%05d.cpu.user %d %d" % (rng.randrange(10**5), i, NOW) for i in range(rng.randint(0, 60))]
    odd = [b"", b" lead 1 2", b"a\tb 1 2", b"a  1 2", b"x\r", b"\xff\xfe 1 2", b"only", b"a b c d", b"t;k=v 1 2"]
    odd += [b"\x00", b"a 1 2\r", b"\x0b\x0c", b"e\xc3\xa9 1 2"]
    pick = plain or [b"m 1 2"]
    lines = [rng.choice(odd) if rng.random() < 0.2 else rng.choice(pick) for _ in range(rng.randint(1, 80))]
    return lines if rng.random() < 0.5 else [line for line in lines if line in plain]


@pytest.mark.parametrize("count", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", range(40))
def test_the_split_gives_each_line_once_to_its_names_owner_in_order(seed: int, count: int) -> None:
    """Plain bodies and hostile ones: the parts are the lines, each where its name's owner is, in their order."""
    lines = _hostile_lines(seed)
    body = b"".join(line + b"\n" for line in lines)
    parts = split_by_owner(body, count)
    assert len(parts) == count
    for index, part in enumerate(parts):
        assert part == b"".join(line + b"\n" for line in lines if owner_of(_name(line), count) == index)


def test_names_spread_evenly_over_owners() -> None:
    """Many names of one shape spread over every owner, none with more than 10 % over its share."""
    names = [b"servers.host%05d.cpu.core%d.user" % (h, c) for h in range(2000) for c in range(4)]
    for count in (2, 3, 4):
        owners = Counter(owner_of(name, count) for name in names)
        assert set(owners) == set(range(count))
        assert max(owners.values()) < 1.1 * len(names) / count, owners


@pytest.mark.integration
@pytest.mark.integration  # runs child Pythons
def test_the_owner_is_a_function_of_the_name_alone_in_any_process() -> None:
    """The same bytes give the same owner in any process, whatever its hash seed."""
    code = "from dsat.shards import owner_of; print([owner_of(b'n%d' % k, 3) for k in range(50)])"
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        for seed in ("1", "2")
    }
    assert seen == {str([owner_of(b"n%d" % k, 3) for k in range(50)]).encode() + b"\n"}


def test_a_part_with_no_line_is_empty() -> None:
    body = b"a 1 2\n"
    parts = split_by_owner(body, 2)
    assert sorted(parts) == [b"", body]


# -- frames and addresses ----------------------------------------------------------------------------


def test_a_frame_carries_the_peer_and_the_lines() -> None:
    frame = encode_frame("192.0.2.7:40000", b"a 1 2\n")
    (length,) = struct.unpack("!I", frame[:4])
    assert length == len(frame) - 4
    assert decode_frame(frame[4:]) == ("192.0.2.7:40000", b"a 1 2\n")
    long_peer = "é" * 300  # cut to 255 bytes, even inside a character
    frame = encode_frame(long_peer, b"x\n")
    assert frame[4] == 255 and decode_frame(frame[4:]) == ("é" * 127 + "\ufffd", b"x\n")


def test_link_addresses_are_abstract_and_differ_by_topology_host_and_process(tmp_path: Path) -> None:
    a = link_address(tmp_path / "a.toml", "", 0)
    assert a.startswith("\0dsat-shards-") and a.endswith("-0")
    assert len({a, link_address(tmp_path / "b.toml", "", 0), link_address(tmp_path / "a.toml", "h", 0)}) == 3
    assert link_address(tmp_path / "a.toml", "", 1) == a[:-1] + "1"


# -- routing -----------------------------------------------------------------------------------------


class FakeLink:
    """An outgoing link: what it was given to write, and whether its buffer is full."""

    def __init__(self, full: bool = False) -> None:
        self.full = full
        self.transport = StringTransport()


def shards(index: int = 0, count: int = 2, links: dict[int, Any] | None = None) -> Shards:
    shard = Shards(Clock(), index, count, topology_path=Path("t.toml"))
    shard._links.update(links or {})
    return shard


def _two_owners(count: int = 2, per_owner: int = 3) -> tuple[list[bytes], list[bytes]]:
    """Lines of names owned by process 0 and by process 1."""
    mine: list[bytes] = []
    theirs: list[bytes] = []
    k = 0
    while len(mine) < per_owner or len(theirs) < per_owner:
        line = b"m%d 1 %d" % (k, NOW)
        owner = owner_of(b"m%d" % k, count)
        if owner == 0 and len(mine) < per_owner:
            mine.append(line)
        elif owner == 1 and len(theirs) < per_owner:
            theirs.append(line)
        k += 1
    return mine, theirs


def test_lines_of_another_owner_go_to_it_with_the_peer() -> None:
    mine, theirs = _two_owners()
    link = FakeLink()
    shard = shards(links={1: link})
    body = b"".join(line + b"\n" for line in [*mine, *theirs])
    assert shard.route(body, "192.0.2.7:40000") == b"".join(line + b"\n" for line in mine)
    written = link.transport.value()
    assert decode_frame(written[4:]) == ("192.0.2.7:40000", b"".join(line + b"\n" for line in theirs))
    assert shard.totals() == {"shard.sent": 3, "shard.received": 0, "shard.kept": 0}


@pytest.mark.parametrize("link", [None, FakeLink(full=True)], ids=["down", "full"])
def test_lines_of_an_owner_whose_link_is_down_or_full_stay_here_and_are_counted(link: FakeLink | None) -> None:
    mine, theirs = _two_owners()
    shard = shards(links={1: link} if link is not None else {})
    body = b"".join(line + b"\n" for line in [*mine, *theirs])
    here = shard.route(body, "peer")
    assert sorted(here.splitlines()) == sorted([*mine, *theirs])
    assert shard.kept == 3 and shard.sent == 0
    if link is not None:
        assert link.transport.value() == b""


def test_a_pickles_datapoints_of_another_owner_go_to_it_as_plaintext() -> None:
    mine, theirs = _two_owners()
    link = FakeLink()
    shard = shards(links={1: link})
    points: list[Datapoint] = [(line.split()[0].decode(), NOW, 1.5) for line in [*mine, *theirs]]
    assert shard.route_points(points, "peer") == points[:3]
    peer, lines = decode_frame(link.transport.value()[4:])
    assert peer == "peer" and lines == b"".join(b"%s 1.5 %d\n" % (line.split()[0], NOW) for line in theirs)
    assert shard.route_points(points[:3], "peer") == points[:3]  # all owned here: the same list back
    assert shards(links={}).route_points(points, "peer") == points


# -- the receiving end -------------------------------------------------------------------------------


class PeerSocket:
    """What getHandle() gives: a socket whose peer's credentials are *uid*'s."""

    def __init__(self, uid: int) -> None:
        self.uid = uid

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        assert (level, option) == (socket.SOL_SOCKET, socket.SO_PEERCRED)
        return struct.pack("3i", 1234, self.uid, 0)


class UnixTransport(StringTransport):
    def __init__(self, uid: int) -> None:
        super().__init__()
        self.handle = PeerSocket(uid)
        self.aborted = False
        self.paused = 0

    def getHandle(self) -> PeerSocket:  # noqa: N802 (Twisted API)
        return self.handle

    def abortConnection(self) -> None:  # noqa: N802
        self.aborted = True

    def pauseProducing(self) -> None:  # noqa: N802
        self.paused += 1


def incoming(uid: int) -> tuple[_Incoming, UnixTransport, list[list[tuple[str, bytes]]], Producers]:
    delivered: list[list[tuple[str, bytes]]] = []
    producers = Producers()
    shard = Shards(MemoryReactorClock(), 1, 2, topology_path=Path("t.toml"), producers=producers)
    shard.start(delivered.append)
    proto = _IncomingFactory(shard).buildProtocol(None)
    assert isinstance(proto, _Incoming)
    transport = UnixTransport(os.getuid() if uid < 0 else uid)
    proto.makeConnection(transport)
    return proto, transport, delivered, producers


def test_frames_read_at_once_are_handed_on_as_one_batch_whatever_the_pieces() -> None:
    proto, transport, delivered, producers = incoming(-1)
    data = encode_frame("p1", b"a 1 2\n") + encode_frame("p2", b"b 1 2\n") + encode_frame("p3", b"c 1 2\n")
    proto.dataReceived(data[:5])
    assert delivered == []
    proto.dataReceived(data[5:-3])
    assert delivered == [[("p1", b"a 1 2\n"), ("p2", b"b 1 2\n")]]
    proto.dataReceived(data[-3:])
    assert delivered[1] == [("p3", b"c 1 2\n")]
    assert proto.factory.shards.taken == 3
    assert len(producers) == 1  # paused with the other inputs while the egress cannot take more
    producers.pause()
    assert transport.paused == 1
    proto.connectionLost()
    assert len(producers) == 0


def test_a_link_from_another_user_is_refused() -> None:
    _, transport, delivered, producers = incoming(os.getuid() + 1)
    assert transport.aborted and len(producers) == 0


def test_a_frame_over_the_limit_closes_the_link() -> None:
    proto, transport, delivered, _ = incoming(-1)
    proto.dataReceived(struct.pack("!I", MAX_FRAME + 1))
    assert transport.disconnecting and delivered == []


def test_an_outgoing_link_is_full_while_its_transport_holds_too_much() -> None:
    shard = shards()
    link = _Outgoing()
    link.factory = type("F", (), {"shards": shard, "index": 1})()  # type: ignore[assignment]
    transport = StringTransport()
    link.makeConnection(transport)
    assert shard._links == {1: link} and transport.producer is link and not link.full
    link.pauseProducing()
    assert link.full
    link.resumeProducing()
    assert not link.full
    link.connectionLost()
    assert shard._links == {}


# -- the owner's ingress -----------------------------------------------------------------------------


def test_the_owner_parses_what_others_passed_as_one_batch_and_names_each_refusals_client() -> None:
    batches: list[list[Datapoint]] = []
    rejections = Rejections("test")
    clock = Clock()
    clock.advance(NOW)
    factory = PlaintextFactory(batches.append, rejections, clock)
    factory.parse([("p1", b"a 1 %d\n" % NOW), ("p2", b"b 2 %d\n" % NOW)])
    assert batches == [[("a", NOW, 1.0), ("b", NOW, 2.0)]] and not rejections
    seen: list[str] = []
    rejections.reject = lambda reason, error, count=1: seen.append(f"{reason}: {error}")  # type: ignore[method-assign]
    factory.parse([("p1", b"c 1 %d\n" % NOW), ("p2", b"bad\n")])
    assert batches[1:] == [[("c", NOW, 1.0)]]
    assert seen == ["invalid_line: 1 from p2"]


def _connected(make: Any) -> tuple[Any, list[list[Datapoint]], FakeLink, Clock]:
    """A connection of a *make* (PlaintextFactory, PickleFactory) whose shards pass process 1's names on a fake link."""
    batches: list[list[Datapoint]] = []
    clock = Clock()
    clock.advance(NOW)
    link = FakeLink()
    factory = make(batches.append, Rejections("test"), clock, shards=shards(links={1: link}))
    peer = IPv4Address("TCP", "192.0.2.7", 40000)
    proto = factory.buildProtocol(peer)
    assert proto is not None
    proto.makeConnection(StringTransport(peerAddress=peer))
    return proto, batches, link, clock


def test_a_connection_passes_other_owners_lines_and_parses_its_own() -> None:
    mine, theirs = _two_owners()
    proto, batches, link, clock = _connected(PlaintextFactory)
    assert isinstance(proto, LineProtocol)
    data = b"".join(line + b"\n" for line in [*mine, *theirs])
    proto.dataReceived(data[:-4])  # the last line unfinished: kept for the next chunk
    proto.dataReceived(data[-4:])
    clock.advance(0)
    got = [point[0] for batch in batches for point in batch]
    assert got == [line.split()[0].decode() for line in mine]
    sent = link.transport.value()
    lines = b""
    while sent:
        (length,) = struct.unpack("!I", sent[:4])
        lines += decode_frame(sent[4 : 4 + length])[1]
        sent = sent[4 + length :]
    assert lines == b"".join(line + b"\n" for line in theirs)


def test_a_pickle_connection_routes_its_datapoints_too() -> None:
    import pickle

    mine, theirs = _two_owners()
    proto, batches, link, _ = _connected(PickleFactory)
    frame = pickle.dumps([(line.split()[0].decode(), (NOW, 3.0)) for line in [*mine, *theirs]], protocol=2)
    proto.dataReceived(struct.pack("!I", len(frame)) + frame)
    assert [point[0] for batch in batches for point in batch] == [line.split()[0].decode() for line in mine]
    assert decode_frame(link.transport.value()[4:])[1].count(b"\n") == 3

"""Graphite's wire formats (dsat.graphite_wire): the plaintext and pickle parsers, and the encoders carbon reads."""

from __future__ import annotations

import os
import pickle
import random
import struct
import sys
from collections import Counter
from pathlib import Path

import pytest

from dsat import graphite_wire
from dsat.cache import entry_bytes
from dsat.datapoint import Datapoint, Validator
from dsat.errors import BadName
from dsat.graphite_wire import (
    ENCODERS,
    POINTS_PER_MESSAGE,
    _parse_each,
    datagram_lines,
    decode,
    encode_pickle,
    encode_plaintext,
    parse_pickle,
    parse_plain,
    parse_plaintext,
    pickle_frames,
)
from dsat.naming import PathCache, clean_path
from tests.harness import unpickle_messages

NOW = 1_700_000_100.0
TS = 1_700_000_000


def parse_one(line: bytes) -> tuple[list[Datapoint], Counter[str]]:
    points, rejected, rest = parse_plaintext(line + b"\n", NOW)
    assert rest == b""
    return points, rejected


GOOD = [
    (b"a.b 1.5 1700000000", ("a.b", 1_700_000_000.0, 1.5)),
    (b"a.b 2 1700000000.25", ("a.b", 1_700_000_000.25, 2.0)),
    (b"a.b -3e2 1700000000", ("a.b", 1_700_000_000.0, -300.0)),
    (b"a.b 1_000 1700000000", ("a.b", 1_700_000_000.0, 1000.0)),  # float() takes underscores, so carbon does
    (b"  a.b\t 4  1700000000 \t", ("a.b", 1_700_000_000.0, 4.0)),  # any ASCII whitespace, as str.split()
    (b"a.b 5 1700000000\r", ("a.b", 1_700_000_000.0, 5.0)),  # CRLF line endings
    (b"a.b 6 -1", ("a.b", NOW, 6.0)),  # carbon: int(timestamp) == -1 means now
    (b"a.b 7 -1.9", ("a.b", NOW, 7.0)),
    ("métrique.température 9 1700000000".encode(), ("métrique.température", 1_700_000_000.0, 9.0)),
    ("ｆｕｌｌ.width 1 1700000000".encode(), ("full.width", 1_700_000_000.0, 1.0)),  # NFKC
    (b"a/b..c 1 1700000000", ("a_b.c", 1_700_000_000.0, 1.0)),  # made safe by dsat.naming
]


@pytest.mark.parametrize(("line", "point"), GOOD)
def test_good_lines_become_datapoints(line: bytes, point: Datapoint) -> None:
    """Every line carbon accepts becomes one datapoint, its path made safe and -1 read as now."""
    assert parse_one(line) == ([point], Counter())


BAD = [
    (b"a.b 1", "invalid_line"),
    (b"a.b 1 1700000000 extra", "invalid_line"),
    (b"", "invalid_line"),
    (b"   ", "invalid_line"),
    (b"a.b one 1700000000", "bad_value"),
    (b"a.b 0x10 1700000000", "bad_value"),
    (b"a.b 1 yesterday", "bad_timestamp"),
    (b"a.b nan 1700000000", "nan"),
    (b"a.b NaN 1700000000", "nan"),
    (b"a.b inf 1700000000", "nan"),
    (b"a.b -Infinity 1700000000", "nan"),
    (b"a.b 1 nan", "bad_timestamp"),
    (b"a.b 1 inf", "bad_timestamp"),
    (b"a.b 1 0", "bad_timestamp"),
    (b"a.b 1 -2", "bad_timestamp"),
    (b"a.b 1 -0.5", "bad_timestamp"),
    (b"a.b 1 1700000000000", "bad_timestamp"),  # milliseconds: past what Whisper can store
    (b"a.b 1 " + b"9" * 400, "bad_timestamp"),
    (b"a\x01b 1 1700000000", "bad_name"),
    (b"\xff\xfe.a 1 1700000000", "bad_name"),  # not UTF-8
    (b"... 1 1700000000", "bad_name"),
    (b"a." + b"b" * 300 + b" 1 1700000000", "bad_name"),
    (b"a " + b"1" * 5000 + b" 1700000000", "line_too_long"),
]


@pytest.mark.parametrize(("line", "reason"), BAD)
def test_bad_lines_are_counted_by_reason(line: bytes, reason: str) -> None:
    """A line carbon would not store yields nothing and counts one rejection with its reason."""
    assert parse_one(line) == ([], Counter({reason: 1}))


def test_a_bad_line_does_not_spoil_its_batch() -> None:
    """Good lines around bad ones still come out, in order, and each bad one is counted."""
    buffer = b"a 1 1700000000\nb nan 1700000000\nc 3 1700000000\n\nd 4 1700000000\n"
    points, rejected, rest = parse_plaintext(buffer, NOW)
    assert [p[0] for p in points] == ["a", "c", "d"]
    assert rejected == Counter({"nan": 1, "invalid_line": 1}) and rest == b""


def test_bad_names_in_a_plain_batch_are_dropped_alone() -> None:
    """On the fast path too, a bad name drops only its own line."""
    points, rejected, _ = parse_plaintext(b"a 1 1700000000\na\x00 2 1700000000\nc 3 1700000000\n", NOW)
    assert [p[0] for p in points] == ["a", "c"] and rejected == Counter({"bad_name": 1})


def test_the_unfinished_last_line_is_returned_for_the_next_buffer() -> None:
    """Bytes after the last newline are the remainder; prepended to the next buffer they complete a line."""
    points, rejected, rest = parse_plaintext(b"a 1 1700000000\nb 2 17000", NOW)
    assert points == [("a", 1_700_000_000.0, 1.0)] and rest == b"b 2 17000"
    points, _, rest = parse_plaintext(rest + b"00000\n", NOW)
    assert points == [("b", 1_700_000_000.0, 2.0)] and rest == b""
    assert parse_plaintext(b"no newline yet", NOW) == ([], Counter(), b"no newline yet")


def test_the_line_limit_is_configurable() -> None:
    """max_line_length bounds the bytes of a line, newline excluded; the other lines are kept."""
    buffer = b"a 1 1700000000\n" + b"abcdefgh 1 1700000000\n"
    points, rejected, _ = parse_plaintext(buffer, NOW, max_line_length=14)
    assert points == [("a", 1_700_000_000.0, 1.0)] and rejected == Counter({"line_too_long": 1})


def lines_corpus(seed: int, count: int) -> bytes:
    """Good lines, mangled lines and random bytes, mixed."""
    rng = random.Random(seed)
    good = [b"a.b 1 1700000000", b"c.d -2.5 1700000001", b"e 3 -1", "é.ü 4 1700000002".encode()]
    pieces = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.5:
            pieces.append(rng.choice(good))
        elif kind < 0.8:
            line = bytearray(rng.choice(good))
            for _ in range(rng.randint(1, 3)):
                line[rng.randrange(len(line))] = rng.randrange(256)
            pieces.append(bytes(line))
        else:
            pieces.append(rng.randbytes(rng.randint(0, 60)))
    return b"\n".join(pieces) + b"\n"


@pytest.mark.parametrize("seed", range(20))
def test_garbage_never_raises_and_every_line_is_accounted_for(seed: int) -> None:
    """Random and mangled bytes never raise; each line is either a datapoint or one counted rejection."""
    buffer = lines_corpus(seed, 500)
    points, rejected, rest = parse_plaintext(buffer, NOW, max_line_length=50)
    assert rest == b""
    assert len(points) + sum(rejected.values()) == buffer.count(b"\n")
    for path, ts, value in points:
        assert path and ts > 0 and value - value == 0.0


@pytest.mark.parametrize("seed", range(20))
def test_the_fast_path_agrees_with_the_line_by_line_path(seed: int) -> None:
    """Whatever the buffer, the batch parse gives exactly what checking each line gives."""
    rng = random.Random(seed)
    lines = [b"a.b %d %d" % (i, TS + i) for i in range(200)]
    variant = rng.randrange(9)
    if variant == 1:
        lines[rng.randrange(200)] = b"a.b 1.5 1700000000.5"
    elif variant == 2:
        lines[rng.randrange(200)] = b"bad\x00name 1 1700000000"
    elif variant == 3:
        lines[rng.randrange(200)] = b"a.b 1 -1"
    elif variant == 4:
        lines[rng.randrange(200)] = b"a.b 1e308 1700000000"
        lines[rng.randrange(200)] = b"a.b 1e308 1700000000"
    elif variant == 5:
        lines[rng.randrange(200)] = b" a.b 1 1700000000"
    elif variant == 6:  # whitespace for carbon's str.split(), not for bytes.split()
        lines[rng.randrange(200)] = f"a{rng.choice(WHITESPACE)}b 1 1700000000".encode()
    elif variant == 7:
        lines[rng.randrange(200)] = f"a.b{rng.choice(WHITESPACE)}1 1700000000".encode()
    elif variant == 8:  # UTF-8 without whitespace: still plain
        lines[rng.randrange(200)] = "hôte.１ ١ 1700000000".encode()
    body = b"\n".join(lines) + b"\n"
    slow: Counter[str] = Counter()
    expected = _parse_each(body, NOW, 4096, Validator(), slow)
    points, rejected, _ = parse_plaintext(body, NOW)
    assert points == expected and rejected == slow
    assert all(type(ts) is float and type(v) is float for _, ts, v in points)


# -- carbon's own line receiver ----------------------------------------------------

#: Every character Python's str.split() splits on (carbon splits a line with it), ASCII then beyond.
WHITESPACE = [chr(code) for code in range(0x80) if chr(code).isspace()] + list(graphite_wire._UNICODE_WHITESPACE)


def test_the_whitespace_is_pythons_own() -> None:
    """The characters the parser splits at are exactly those str.isspace() knows, over all of Unicode."""
    assert "".join(WHITESPACE) == "".join(ch for ch in map(chr, range(sys.maxunicode + 1)) if ch.isspace())
    assert set(WHITESPACE[:10]) == {*" \t\n\r\x0b\x0c", *"\x1c\x1d\x1e\x1f"}


def carbon_reads(line: bytes) -> list[tuple[str, tuple[float, float]]]:
    """What carbon-cache 1.1's own MetricLineReceiver hands on for *line* (one metric, or none)."""
    from carbon.protocols import MetricLineReceiver

    class Receiver(MetricLineReceiver):  # type: ignore[misc]
        def __init__(self) -> None:
            self.peerName = "test"
            self.received: list[tuple[str, tuple[float, float]]] = []

        def metricReceived(self, metric: str, datapoint: tuple[float, float]) -> None:  # noqa: N802
            self.received.append((metric, datapoint))

    receiver = Receiver()
    receiver.lineReceived(line)
    return receiver.received


def whitespace_lines() -> list[bytes]:
    """Lines with each whitespace character in the name, between the fields and around them, alone or doubled."""
    lines = []
    for space in WHITESPACE:
        if space == "\n":  # the line's end
            continue
        lines += [
            f"a{space}b 1 {TS}",
            f"{space}a.b 2 {TS}",
            f"a.b{space}3{space}{TS}",
            f"a.b {space}4 {space}{TS}",
            f"a.b 5 {TS}{space}",
            f"{space}{space}a.b{space} {space}6{space}{space}{TS}{space} ",
            f"a.b 7{space}8 {TS}",
            f"a.b 9 {TS}{space}1",
            f"{space}",
        ]
    lines += [f"a.b ١٢ {TS}", f"a.b １.５ {TS}", f"a.b 1_0 {TS}", f"a.b ٣ {TS}\u00a0", f"a.b 1 {TS}\x85"]
    return [line.encode() for line in lines]


def test_lines_are_split_as_carbons_own_receiver_splits_them() -> None:
    """Every Unicode whitespace str.split() knows, anywhere in a line: carbon's MetricLineReceiver and DSAT agree.

    A line carbon hands on is one datapoint under its clean name (dsat.naming), with carbon's
    timestamp and value; a line it refuses for its fields is counted invalid_line, or bad_value
    where the value is not a number (two whitespace-free fields joined by a separator DSAT does not
    take either).  Line by line, and as one batch.
    """
    expected, refused = [], 0
    for line in whitespace_lines():
        carbon = carbon_reads(line)
        points, rejected = parse_one(line)
        if carbon:
            [(metric, (stamp, value))] = carbon
            assert points == [(clean_path(metric), stamp, value)] and not rejected, line
            expected.append(points[0])
        else:
            assert not points and rejected == Counter({"invalid_line": 1}), line
            refused += 1
    assert len(expected) > len(WHITESPACE) and refused > len(WHITESPACE)
    batch = whitespace_lines()
    points, rejected, _ = parse_plaintext(b"\n".join(batch) + b"\n", NOW)
    assert points == expected and rejected == Counter({"invalid_line": refused})


def carbon_reads_datagram(packet: bytes) -> list[tuple[str, tuple[float, float]]]:
    """What carbon-cache 1.1's own MetricDatagramReceiver hands on for one UDP *packet*."""
    from carbon.protocols import MetricDatagramReceiver

    class Receiver(MetricDatagramReceiver):  # type: ignore[misc]
        def __init__(self) -> None:
            self.received: list[tuple[str, tuple[float, float]]] = []

        def metricReceived(self, metric: str, datapoint: tuple[float, float]) -> None:  # noqa: N802
            self.received.append((metric, datapoint))

    receiver = Receiver()
    receiver.datagramReceived(packet, ("127.0.0.1", 2003))
    return receiver.received


def test_a_udp_packet_is_cut_into_lines_as_carbons_datagram_receiver_cuts_it() -> None:
    """Every line break str.splitlines() knows, between two lines of a packet, with and without a last newline:
    carbon's MetricDatagramReceiver and DSAT's datagram_lines then parser hand on the same datapoints."""
    breaks = ["\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
    splits = {ch for ch in map(chr, range(sys.maxunicode + 1)) if len(f"a{ch}b".splitlines()) == 2}
    assert {brk for brk in breaks if len(brk) == 1} == splits
    for brk in breaks:
        for end in ("", brk):
            packet = f"a.b 1 {TS}{brk}c.d 2 {TS}{end}".encode()
            carbon = [(clean_path(metric), stamp, value) for metric, (stamp, value) in carbon_reads_datagram(packet)]
            points, rejected, _ = parse_plaintext(datagram_lines(packet), NOW)
            assert points == carbon == [("a.b", TS, 1.0), ("c.d", TS, 2.0)] and not rejected, packet


def test_a_line_that_is_not_utf8_is_refused_alone() -> None:
    """Carbon's receiver raises on a line that is not UTF-8 (the connection drops); DSAT counts it and reads on."""
    line = b"a.b\xa0c 1 %d" % TS  # Latin-1's no-break space: not UTF-8, so not whitespace either
    with pytest.raises(UnicodeDecodeError):
        carbon_reads(line)
    points, rejected, _ = parse_plaintext(line + b"\n" + b"a.b 1 %d\n" % TS, NOW)
    assert points == [("a.b", TS, 1.0)] and rejected == Counter({"bad_name": 1})
    for bad, reason in [(b"a\xff\xc2\xa0b 1 %d", "invalid_line"), (b"a.b 1\xff %d", "bad_value")]:
        assert parse_one(bad % TS) == ([], Counter({reason: 1}))


def test_plain_bodies_stay_on_the_fast_path_unless_carbon_would_split_them() -> None:
    """UTF-8 names are plain; a Unicode whitespace or an information separator sends the body line by line."""
    plain = "hôte.température 1 1700000000\n日本 2 1700000000\n".encode()
    assert parse_plain(plain, 4096, Validator(), Counter()) == [("hôte.température", TS, 1.0), ("日本", TS, 2.0)]
    for space in WHITESPACE[5:]:
        body = plain + f"a{space}b 1 1700000000\n".encode()
        assert parse_plain(body, 4096, Validator(), Counter()) is None, repr(space)


# -- parsing the pickle protocol -------------------------------------------------


def test_a_carbon_pickle_becomes_datapoints() -> None:
    """A list of (path, (timestamp, value)) pickled as carbon's clients do (protocol 2) loads, in order."""
    items = [("a.b", (TS, 1.5)), ("c/d", (TS + 1, 2)), ("e", (-1, 3))]
    points, rejected = parse_pickle(pickle.dumps(items, protocol=2), NOW)
    assert points == [("a.b", TS, 1.5), ("c_d", TS + 1, 2.0), ("e", NOW, 3.0)] and rejected == Counter()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_pickle_protocol_loads(protocol: int) -> None:
    """Clients on any pickle protocol (0 from old Python 2, 4 or 5 by default today) are understood."""
    items = [("a", (TS, 1.0)), ["b", [TS, "2.5"]]]  # lists for tuples and a string value: carbon float()s it
    points, rejected = parse_pickle(pickle.dumps(items, protocol=protocol), NOW)
    assert points == [("a", TS, 1.0), ("b", TS, 2.5)] and rejected == Counter()


def test_python2_byte_strings_are_read_as_utf8() -> None:
    """A Python 2 client's str (SHORT_BINSTRING) path is decoded as UTF-8, as carbon does."""
    frame = b"\x80\x02]q\x00U\x05a.\xc3\xa9bq\x01J\x00\xf1SeK\x02\x86q\x02\x86q\x03a."
    assert parse_pickle(frame, NOW) == ([("a.éb", TS, 2.0)], Counter())


class Evil:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def test_a_malicious_pickle_is_rejected_and_never_run(tmp_path: Path) -> None:
    """A pickle whose loading would run os.system counts as bad_pickle, and the command does not run."""
    marker = tmp_path / "pwned"
    evil = pickle.dumps([("a", (TS, Evil(f"touch {marker}")))], protocol=2)
    assert b"system" in evil
    assert parse_pickle(evil, NOW) == ([], Counter({"bad_pickle": 1}))
    legacy = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()  # protocol 0, as hand-written exploits are
    assert parse_pickle(legacy, NOW) == ([], Counter({"bad_pickle": 1}))
    assert not marker.exists()


@pytest.mark.parametrize(
    "frame",
    [
        pickle.dumps({"a": (TS, 1.0)}, protocol=2),  # a dict
        pickle.dumps([(b"a", (TS, 1.0))], protocol=3),  # bytes
        pickle.dumps([("a", (TS, {1.0}))], protocol=4),  # a set
        pickle.dumps(Counter(a=1), protocol=2),  # a class
        pickle.dumps("a.b 1 1700000000", protocol=2),  # not a list
        b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b"xx",  # BYTEARRAY8 declaring a terabyte
        b"not a pickle",
        b"",
    ],
)
def test_frames_that_are_not_carbon_pickles_count_bad_pickle(frame: bytes) -> None:
    """A frame is one bad_pickle unless it is a list or tuple built of lists, tuples, strings, numbers and constants."""
    assert parse_pickle(frame, NOW) == ([], Counter({"bad_pickle": 1}))


@pytest.mark.parametrize("value", [None, True, False])
def test_a_none_or_boolean_value_is_refused_alone(value: object) -> None:
    """None and booleans load (constants, nothing called) and the datapoint rule refuses the item, not the frame."""
    frame = pickle.dumps([("a", (TS, value)), ("b", (TS, 1.0)), ("c", (value, 1.0))], protocol=2)
    assert parse_pickle(frame, NOW) == ([("b", TS, 1.0)], Counter({"bad_value": 1, "bad_timestamp": 1}))


def test_a_huge_memo_index_costs_nothing() -> None:
    """LONG_BINPUT naming memo slot 2**31 (which makes CPython's C unpickler fill gigabytes) is just a key."""
    assert parse_pickle(b"\x80\x02]r\xff\xff\xff\x7f.", NOW) == ([], Counter())


def test_items_are_checked_like_lines() -> None:
    """Each item is checked for shape, value, timestamp and name; the good ones are kept."""
    items = [
        ("ok", (TS, 1.0)),
        ("a",),
        ("a", (TS, 1.0, 2.0)),
        (1, (TS, 1.0)),
        ("a", "xy"),
        [("a", (TS, 1.0))],
        ("a", (TS, "x")),
        ("a", (TS, 10**400)),
        ("a", ("x", 1.0)),
        ("a", (0, 1.0)),
        ("a", (TS, float("nan"))),
        ("a\x00", (TS, 1.0)),
    ]
    points, rejected = parse_pickle(pickle.dumps(items, protocol=2), NOW)
    assert points == [("ok", TS, 1.0)]
    assert rejected == Counter({"bad_point": 5, "bad_value": 2, "bad_timestamp": 2, "nan": 1, "bad_name": 1})


def _pickle_item(rng: random.Random) -> object:
    """One item of a pickle: carbon's shape mostly, or any of the ways a client gets it wrong."""
    path = rng.choice(["a.b", "servers.h1.cpu", "a..b", "a b", "é.x", "", "t;k=v", "t;k=~v", "a\x00", "x" * 1100])
    stamp = rng.choice([TS, int(TS), -1, -1.5, 0, 2**32, float("nan"), "1700000000", True, None, 10**400])
    value = rng.choice([1.5, 2, -0.0, float("inf"), float("nan"), "3.5", "x", False, None, 10**400])
    pair: object = rng.choice([(stamp, value), [stamp, value], (stamp,), (stamp, value, 1), "ab"])
    return rng.choice([(path, pair), [path, pair], (path,), path, (1, pair), (path, pair)] + [(path, pair)] * 6)


@pytest.mark.parametrize("seed", range(150))
def test_a_pickle_read_a_column_at_a_time_gives_what_the_item_loop_gives(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random frames, hostile items among plain ones: the batch check and the item by item loop agree."""
    rng = random.Random(seed)
    kind = seed % 3
    items = [_pickle_item(rng) for _ in range(rng.randint(0, 30))]
    if kind == 1:  # carbon's shape throughout, hostile numbers or paths in a few items
        items = [item if type(item) in (tuple, list) and len(item) == 2 else ("a.b", (TS, 1.0)) for item in items]
        items = [(p, q) if isinstance(q, (tuple, list)) and len(q) == 2 else (p, (TS, 1.0)) for p, q in items]
        items = [(p if type(p) is str else "a.b", q) for p, q in items]
    elif kind == 2:  # plain frames, the ones the batch check answers
        items = [(f"m{i}.x", (TS + i, i * 0.5)) for i in range(rng.randint(0, 30))]
    frame = pickle.dumps(items, protocol=2)
    fast = parse_pickle(frame, NOW, validator=Validator())
    monkeypatch.setattr(graphite_wire, "_pickled_plain", lambda items, validator: None)
    assert parse_pickle(frame, NOW, validator=Validator()) == fast


@pytest.mark.parametrize("seed", range(10))
def test_mangled_pickles_never_raise(seed: int) -> None:
    """Carbon pickles with random bytes changed, cut or appended never raise out of parse_pickle."""
    rng = random.Random(seed)
    frame = pickle.dumps([(f"a.b{i}", (TS + i, i * 0.5)) for i in range(20)], protocol=rng.choice([0, 2, 4]))
    for _ in range(300):
        mangled = bytearray(frame)
        for _ in range(rng.randint(1, 4)):
            mangled[rng.randrange(len(mangled))] = rng.randrange(256)
        mangled = mangled[: rng.randint(0, len(mangled))] + rng.randbytes(rng.randint(0, 4))
        points, rejected = parse_pickle(bytes(mangled), NOW)
        assert all(type(path) is str and ts > 0 for path, ts, _ in points)


# -- tagged series ---------------------------------------------------------------

#: Tag injection, each with the reason it is refused for.
HOSTILE_TAGS = [
    (b"t.x;k", "bad_tag"),  # no "="
    (b"t.x;=v", "bad_tag"),  # empty key
    (b"t.x;k=", "bad_tag"),
    (b"t.x;k=v;;", "bad_tag"),  # an empty tag
    (b"t.x;k=~v", "bad_tag"),  # carbon: no value starts with "~"
    (b"t.x;k;=v", "bad_tag"),
    (b"t.x;k!=v", "bad_tag"),
    (b"~~;k=v", "bad_name"),  # nothing left of the name
    (b"t.x;k=a\x00b", "bad_name"),  # a control character, anywhere in a path
    (b"t.x;" + b";".join(b"k%d=v" % i for i in range(600)), "bad_name"),  # 5,000 bytes of tags: over 1024
    (b"t.x;k=" + b"v" * 2000, "bad_name"),
    (b't.x;z={"};b=1', "bad_tag"),  # its canonical form would read as name{k="v"}
]

GOOD_TAGGED = [
    (b"disk.used;server=web01;datacenter=dc1", "disk.used;datacenter=dc1;server=web01"),
    (b"disk.used;datacenter=dc1;server=web01", "disk.used;datacenter=dc1;server=web01"),
    (b'disk.used{server="web01",datacenter="dc1"}', "disk.used;datacenter=dc1;server=web01"),
    (b"a/b/..;path=/var/../log", "a_b_;path=/var/../log"),  # the name made safe, the value kept
    (b"a;name=b;k=v=w", "a;k=v=w"),
]


@pytest.mark.parametrize(("raw", "canonical"), GOOD_TAGGED)
def test_tagged_lines_come_out_in_carbons_canonical_form(raw: bytes, canonical: str) -> None:
    """A tagged plaintext line or pickle item carbon accepts is one datapoint under its canonical name."""
    assert parse_one(raw + b" 1 1700000000") == ([(canonical, TS, 1.0)], Counter())
    points, rejected = parse_pickle(pickle.dumps([(raw.decode(), (TS, 1.0))], protocol=2), NOW)
    assert points == [(canonical, TS, 1.0)] and rejected == Counter()


@pytest.mark.parametrize("fast", [True, False], ids=["plain batch", "line by line"])
def test_hostile_tags_are_refused_by_reason_and_the_batch_lands(fast: bool) -> None:
    """Each tag injection is counted under its reason; the good tagged and untagged lines around it come out."""
    stamp = b" 1 1700000000\n" if fast else b"  1 1700000000\n"  # two spaces: not plain, the slow path
    body = b"ok.a 1 1700000000\n" + b"".join(raw + stamp for raw, _ in HOSTILE_TAGS) + b"ok.b;k=v 2 1700000000\n"
    points, rejected, _ = parse_plaintext(body, NOW, max_line_length=8192)
    assert points == [("ok.a", TS, 1.0), ("ok.b;k=v", TS, 2.0)]
    assert rejected == Counter(reason for _, reason in HOSTILE_TAGS)


def test_hostile_tags_in_a_pickle_are_refused_by_reason_and_the_rest_lands() -> None:
    """Pickle items carry what plaintext cannot (spaces, huge values); each bad one is counted, the rest kept."""
    items = [("ok.a", (TS, 1.0))]
    items += [(raw.decode(), (TS, 9.0)) for raw, _ in HOSTILE_TAGS]
    items += [("t.x;k=a b", (TS, 9.0)), ("t.x;" + ";".join(f"k{i}=v" for i in range(5000)), (TS, 9.0))]
    items += [("t.x;k=a\x85b", (TS, 9.0)), ("t.x;k=a\u2003b", (TS, 9.0))]  # a plaintext line splits at both
    items += [("ok.b;k=v", (TS, 2.0))]
    points, rejected = parse_pickle(pickle.dumps(items, protocol=2), NOW)
    assert points == [("ok.a", TS, 1.0), ("ok.b;k=v", TS, 2.0)]
    expected = Counter(reason for _, reason in HOSTILE_TAGS)
    expected.update({"bad_tag": 2, "bad_name": 2})  # U+0085 is a control character, U+2003 whitespace in a tag
    assert rejected == expected


def test_the_path_cache_counts_a_refusal_under_its_reason_every_time() -> None:
    """A refused path is counted under its own reason every time, from the cache as on first sight."""
    validator = Validator()
    paths = validator.paths
    for _ in range(2):
        points, rejected, _ = parse_plaintext(b"a;k=~x 1 1700000000\na\x01 1 1700000000\n", NOW, validator=validator)
        assert points == [] and rejected == Counter({"bad_tag": 1, "bad_name": 1})
    assert len(paths) == 2 and paths.clean_many([b"a;k=~x", b"a\x01"]) == ["", ""]


@pytest.mark.parametrize("seed", range(10))
def test_the_path_cache_batch_agrees_with_cleaning_each_path(seed: int) -> None:
    """clean_many on new, cached and evicted paths (hostile, tagged, non-UTF-8) gives clean_path's verdicts."""
    rng = random.Random(seed)
    pool = [b"a.b", b"servers.host01.cpu.user", b"a..b", b"a b", "é.ü".encode(), b"\xff\xfe", b"x" * 1100]
    pool += [raw for raw, _ in HOSTILE_TAGS] + [b"disk;b=2;a=1", b"n.m;k=v"] + [b"m%d" % i for i in range(50)]

    def expected(raw: bytes) -> str:
        try:
            return clean_path(raw.decode("utf-8"))
        except (UnicodeDecodeError, BadName):
            return ""

    cache = PathCache(max_bytes=2 * 20 * entry_bytes(b"m10"))  # small: entries get evicted as it goes
    for _ in range(100):
        batch = [rng.choice(pool) for _ in range(rng.randint(1, 30))]
        assert cache.clean_many(batch) == [expected(raw) for raw in batch]
    assert cache._cache.swaps > 0


# -- encoding: what carbon reads -------------------------------------------------


def test_every_protocol_the_topology_accepts_has_an_encoder_and_no_other() -> None:
    from dsat.topology import PROTOCOLS

    assert sorted(ENCODERS) == sorted(PROTOCOLS)


def test_pickle_is_what_carbon_unpickles_in_chunks_of_500() -> None:
    """1,201 points become 3 length-prefixed messages carbon's SafeUnpickler reads back exactly."""
    points = [(f"a.b{i}", 1_700_000_000 + i, i * 0.5) for i in range(1201)]
    messages = unpickle_messages(encode_pickle(points))
    assert [len(m) for m in messages] == [POINTS_PER_MESSAGE, POINTS_PER_MESSAGE, 201]
    assert [p for m in messages for p in m] == [(path, (ts, v)) for path, ts, v in points]


def test_plaintext_lines_are_carbons_line_protocol() -> None:
    """Plaintext is `path value timestamp` per line, timestamps as integers."""
    assert encode_plaintext([("a.b", 1_700_000_000.7, 1.5), ("c", 5, 2)]) == b"a.b 1.5 1700000000\nc 2 5\n"


def test_decode_reads_back_both_encodings() -> None:
    """Spooled and queued batches decode to the points that were encoded, whichever protocol wrote them."""
    points = [(f"a.b{i}", 1_700_000_000.0 + i, i * 0.5) for i in range(1201)]
    assert decode(encode_pickle(points)) == points
    assert decode(encode_plaintext(points)) == points
    assert decode(b"") == [] and decode(encode_pickle([])) == []


def test_complete_pickle_frames_are_split_off_and_the_rest_kept() -> None:
    """Length-prefixed messages come out whole, without their prefix; an unfinished one is the rest."""
    data = encode_pickle([("a", 1.0, 1.0)]) + encode_pickle([("b", 2.0, 2.0)])
    frames, rest = pickle_frames(data + data[:7])
    assert [pickle.loads(frame) for frame in frames] == [[("a", (1.0, 1.0))], [("b", (2.0, 2.0))]]
    assert rest == data[:7]
    assert pickle_frames(b"\x00\x00") == ([], b"\x00\x00")
    assert pickle_frames(struct.pack("!L", 0)) == ([b""], b"")

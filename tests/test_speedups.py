"""The compiled hot path (dsat._speedups): built, and exactly what the pure-Python versions give.

Each caller tries the compiled function first and takes its pure-Python
version when it answers None; every test here runs the same input both ways
(the module attribute ``speedups`` set to None for the Python way) and
compares results, or the exception raised, on random and hostile batches.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import random
import struct
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

import dsat.graphite_wire
import dsat.naming
import dsat.placement
import dsat.shards
from dsat import compiled
from dsat.graphite_wire import encode_plaintext, parse_plaintext
from dsat.placement import CarbonCh, make_placement
from dsat.shards import split_by_owner

NOW = 1_764_680_000.0


def _speedups() -> Any:
    try:
        return importlib.import_module("dsat._speedups")
    except ImportError as exc:  # pragma: no cover - a failure, with the reason
        pytest.fail(f"dsat._speedups was not built ({exc}): make venv compiles it with the machine's C compiler")


@pytest.mark.integration  # runs child Pythons
def test_the_extension_is_built_and_used_unless_told_not_to() -> None:
    """make venv builds dsat._speedups; dsat.compiled uses it, or not with DSAT_PURE_PYTHON set."""
    module = _speedups()
    env = {k: v for k, v in os.environ.items() if k != compiled.PURE_PYTHON_ENV}
    script = "from dsat import compiled; print(compiled.speedups is not None, compiled.describe())"
    used = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    assert used.stdout.strip() == "True compiled (dsat._speedups)"
    env[compiled.PURE_PYTHON_ENV] = "1"
    unused = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    assert unused.stdout.strip() == f"False pure Python ({compiled.PURE_PYTHON_ENV} is set)"
    assert module.__file__ is not None and module.__file__.endswith(".so")


def both_ways(monkeypatch: pytest.MonkeyPatch, owner: Any, call: Callable[[], Any]) -> tuple[Any, Any]:
    """What *call* gives (or the type of what it raises) with *owner*'s compiled functions, then without them."""

    def outcome() -> Any:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - the same exception both ways is the point
            return type(exc)

    monkeypatch.setattr(owner, "speedups", _speedups())
    fast = outcome()
    monkeypatch.setattr(owner, "speedups", None)
    slow = outcome()
    monkeypatch.undo()
    return fast, slow


# -- MD5 and placement --------------------------------------------------------------------------------------------


def test_md5_is_hashlibs_for_every_length_around_the_block_edges() -> None:
    rng = random.Random(5)
    for size in [*range(0, 300), 1000, 4096, 100_000]:
        data = rng.randbytes(size)
        assert _speedups().md5_digest(data) == hashlib.md5(data).digest(), size


def _random_path(rng: random.Random) -> str:
    alphabet = "abcxyz019._-;=~ éü日\U0001f600"
    return "".join(rng.choice(alphabet) for _ in range(rng.choice([1, 5, 30, 60, 120, 300])))


@pytest.mark.parametrize(
    "points",
    [
        [("a\udc80", NOW, 1.0)],  # a lone surrogate: not UTF-8, Python raises UnicodeEncodeError
        [("a.b", NOW, 1.0), ["a.c", NOW, 1.0]],  # not a tuple
        [("a.b", NOW)],  # two fields
        [(b"a.b", NOW, 1.0)],  # bytes
        (("a.b", NOW, 1.0),),  # a tuple of points, not a list
    ],
)
def test_what_placement_does_not_handle_goes_to_python(monkeypatch: pytest.MonkeyPatch, points: Any) -> None:
    placement = CarbonCh({("127.0.0.1", f"c{i}"): i for i in range(3)}, 1)
    assert _speedups().group_by_place(points, placement.table) is None
    fast, slow = both_ways(monkeypatch, dsat.placement, lambda: placement.group(points))
    assert fast == slow


def test_placement_needs_the_whole_ring_table() -> None:
    assert _speedups().group_by_place([("a", NOW, 1.0)], [(0,)] * 100) is None


# -- plaintext encoding -------------------------------------------------------------------------------------------


def _random_float(rng: random.Random) -> float:
    kind = rng.randrange(5)
    if kind == 0:
        return struct.unpack("<d", rng.randbytes(8))[0]  # any bit pattern: NaNs, infinities, subnormals
    if kind == 1:
        return round(rng.uniform(-1000, 1000), rng.randrange(6))
    if kind == 2:
        return rng.choice([0.0, -0.0, math.inf, -math.inf, 1e16, 1e-7, 5e-324, 1.7976931348623157e308, 0.1])
    if kind == 3:
        return rng.uniform(-1e19, 1e19)
    return float(rng.randrange(-(10**6), 10**6))


def _random_number(rng: random.Random) -> object:
    pick = rng.random()
    if pick < 0.6:
        return _random_float(rng)
    if pick < 0.9:
        return rng.choice([0, 1, -1, 2**63 - 1, -(2**63), 2**63, 10**30, rng.randrange(-(10**12), 10**12)])
    return rng.choice([True, False, 1.5j, "3"])


@pytest.mark.parametrize("seed", range(30))
def test_plaintext_encoding_is_the_pure_pythons(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Floats of any bit pattern, ints of any size, odd types and paths: the same bytes or the same exception."""
    rng = random.Random(seed)
    for _ in range(20):
        points: list[Any] = []
        for _ in range(rng.randint(0, 60)):
            path = _random_path(rng) if rng.random() < 0.9 else rng.choice(["a\udc80", "ok"])
            points.append((path, _random_number(rng), _random_number(rng)))
        fast, slow = both_ways(monkeypatch, dsat.graphite_wire, lambda points=points: encode_plaintext(points))
        assert fast == slow


def test_plaintext_encoding_of_usual_points_is_compiled() -> None:
    """A batch as the orchester sends it is encoded in C (not handed back), exactly as carbon reads it."""
    points = [("servers.a.cpu", NOW + 0.9, 1.5), ("é.x", 7, -0.0), ("b", -1.5, 10**15), ("c", 2.0**62, 1e300)]
    encoded = _speedups().encode_plaintext(points)
    assert (
        encoded
        == "servers.a.cpu 1.5 1764680000\né.x -0.0 7\nb 1000000000000000 -1\nc 1e+300 4611686018427387904\n".encode()
    )
    assert _speedups().encode_plaintext([]) == b""
    assert _speedups().encode_plaintext([("a", math.nan, 1.0)]) is None  # int(nan) raises: Python's to raise


# -- the split by owner -------------------------------------------------------------------------------------------


def _hostile_body(rng: random.Random) -> bytes:
    pieces = [b"a", b"b.c", b" ", b"\t", b"\r", b"\x0b", b"\x0c", b"\x00", b"\xff", "é".encode(), b"1", b"\n", b"  "]
    pieces += [
        b"\x1c",
        b"\x1f",
        "\u00a0".encode(),
        "\u3000".encode(),
        b"\xc2",
    ]  # carbon's str.split() splits on all but \xc2
    if rng.random() < 0.3:
        return b"".join(b"n%d.x %f 17\n" % (rng.randrange(1000), rng.random()) for _ in range(rng.randint(1, 50)))
    if rng.random() < 0.1:  # names longer than Adler-32's 5,552-byte run
        return b"".join(
            rng.randbytes(rng.randint(5000, 12000)).translate(None, b" \t\n\r\x0b\x0c") + b" 1 2\n" for _ in range(3)
        )
    return b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 80))) + b"\n"


@pytest.mark.parametrize("seed", range(20))
def test_the_split_by_owner_is_the_pure_pythons(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(50):
        body, count = _hostile_body(rng), rng.randint(1, 7)
        fast, slow = both_ways(monkeypatch, dsat.shards, lambda body=body, count=count: split_by_owner(body, count))
        assert fast == slow


@pytest.mark.parametrize("seed", range(10))
def test_plaintext_parsing_is_the_same_both_ways(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Hostile and tagged lines, with carbon's whitespace anywhere, parse alike with and without the compiled paths."""
    rng = random.Random(seed)
    for _ in range(20):
        body = _hostile_body(rng) + b"".join(
            _tagged(rng).encode() + rng.choice([b" ", "\u00a0".encode(), b"\x1d"]) + b"1 1764680000\n"
            for _ in range(rng.randint(0, 5))
        )
        fast, slow = both_ways(monkeypatch, dsat.naming, lambda body=body: parse_plaintext(body, NOW))
        assert fast == slow


def test_what_the_split_does_not_handle_goes_to_python() -> None:
    split = _speedups().split_by_owner
    assert split(b"", 2) is None
    assert split(b"a 1 2", 2) is None  # no newline at the end
    assert split(bytearray(b"a 1 2\n"), 2) is None
    assert split(b"a 1 2\n", 0) is None
    assert split(b"a 1 2\n", 10**6) is None


# -- the usual tagged path ----------------------------------------------------------------------------------------


def _tagged(rng: random.Random) -> str:
    """A path with tags, usual or not: keys twice, a name key, unsorted, odd characters, components at the limit."""
    names = ["servers.h1.cpu", "a", "~a", "a~", "a..b", "a.", ".a", "a=b", "x" * 200, "x" * 201, "a.b" * 80, "é", ""]
    keys = ["a", "b", "dc", "env", "name", "a.b", "k:y", "K", "k~", "k!", "k^", "", "é", "k y", "namex", "nam"]
    values = ["1", "v", "~x", "x~", "a=b", "", "p.q", "é", "v y", "@%#", "v\x00", "=", "a;"]
    if rng.random() < 0.3:
        return "".join(rng.choice("abxyz019_-:+=@%#~.;!^ é") for _ in range(rng.randint(1, 40)))
    if rng.random() < 0.5:  # usual ones, in any order, some at the limits
        names, keys, values = names[:2] + names[3:4] + names[5:6] + names[8:9], keys[:4] + keys[5:8], values[:2]
        keys, values = [*keys, "namex", "nam"], [*values, "x~", "a=b", "p.q", "@%#", "=", "v" * 300]
    tags = [f"{rng.choice(keys)}={rng.choice(values)}" for _ in range(rng.randint(0, 6))]
    if rng.random() < 0.1:
        tags.append(rng.choice(["k", "=v", "", "k=v=w"]))
    return rng.choice(names) + "".join(";" + tag for tag in tags)


@pytest.mark.parametrize("seed", range(20))
def test_the_usual_tagged_path_is_the_pure_pythons(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """The same canonical form, or the same None (not usual), as the regex and sort of dsat.naming."""
    rng = random.Random(seed)
    paths = [_tagged(rng) for _ in range(2000)]
    fast, slow = both_ways(monkeypatch, dsat.naming, lambda: [dsat.naming._simple_tagged(path) for path in paths])
    assert fast == slow
    assert sum(path is not None for path in fast) > 100  # usual ones were made canonical, not only refused


def test_the_usual_tagged_path_is_compiled() -> None:
    simple = _speedups().simple_tagged
    assert simple("servers.a.cpu;env=prod;dc=dc1") == "servers.a.cpu;dc=dc1;env=prod"
    assert simple("a;k=v;k=w") is None  # a key twice
    assert simple("a;name=x") is None
    assert simple(b"a;b=1") is None  # not a str


# -- carbon-c-relay's fnv1a_ch and jump_fnv1a_ch ------------------------------------------------------------------


def test_fnv1a_and_the_jump_bucket_are_pythons_for_every_byte() -> None:
    """FNV-1a 32 and 64 (bytes from 0x80 up sign-extended), the ring position and the jump bucket, C and Python."""
    rng = random.Random(11)
    samples = [bytes([b]) for b in range(256)] + [rng.randbytes(rng.randrange(0, 300)) for _ in range(500)]
    for data in samples:
        buckets = rng.randint(1, 600)
        h64 = dsat.placement.fnv1a_64(data)
        expected = (dsat.placement.fnv1a_32(data), dsat.placement.fnv1a_position(data), h64)
        assert _speedups().fnv1a_digest(data, buckets) == (*expected, dsat.placement.jump_bucket(h64, buckets)), data


def _members(count: int, hashing: str) -> list[tuple[tuple[str, int, str | None], int]]:
    """Destinations on one host, every other one with an instance (carbon_ch, which tells them apart by
    instance alone, gets one on each)."""
    return [(("127.0.0.1", 2004 + i, f"c{i}" if i % 2 or hashing == "carbon_ch" else None), i) for i in range(count)]


@pytest.mark.parametrize("hashing", ["carbon_ch", "fnv1a_ch", "jump_fnv1a_ch"])
@pytest.mark.parametrize("destinations", [2, 3, 4, 7])
@pytest.mark.parametrize("replication", [1, 2])
def test_placement_groups_are_the_pure_pythons(
    monkeypatch: pytest.MonkeyPatch, hashing: str, destinations: int, replication: int
) -> None:
    """Random, non-ASCII and long paths: each hashing groups and splits a batch the same way in C and Python."""
    placement = make_placement(hashing, _members(destinations, hashing), replication)
    rng = random.Random(destinations * 10 + replication)
    for _ in range(20):
        points = [(_random_path(rng), NOW + i, float(i)) for i in range(rng.randint(0, 300))]
        fast, slow = both_ways(monkeypatch, dsat.placement, lambda points=points: placement.group(points))
        assert fast == slow
        assert [list(group) for group in fast.values()] == [list(group) for group in slow.values()]
        fast, slow = both_ways(monkeypatch, dsat.placement, lambda points=points: placement.split(points))
        assert fast == slow


@pytest.mark.parametrize(
    "points",
    [
        [("a\udc80", NOW, 1.0)],  # a lone surrogate: not UTF-8, Python raises UnicodeEncodeError
        [("a.b", NOW, 1.0), ["a.c", NOW, 1.0]],  # not a tuple
        [(b"a.b", NOW, 1.0)],  # bytes
        (("a.b", NOW, 1.0),),  # a tuple of points, not a list
    ],
)
def test_what_the_jump_and_fnv1a_groupings_do_not_handle_goes_to_python(points: Any) -> None:
    fnv1a = make_placement("fnv1a_ch", _members(3, "fnv1a_ch"), 1)
    jump = make_placement("jump_fnv1a_ch", _members(3, "jump_fnv1a_ch"), 2)
    assert isinstance(fnv1a, dsat.placement.Fnv1aCh) and isinstance(jump, dsat.placement.JumpFnv1aCh)
    assert _speedups().group_by_place(points, fnv1a.table, 1) is None
    assert _speedups().group_by_jump(points, jump.order, 2) is None


def test_the_groupings_refuse_what_they_cannot_place() -> None:
    """An unknown hash kind, no bucket, or more replicas than buckets: None, for Python to place."""
    fnv1a = make_placement("fnv1a_ch", _members(3, "fnv1a_ch"), 1)
    assert isinstance(fnv1a, dsat.placement.Fnv1aCh)
    assert _speedups().group_by_place([("a", NOW, 1.0)], fnv1a.table, 2) is None
    assert _speedups().group_by_jump([("a", NOW, 1.0)], [], 1) is None
    assert _speedups().group_by_jump([("a", NOW, 1.0)], [0, 1], 3) is None

"""The one datapoint rule (dsat.datapoint), and the ingress fast path that applies it to whole chunks."""

from __future__ import annotations

import math
import pickle
import random
from collections import Counter

import pytest

from dsat.counters import Rejections
from dsat.datapoint import (
    MAX_TIMESTAMP,
    REASONS,
    BadDatapoint,
    Datapoint,
    Validator,
    all_numbers_acceptable,
    number_problem,
)
from dsat.errors import BadName
from dsat.graphite_wire import parse_pickle, parse_plain, parse_plaintext
from dsat.naming import MAX_PATH_CHARS, PathCache

NOW = 1_700_000_100.0
TS = 1_700_000_000

NUMBERS = [
    # (timestamp, value, reason or None)
    (TS, 1.5, None),
    (TS, 0, None),
    (TS, -3, None),
    (1, 1e20, None),
    (MAX_TIMESTAMP - 1, 1.0, None),
    (TS, math.nan, "nan"),
    (TS, math.inf, "nan"),
    (TS, -math.inf, "nan"),
    (TS, True, "bad_value"),
    (TS, False, "bad_value"),
    (TS, "1.5", "bad_value"),
    (TS, None, "bad_value"),
    (TS, 10**400, "bad_value"),  # an int too large for a float
    (MAX_TIMESTAMP, 1.0, "bad_timestamp"),
    (1_700_000_000_000, 1.0, "bad_timestamp"),  # milliseconds
    (1e20, 1.0, "bad_timestamp"),
    (0, 1.0, "bad_timestamp"),
    (-1, 1.0, "bad_timestamp"),  # "-1 means now" is the Graphite protocol's, read before the rule
    (math.nan, 1.0, "bad_timestamp"),
    (math.inf, 1.0, "bad_timestamp"),
    (True, 1.0, "bad_timestamp"),
    ("1700000000", 1.0, "bad_timestamp"),
    (math.nan, math.nan, "nan"),  # the value is checked first
]


@pytest.mark.parametrize(("timestamp", "value", "reason"), NUMBERS)
def test_the_numbers_rule(timestamp: object, value: object, reason: str | None) -> None:
    assert number_problem(timestamp, value) == reason
    assert reason is None or reason in REASONS


@pytest.mark.parametrize(
    ("path", "reason"),
    [("a..b", None), ("a/b", None), ("..", "bad_name"), ("/", None), ("a\x00b", "bad_name"), ("", "bad_name")]
    + [("x" * (MAX_PATH_CHARS + 1), "bad_name"), ("a;k=~v", "bad_tag"), (b"\xff\xfe", "bad_name")],
)
def test_the_name_rule(path: str | bytes, reason: str | None) -> None:
    validator = Validator()
    if reason is None:
        assert validator.check(path, TS, 1.0)[1:] == (TS, 1.0)
    else:
        with pytest.raises(BadName) as caught:
            validator.check(path, TS, 1.0)
        assert caught.value.reason == reason


def test_a_bad_number_is_refused_before_its_name_is_looked_at() -> None:
    with pytest.raises(BadDatapoint) as caught:
        Validator().check("a\x00b", MAX_TIMESTAMP, 1.0)
    assert caught.value.reason == "bad_timestamp"


def test_keep_counts_each_refusal_by_reason_and_keeps_the_rest() -> None:
    rejections = Rejections("test")
    points = [("a b", TS, 1), ("ok", TS * 1000, 2.0), ("ok", TS, math.nan), ("a\x01", TS, 1.0), ("ok", TS, True)]
    assert Validator().keep(points, rejections) == [("a_b", TS, 1)]
    assert rejections == Counter({"bad_timestamp": 1, "nan": 1, "bad_name": 1, "bad_value": 1})


def test_the_vectorised_bounds_are_the_rules() -> None:
    """all_numbers_acceptable is True exactly when every pair passes (for floats not summing past 1e308)."""
    rng = random.Random(7)
    pool = [1.0, 0.0, -1.0, 2.0**32, 2.0**32 - 1, 1e20, math.nan, math.inf, -math.inf, float(TS), 0.5]
    for _ in range(2000):
        n = rng.randint(1, 4)
        stamps = [rng.choice(pool) for _ in range(n)]
        values = [rng.choice(pool) for _ in range(n)]
        each = all(number_problem(ts, v) is None for ts, v in zip(stamps, values, strict=True))
        assert all_numbers_acceptable(stamps, values) == each, (stamps, values)


@pytest.mark.parametrize("seed", range(30))
def test_keep_checks_a_batch_whole_as_the_rule_checks_each(seed: int) -> None:
    """keep's whole-batch check (paths together, numbers inside C) gives what check() gives each datapoint."""
    rng = random.Random(seed)
    values: list[object] = [1, 1.5, -3, 0, 1e20, 2**40]
    stamps: list[object] = [TS, float(TS), 1, MAX_TIMESTAMP - 1, 1_700_000_000.5]
    hostile_values: list[object] = [math.nan, math.inf, True, False, 10**400, "1", None]
    hostile_stamps: list[object] = [0, -1, MAX_TIMESTAMP, 1e20, math.nan, True, TS * 1000, 10**400]
    paths = ["a.b", "servers.web01.cpu", "m.1"]
    hostile_paths = ["..", "/", "a/b", "a..b", "x" * 1100, "a\x01b", "lat;k=~v", "lat;region=eu", "é.ü"]
    hostile = rng.choice([0.0, 0.0, 0.05, 0.5])  # a half of the batches are plain
    points = [
        (
            rng.choice(hostile_paths if rng.random() < hostile else paths),
            rng.choice(hostile_stamps if rng.random() < hostile else stamps),
            rng.choice(hostile_values if rng.random() < hostile else values),
        )
        for _ in range(rng.randint(1, 40))
    ]
    want, want_rejected = [], Counter()
    for point in points:
        try:
            want.append(Validator().check(*point))
        except (BadDatapoint, BadName) as exc:
            want_rejected[exc.reason] += 1
    rejections = Rejections("test")
    assert Validator().keep(points, rejections) == want  # type: ignore[arg-type]
    assert rejections == want_rejected


@pytest.mark.parametrize(("timestamp", "value", "reason"), [n for n in NUMBERS if n[2] is not None])
def test_one_bad_number_in_a_plain_batch_is_refused_alone(timestamp: object, value: object, reason: str) -> None:
    """The case the whole-batch check must not miss: one hostile number among plain datapoints."""
    plain = [("a.b", TS, 1), ("c", float(TS), 2.5)]
    rejections = Rejections("test")
    kept = Validator().keep([*plain, ("d", timestamp, value), *plain], rejections)  # type: ignore[list-item]
    assert kept == plain + plain and rejections == {reason: 1}


# -- the ingress fast path against the rule ------------------------------------

HOSTILE_PATHS = [b"a.b", b"servers.web01.cpu", b"..", b"/", b"a/b", b"a..b", b"x" * 1100, b"x" * 300, b"a\x01b"]
HOSTILE_PATHS += [b"\xff", "é.ü".encode(), b"lat;region=eu", b"lat;k=~v", b"lat;=v", b"m.1", b"m.2"]
# What the fast path takes, and what it must hand to the per-line path (refused, or -1 for now).
GOOD_VALUES = [b"1", b"1.5", b"-3", b"-1", b"1e20", b"0"]
BAD_VALUES = [b"nan", b"inf", b"-inf", b"True", b"1e400", b"x"]
GOOD_STAMPS = [b"1700000000", b"1", b"4294967295", b"1700000000.5"]
BAD_STAMPS = [b"0", b"-1", b"-5", b"4294967296", b"1e20", b"nan", b"inf", b"1700000000000", b"False"]


def expected_line(line: bytes, validator: Validator) -> Datapoint | str:
    """What the per-datapoint rule makes of one plain line: the datapoint or the reason it is refused for."""
    raw_path, raw_value, raw_stamp = line.split()
    try:
        value: float | None = float(raw_value)
    except ValueError:
        value = None
    try:
        stamp: float | None = float(raw_stamp)
    except ValueError:
        stamp = None
    if stamp is not None and -2 < stamp <= -1:
        stamp = NOW
    try:
        return validator.check(raw_path, stamp, value)
    except (BadDatapoint, BadName) as exc:
        return exc.reason


@pytest.mark.parametrize("seed", range(40))
def test_the_fast_path_agrees_with_the_rule_on_hostile_input(seed: int) -> None:
    """Chunks of hostile names and numbers: the chunk parse (fast path or not) gives what the rule gives each line."""
    rng = random.Random(seed)
    bad_number_rate = rng.choice([0.0, 0.0, 0.02, 0.3])  # a third of the chunks take the fast path whole
    lines = []
    for _ in range(rng.randint(1, 60)):
        bad = rng.random() < bad_number_rate
        value = rng.choice(BAD_VALUES if bad and rng.random() < 0.5 else GOOD_VALUES)
        stamp = rng.choice(BAD_STAMPS if bad and value in GOOD_VALUES else GOOD_STAMPS)
        lines.append(b" ".join([rng.choice(HOSTILE_PATHS), value, stamp]))
    body = b"\n".join(lines) + b"\n"
    verdicts = [expected_line(line, Validator()) for line in lines]
    want = [v for v in verdicts if not isinstance(v, str)]
    want_rejected = Counter(v for v in verdicts if isinstance(v, str))

    fast_rejected: Counter[str] = Counter()
    fast = parse_plain(body, 4096, Validator(), fast_rejected)
    if bad_number_rate == 0.0:
        assert fast is not None  # every number is good: the fast path takes the chunk, bad names and all
    if fast is not None:
        assert fast == want and fast_rejected == want_rejected
    points, rejected, rest = parse_plaintext(body, NOW)
    assert rest == b"" and points == want and rejected == want_rejected


@pytest.mark.parametrize("seed", range(10))
def test_pickle_items_follow_the_rule(seed: int) -> None:
    """A pickle of hostile items: each lands or is counted exactly as the rule says."""
    rng = random.Random(seed)
    values: list[object] = [1, 1.5, "2.5", True, math.nan, math.inf, 10**400, "x", -3, 1e20]
    stamps: list[object] = [TS, float(TS), -1, 0, 2**32, 1e20, True, math.nan, "1700000000", TS * 1000]
    paths = [p.decode("utf-8", "replace") for p in HOSTILE_PATHS]
    items = [(rng.choice(paths), (rng.choice(stamps), rng.choice(values))) for _ in range(50)]
    validator = Validator()
    want, want_rejected = [], Counter()
    for path, (stamp, value) in items:
        value = float(value) if type(value) is str and value != "x" else (None if value == "x" else value)
        stamp = float(stamp) if type(stamp) is str else stamp
        if type(stamp) is not bool and -2 < stamp <= -1:  # type: ignore[operator]
            stamp = NOW
        try:
            clean, stamp, value = validator.check(path, stamp, value)
            want.append((clean, float(stamp), float(value)))
        except (BadDatapoint, BadName) as exc:
            want_rejected[exc.reason] += 1
    points, rejected = parse_pickle(pickle.dumps(items, protocol=2), NOW)
    assert points == want and rejected == want_rejected


def test_the_validator_shares_a_path_cache() -> None:
    paths = PathCache()
    validator = Validator(paths)
    validator.check("a b", TS, 1.0)
    assert validator.paths is paths and len(paths) == 1

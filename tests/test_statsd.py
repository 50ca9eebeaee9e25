"""statsd ingress: etsy statsd's line protocol, its aggregation and its graphite flush, on a fake clock."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from twisted.internet.task import Clock

from dsat.counters import Rejections
from dsat.datapoint import Datapoint
from dsat.errors import ConfigError
from dsat.statsd import StatsdAggregator, StatsdProtocol, percentile_label, timer_stats
from dsat.topology import valid_percentile

NOW = 1_700_000_000


def make(**options: object) -> tuple[StatsdAggregator, Clock]:
    clock = Clock()
    clock.advance(NOW + 0.4)
    return StatsdAggregator(clock, rejections=Rejections("test"), **options), clock  # type: ignore[arg-type]


def flushed(agg: StatsdAggregator) -> dict[str, float]:
    points = agg.flush()
    assert all(ts == NOW for _, ts, _ in points)
    return {path: value for path, _, value in points}


def test_a_known_input_flushes_as_etsy_statsd_names_and_computes_it() -> None:
    """Counters, timers, gauges and sets flush under <prefix>.<type>.<name> with etsy statsd's statistics."""
    agg, _ = make()
    agg.receive(
        b"gorets:1|c\ngorets:2|c|@0.1\n"
        b"glork:320|ms\nglork:100|ms\nglork:200|ms|@0.5\n"
        b"gaugor:333|g\n"
        b"uniques:765|s\nuniques:765|s\nuniques:766|s\n"
    )
    mean = 620 / 3
    assert flushed(agg) == pytest.approx(
        {
            "stats.counters.gorets.rate": 2.1,
            "stats.counters.gorets.count": 21.0,
            "stats.timers.glork.count_90": 3.0,
            "stats.timers.glork.mean_90": mean,
            "stats.timers.glork.upper_90": 320.0,
            "stats.timers.glork.sum_90": 620.0,
            "stats.timers.glork.sum_squares_90": 152_400.0,
            "stats.timers.glork.std": math.sqrt(((100 - mean) ** 2 + (200 - mean) ** 2 + (320 - mean) ** 2) / 3),
            "stats.timers.glork.upper": 320.0,
            "stats.timers.glork.lower": 100.0,
            "stats.timers.glork.count": 4.0,
            "stats.timers.glork.count_ps": 0.4,
            "stats.timers.glork.sum": 620.0,
            "stats.timers.glork.sum_squares": 152_400.0,
            "stats.timers.glork.mean": mean,
            "stats.timers.glork.median": 200.0,
            "stats.gauges.gaugor": 333.0,
            "stats.sets.uniques.count": 2.0,
        }
    )
    assert agg.rejections == Counter()


def test_counters_sum_and_scale_by_their_sample_rate() -> None:
    """A counter sums its values, each divided by its sample rate; rate is per second of the flush interval."""
    agg, _ = make(flush_interval=5.0)
    agg.receive(b"hits:3|c\nhits:1|c|@0.25\nhits:-1|c\nhits:0.5|c")
    assert flushed(agg) == {"stats.counters.hits.rate": 1.3, "stats.counters.hits.count": 6.5}


def test_timer_percentiles_follow_etsy_statsd() -> None:
    """upper_90 is the 90th-percentile sample (rounded as JavaScript does); -10 gives lower_top10 over the top."""
    stats = dict(timer_stats([float(v) for v in range(10, 0, -1)], 10.0, 10.0, [90, -10, 99.9]))
    assert stats["count_90"] == 9 and stats["upper_90"] == 9 and stats["sum_90"] == 45 and stats["mean_90"] == 5
    assert stats["count_top10"] == 1 and stats["lower_top10"] == 10 and stats["sum_top10"] == 10
    assert stats["count_99_9"] == 10 and stats["upper_99_9"] == 10
    assert stats["median"] == 5.5 and stats["mean"] == 5.5 and stats["count_ps"] == 1.0


def test_a_percentile_covering_no_sample_is_left_out() -> None:
    """With two samples, the 10th percentile rounds to none and is not flushed; one sample covers all."""
    assert not any(name.endswith("_10") for name, _ in timer_stats([1.0, 2.0], 2, 10, [10]))
    assert dict(timer_stats([7.0], 1, 10, [10]))["upper_10"] == 7.0


def test_percentile_labels_are_etsy_statsds() -> None:
    """90 is "90", 99.9 is "99_9" and -10 is "top10", as etsy statsd writes them."""
    assert [percentile_label(p) for p in (90, 90.0, 99.9, -10, 0.5)] == ["90", "90", "99_9", "top10", "0_5"]


def test_configured_percentiles_are_flushed() -> None:
    """percentiles=[50, 99] flushes the _50 and _99 statistics instead of _90."""
    agg, _ = make(percentiles=[50, 99])
    agg.receive(b"t:1|ms\nt:2|ms\nt:3|ms\nt:4|ms")
    names = set(flushed(agg))
    assert {"stats.timers.t.upper_50", "stats.timers.t.upper_99"} <= names
    assert not any(name.endswith("_90") for name in names)


def test_gauges_set_add_and_subtract() -> None:
    """A gauge takes a plain value; +N and -N change the value it holds (or 0 when it holds none)."""
    agg, _ = make()
    agg.receive(b"g:10|g\ng:+5|g\ng:-3|g\nnew:-4|g\nset:2|g\nset:7|g")
    assert flushed(agg) == {"stats.gauges.g": 12.0, "stats.gauges.new": -4.0, "stats.gauges.set": 7.0}


def test_gauges_persist_between_flushes_and_the_rest_is_emptied() -> None:
    """After a flush gauges keep their value; counters, timers and sets start over and idle ones are not sent."""
    agg, _ = make()
    agg.receive(b"g:3|g\nc:1|c\nt:1|ms\ns:a|s")
    assert len(flushed(agg)) == 1 + 2 + 14 + 1
    assert flushed(agg) == {"stats.gauges.g": 3.0}
    agg.receive(b"g:+1|g\nc:2|c")
    assert flushed(agg) == {"stats.gauges.g": 4.0, "stats.counters.c.rate": 0.2, "stats.counters.c.count": 2.0}


def test_sets_count_distinct_members() -> None:
    """A set flushes how many distinct members it received; an empty member is "0", as in etsy statsd."""
    agg, _ = make()
    agg.receive(b"u:alice|s\nu:bob|s\nu:alice|s\nu:|s\nu:0|s")
    assert flushed(agg) == {"stats.sets.u.count": 3.0}


def test_one_line_may_carry_several_samples() -> None:
    """name:v1|t1:v2|t2 is several samples for one name, as etsy statsd reads it; a bad one spoils only itself."""
    agg, _ = make()
    agg.receive(b"a:1|c:2|c:5|ms:x\r\n")
    got = flushed(agg)
    assert got["stats.counters.a.count"] == 3.0 and got["stats.timers.a.upper"] == 5.0
    assert agg.rejections == Counter({"invalid_line": 1})


def test_names_are_made_safe_by_naming() -> None:
    """A statsd name goes through dsat.naming: unsafe characters become _ and empty components go."""
    agg, _ = make(prefix="statsd.app")
    agg.receive("foo bar/baz..qux:1|c\nvitesse.é:1|g".encode())
    assert set(flushed(agg)) == {
        "statsd.app.counters.foo_bar_baz.qux.rate",
        "statsd.app.counters.foo_bar_baz.qux.count",
        "statsd.app.gauges.vitesse.é",
    }


BAD = [
    (b"no_colon", "invalid_line"),
    (b"a:1", "invalid_line"),
    (b"a:x|c", "bad_value"),
    (b"a:|c", "bad_value"),
    (b"a:|g", "bad_value"),
    (b"a:-5|ms", "bad_value"),
    (b"a:nan|g", "nan"),
    (b"a:inf|c", "nan"),
    (b"a:1|x", "bad_type"),
    (b"a:1|hh", "bad_type"),
    (b"a:1|", "bad_type"),
    (b"a:1|c|0.1", "bad_field"),  # not a rate without its @
    (b"a:1|c|x:y", "bad_field"),
    (b"a:1|c|@", "bad_sample_rate"),
    (b"a:1|c|@x", "bad_sample_rate"),
    (b"a:1|c|@0", "bad_sample_rate"),
    (b"a:1|c|@-0.5", "bad_sample_rate"),
    (b"a:1|c|Tx", "bad_timestamp"),
    (b"a:1|c|T0", "bad_timestamp"),
    (b"a:1|g|T4294967296", "bad_timestamp"),
    (b"a:1|ms|T1700000000", "bad_timestamp"),  # only gauges and counters carry a time
    (b"a:1|h|T1700000000", "bad_timestamp"),
    (b"a:1|c|#k:~v", "bad_tag"),  # carbon: no value starts with ~
    (b"a:1|c|#:v", "bad_tag"),
    (b"a:1|c|#k:", "bad_tag"),
    (b"a:1|c|#k!:v", "bad_tag"),
    (b"a;k=~v:1|c", "bad_tag"),
    (b":1|c", "bad_name"),
    (b"a\x01b:1|c", "bad_name"),
    (b"a." + b"b" * 300 + b":1|c", "bad_name"),
]


@pytest.mark.parametrize(("line", "reason"), BAD)
def test_bad_lines_are_counted_by_reason(line: bytes, reason: str) -> None:
    """A line etsy statsd would reject (or that DSAT cannot store) is counted by reason and changes nothing."""
    agg, _ = make()
    agg.receive(line + b"\nok:1|c")
    assert agg.rejections == Counter({reason: 1})
    assert set(flushed(agg)) == {"stats.counters.ok.rate", "stats.counters.ok.count"}


def test_empty_lines_are_skipped_silently() -> None:
    """Blank lines (a trailing newline, CRLF padding) are neither samples nor rejections."""
    agg, _ = make()
    agg.receive(b"\n\r\na:1|c\n\n")
    assert agg.rejections == Counter() and len(flushed(agg)) == 2


def test_a_name_too_long_for_its_flushed_paths_is_rejected() -> None:
    """A name is refused when its longest flushed path would pass naming.MAX_PATH_CHARS."""
    agg, _ = make()
    name = ".".join(["n" * 100] * 9) + "." + "x" * 95  # 1004 characters: a fine path, but not with a prefix
    agg.receive(name.encode() + b":1|ms")
    assert agg.rejections == Counter({"bad_name": 1}) and agg.flush() == []


def test_distinct_names_are_bounded_and_drops_counted() -> None:
    """Past max_keys a new name is dropped and counted; names already held still take samples."""
    agg, _ = make(max_keys=2)
    agg.receive(b"a:1|c\nb:1|g\nc:1|c\nd:1|ms\ne:x|s\na:1|c")
    assert agg.rejections == Counter({"too_many_keys": 3})
    assert flushed(agg) == {"stats.counters.a.rate": 0.2, "stats.counters.a.count": 2.0, "stats.gauges.b": 1.0}
    agg.receive(b"c:1|c")  # the flush emptied the counters: room again
    assert "stats.counters.c.count" in flushed(agg)


def test_held_values_are_bounded_and_drops_counted() -> None:
    """Past max_values timer samples and new set members are dropped and counted, until the next flush."""
    agg, _ = make(max_values=3)
    agg.receive(b"t:1|ms\nt:2|ms\nu:a|s\nu:a|s\nt:3|ms\nu:b|s")
    assert agg.rejections == Counter({"too_many_values": 2})
    got = flushed(agg)
    assert got["stats.timers.t.count"] == 2.0 and got["stats.sets.u.count"] == 1.0
    agg.receive(b"t:3|ms")
    assert flushed(agg)["stats.timers.t.count"] == 1.0


def test_garbage_packets_never_raise() -> None:
    """Random bytes and mangled lines are counted or taken, never raised."""
    rng = random.Random(7)
    agg, _ = make(max_keys=50)
    good = [b"a.b:1|c", b"t:12|ms|@0.1", b"g:-3|g", b"s:x|s", b"m:1|c:2|ms"]
    for _ in range(2000):
        packet = bytearray(b"\n".join(rng.choice(good) for _ in range(rng.randint(1, 5))))
        for _ in range(rng.randint(0, 3)):
            packet[rng.randrange(len(packet))] = rng.randrange(256)
        agg.receive(bytes(packet) if rng.random() < 0.8 else rng.randbytes(rng.randint(0, 100)))
    points = agg.flush()
    assert points and all(value - value == 0.0 for _, _, value in points)


@pytest.mark.parametrize(
    "options",
    [{"flush_interval": 0}, {"percentiles": [0]}, {"percentiles": [101]}, {"percentiles": [True]}]
    + [{"prefix": ""}, {"prefix": "a\x00"}],
)
def test_bad_settings_raise_config_error(options: dict[str, object]) -> None:
    """A zero flush interval, a percentile outside (0, 100] (or its negative) or a bad prefix is a ConfigError."""
    with pytest.raises(ConfigError):
        StatsdAggregator(Clock(), **options)  # type: ignore[arg-type]


def test_the_protocol_flushes_to_the_sink_on_the_clock() -> None:
    """A flush at each multiple of flush_interval, stamped with it, one batch each; stopping flushes the rest."""
    agg, clock = make()  # started 0.4 s past a multiple of 10
    batches: list[list[Datapoint]] = []
    proto = StatsdProtocol(agg, batches.append)
    proto.startProtocol()
    proto.datagramReceived(b"a:1|c\na:1|c", ("192.0.2.7", 5000))
    clock.advance(9.5)
    assert batches == []
    clock.advance(0.1)
    assert batches == [[("stats.counters.a.rate", NOW + 10, 0.2), ("stats.counters.a.count", NOW + 10, 2.0)]]
    clock.advance(10)
    assert len(batches) == 1  # nothing received, no gauge: nothing to send
    proto.datagramReceived(b"g:1|g", ("192.0.2.7", 5000))
    clock.advance(3)
    proto.stopProtocol()  # at NOW + 23: stamped NOW + 30, not in the slot of the flush at NOW + 20
    assert batches[-1] == [("stats.gauges.g", NOW + 30, 1.0)]
    assert not clock.getDelayedCalls()


def test_dogstatsd_tags_become_graphite_tags() -> None:
    """``name:v|type|@rate|#k:v,k2:v2`` aggregates per name and tag set and flushes tagged, suffix on the name."""
    agg, _ = make()
    agg.receive(
        b"api.hits:1|c|#region:eu,host:web01\n"
        b"api.hits:2|c|@0.5|#host:web01,region:eu\n"  # the same series: tags in another order
        b"api.hits:7|c|#region:us\n"
        b"api.hits:100|c\n"
        b"lat:5|ms|#url:/a:b\n"  # a tag value keeps its own ":" and "/"
        b"temp:21|g|#room:k1\n"
        b"users:bob|s|#app:x"
    )
    assert agg.rejections == Counter()
    got = flushed(agg)
    assert got["stats.counters.api.hits.count;host=web01;region=eu"] == 5.0
    assert got["stats.counters.api.hits.rate;host=web01;region=eu"] == 0.5
    assert got["stats.counters.api.hits.count;region=us"] == 7.0
    assert got["stats.counters.api.hits.count"] == 100.0
    assert got["stats.timers.lat.upper_90;url=/a:b"] == 5.0
    assert got["stats.timers.lat.count;url=/a:b"] == 1.0
    assert got["stats.gauges.temp;room=k1"] == 21.0
    assert got["stats.sets.users.count;app=x"] == 1.0
    assert len(got) == 3 * 2 + 14 + 1 + 1  # three counter series, one timer, one gauge, one set


def test_graphite_tags_in_a_statsd_name_are_canonical() -> None:
    """A Graphite-tagged statsd name (``name;k=v``) is the same series as the DogStatsD form of it."""
    agg, _ = make()
    agg.receive(b"q;b=2;a=1:1|c\nq:2|c|#a:1,b:2")
    assert flushed(agg) == {"stats.counters.q.rate;a=1;b=2": 0.3, "stats.counters.q.count;a=1;b=2": 3.0}


def test_a_sum_past_the_float_range_is_refused_by_the_datapoint_rule_alone() -> None:
    """The flush output goes through the one datapoint rule: a counter that overflowed to inf is counted nan and
    left out; the other names flush."""
    agg, _ = make()
    agg.receive(b"big:1e308|c\nbig:1e308|c\nsmall:1|c\n")
    assert flushed(agg) == {"stats.counters.small.rate": 0.1, "stats.counters.small.count": 1.0}
    assert agg.rejections == Counter({"nan": 2})  # big's rate and count


@pytest.mark.parametrize(("pct", "valid"), [(90, True), (99.9, True), (100, True), (-10, True), (-100, True)]
    + [(0, False), (100.5, False), (-101, False), (True, False), ("90", False), (math.nan, False)])  # fmt: skip
def test_the_one_percentile_rule(pct: object, valid: bool) -> None:
    """One rule for the aggregator and the topology's [ingress] statsd_percentiles."""
    from pathlib import Path

    from dsat import topology

    assert valid_percentile(pct) is valid
    text = '[dsat]\nwhere = "h"\n[carbon]\ndestinations = ["127.0.0.1:2004"]\n[ingress]\nstatsd = "127.0.0.1:8125"\n'
    text += f"statsd_percentiles = [{pct!r}]\n".replace("True", "true").replace("'", '"')
    if valid:
        topology.loads(text, path=Path("/tmp/t.toml"))
    else:
        with pytest.raises(ConfigError, match="statsd_percentiles"):
            topology.loads(text, path=Path("/tmp/t.toml"))

"""Carbon rule compatibility (checked against carbon itself), aggregation math and timing, filters, errors."""

from __future__ import annotations

import contextlib
import random
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from carbon.aggregator.rules import AGGREGATION_METHODS
from carbon.aggregator.rules import RuleManager as _carbon_rule_manager
from carbon.rewrite import _RewriteRuleManager
from twisted.internet.task import Clock

from dsat.cache import entry_bytes
from dsat.errors import BadName, ConfigError
from dsat.naming import clean_path
from dsat.rules import (
    METHODS,
    AggregationRule,
    Aggregator,
    RewriteRule,
    RuleSet,
    load_rules,
    parse_aggregation_rules,
    parse_rewrite_rules,
    rewrite,
)

CARBON_CONF = Path(sys.prefix, "conf")


def _example(name: str) -> str:
    path = CARBON_CONF / name
    if not path.exists():
        pytest.fail(
            f"carbon's example files are not installed in {CARBON_CONF}; install carbon with GRAPHITE_NO_PREFIX=True"
        )
    return path.read_text()


def _example_rewrite_rules() -> str:
    """The rules shown (commented out) in carbon's rewrite-rules.conf.example."""
    text = _example("rewrite-rules.conf.example").split("# For example:", 1)[1].split("# These rules", 1)[0]
    rules = "\n".join(line.lstrip("#").strip() for line in text.splitlines())
    assert "[post]" in rules and "_sum$ =" in rules
    return rules


def _example_aggregation_rules() -> str:
    """The rules shown (commented out) in carbon's aggregation-rules.conf.example."""
    found = re.findall(r"^#\s+(\S+ \(\d+\) += \w+ \S+)$", _example("aggregation-rules.conf.example"), re.M)
    assert len(found) == 4
    return "\n".join(found)


REWRITE_FILES = {
    "hosts": r"""
# hosts and cores renamed; odd characters squashed
[pre]
^servers\.host(\d+)\. = hosts.h\1.
\.core(\d)\. = .cpu\1.
[^a-zA-Z0-9_.-] = _
[post]
_sum$ =
(?i)USER = usr
""",
    "tricky": r"""
[PRE]
^(?P<root>stats)\.(?!gauges) = \g<root>.other.
a = b=c
\.\.+ = .
[post]
^\. =
\.$ =
[pre]
# a repeated heading discards the rules above it, as carbon does
^prod\. = production.
(\w+)\.(\w+)$ = \2.\1
""",
    "empty_pattern": """
[pre]
= x
""",
}

AGGREGATION_FILES = {
    "fields": r"""
<env>.applications.<app>.all.<app_metric> (60) = sum <env>.applications.<app>.*.<<app_metric>>
servers.all.cpu.<type> (10) = avg servers.*.cpu.*.<type>
servers.<host>.cpu.total.<type> (10) = sum servers.<host>.cpu.core*.<type>
stats.<path>.p95 (60) = p95 stats.timers.<<path>>.mean_90
a.pre_<x>_post.total (60) = count a.pre_<<x>>_post.*
<all>.max (60) = max <<all>>.user
all.count (60) = count *.*.*
servers.dc_a.cpu.<type> (10) = sum servers.*.cpu.*.<type>;dc=a;env=prod
""",
    "regex": r"""
<env>.applications.<app>.<domain>.requests (60) = sum <env>.applications.<app>.<domain>\d{2}.requests
servers.h<n>.cpu (10) = max servers.host0*<n>.cpu.core[0-3].user
""",
}


def _names() -> list[str]:
    """About 2000 metric names: regular trees, statsd-style, odd ones and random junk."""
    names = [
        f"servers.host{h:03d}.cpu.core{c}.{kind}"
        for h in range(100)
        for c in range(4)
        for kind in ("user", "system", "idle")
    ]
    names += [
        f"{env}.applications.{app}.www{n:02d}.{metric}"
        for env in ("prod", "dev")
        for app in ("apache", "nginx")
        for n in range(20)
        for metric in ("requests", "latency", "http.status.200")
    ]
    names += [f"stats.timers.api.{verb}.mean_90" for verb in ("get", "put", "deep.nested.path")]
    names += [
        "", ".", "a..b", ".leading", "trailing.", "with space.x", "ünïcödé.métrique", "tag;env=prod",
        "x" * 300, "a.b.c.d.e.f.g.h.i.j", "servers.host001.cpu.core1.user_sum", "_sum", "foo_avg", "1.2.3",
        "a*b", "a(b)", "a\\b", "=", "a=b", "stats.gauges.x", "stats.counters.x", "prod.x.y", "USER.user",
        "a.pre_mid_post.z", "a.pre__post.z", "servers.host0001.cpu.core3.user", "servers..cpu.core1.user",
    ]  # fmt: skip
    names += [  # tagged series, in the canonical form the ingress gives the rules
        f"servers.host{h:03d}.cpu.core{c}.user;dc={dc};env=prod" for h in range(10) for c in range(2) for dc in "ab"
    ]
    names += ["prod.applications.apache.www01.requests;dc=eu;ver=1.2", "stats.timers.api.get.mean_90;k=v"]
    rng = random.Random(1234)
    alphabet = "abcxyz019._-.:;=*()[]\\ é"
    names += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(500)]
    assert 1900 <= len(names) <= 2600
    return names


NAMES = _names()


def _carbon_rewrite(path: Path) -> _RewriteRuleManager:
    manager = _RewriteRuleManager()
    manager.rules_file = str(path)
    manager.read_rules()  # read once; read_from() would start a LoopingCall on the global reactor
    return manager


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- compatibility with carbon itself ----------------------------------------


@pytest.mark.parametrize("name", [*REWRITE_FILES, "carbon_example"])
def test_rewrite_matches_carbon(tmp_path: Path, name: str) -> None:
    """For every generated name, DSAT's [pre] and [post] results equal carbon's RewriteRuleManager's."""
    text = _example_rewrite_rules() if name == "carbon_example" else REWRITE_FILES[name]
    path = _write(tmp_path, "rewrite-rules.conf", text)
    carbon = _carbon_rewrite(path)
    pre, post = parse_rewrite_rules(text)
    assert len(pre) == len(carbon.rules("pre")) and len(post) == len(carbon.rules("post"))
    changed = 0
    for section, ours in (("pre", pre), ("post", post)):
        for metric in NAMES:
            expected = metric
            for rule in carbon.rules(section):
                expected = rule.apply(expected)
            assert rewrite(ours, metric) == expected, (section, metric)
            changed += expected != metric
    assert changed > 0


@pytest.mark.parametrize("name", [*AGGREGATION_FILES, "carbon_example"])
def test_aggregate_names_match_carbon(name: str) -> None:
    """Each rule builds carbon's regex and, for every generated name, names carbon's aggregate (or none)."""
    text = _example_aggregation_rules() if name == "carbon_example" else AGGREGATION_FILES[name]
    ours = parse_aggregation_rules(text)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert len(ours) == len(lines)
    matched = 0
    for rule, line in zip(ours, lines, strict=True):
        theirs = _carbon_rule_manager.parse_definition(line)
        assert (rule.regex.pattern, rule.template, rule.frequency) == (
            theirs.regex.pattern,
            theirs.output_template,
            theirs.frequency,
        )
        for metric in NAMES:
            expected = theirs.get_aggregate_metric(metric)
            assert rule.output(metric) == expected, (line, metric)
            matched += expected is not None
    assert matched > 0


def test_methods_are_carbons() -> None:
    """Every carbon aggregation method exists under the same name and computes the same value."""
    assert set(METHODS) == set(AGGREGATION_METHODS)
    rng = random.Random(7)
    for size in (1, 2, 3, 10, 101, 1000):
        values = [rng.uniform(-1e6, 1e6) for _ in range(size)]
        for name, method in METHODS.items():
            assert method(values) == AGGREGATION_METHODS[name](values), (name, size)


def test_carbon_example_files_load_as_is() -> None:
    """Carbon's shipped example files load unchanged, and its blacklist example works as deny patterns."""
    blacklist = [
        line.strip()
        for line in _example("blacklist.conf.example").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    rules = load_rules(
        CARBON_CONF / "rewrite-rules.conf.example",
        CARBON_CONF / "aggregation-rules.conf.example",
        deny=blacklist,
        clock=Clock(),
    )
    points = [("some.noisy.metric.prefix.x", 1.0, 1.0), ("a..b", 1.0, 1.0), ("good.one", 1.0, 2.0)]
    assert rules.apply(points) == ([("good.one", 1.0, 2.0)], Counter(filtered=2))


# -- the rule set on batches --------------------------------------------------


def _ruleset(tmp_path: Path, rewrite_text: str = "", aggregation_text: str = "", **kwargs: Any) -> RuleSet:
    return load_rules(
        _write(tmp_path, "rewrite-rules.conf", rewrite_text) if rewrite_text else None,
        _write(tmp_path, "aggregation-rules.conf", aggregation_text) if aggregation_text else None,
        **kwargs,
    )


def test_pre_and_post_rewrites_rename_forwarded_points(tmp_path: Path) -> None:
    """A forwarded datapoint gets the [pre] then the [post] rules, its timestamp and value untouched."""
    rules = _ruleset(tmp_path, "[pre]\n^servers\\. = hosts.\n[post]\n\\.user$ = .usr\n", clock=Clock())
    out, drops = rules.apply([("servers.a.user", 10.0, 1.5), ("other.b", 11.0, 2.5)])
    assert out == [("hosts.a.usr", 10.0, 1.5), ("other.b", 11.0, 2.5)] and not drops


def test_rewritten_names_are_made_safe_or_dropped(tmp_path: Path) -> None:
    """A rule that makes a name unsafe has it cleaned; one that empties it has it dropped as bad_name."""
    rules = _ruleset(tmp_path, "[pre]\n^x = a/b..c\n^gone.* =\n", clock=Clock())
    out, drops = rules.apply([("x.1", 1.0, 1.0), ("gone.1", 1.0, 1.0)])
    assert out == [("a_b.c.1", 1.0, 1.0)] and drops == Counter(bad_name=1)


def test_routes_cache_is_bounded_and_stays_correct(tmp_path: Path) -> None:
    """With a route cache of one entry per generation, repeated and new paths still get the right names."""
    rules = _ruleset(tmp_path, "[pre]\n^a = b\n", clock=Clock())
    small = RuleSet(pre=rules.pre, cache_bytes=2 * entry_bytes("a0"))
    for i in range(50):
        out, _ = small.apply([(f"a{i % 5}", float(i), 1.0)])
        assert out == [(f"b{i % 5}", float(i), 1.0)]
        assert len(small._routes) <= 2 and small._routes.nbytes <= 2 * entry_bytes("a0")


def test_a_churning_routes_cache_skipped_gives_what_a_large_one_gives(tmp_path: Path) -> None:
    """Names outnumbering a small route cache: the batches it skips are routed whole, to the same names and drops."""
    rules = _ruleset(tmp_path, "[pre]\n^a = b\n^(.*)x$ = \\1 x\n", clock=Clock())
    small = RuleSet(pre=rules.pre, cache_bytes=40 * entry_bytes("a" * 30))
    large = RuleSet(pre=rules.pre)
    skips = [0]
    skipping = small._routes.skips

    def counted() -> bool:
        skipped = skipping()
        skips[0] += skipped
        return skipped

    small._routes.skips = counted  # type: ignore[method-assign]
    names = [name for name in NAMES if _cleanable(name)]
    for round_ in range(3):
        for start in range(0, len(names), 25):
            points = [(name, 1_700_000_000.0 + round_, 1.0) for name in names[start : start + 25]]
            assert small.apply(points) == large.apply(points)
    assert skips[0] > 100 and small._routes.admit_every > 1


def test_explain_shows_rewrite_filter_and_aggregates(tmp_path: Path) -> None:
    """explain() gives the rewritten name, the aggregates fed, the filter verdict and the final name."""
    rules = _ruleset(
        tmp_path,
        "[pre]\n^srv\\. = servers.\n[post]\n_sum$ =\n",
        "servers.all.<m>_sum (60) = sum servers.*.<m>\n",
        deny=["^servers\\.bad\\."],
        clock=Clock(),
    )
    seen = rules.explain("srv.h1.load")
    assert seen["rewritten"] == "servers.h1.load" and seen["filtered"] is False
    assert [a["output"] for a in seen["aggregates"]] == ["servers.all.load"]
    assert seen["aggregates"][0]["where"].endswith("aggregation-rules.conf:1")
    assert seen["output"] == "servers.h1.load"
    bad = rules.explain("srv.bad.load")
    assert bad["filtered"] is True and bad["aggregates"] == [] and bad["output"] is None
    assert bad["dropped"] == "filtered"


# -- filters -------------------------------------------------------------------


def test_deny_drops_and_counts(tmp_path: Path) -> None:
    """A path matching a deny regex (searched anywhere) is dropped and counted as filtered."""
    rules = _ruleset(tmp_path, deny=["noisy", r"\.tmp$"], clock=Clock())
    points = [("a.noisy.b", 1.0, 1.0), ("a.tmp", 1.0, 1.0), ("a.tmp.keep", 1.0, 1.0)]
    assert rules.apply(points) == ([("a.tmp.keep", 1.0, 1.0)], Counter(filtered=2))


def test_allow_keeps_only_matches_and_deny_wins(tmp_path: Path) -> None:
    """With allow patterns, only matching paths pass, and deny still drops what allow lets through."""
    rules = _ruleset(tmp_path, allow=["^servers\\.", "^apps\\."], deny=["secret"], clock=Clock())
    points = [("servers.a", 1.0, 1.0), ("apps.secret", 1.0, 1.0), ("other.a", 1.0, 1.0)]
    assert rules.apply(points) == ([("servers.a", 1.0, 1.0)], Counter(filtered=2))


def test_filters_see_the_pre_rewritten_name(tmp_path: Path) -> None:
    """Filters apply after the [pre] rules, so they match the renamed path."""
    rules = _ruleset(tmp_path, "[pre]\n^old\\. = new.\n", deny=["^new\\."], clock=Clock())
    assert rules.apply([("old.x", 1.0, 1.0)]) == ([], Counter(filtered=1))


# -- aggregation -----------------------------------------------------------------

VALUES = [4.0, 1.0, 10.0, 2.0, 3.0]
EXPECTED = {
    "sum": 20.0,
    "avg": 4.0,
    "min": 1.0,
    "max": 10.0,
    "count": 5.0,
    "p50": 3.0,
    "p75": 4.0,
    "p80": 5.2,
    "p90": 7.6,
    "p95": 8.8,
    "p99": 9.76,
    "p999": 9.976,
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_aggregates_one_interval(method: str) -> None:
    """Every method computes its value over the datapoints of one interval, stamped with the interval start."""
    assert set(EXPECTED) == set(METHODS)
    agg = Aggregator(Clock(), [AggregationRule("all.x", 60, method, "*.x")])
    agg.feed([(f"h{i}.x", 60.0 + i, v) for i, v in enumerate(VALUES)])
    [(name, ts, value)] = agg.flush(60 + 60 * 3)
    assert (name, ts) == ("all.x", 60.0) and value == pytest.approx(EXPECTED[method])


def test_intervals_align_on_frequency_and_wait_for_lateness() -> None:
    """An interval is timestamp - timestamp % frequency, emitted only max_lateness intervals after it ends."""
    agg = Aggregator(Clock(), [AggregationRule("all.x", 60, "sum", "*.x")], max_lateness=2)
    agg.feed([("a.x", 61.0, 1.0), ("b.x", 119.9, 2.0), ("a.x", 120.0, 5.0)])
    assert agg.flush(239.9) == []
    assert agg.flush(240) == [("all.x", 60.0, 3.0)]
    assert agg.flush(300) == [("all.x", 120.0, 5.0)]


def test_late_datapoints_fold_in_then_too_late_ones_are_dropped() -> None:
    """A datapoint arriving within max_lateness joins its interval; after emission, it is dropped as late."""
    agg = Aggregator(Clock(), [AggregationRule("all.x", 60, "sum", "*.x")], max_lateness=2)
    agg.feed([("a.x", 70.0, 1.0)])
    assert agg.flush(150) == []
    assert agg.feed([("b.x", 80.0, 2.0)]) == Counter()  # late, still welcome
    assert agg.flush(240) == [("all.x", 60.0, 3.0)]
    assert agg.feed([("c.x", 90.0, 4.0)]) == Counter(late=1)
    assert agg.flush(10_000) == []


def test_each_interval_is_emitted_once() -> None:
    """Flushing again, or later, never emits an interval a second time."""
    agg = Aggregator(Clock(), [AggregationRule("all.x", 10, "count", "*.x")], max_lateness=0)
    agg.feed([("a.x", float(t), 1.0) for t in range(0, 100, 5)])
    first = agg.flush(50)
    assert [ts for _, ts, _ in first] == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert agg.flush(50) == [] and agg.flush(49) == []
    assert [ts for _, ts, _ in agg.flush(100)] == [50.0, 60.0, 70.0, 80.0, 90.0]
    assert len(agg) == 0


def test_intervals_closed_before_start_are_late() -> None:
    """The clock's time at creation is the first horizon: data for intervals already closed is late."""
    clock = Clock()
    clock.advance(1000)
    agg = Aggregator(clock, [AggregationRule("all.x", 60, "sum", "*.x")], max_lateness=2)
    assert agg.feed([("a.x", 780.0, 1.0), ("a.x", 840.0, 1.0)]) == Counter(late=1)
    clock.advance(100)
    assert agg.flush() == [("all.x", 840.0, 1.0)]


def test_buffer_bound_drops_oldest_and_counts() -> None:
    """Beyond max_buffers the oldest buffer goes, and every datapoint it held is counted."""
    agg = Aggregator(Clock(), [AggregationRule("all.x", 10, "sum", "*.x")], max_buffers=2)
    drops = agg.feed([("a.x", 0.0, 1.0), ("b.x", 1.0, 1.0), ("a.x", 10.0, 1.0), ("a.x", 20.0, 1.0)])
    assert drops == Counter(aggregation_overflow=2)
    assert len(agg) == 2
    assert agg.flush(1000) == [("all.x", 10.0, 1.0), ("all.x", 20.0, 1.0)]


def test_a_point_feeds_each_output_once() -> None:
    """Two rules naming the same output feed it once per datapoint (carbon would feed it twice)."""
    rules = [AggregationRule("all.x", 60, "sum", "*.x"), AggregationRule("all.x", 60, "sum", "<h>.x")]
    agg = Aggregator(Clock(), rules)
    agg.feed([("a.x", 0.0, 1.0)])
    assert agg.flush(1000) == [("all.x", 0.0, 1.0)]


def test_ruleset_forwards_raw_points_and_emits_post_rewritten_aggregates(tmp_path: Path) -> None:
    """Raw points go on (post-rewritten), except those aggregating into their own name; flush emits aggregates."""
    rules = _ruleset(
        tmp_path,
        "[post]\n_sum$ =\n",
        "<h>.requests (60) = sum <h>.requests\nall.latency_sum (60) = sum *.latency\n",
        clock=Clock(),
        max_lateness=0,
    )
    points = [("a.requests", 0.0, 1.0), ("a.requests", 30.0, 2.0), ("a.latency", 5.0, 7.0), ("b.latency", 6.0, 8.0)]
    out, drops = rules.apply(points)
    assert out == [("a.latency", 5.0, 7.0), ("b.latency", 6.0, 8.0)] and not drops
    assert rules.flush(60) == ([("a.requests", 0.0, 3.0), ("all.latency", 0.0, 15.0)], Counter())


def test_forward_all_false_sends_only_aggregates(tmp_path: Path) -> None:
    """Without forward_all, raw points are not sent on; those matching no rule are counted."""
    rules = _ruleset(tmp_path, aggregation_text="all.x (60) = sum *.x\n", clock=Clock(), forward_all=False)
    out, drops = rules.apply([("a.x", 0.0, 1.0), ("a.y", 0.0, 1.0)])
    assert out == [] and drops == Counter(not_aggregated=1)
    assert rules.flush(1000)[0] == [("all.x", 0.0, 1.0)]


def test_reload_keeps_buffers_of_outputs_that_still_exist(tmp_path: Path) -> None:
    """After adopt(), buffers of kept outputs carry on (with the new method); removed outputs are counted."""
    clock = Clock()
    old = _ruleset(tmp_path, aggregation_text="all.x (60) = sum *.x\nall.y (60) = sum *.y\n", clock=clock)
    old.apply([("a.x", 0.0, 1.0), ("a.x", 1.0, 5.0), ("a.y", 2.0, 3.0)])
    new = _ruleset(tmp_path, aggregation_text="all.x (60) = max *.x\n", clock=clock)
    assert new.adopt(old) == Counter(rule_removed=1)
    new.apply([("b.x", 3.0, 2.0)])
    assert new.flush(1000) == ([("all.x", 0.0, 5.0)], Counter())
    assert len(old.aggregator) == 0


def test_reload_keeps_the_horizon(tmp_path: Path) -> None:
    """An interval emitted before a reload stays closed after it."""
    clock = Clock()
    old = _ruleset(tmp_path, aggregation_text="all.x (60) = sum *.x\n", clock=clock)
    old.apply([("a.x", 0.0, 1.0)])
    assert old.flush(1000)[0] == [("all.x", 0.0, 1.0)]
    new = _ruleset(tmp_path, aggregation_text="all.x (60) = sum *.x\n", clock=clock)
    new.adopt(old)
    assert new.apply([("a.x", 0.0, 1.0)])[1] == Counter(late=1)


# -- parse errors ------------------------------------------------------------


def test_rewrite_errors_name_file_line_and_reason(tmp_path: Path) -> None:
    """Every bad rewrite line is reported with its file and line number."""
    path = _write(
        tmp_path,
        "rw.conf",
        "x = y\n[pre]\n# fine\nfoo( = x\nno equals here\n[middle]\na = \\3\n[post]\nb = \\g<nope>\n",
    )
    with pytest.raises(ConfigError) as err:
        load_rules(path)
    problems = err.value.problems
    assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:{n}" for n in (1, 4, 5, 6, 7, 9)]
    assert "before any [pre]" in problems[0]
    assert "bad regex 'foo('" in problems[1]
    assert "neither a [section]" in problems[2]
    assert "unknown section [middle]" in problems[3]
    assert "bad replacement" in problems[4] and "bad replacement" in problems[5]
    assert str(err.value).startswith(f"{path}:1: ") and "(and 5 more)" in str(err.value)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("all.x (60) sum *.x", "missing '='"),
        ("all.x = sum *.x", "left of '='"),
        ("all.x (60) = sum", "right of '='"),
        ("all.x (abc) = sum *.x", "bad frequency '(abc)'"),
        ("all.x (0) = sum *.x", "not a positive number"),
        ("all.x (60) = median *.x", "unknown method 'median'; valid: avg, count, max"),
        ("all.x (60) = sum (.x", "bad input pattern"),
        ("all.<y> (60) = sum <x>.x", "cannot be filled"),
        ("<a>.<b> (60) = sum <a>-<b>.x", "cannot be filled"),
        ("<a> (60) = sum <a>.<a>", "bad input pattern"),
        ("<<a>>.max (60) = max <<a>>.user", "cannot be filled"),
    ],
)
def test_aggregation_errors_name_file_line_and_reason(tmp_path: Path, line: str, reason: str) -> None:
    """A bad aggregation rule is reported with its file, line number and what is wrong."""
    path = _write(tmp_path, "agg.conf", f"# header\nall.ok (60) = sum *.ok\n{line}\n")
    with pytest.raises(ConfigError) as err:
        load_rules(aggregation_path=path)
    assert err.value.problems[0].startswith(f"{path}:3: ")
    assert reason in err.value.problems[0]


def test_problems_from_every_source_are_reported_together(tmp_path: Path) -> None:
    """Both files and the filters are checked, and all their problems come in one ConfigError."""
    rw = _write(tmp_path, "rw.conf", "[pre]\nbad(\n")
    agg = _write(tmp_path, "agg.conf", "nonsense\n")
    with pytest.raises(ConfigError) as err:
        load_rules(rw, agg, allow=["ok", "("], deny=["[z"])
    assert len(err.value.problems) == 4
    assert "allow pattern 1 '('" in err.value.problems[2] and "deny pattern 0 '[z'" in err.value.problems[3]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A rule file that cannot be read is reported by name."""
    with pytest.raises(ConfigError, match="nope.conf: cannot read rule file"):
        load_rules(tmp_path / "nope.conf")


def test_a_bad_file_leaves_the_previous_ruleset_usable(tmp_path: Path) -> None:
    """A failed reload raises and builds nothing; the current RuleSet goes on working, buffers intact."""
    clock = Clock()
    rules = _ruleset(tmp_path, "[pre]\n^a = b\n", "all.x (60) = sum *.x\n", clock=clock)
    rules.apply([("a.x", 0.0, 1.0)])
    _write(tmp_path, "rewrite-rules.conf", "[pre]\n^a = \\9\n")
    with pytest.raises(ConfigError, match=r"rewrite-rules.conf:2: bad replacement"):
        load_rules(tmp_path / "rewrite-rules.conf", tmp_path / "aggregation-rules.conf", clock=clock)
    assert rules.apply([("a.y", 0.0, 1.0)]) == ([("b.y", 0.0, 1.0)], Counter())
    assert rules.flush(1000)[0] == [("all.x", 0.0, 1.0)]


def test_rules_see_tagged_series_in_canonical_form() -> None:
    """Filters, rewrites and aggregation match the whole canonical tagged name; what they make is canonical again."""
    clock = Clock()
    clock.advance(1_000_000)
    rules = RuleSet(
        pre=parse_rewrite_rules("[pre]\n;dc.eu-west = ;zone=eu;dc=eu\n")[0],
        deny=[re.compile(";env=test(;|$)")],
        aggregator=Aggregator(
            clock, parse_aggregation_rules("app.all.requests<tags> (60) = sum app.*.requests<tags>\n")
        ),
    )
    out, drops = rules.apply(
        [
            ("app.web1.requests;dc=eu-west", 999_960.0, 1.0),  # rewritten, then aggregated
            ("app.web2.requests;dc=eu", 999_960.0, 2.0),
            ("app.web2.requests;dc=eu;env=test", 999_960.0, 4.0),  # denied
            ("app.web3.requests", 999_960.0, 8.0),  # untagged: <tags> wants one character at least
        ]
    )
    assert out == [
        ("app.web1.requests;dc=eu;zone=eu", 999_960.0, 1.0),  # the rewrite's unsorted tags sorted again
        ("app.web2.requests;dc=eu", 999_960.0, 2.0),
        ("app.web3.requests", 999_960.0, 8.0),
    ]
    assert drops == Counter({"filtered": 1})
    aggregates, _ = rules.flush(1_000_200)
    assert sorted(aggregates) == [  # one aggregate per tag set, named canonically
        ("app.all.requests;dc=eu", 999_960.0, 2.0),
        ("app.all.requests;dc=eu;zone=eu", 999_960.0, 1.0),
    ]


def test_a_rewrite_that_breaks_a_tag_is_dropped_as_bad_name() -> None:
    """A rewrite result carbon could not parse (a value starting with ~) is dropped and counted, not mangled."""
    rules = RuleSet(pre=parse_rewrite_rules("[pre]\n;k.v = ;k=~v\n")[0])
    assert rules.apply([("m;k=v", 1.0, 1.0), ("m;k=w", 1.0, 2.0)]) == ([("m;k=w", 1.0, 2.0)], Counter({"bad_name": 1}))


# -- the batch cold path ---------------------------------------------------------------

TEMPLATE_PIECES = ["x", ".", "servers.", r"\1", r"\2", r"\g<1>", r"\g<0>", r"\g<word>", r"\n", r"\\", r"\0", "{}", "%s"]


@pytest.mark.parametrize("seed", range(10))
def test_a_fast_replacement_gives_what_re_sub_gives(seed: int) -> None:
    """Random replacement templates, with group references and other escapes, rename every corpus name as re.sub."""
    rng = random.Random(seed)
    pattern = r"(?P<word>[a-z]+)\.(\d+)?"
    for _ in range(20):
        template = "".join(rng.choice(TEMPLATE_PIECES) for _ in range(rng.randint(1, 5)))
        rule = RewriteRule(pattern, template)
        assert [rule.sub(name) for name in NAMES] == [re.sub(pattern, template, name) for name in NAMES], template


def _one_at_a_time(rules: RuleSet, points: list[tuple[str, float, float]]) -> tuple[list[Any], Counter[str]]:
    out: list[Any] = []
    drops: Counter[str] = Counter()
    for point in points:
        kept, dropped = rules.apply([point])
        out += kept
        drops += dropped
    return out, drops


@pytest.mark.parametrize("rewrite_name", [*REWRITE_FILES, "carbon_example"])
@pytest.mark.parametrize("filters", [False, True])
def test_a_batch_of_new_paths_gets_what_each_path_gets_alone(tmp_path: Path, rewrite_name: str, filters: bool) -> None:
    """The corpus (hostile and tagged names too) routed as one batch equals the same paths routed one by one."""
    text = _example_rewrite_rules() if rewrite_name == "carbon_example" else REWRITE_FILES[rewrite_name]
    if rewrite_name == "empty_pattern":
        text = "[pre]\n^$ = x\n"
    deny = [r"^production\.", "idle$"] if filters else []
    aggregation = AGGREGATION_FILES["fields"] if filters else ""
    clean = [name for name in NAMES if _cleanable(name)]
    points = [(name, 1_700_000_000.0 + i, float(i)) for i, name in enumerate(clean)]
    batch = _ruleset(tmp_path, text, aggregation, deny=deny, clock=Clock())
    single = _ruleset(tmp_path, text, aggregation, deny=deny, clock=Clock())
    assert batch.apply(points) == _one_at_a_time(single, points)
    assert batch.flush(2e9) == single.flush(2e9)
    if not filters:  # rewrites only: each name is carbon's re.sub chain, made safe, or dropped as bad_name
        expected = []
        for name, ts, value in points:
            with contextlib.suppress(BadName):
                expected.append((clean_path(rewrite(batch.post, rewrite(batch.pre, name))), ts, value))
        assert batch.apply(points)[0] == expected


def _cleanable(name: str) -> bool:
    try:
        return clean_path(name) == name
    except BadName:
        return False

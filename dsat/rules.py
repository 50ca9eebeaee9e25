"""Carbon-compatible rules applied to whole batches: rewrite, filter, aggregate.

This module owns the rule engine the orchester runs on every batch bound for
Carbon, and nothing else (no sockets, no reactor).  It reads carbon's own
``rewrite-rules.conf`` (``[pre]`` and ``[post]`` sections of ``regex =
replacement``) and ``aggregation-rules.conf`` (``output (frequency) = method
input``) with carbon's exact semantics: rewrite rules are ``re.sub`` on the
whole path, every rule in turn, and an aggregation input pattern becomes the
same regular expression carbon builds.  A :class:`RuleSet` applies, in order,
the ``[pre]`` rewrites, the allow/deny filters, aggregation (fed the
pre-rewritten name; aggregates are computed by an :class:`Aggregator` and
emitted by :meth:`RuleSet.flush`), and the ``[post]`` rewrites on everything
that goes on.  Every name that comes out is made safe by
:func:`dsat.naming.clean_path`; every datapoint dropped is counted by reason.
Rules are compiled once and each path's fate is cached, so a repeated path
costs one dict lookup.  ``docs/rules.rst`` lists the differences from carbon.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from twisted.internet.interfaces import IReactorTime

from dsat.cache import DEFAULT_MAX_BYTES, GenerationalCache
from dsat.datapoint import Datapoint
from dsat.errors import BadName, ConfigError
from dsat.naming import MAX_PATH_CHARS, all_safe, clean_path

#: How many intervals after its end an aggregation interval still takes late datapoints.
MAX_LATENESS = 2
#: Aggregation buffers (one per output metric and interval) kept at most; the oldest goes first.
MAX_BUFFERS = 100_000

Method = Callable[[Sequence[float]], float]


def _avg(values: Sequence[float]) -> float:
    return float(sum(values)) / len(values)


def _count(values: Sequence[float]) -> float:
    return len(values)


def _percentile(factor: float) -> Method:
    """Carbon's percentile: linear interpolation between the two closest ranks."""

    def percentile(values: Sequence[float]) -> float:
        ordered = sorted(values)
        rank = factor * (len(ordered) - 1)
        left, right = math.floor(rank), math.ceil(rank)
        if left == right:
            return ordered[left]
        return ordered[left] * (right - rank) + ordered[right] * (rank - left)

    return percentile


#: Carbon 1.1.10's aggregation methods (``carbon/aggregator/rules.py``), same names, same math.
METHODS: dict[str, Method] = {
    "sum": sum,
    "avg": _avg,
    "min": min,
    "max": max,
    "p50": _percentile(0.50),
    "p75": _percentile(0.75),
    "p80": _percentile(0.80),
    "p90": _percentile(0.90),
    "p95": _percentile(0.95),
    "p99": _percentile(0.99),
    "p999": _percentile(0.999),
    "count": _count,
}


# -- rewrite rules -----------------------------------------------------------


@dataclass(frozen=True)
class RewriteRule:
    """``pattern = replacement``: ``re.sub(pattern, replacement, path)``, as carbon's ``RewriteRule``."""

    pattern: str
    replacement: str
    where: str = field(default="", compare=False)  # "file:line", for messages and explain()
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)
    sub: Callable[[str], str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            regex = re.compile(self.pattern)
        except re.error as exc:
            raise ConfigError(f"bad regex {self.pattern!r}: {exc}") from None
        try:
            regex.sub(self.replacement, "")  # compiles the replacement, even with nothing to replace
        except (re.error, IndexError) as exc:
            raise ConfigError(f"bad replacement {self.replacement!r} for {self.pattern!r}: {exc}") from None
        object.__setattr__(self, "regex", regex)
        #: ``sub(path)`` is ``re.sub(pattern, replacement, path)``, with the replacement in its fastest form.
        object.__setattr__(self, "sub", partial(regex.sub, _fast_replacement(regex, self.replacement)))

    def apply(self, path: str) -> str:
        return self.sub(path)


# A template piece: literal text without a backslash, \g<name or number>, or \N (1-99) that no digit follows.
_TEMPLATE_PIECE = re.compile(r"([^\\]+)|\\g<([^>]*)>|\\([1-9][0-9]?)(?![0-9])")


def _fast_replacement(regex: re.Pattern[str], template: str) -> str | Callable[[re.Match[str]], str]:
    """*template* as ``re.sub`` reads it, in the form ``re.sub`` applies fastest, with the same results.

    Without a backslash it is literal text, which ``re`` copies in C.  When
    its only escapes are group references (``\\1``, ``\\g<1>``,
    ``\\g<name>``) it becomes a function joining the literal pieces and the
    groups (an unmatched group is empty, as in ``re``): in CPython 3.11 this
    is twice as fast as ``re``'s own template expansion, which runs in Python.
    Any other escape (``\\n``, octal, ``\\\\``) keeps *template* for ``re``.
    """
    if "\\" not in template:
        return template
    pieces: list[str | int] = []
    pos = 0
    while pos < len(template):
        match = _TEMPLATE_PIECE.match(template, pos)
        if match is None:
            return template
        literal, name, number = match.groups()
        if literal is not None:
            pieces.append(literal)
        elif number is not None:
            pieces.append(int(number))
        elif name.isdecimal():
            pieces.append(int(name))
        elif name in regex.groupindex:
            pieces.append(regex.groupindex[name])
        else:
            return template
        pos = match.end()
    if len(pieces) == 3:  # the usual shape, text \N text: no loop
        before, group, after = pieces
        if isinstance(before, str) and isinstance(group, int) and isinstance(after, str):
            return lambda m: before + (m[group] or "") + after
    return lambda m: "".join([piece if isinstance(piece, str) else (m[piece] or "") for piece in pieces])


def parse_rewrite_rules(
    text: str, source: str = "<rewrite rules>"
) -> tuple[tuple[RewriteRule, ...], tuple[RewriteRule, ...]]:
    """The ``[pre]`` and ``[post]`` rules of a ``rewrite-rules.conf`` text.

    Parsed as carbon parses it: stripped lines, ``#`` comments, section names
    lower-cased, a repeated heading discards the rules of that section above it,
    ``regex = replacement`` split on the first ``=``.  Where carbon logs and
    skips a line (bad regex, no ``=``) or silently ignores rules (before any
    heading, in a section other than ``[pre]``/``[post]``), this raises a
    :class:`~dsat.errors.ConfigError` listing every such line.
    """
    sections: dict[str, list[RewriteRule]] = {"pre": [], "post": []}
    section: str | None = None
    problems: list[str] = []
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        where = f"{source}:{lineno}"
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].lower()
            if section in sections:
                sections[section] = []
            else:
                problems.append(f"{where}: unknown section {line}; carbon only applies [pre] and [post]")
        elif "=" in line:
            pattern, replacement = (part.strip() for part in line.split("=", 1))
            try:
                rule = RewriteRule(pattern, replacement, where)
            except ConfigError as exc:
                problems.append(f"{where}: {exc}")
                continue
            if section is None:
                problems.append(f"{where}: rule {line!r} comes before any [pre] or [post] heading")
            elif section in sections:
                sections[section].append(rule)
        else:
            problems.append(f"{where}: {line!r} is neither a [section] heading nor a 'regex = replacement' rule")
    _raise_problems(problems)
    return tuple(sections["pre"]), tuple(sections["post"])


def rewrite(rules: Sequence[RewriteRule], path: str) -> str:
    """*path* after every rule in turn."""
    for rule in rules:
        path = rule.apply(path)
    return path


# -- aggregation rules -------------------------------------------------------


def build_regex(input_pattern: str) -> str:
    """The regular expression carbon builds from an aggregation input pattern (``build_regex``).

    Per dot-separated part: ``<<field>>`` captures lazily across dots,
    ``<field>`` captures lazily within one component, a lone ``*`` is one
    whole component, and any other ``*`` is ``[^.]*``; the rest is kept as a
    regex.  The result is matched from the start of the path to its end.
    """
    parts = []
    for part in input_pattern.split("."):
        if "<<" in part and ">>" in part:
            i, j = part.find("<<"), part.find(">>")
            parts.append(f"{part[:i]}(?P<{part[i + 2 : j]}>.+?){part[j + 2 :]}")
            continue
        i, j = part.find("<"), part.find(">")
        if i > -1 and j > i:
            parts.append(f"{part[:i]}(?P<{part[i + 1 : j]}>[^.]+?){part[j + 1 :]}")
        elif part == "*":
            parts.append("[^.]+")
        else:
            parts.append(part.replace("*", "[^.]*"))
    return "\\.".join(parts) + "$"


@dataclass(frozen=True)
class AggregationRule:
    """``output_pattern (frequency) = method input_pattern``, carbon's ``AggregationRule``."""

    output_pattern: str
    frequency: int
    method: str
    input_pattern: str
    where: str = field(default="", compare=False)  # "file:line", for messages and explain()
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)
    template: str = field(init=False, repr=False, compare=False)
    func: Method = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; valid: {', '.join(sorted(METHODS))}")
        if self.frequency <= 0:
            raise ConfigError(f"frequency {self.frequency} is not a positive number of seconds")
        try:
            regex = re.compile(build_regex(self.input_pattern))
        except re.error as exc:
            raise ConfigError(f"bad input pattern {self.input_pattern!r}: {exc}") from None
        template = self.output_pattern.replace("<", "%(").replace(">", ")s")
        try:
            template % dict.fromkeys(regex.groupindex, "x")
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"output {self.output_pattern!r} cannot be filled from the fields of input "
                f"{self.input_pattern!r} ({', '.join(regex.groupindex) or 'none'}): {exc!r}"
            ) from None
        object.__setattr__(self, "regex", regex)
        object.__setattr__(self, "template", template)
        object.__setattr__(self, "func", METHODS[self.method])

    @classmethod
    def parse(cls, line: str, where: str = "") -> AggregationRule:
        """One rule line, split as carbon's ``RuleManager.parse_definition`` splits it."""
        if "=" not in line:
            raise ConfigError("missing '='; a rule is 'output_template (frequency) = method input_pattern'")
        left, right = line.split("=", 1)
        if len(left.split()) != 2:
            raise ConfigError(f"left of '=' should be 'output_template (frequency)', not {left.strip()!r}")
        if len(right.split()) != 2:
            raise ConfigError(f"right of '=' should be 'method input_pattern', not {right.strip()!r}")
        output_pattern, frequency = left.split()
        method, input_pattern = right.split()
        try:
            seconds = int(frequency.lstrip("(").rstrip(")"))
        except ValueError:
            raise ConfigError(f"bad frequency {frequency!r}; write a number of seconds, e.g. (60)") from None
        return cls(output_pattern, seconds, method, input_pattern, where)

    def output(self, path: str) -> str | None:
        """The aggregate *path* feeds under this rule, or None (carbon's ``get_aggregate_metric``)."""
        match = self.regex.match(path)
        return None if match is None else self.template % match.groupdict()

    def __str__(self) -> str:
        return f"{self.output_pattern} ({self.frequency}) = {self.method} {self.input_pattern}"


def parse_aggregation_rules(text: str, source: str = "<aggregation rules>") -> tuple[AggregationRule, ...]:
    """The rules of an ``aggregation-rules.conf`` text; a :class:`~dsat.errors.ConfigError` lists every bad line."""
    rules: list[AggregationRule] = []
    problems: list[str] = []
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        where = f"{source}:{lineno}"
        try:
            rules.append(AggregationRule.parse(line, where))
        except ConfigError as exc:
            problems.append(f"{where}: {exc}")
    _raise_problems(problems)
    return tuple(rules)


#: An aggregate a path feeds: (output name, frequency, rule).
Target = tuple[str, int, AggregationRule]
#: A buffer's key: (output name, interval start).
Key = tuple[str, float]


class Aggregator:
    """Per-output, per-interval buffers; each interval is emitted once, after late datapoints had their chance.

    An interval ``[start, start + frequency)`` (``start = timestamp -
    timestamp % frequency``, as carbon) is emitted by the first
    :meth:`flush` at or after ``start + frequency * (1 + max_lateness)``.
    The *horizon* is the latest ``now`` flushed (at first, the clock's time):
    a datapoint for an interval that closes at or before it is dropped as
    ``late``, so no interval is ever emitted twice.  At most *max_buffers*
    buffers are kept; beyond, the oldest is dropped (``aggregation_overflow``).
    """

    def __init__(
        self,
        clock: IReactorTime | None = None,
        rules: Iterable[AggregationRule] = (),
        *,
        max_lateness: int = MAX_LATENESS,
        max_buffers: int = MAX_BUFFERS,
        cache_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._now: Callable[[], float] = time.time if clock is None else clock.seconds
        self.rules = tuple(rules)
        self.max_lateness = max_lateness
        self.max_buffers = max_buffers
        self.horizon = self._now()
        # One buffer per output and interval, oldest first (OrderedDict: dropping the oldest is O(1)).
        self._values: OrderedDict[Key, list[float]] = OrderedDict()
        self._rules: dict[Key, AggregationRule] = {}  # the rule each buffer aggregates with
        self._targets: GenerationalCache[str, tuple[Target, ...]] = GenerationalCache(cache_bytes)

    def __len__(self) -> int:
        return len(self._values)

    def targets(self, path: str) -> tuple[Target, ...]:
        """The aggregates *path* feeds: one per output name, with the first rule that names it."""
        if not self.rules:
            return ()
        targets = self._targets.get(path)
        if targets is None:
            found: dict[str, AggregationRule] = {}
            for rule in self.rules:
                output = rule.output(path)
                if output is not None and output not in found:
                    found[output] = rule
            targets = tuple((output, rule.frequency, rule) for output, rule in found.items())
            if len(path) <= MAX_PATH_CHARS:
                self._targets.put(path, targets)
        return targets

    def feed(self, points: Iterable[Datapoint]) -> Counter[str]:
        """Add each datapoint to the buffers of the outputs it feeds; returns the drops by reason."""
        drops: Counter[str] = Counter()
        buffers, targets_of = self._values, self.targets
        closed_before = self.horizon
        lateness = 1 + self.max_lateness
        for path, timestamp, value in points:
            for output, frequency, rule in targets_of(path):
                key = (output, timestamp - timestamp % frequency)
                values = buffers.get(key)
                if values is None:
                    if key[1] + frequency * lateness <= closed_before:
                        drops["late"] += 1
                        continue
                    if len(buffers) >= self.max_buffers:
                        oldest, dropped = buffers.popitem(last=False)
                        drops["aggregation_overflow"] += len(dropped)
                        del self._rules[oldest]
                    values = buffers[key] = []
                    self._rules[key] = rule
                values.append(value)
        return drops

    def flush(self, now: float | None = None) -> list[Datapoint]:
        """``(output, interval start, aggregate)`` for every interval closed at *now* (default: the clock)."""
        self.horizon = max(self.horizon, self._now() if now is None else now)
        lateness = 1 + self.max_lateness
        out: list[Datapoint] = []
        values: OrderedDict[Key, list[float]] = OrderedDict()
        rules: dict[Key, AggregationRule] = {}
        for key, rule in self._rules.items():
            if key[1] + rule.frequency * lateness <= self.horizon:
                out.append((key[0], float(key[1]), float(rule.func(self._values[key]))))
            else:
                values[key], rules[key] = self._values[key], rule
        self._values, self._rules = values, rules
        return out

    def adopt(self, previous: Aggregator) -> Counter[str]:
        """Take over *previous*'s buffers whose output still exists here; returns what was discarded.

        An output still exists when a rule here has the same output template
        and frequency; its buffers then aggregate with that rule's method.
        The buffers are moved, not copied: *previous* is left empty.
        """
        successors: dict[tuple[str, int], AggregationRule] = {}
        for rule in self.rules:
            successors.setdefault((rule.output_pattern, rule.frequency), rule)
        discarded: Counter[str] = Counter()
        for key, rule in previous._rules.items():
            successor = successors.get((rule.output_pattern, rule.frequency))
            if successor is None:
                discarded["rule_removed"] += len(previous._values[key])
            elif key in self._values:
                self._values[key].extend(previous._values[key])
            else:
                self._values[key], self._rules[key] = previous._values[key], successor
        previous._values, previous._rules = OrderedDict(), {}
        self.horizon = max(self.horizon, previous.horizon)
        return discarded


# -- the rule set ------------------------------------------------------------

#: What the rule set does with one path: (name it goes on as or None, name it aggregates as or None, drop reason).
_Route = tuple[str | None, str | None, str | None]


class RuleSet:
    """Pre-rewrite, filters, aggregation and post-rewrite, compiled once, applied to whole batches.

    Filters see the pre-rewritten name: it is dropped (``filtered``) when a
    *deny* pattern matches it or, with *allow* patterns, none of them does
    (``re.search``, as carbon's white- and blacklists).  A datapoint that
    feeds an aggregate named as itself is consumed by it; with
    *forward_all* false (carbon's ``FORWARD_ALL``), only aggregates go on.
    """

    def __init__(
        self,
        *,
        pre: Sequence[RewriteRule] = (),
        post: Sequence[RewriteRule] = (),
        allow: Sequence[re.Pattern[str]] = (),
        deny: Sequence[re.Pattern[str]] = (),
        aggregator: Aggregator | None = None,
        forward_all: bool = True,
        cache_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.pre = tuple(pre)
        self.post = tuple(post)
        self.allow = tuple(allow)
        self.deny = tuple(deny)
        self.aggregator = Aggregator() if aggregator is None else aggregator
        self.forward_all = forward_all
        self._routes: GenerationalCache[str, _Route] = GenerationalCache(cache_bytes)
        self._names: GenerationalCache[str, tuple[str | None]] = GenerationalCache(cache_bytes)

    def apply(self, points: Sequence[Datapoint]) -> tuple[list[Datapoint], Counter[str]]:
        """The datapoints that go on (renamed), and the count of those dropped, by reason.

        The fate of each path is cached; the paths of the batch not in the
        cache are routed together (``_routes_for``).  While the names
        outnumber the cache, a batch it would not admit is routed whole,
        without the lookups that would mostly miss
        (:meth:`~dsat.cache.GenerationalCache.skips`).
        """
        out: list[Datapoint] = []
        feed: list[Datapoint] = []
        drops: Counter[str] = Counter()
        paths = [point[0] for point in points]
        if self._routes.skips():
            routes: list[_Route | None] = self._routes_for(paths)  # type: ignore[assignment]
        else:
            routes = self._routes.get_many(paths)
        if None in routes:
            missing = [path for path, route in zip(paths, routes, strict=True) if route is None]
            fresh = self._routes_for(missing)
            self._routes.admit_many(missing, fresh)
            new = iter(fresh)
            routes = [next(new) if route is None else route for route in routes]
        for point, (name, aggregated, reason) in zip(points, routes, strict=True):  # type: ignore[misc]
            path = point[0]
            if aggregated is not None:
                feed.append(point if aggregated == path else (aggregated, point[1], point[2]))
            if name is not None:
                out.append(point if name == path else (name, point[1], point[2]))
            elif reason is not None:
                drops[reason] += 1
        if feed:
            drops.update(self.aggregator.feed(feed))
        return out, drops

    def flush(self, now: float | None = None) -> tuple[list[Datapoint], Counter[str]]:
        """The aggregates of every interval closed at *now*, post-rewritten, and the drops by reason."""
        out: list[Datapoint] = []
        drops: Counter[str] = Counter()
        for output, timestamp, value in self.aggregator.flush(now):
            name = self._output_name(output)
            if name is None:
                drops["bad_name"] += 1
            else:
                out.append((name, timestamp, value))
        return out, drops

    def adopt(self, previous: RuleSet) -> Counter[str]:
        """Keep *previous*'s aggregation buffers whose outputs still exist (see :meth:`Aggregator.adopt`)."""
        return self.aggregator.adopt(previous.aggregator)

    def explain(self, path: str) -> dict[str, Any]:
        """What the rules do to *path*: its rewritten name, filter verdict, aggregates and final name."""
        renamed = rewrite(self.pre, path)
        filtered_by = self._filtered_by(renamed)
        aggregates = [] if filtered_by else self.aggregator.targets(renamed)
        name, _, reason = self._routes_for([path])[0]
        return {
            "path": path,
            "rewritten": renamed,
            "filtered": filtered_by is not None,
            "filtered_by": filtered_by,
            "aggregates": [
                {"output": self._output_name(output), "rule": str(rule), "where": rule.where}
                for output, _, rule in aggregates
            ],
            "output": name,
            "dropped": reason,
        }

    def _filtered_by(self, path: str) -> str | None:
        for regex in self.deny:
            if regex.search(path):
                return f"deny {regex.pattern!r}"
        if self.allow and not any(regex.search(path) for regex in self.allow):
            return "no allow pattern matches"
        return None

    def _output_name(self, output: str) -> str | None:
        """*output* after the post rules and cleaning (cached), None if it cannot be made safe."""
        cached = self._names.get(output)
        if cached is None:
            cached = (self._final_names([output])[0],)
            if len(output) <= MAX_PATH_CHARS:
                self._names.put(output, cached)
        return cached[0]

    def _final_names(self, paths: list[str]) -> list[str | None]:
        """Each of *paths* after the post rules, made safe; None for one that cannot be."""
        for rule in self.post:
            paths = list(map(rule.sub, paths))
        if all_safe(paths):
            return list(paths)
        names: list[str | None] = []
        for path in paths:
            try:
                names.append(clean_path(path))
            except BadName:
                names.append(None)
        return names

    def _routes_for(self, paths: list[str]) -> list[_Route]:
        """What the rules do with each of *paths*, worked out for them all at once.

        The rewrites run over the whole list (``map`` of each rule's
        ``re.sub``), and the names that go on are post-rewritten and made safe
        together (:func:`dsat.naming.all_safe` checks them in one pass).
        """
        renamed = paths
        for rule in self.pre:
            renamed = list(map(rule.sub, renamed))
        if not (self.deny or self.allow or self.aggregator.rules) and self.forward_all:  # rewrites only
            names = self._final_names(renamed)
            return [(None, None, "bad_name") if name is None else (name, None, None) for name in names]
        if self.deny or self.allow:
            filtered = [self._filtered_by(path) is not None for path in renamed]
        else:
            filtered = [False] * len(renamed)
        targets, forward_all = self.aggregator.targets, self.forward_all
        outputs = [
            [] if out else [output for output, _, _ in targets(path)]
            for path, out in zip(renamed, filtered, strict=True)
        ]
        forwarded = [
            path
            for path, out, found in zip(renamed, filtered, outputs, strict=True)
            if not out and forward_all and path not in found
        ]
        forwarded_names = iter(self._final_names(forwarded))
        routes: list[_Route] = []
        for path, out, found in zip(renamed, filtered, outputs, strict=True):
            aggregated = path if found else None
            if out:
                routes.append((None, None, "filtered"))
            elif forward_all and path not in found:
                name = next(forwarded_names)
                routes.append((name, aggregated, "bad_name" if name is None else None))
            else:
                routes.append((None, aggregated, None if found else "not_aggregated"))
        return routes


# -- loading -----------------------------------------------------------------


def _raise_problems(problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(problems[0] + more, problems)


def _read(path: str | os.PathLike[str]) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{os.fspath(path)}: cannot read rule file: {exc}") from None


def _compile_filters(kind: str, patterns: Iterable[str]) -> tuple[tuple[re.Pattern[str], ...], list[str]]:
    compiled: list[re.Pattern[str]] = []
    problems: list[str] = []
    for i, pattern in enumerate(patterns):
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            problems.append(f"{kind} pattern {i} {pattern!r}: bad regex: {exc}")
    return tuple(compiled), problems


def load_rules(
    rewrite_path: str | os.PathLike[str] | None = None,
    aggregation_path: str | os.PathLike[str] | None = None,
    allow: Iterable[str] = (),
    deny: Iterable[str] = (),
    *,
    clock: IReactorTime | None = None,
    forward_all: bool = True,
    max_lateness: int = MAX_LATENESS,
    max_buffers: int = MAX_BUFFERS,
) -> RuleSet:
    """A :class:`RuleSet` from carbon rule files and filter regexes.

    Every problem in every file is reported in one :class:`~dsat.errors.ConfigError`
    (``file:line: reason``); nothing is built then, so the caller keeps its
    current rules.  To reload, load the new set, then ``new.adopt(old)`` to
    keep the aggregation buffers of outputs that still exist.
    """
    problems: list[str] = []
    pre: tuple[RewriteRule, ...] = ()
    post: tuple[RewriteRule, ...] = ()
    aggregation: tuple[AggregationRule, ...] = ()
    try:
        if rewrite_path is not None:
            pre, post = parse_rewrite_rules(_read(rewrite_path), os.fspath(rewrite_path))
    except ConfigError as exc:
        problems += exc.problems
    try:
        if aggregation_path is not None:
            aggregation = parse_aggregation_rules(_read(aggregation_path), os.fspath(aggregation_path))
    except ConfigError as exc:
        problems += exc.problems
    allowed, bad = _compile_filters("allow", allow)
    problems += bad
    denied, bad = _compile_filters("deny", deny)
    problems += bad
    _raise_problems(problems)
    aggregator = Aggregator(clock, aggregation, max_lateness=max_lateness, max_buffers=max_buffers)
    return RuleSet(pre=pre, post=post, allow=allowed, deny=denied, aggregator=aggregator, forward_all=forward_all)

"""statsd ingress: etsy statsd's line protocol over UDP, aggregated and flushed as carbon-style datapoints.

Owns the parsing of statsd packets (``name:value|type[|@rate]``, several
values per name and several lines per packet, as etsy statsd reads them),
the aggregation of counters, timers, gauges and sets between two flushes,
and the flush, which names and computes every datapoint as etsy statsd's
graphite backend does with the legacy namespace off
(``<prefix>.counters.<name>.count``, ``<prefix>.timers.<name>.upper_90``...;
``docs/ingress.rst``).  DogStatsD tags (``name:1|c|#k:v,k2:v2``) and Graphite
tags in the name (``name;k=v:1|c``) make a tagged series: the suffix goes on
the name part (``<prefix>.counters.<name>.count;k=v``).  Bad lines are
counted by reason and never raise; the number of names and of held timer
values and set members is bounded, what goes over is counted.  Time comes
from the injected clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import accumulate

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol

from dsat.counters import Rejections
from dsat.datapoint import Datapoint, Validator
from dsat.errors import BadName, ConfigError
from dsat.ingress import Sink
from dsat.naming import MAX_PATH_CHARS, TAG_SEPARATOR, PathCache, clean_path
from dsat.schedule import SlotSchedule
from dsat.topology import IngressConf, valid_percentile

#: Distinct names held at once, all types together (gauges are held for good).
MAX_KEYS = 20_000
#: Timer values and set members held between two flushes, all names together.
MAX_VALUES = 1_000_000

_TYPES = frozenset(("c", "ms", "g", "s"))


def percentile_label(pct: float) -> str:
    """The suffix etsy statsd gives a percentile: ``90``, ``99_9``, ``top10`` for -10."""
    text = str(int(pct)) if pct == int(pct) else repr(float(pct))
    return text.replace(".", "_").replace("-", "top")


def timer_stats(
    values: list[float], count: float, interval: float, percentiles: Sequence[float]
) -> list[tuple[str, float]]:
    """The statistics etsy statsd flushes for one timer, as ``(name, value)`` pairs.

    *values* are the samples held (sorted here), *count* the samples sent
    (each divided by its sample rate), *interval* the flush interval in
    seconds.  For each percentile ``p``, over the lowest ``p`` per cent of
    the samples: ``count_p``, ``mean_p``, ``upper_p`` (the highest of them),
    ``sum_p``, ``sum_squares_p``; for ``-p``, over the highest ``p`` per
    cent: the same with ``top`` for ``-`` and ``lower_topp`` (the lowest of
    them) for ``upper_p``.  A percentile covering no sample is left out.  Then
    ``std`` (population), ``upper``, ``lower``, ``count``, ``count_ps``,
    ``sum``, ``sum_squares``, ``mean``, ``median``.
    """
    values.sort()
    n = len(values)
    sums = list(accumulate(values))
    squares = list(accumulate(v * v for v in values))
    stats: list[tuple[str, float]] = []
    for pct in percentiles:
        within = n
        boundary, total, total_squares = values[-1], sums[-1], squares[-1]
        if n > 1:
            within = math.floor(abs(pct) / 100 * n + 0.5)  # JavaScript's Math.round
            if within == 0:
                continue
            if pct > 0:
                boundary, total, total_squares = values[within - 1], sums[within - 1], squares[within - 1]
            else:
                below = n - within - 1
                boundary = values[n - within]
                total = sums[-1] - (sums[below] if below >= 0 else 0.0)
                total_squares = squares[-1] - (squares[below] if below >= 0 else 0.0)
        label = percentile_label(pct)
        stats += [
            (f"count_{label}", float(within)),
            (f"mean_{label}", total / within),
            (f"{'upper' if pct > 0 else 'lower'}_{label}", boundary),
            (f"sum_{label}", total),
            (f"sum_squares_{label}", total_squares),
        ]
    mean = sums[-1] / n
    middle = n // 2
    stats += [
        ("std", math.sqrt(sum((v - mean) ** 2 for v in values) / n)),
        ("upper", values[-1]),
        ("lower", values[0]),
        ("count", count),
        ("count_ps", count / interval),
        ("sum", sums[-1]),
        ("sum_squares", squares[-1]),
        ("mean", mean),
        ("median", values[middle] if n % 2 else (values[middle - 1] + values[middle]) / 2),
    ]
    return stats


def dogstatsd_tags(text: str) -> str | None:
    """DogStatsD's ``k:v,k2:v2`` as Graphite tags (``;k=v;k2=v2``), or None when a tag has no ``key:value``.

    A tag's key ends at its first ``:``; the tags are then checked by
    :func:`dsat.naming.clean_path` with the name.
    """
    tags = []
    for tag in text.split(","):
        key, colon, value = tag.partition(":")
        if not colon:
            return None
        tags.append(f"{TAG_SEPARATOR}{key}={value}")
    return "".join(tags)


def split_tags(name: str) -> tuple[str, str]:
    """*name*'s name part and its tags (``""`` or ``";k=v..."``): a flushed suffix goes between the two."""
    base, separator, tags = name.partition(TAG_SEPARATOR)
    return base, separator + tags


class StatsdAggregator:
    """Counters, timers, gauges and sets received since the last flush (gauges: ever), and the flush.

    Counters, timers and sets are emptied by each flush, so a name nobody
    sent to during an interval is not flushed (etsy statsd's
    ``deleteIdleStats``); gauges keep their last value and are flushed
    every time.
    """

    def __init__(
        self,
        clock: IReactorTime,
        flush_interval: float = IngressConf.statsd_flush,
        prefix: str = IngressConf.statsd_prefix,
        *,
        percentiles: Sequence[float] = IngressConf.statsd_percentiles,
        max_keys: int = MAX_KEYS,
        max_values: int = MAX_VALUES,
        rejections: Rejections | None = None,
    ) -> None:
        if not flush_interval > 0:
            raise ConfigError(f"statsd flush_interval is {flush_interval!r}; it must be a positive number of seconds")
        bad = [p for p in percentiles if not valid_percentile(p)]
        if bad:
            raise ConfigError(f"statsd percentiles {bad!r}: each must be in [-100, 0) or (0, 100], like 90 or 99.9")
        try:
            self.prefix = clean_path(prefix)
        except BadName as exc:
            raise ConfigError(f"statsd prefix {prefix!r}: {exc}") from None
        self.clock = clock
        self.flush_interval = flush_interval
        self.percentiles = tuple(percentiles)
        self.max_keys = max_keys
        self.max_values = max_values
        self.rejections = Rejections("statsd") if rejections is None else rejections
        self.counters: dict[str, float] = {}
        self.timers: dict[str, list[float]] = {}
        self.timer_counts: dict[str, float] = {}
        self.gauges: dict[str, float] = {}
        self.sets: dict[str, set[str]] = {}
        self.values_held = 0
        self._paths = PathCache()
        self._validator = Validator(self._paths)
        # The longest name whose flushed paths (".timers.<name>.sum_squares_99_9"...) stay within MAX_PATH_CHARS.
        suffixes = [".sum_squares", *(f".sum_squares_{percentile_label(p)}" for p in self.percentiles)]
        self._longest_name = MAX_PATH_CHARS - len(self.prefix) - len(".counters.") - max(map(len, suffixes))

    # -- receiving ---------------------------------------------------------

    def receive(self, packet: bytes, source: str = "?") -> None:
        """Take in one packet: lines separated by ``\\n``, each ``name:sample[:sample...]``.

        A sample is ``value|type`` then optionally ``|@rate``; *source* (the
        sender) only goes into the log of rejections.
        """
        for line in packet.decode("utf-8", "replace").split("\n"):
            if line.strip():
                self._line(line, source)

    def _reject(self, reason: str, source: str, text: str) -> None:
        self.rejections.reject(reason, f"{source}: {text!r:.120}")

    def _line(self, line: str, source: str) -> None:
        tags = ""
        start = line.find("|#")
        if start >= 0:  # DogStatsD tags: name:value|type[|@rate]|#k:v,k2:v2[|...]
            end = line.find("|", start + 2)
            text = line[start + 2 :] if end < 0 else line[start + 2 : end]
            line = line[:start] if end < 0 else line[:start] + line[end:]
            graphite_tags = dogstatsd_tags(text)
            if graphite_tags is None:
                self._reject("bad_tag", source, text)
                return
            tags = graphite_tags
        key, *samples = line.split(":")
        if not samples:
            self._reject("invalid_line", source, line)
            return
        try:
            name = self._paths.clean(key + tags)
        except BadName as exc:
            self._reject(exc.reason, source, line)
            return
        if len(name) > self._longest_name:
            self._reject("bad_name", source, line)
            return
        for sample in samples:
            self._sample(name, sample, source)

    def _sample(self, name: str, sample: str, source: str) -> None:
        fields = sample.split("|")
        if len(fields) < 2:
            self._reject("invalid_line", source, sample)
            return
        raw, kind = fields[0], fields[1].strip()
        rate = 1.0
        if len(fields) > 2:
            try:
                rate = float(fields[2][1:]) if fields[2].startswith("@") else math.nan
            except ValueError:
                rate = math.nan
            if not 0 < rate < math.inf:
                self._reject("bad_sample_rate", source, sample)
                return
        if kind not in _TYPES:
            self._reject("bad_type", source, sample)
            return
        if kind == "s":
            self._add_member(name, raw or "0", source)
            return
        try:
            value = float(raw)
        except ValueError:
            self._reject("bad_value", source, sample)
            return
        if value - value != 0.0:
            self._reject("nan", source, sample)
        elif kind == "c":
            if name in self.counters or self._admit(source, name):
                self.counters[name] = self.counters.get(name, 0.0) + value / rate
        elif kind == "g":
            if name in self.gauges or self._admit(source, name):
                relative = raw[:1] in ("+", "-")
                self.gauges[name] = self.gauges.get(name, 0.0) + value if relative else value
        elif value < 0:
            self._reject("bad_value", source, sample)  # a negative duration
        elif (name in self.timers or self._admit(source, name)) and self._hold(source, name):
            self.timers.setdefault(name, []).append(value)
            self.timer_counts[name] = self.timer_counts.get(name, 0.0) + 1 / rate

    def _add_member(self, name: str, member: str, source: str) -> None:
        members = self.sets.get(name)
        if members is not None and member in members:
            return
        if (members is not None or self._admit(source, name)) and self._hold(source, name):
            self.sets.setdefault(name, set()).add(member)

    def _admit(self, source: str, name: str) -> bool:
        """Whether one more name fits under ``max_keys``; counts ``too_many_keys`` when not."""
        held = len(self.counters) + len(self.timers) + len(self.gauges) + len(self.sets)
        if held < self.max_keys:
            return True
        self._reject("too_many_keys", source, f"{name}: {held} names held")
        return False

    def _hold(self, source: str, name: str) -> bool:
        """Whether one more timer value or set member fits under ``max_values``; counts ``too_many_values``."""
        if self.values_held < self.max_values:
            self.values_held += 1
            return True
        self._reject("too_many_values", source, f"{name}: {self.values_held} values held")
        return False

    # -- flushing ----------------------------------------------------------

    def flush(self, at: float | None = None) -> list[Datapoint]:
        """The datapoints for everything received since the last flush, stamped *at* (else now); then start over.

        Gauges are kept; counters, timers and sets are emptied.  What comes
        out has passed the datapoint rule (:mod:`dsat.datapoint`): a sum that
        overflowed to infinity is counted ``nan`` and left out, alone.
        """
        now = round(self.clock.seconds() if at is None else at)
        interval = self.flush_interval
        ns = self.prefix
        points: list[Datapoint] = []
        add = points.append
        for name, count in self.counters.items():
            base, tags = split_tags(name)
            add((f"{ns}.counters.{base}.rate{tags}", now, count / interval))
            add((f"{ns}.counters.{base}.count{tags}", now, count))
        for name, values in self.timers.items():
            base, tags = split_tags(name)
            for stat, value in timer_stats(values, self.timer_counts[name], interval, self.percentiles):
                add((f"{ns}.timers.{base}.{stat}{tags}", now, value))
        for name, value in self.gauges.items():
            add((f"{ns}.gauges.{name}", now, value))
        for name, members in self.sets.items():
            base, tags = split_tags(name)
            add((f"{ns}.sets.{base}.count{tags}", now, float(len(members))))
        self.counters.clear()
        self.timers.clear()
        self.timer_counts.clear()
        self.sets.clear()
        self.values_held = 0
        return self._validator.keep(points, self.rejections)


class StatsdProtocol(DatagramProtocol):
    """statsd over UDP: feeds the aggregator and hands each flush to *sink* as one batch.

    Give it to ``reactor.listenUDP(8125, protocol, interface="127.0.0.1")``.
    Listening starts a flush at each multiple of ``aggregator.flush_interval``
    seconds on the aggregator's clock, stamped with that multiple
    (:mod:`dsat.schedule`); stopping flushes what is left, stamped with the
    multiple that would have flushed it (stamped now, it would overwrite the
    last flush in a Whisper slot as long as the interval).
    """

    def __init__(self, aggregator: StatsdAggregator, sink: Sink) -> None:
        self.aggregator = aggregator
        self.sink = sink
        self._flushes = SlotSchedule(aggregator.clock, aggregator.flush_interval, self.flush, name="statsd")

    def startProtocol(self) -> None:
        self._flushes.start()

    def stopProtocol(self) -> None:
        self._flushes.stop()
        self.flush(self._flushes.next_time())

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.aggregator.receive(datagram, f"{addr[0]}:{addr[1]}")

    def flush(self, at: float | None = None) -> None:
        points = self.aggregator.flush(at)
        if points:
            self.sink(points)

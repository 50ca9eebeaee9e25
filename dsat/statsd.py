"""statsd ingress: etsy statsd's line protocol and DogStatsD's, aggregated and flushed as carbon-style datapoints.

Owns the parsing of statsd payloads (``name:value|type[|@rate]``, several
values per name and several lines per payload, as etsy statsd reads them;
DogStatsD's protocol v1.3 as the Datadog agent reads it: histograms
``|h`` and distributions ``|d``, packed values ``name:1:2:3|h``, tags
``|#k:v``, timestamps ``|T<unix>``, the origin-detection fields ``|c:``,
``|e:``, ``|card:``, events ``_e{`` and service checks ``_sc|``), the
aggregation of counters, timers (histograms and distributions with them),
gauges and sets between two flushes, and the flush, which names and
computes every datapoint as etsy statsd's graphite backend does with the
legacy namespace off (``<prefix>.counters.<name>.count``,
``<prefix>.timers.<name>.upper_90``...; ``docs/ingress.rst``).  DogStatsD
tags (``name:1|c|#k:v,k2:v2``) and Graphite tags in the name
(``name;k=v:1|c``) make a tagged series: the suffix goes on the name part
(``<prefix>.counters.<name>.count;k=v``).  A timestamped gauge or counter
is not aggregated: the next flush writes it at its own time.  Bad lines,
bare tags, events and service checks are counted by reason and never
raise; the number of names and of held values is bounded, what goes over
is counted.  Time comes from the injected clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol

from dsat.counters import Rejections
from dsat.datapoint import MAX_TIMESTAMP, Datapoint, Validator
from dsat.errors import BadName, ConfigError
from dsat.ingress import Sink
from dsat.naming import MAX_PATH_CHARS, TAG_SEPARATOR, PathCache, clean_path
from dsat.schedule import SlotSchedule
from dsat.topology import IngressConf, valid_percentile

#: Distinct names held at once, all types together (gauges are held for good).
MAX_KEYS = 20_000
#: Timer values and set members held between two flushes, all names together.
MAX_VALUES = 1_000_000

#: etsy statsd's types, and DogStatsD's histogram and distribution.
_TYPES = frozenset(("c", "ms", "g", "s", "h", "d"))
#: The types a DogStatsD ``|T`` timestamp may carry (as the Datadog clients send it).
_TIMESTAMPED = frozenset(("c", "g"))
#: DogStatsD's origin-detection fields: container ID, external data, cardinality.
_ORIGIN_FIELDS = ("c:", "e:", "card:")


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


def dogstatsd_tags(text: str) -> tuple[str, str]:
    """DogStatsD's ``k:v,k2:v2`` as Graphite tags (``;k=v;k2=v2``), and its bare tags (``production``), dropped.

    A tag's key ends at its first ``:``; the tags are then checked by
    :func:`dsat.naming.clean_path` with the name.  A tag without ``:`` has
    no Graphite form (a Graphite tag needs a value): it is left out and
    returned, comma-separated, to be counted.  Empty tags are skipped.
    """
    tags, bare = [], []
    for tag in text.split(","):
        key, colon, value = tag.partition(":")
        if colon:
            tags.append(f"{TAG_SEPARATOR}{key}={value}")
        elif tag:
            bare.append(tag)
    return "".join(tags), ",".join(bare)


@dataclass(slots=True)
class _Sample:
    """Values sharing one type and its fields: ``1:2:3|h|@0.5`` is one, ``1|c:2|ms`` two."""

    values: list[str]
    kind: str = ""
    rate: float = 1.0
    timestamp: int | None = None
    error: str = ""  # the reason the sample is refused, when it is


def _rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        return math.nan
    return rate if 0 < rate < math.inf else math.nan


def _timestamp(text: str) -> int:
    try:
        ts = int(text)
    except ValueError:
        return 0
    return ts if 0 < ts < MAX_TIMESTAMP else 0


def _fields(rest: str) -> tuple[list[_Sample], str, str]:
    """The samples of a line after its ``name:``, its Graphite tags, and its bare DogStatsD tags (dropped).

    The ``|``-separated fields are read in order.  The field after values
    is the type; what follows a ``:`` in it (etsy statsd's ``1|c:2|ms``) or
    in a sample rate (``1|c|@0.1:2|c``) are the next sample's values.  The
    other fields apply to the sample before them: ``@rate``, ``#tags`` (for
    the whole line), ``T<unix time>`` (gauges and counters only), and the
    origin-detection fields ``c:`` (container ID), ``e:`` (external data)
    and ``card:`` (cardinality), read and ignored.  Any other field refuses
    its sample as ``bad_field``.
    """
    fields = rest.split("|")
    samples: list[_Sample] = []
    tags = bare = ""
    current = _Sample(fields[0].split(":"))
    pending: _Sample | None = current  # values waiting for their type
    for field in fields[1:]:
        if pending is not None:
            kind, colon, more = field.partition(":")
            pending.kind = kind.strip()
            if pending.kind not in _TYPES:
                pending.error = "bad_type"
            samples.append(pending)
            current, pending = pending, (_Sample(more.split(":")) if colon else None)
            continue
        head = field[:1]
        if head == "@":
            text, colon, more = field[1:].partition(":")
            current.rate = _rate(text)
            if current.rate != current.rate:
                current.error = current.error or "bad_sample_rate"
            if colon:
                pending = _Sample(more.split(":"))
        elif head == "#":
            tags, bare = dogstatsd_tags(field[1:])
        elif head == "T":
            current.timestamp = _timestamp(field[1:])
            if not current.timestamp or current.kind not in _TIMESTAMPED:
                current.error = current.error or "bad_timestamp"
        elif not field.startswith(_ORIGIN_FIELDS):
            current.error = current.error or "bad_field"
    if pending is not None:
        pending.error = "invalid_line"
        samples.append(pending)
    return samples, tags, bare


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
        #: DogStatsD's ``|T`` gauges and counters: written at their own time at the next flush, not aggregated.
        self.timestamped: list[Datapoint] = []
        self.values_held = 0
        self._paths = PathCache()
        self._validator = Validator(self._paths)
        # The longest name whose flushed paths (".timers.<name>.sum_squares_99_9"...) stay within MAX_PATH_CHARS.
        suffixes = [".sum_squares", *(f".sum_squares_{percentile_label(p)}" for p in self.percentiles)]
        self._longest_name = MAX_PATH_CHARS - len(self.prefix) - len(".counters.") - max(map(len, suffixes))

    # -- receiving ---------------------------------------------------------

    def receive(self, packet: bytes, source: str = "?") -> None:
        """Take in one payload: lines separated by ``\\n`` (a datagram, or what a stream delivered).

        A line is ``name:values|type`` and its optional fields (module
        docstring); *source* (the sender) only goes into the log of
        rejections.
        """
        for line in packet.decode("utf-8", "replace").split("\n"):
            if line.strip():
                self._line(line, source)

    def _reject(self, reason: str, source: str, text: str) -> None:
        self.rejections.reject(reason, f"{source}: {text!r:.120}")

    def _line(self, line: str, source: str) -> None:
        if line.startswith(("_e{", "_sc|")):  # a DogStatsD event or service check: not a metric
            self._reject("event" if line[1] == "e" else "service_check", source, line)
            return
        key, colon, rest = line.partition(":")
        if not colon:
            self._reject("invalid_line", source, line)
            return
        samples, tags, bare = _fields(rest)
        if tags is None:
            self._reject("bad_tag", source, line)
            return
        try:
            name = self._paths.clean(key + tags)
        except BadName as exc:
            self._reject(exc.reason, source, line)
            return
        if len(name) > self._longest_name:
            self._reject("bad_name", source, line)
            return
        if bare:
            self._reject("bare_tag", source, f"{bare} (dropped, the metric kept): {line}")
        for sample in samples:
            if sample.error:
                self._reject(sample.error, source, line)
            elif sample.kind == "s":
                self._add_member(name, ":".join(sample.values) or "0", source)
            else:
                for raw in sample.values:
                    self._value(name, sample, raw, source)

    def _value(self, name: str, sample: _Sample, raw: str, source: str) -> None:
        try:
            value = float(raw)
        except ValueError:
            self._reject("bad_value", source, f"{name}:{raw}")
            return
        kind, rate = sample.kind, sample.rate
        if value - value != 0.0:
            self._reject("nan", source, f"{name}:{raw}")
        elif sample.timestamp is not None:  # |T: written at its own time, not aggregated
            if self._hold(source, name):
                base, tags = split_tags(name)
                path = f"{self.prefix}.gauges.{name}" if kind == "g" else f"{self.prefix}.counters.{base}.count{tags}"
                self.timestamped.append((path, sample.timestamp, value if kind == "g" else value / rate))
        elif kind == "c":
            if name in self.counters or self._admit(source, name):
                self.counters[name] = self.counters.get(name, 0.0) + value / rate
        elif kind == "g":
            if name in self.gauges or self._admit(source, name):
                relative = raw[:1] in ("+", "-")
                self.gauges[name] = self.gauges.get(name, 0.0) + value if relative else value
        elif value < 0 and kind == "ms":
            self._reject("bad_value", source, f"{name}:{raw}")  # a negative duration
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
        points += self.timestamped
        self.sets.clear()
        self.timestamped = []
        self.values_held = 0
        return self._validator.keep(points, self.rejections)


class StatsdFeed(DatagramProtocol):
    """statsd datagrams into *aggregator*, which another listener flushes (the Unix socket beside the UDP port)."""

    def __init__(self, aggregator: StatsdAggregator) -> None:
        self.aggregator = aggregator

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int] | str | None) -> None:
        """One datagram: from a UDP ``(host, port)``, or a Unix datagram socket's peer (a path, often unbound)."""
        source = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else (addr or "unix")
        self.aggregator.receive(datagram, source)


class StatsdProtocol(StatsdFeed):
    """statsd over UDP: feeds the aggregator and hands each flush to *sink* as one batch.

    Give it to ``reactor.listenUDP(8125, protocol, interface="127.0.0.1")``.
    Listening starts a flush at each multiple of ``aggregator.flush_interval``
    seconds on the aggregator's clock, stamped with that multiple
    (:mod:`dsat.schedule`); stopping flushes what is left, stamped with the
    multiple that would have flushed it (stamped now, it would overwrite the
    last flush in a Whisper slot as long as the interval).
    """

    def __init__(self, aggregator: StatsdAggregator, sink: Sink) -> None:
        super().__init__(aggregator)
        self.sink = sink
        self._flushes = SlotSchedule(aggregator.clock, aggregator.flush_interval, self.flush, name="statsd")

    def startProtocol(self) -> None:
        self._flushes.start()

    def stopProtocol(self) -> None:
        self._flushes.stop()
        self.flush(self._flushes.next_time())

    def flush(self, at: float | None = None) -> None:
        points = self.aggregator.flush(at)
        if points:
            self.sink(points)

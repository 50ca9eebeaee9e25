"""The ``rate`` transform: counters that only grow become per-second rates.

For each path it remembers the previous ``(timestamp, value)``; each later
sample gives ``increase / dt`` at the new timestamp, under the same path.
Nothing comes out for the first sample of a path, for a sample not after the
previous one (``dt <= 0``: duplicate or out of order) or with a NaN or
infinite value, nor for a rate over the option ``max_rate``; all of these are
counted in :attr:`Rate.skipped`.

A value lower than the previous one is a counter **reset** (the process or
host restarted and the counter began again at 0): the new value itself is the
increase since the reset, as collectd's ``DERIVE``/``COUNTER`` and
carbon-c-relay do.  With the option ``wrap`` (the counter's range, e.g.
``4294967296`` for 32 bits) a drop from the top half of the range to the
bottom half is a **wrap** instead, and the increase is
``value + wrap - previous``; any other drop is still a reset.

State is bounded by the option ``max_series`` (100,000 paths by default):
when full, the path updated least recently is forgotten (counted in
:attr:`Rate.forgotten`), and its next sample counts as a first one.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from dsat.envelope import Batch, Datapoint
from dsat.errors import ConfigError
from dsat.plugins import SatelliteSpec

OPTIONS: Mapping[str, Any] = {"wrap": None, "max_rate": None, "max_series": 100_000}


def _limit(options: Mapping[str, Any], name: str) -> float | None:
    """The optional positive number *name* (``wrap``, ``max_rate``), or None."""
    value = options.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not value > 0):
        raise ConfigError(f"rate: option {name} must be a positive number, not {value!r}")
    return value


class Rate:
    """Per-path counter state and the batch-to-batch rate computation."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.wrap = _limit(options, "wrap")
        self.max_rate = _limit(options, "max_rate")
        max_series = options.get("max_series", OPTIONS["max_series"])
        if isinstance(max_series, bool) or not isinstance(max_series, int) or max_series <= 0:
            raise ConfigError(f"rate: option max_series must be a positive whole number, not {max_series!r}")
        self.max_series: int = max_series
        self.previous: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.skipped = {"out_of_order": 0, "not_finite": 0, "over_max_rate": 0}
        self.forgotten = 0

    def increase(self, previous: float, value: float) -> float:
        """How much the counter grew from *previous* to *value*, reading a drop as a wrap or a reset."""
        if value >= previous:
            return value - previous
        wrap = self.wrap
        if wrap is not None and value < wrap / 2 <= previous < wrap:
            return value + wrap - previous
        return value

    def __call__(self, batch: Batch) -> list[Datapoint] | None:
        out: list[Datapoint] = []
        previous, skipped, max_rate = self.previous, self.skipped, self.max_rate
        for path, ts, value in batch:
            if not math.isfinite(value):
                skipped["not_finite"] += 1
                continue
            last = previous.get(path)
            if last is None:
                if len(previous) >= self.max_series:
                    previous.popitem(last=False)
                    self.forgotten += 1
                previous[path] = (ts, value)
                continue
            dt = ts - last[0]
            if dt <= 0:
                skipped["out_of_order"] += 1
                continue
            previous[path] = (ts, value)
            previous.move_to_end(path)
            rate = self.increase(last[1], value) / dt
            if max_rate is not None and rate > max_rate:
                skipped["over_max_rate"] += 1
                continue
            out.append((path, ts, rate))
        return out or None


SPEC = SatelliteSpec("rate", "transform", Rate, type="rate", doc=__doc__ or "", options=OPTIONS)

"""The ``rate`` transform: counters that only grow become per-second rates.

For each path it remembers the previous ``(timestamp, value)``; the first
sample of a path produces nothing.  A value lower than the previous one is a
counter **reset** (process or host restart) unless the option ``wrap`` (e.g.
``4294967296`` for a 32-bit counter) says the counter wraps and the wrapped
increase is plausible (under half the range): after a reset the new value
itself is the increase since the reset, as collectd's DERIVE does.  Samples
with a timestamp not after the previous one, NaN or infinite values, and
rates over ``max_rate`` are skipped and counted.  State is bounded by
``max_series`` paths (the oldest forgotten first).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from dsat.envelope import Batch, Datapoint
from dsat.plugins import SatelliteSpec


class Rate:
    """Per-path counter state and the batch-to-batch rate computation."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.wrap = options.get("wrap")
        self.max_rate = options.get("max_rate")
        self.max_series = int(options.get("max_series", 100_000))
        self.previous: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.skipped = {"out_of_order": 0, "not_finite": 0, "over_max_rate": 0, "forgotten": 0}

    def __call__(self, batch: Batch) -> list[Datapoint] | None:
        out: list[Datapoint] = []
        previous, wrap, max_rate = self.previous, self.wrap, self.max_rate
        isfinite = math.isfinite
        for path, ts, value in batch:
            if not isfinite(value):
                self.skipped["not_finite"] += 1
                continue
            last = previous.get(path)
            if last is None:
                if len(previous) >= self.max_series:
                    previous.popitem(last=False)
                    self.skipped["forgotten"] += 1
                previous[path] = (ts, value)
                continue
            last_ts, last_value = last
            dt = ts - last_ts
            if dt <= 0:
                self.skipped["out_of_order"] += 1
                continue
            previous[path] = (ts, value)
            increase = value - last_value
            if increase < 0:
                wrapped = value + wrap - last_value if wrap else -1.0
                increase = wrapped if wrap and 0 <= wrapped < wrap / 2 else value
            rate = increase / dt
            if max_rate is not None and rate > max_rate:
                self.skipped["over_max_rate"] += 1
                continue
            out.append((path, ts, rate))
        return out or None


SPEC = SatelliteSpec("rate", "transform", Rate, type="rate", doc=Rate.__doc__ or "")

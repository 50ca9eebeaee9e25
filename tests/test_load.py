"""The load collector: the three load averages, from a fake psutil and the real one."""

from __future__ import annotations

import math
from types import SimpleNamespace

from dsat.satellites import REGISTRY, load


def test_three_load_averages() -> None:
    """getloadavg() becomes load1, load5 and load15, as floats."""
    fake = SimpleNamespace(getloadavg=lambda: (0.5, 1, 2.25))
    assert load.collector({}, _psutil=fake)() == [("load1", 0.5), ("load5", 1.0), ("load15", 2.25)]


def test_registered_as_a_gauge_collector() -> None:
    """The registry's "load" is this module's collector, sending gauges."""
    spec = REGISTRY["load"]
    assert spec is load.SPEC and spec.kind == "collector" and spec.type == "gauge"


def test_real_psutil_shape() -> None:
    """On this machine: three finite, non-negative load averages."""
    metrics = load.collector({})()
    assert [metric for metric, _ in metrics] == ["load1", "load5", "load15"]
    assert all(isinstance(value, float) and math.isfinite(value) and value >= 0 for _, value in metrics)

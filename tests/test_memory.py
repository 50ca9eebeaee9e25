"""The memory collector: virtual memory and swap levels, from a fake psutil and the real one."""

from __future__ import annotations

import math
from collections import namedtuple
from types import SimpleNamespace

from dsat.naming import metric_path
from dsat.satellites import REGISTRY, memory

Virtual = namedtuple("Virtual", "total available percent used free")
Swap = namedtuple("Swap", "total used free percent sin sout")


def test_virtual_and_swap_fields() -> None:
    """Each virtual_memory() field is virtual.<field>; swap gives its four levels, not its counters."""
    fake = SimpleNamespace(
        virtual_memory=lambda: Virtual(1000, 600, 40.0, 400, 500),
        swap_memory=lambda: Swap(200, 50, 150, 25.0, 7, 9),
    )
    assert memory.collector({}, _psutil=fake)() == [
        ("virtual.total", 1000.0),
        ("virtual.available", 600.0),
        ("virtual.percent", 40.0),
        ("virtual.used", 400.0),
        ("virtual.free", 500.0),
        ("swap.total", 200.0),
        ("swap.used", 50.0),
        ("swap.free", 150.0),
        ("swap.percent", 25.0),
    ]


def test_registered_as_a_gauge_collector() -> None:
    """The registry's "memory" is this module's collector, sending gauges."""
    spec = REGISTRY["memory"]
    assert spec is memory.SPEC and spec.kind == "collector" and spec.type == "gauge"


def test_real_psutil_shape() -> None:
    """On this machine: total and used memory at least, every name already safe, every value finite."""
    metrics = memory.collector({})()
    names = {metric for metric, _ in metrics}
    assert {"virtual.total", "virtual.used", "swap.total"} <= names
    for metric, value in metrics:
        assert metric_path("dsat", "h", "memory", metric) == f"dsat.h.memory.{metric}"
        assert isinstance(value, float) and math.isfinite(value)

"""The cpu collector: CPU seconds by mode, in total and per core, from a fake psutil and the real one."""

from __future__ import annotations

import math
from collections import namedtuple
from types import SimpleNamespace

import pytest

from dsat.errors import ConfigError
from dsat.naming import metric_path
from dsat.satellites import REGISTRY, cpu

Times = namedtuple("Times", "user system idle iowait")


def fake_psutil() -> SimpleNamespace:
    def cpu_times(percpu: bool = False) -> object:
        if percpu:
            return [Times(1, 2, 3, 4), Times(10, 20, 30, 40)]
        return Times(11, 22, 33, 44.5)

    return SimpleNamespace(cpu_times=cpu_times)


def test_total_seconds_by_mode() -> None:
    """Each mode cpu_times() reports becomes total.<mode>, as a float."""
    collect = cpu.collector({}, _psutil=fake_psutil())
    assert collect() == [
        ("total.user", 11.0),
        ("total.system", 22.0),
        ("total.idle", 33.0),
        ("total.iowait", 44.5),
    ]


def test_percpu_adds_one_subtree_per_core() -> None:
    """With percpu = true, core<N>.<mode> follows the totals for each logical CPU."""
    metrics = dict(cpu.collector({"percpu": True}, _psutil=fake_psutil())())
    assert metrics["total.user"] == 11.0
    assert metrics["core0.user"] == 1.0 and metrics["core1.iowait"] == 40.0
    assert len(metrics) == 12


def test_percpu_must_be_a_boolean() -> None:
    """percpu = "yes" is a ConfigError naming the option, raised when the satellite is built."""
    with pytest.raises(ConfigError, match="percpu must be true or false"):
        cpu.collector({"percpu": "yes"})


def test_registered_as_a_counter_collector() -> None:
    """The registry's "cpu" is this module's collector, sending counters for the rate step."""
    spec = REGISTRY["cpu"]
    assert spec is cpu.SPEC and spec.kind == "collector" and spec.type == "counter"


def test_real_psutil_shape() -> None:
    """On this machine: user and idle seconds at least, every name already safe, every value finite."""
    metrics = cpu.collector({"percpu": True})()
    names = {metric for metric, _ in metrics}
    assert {"total.user", "total.idle", "core0.user"} <= names
    for metric, value in metrics:
        assert metric_path("dsat", "h", "cpu", metric) == f"dsat.h.cpu.{metric}"
        assert isinstance(value, float) and math.isfinite(value)

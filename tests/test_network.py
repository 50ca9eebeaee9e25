"""The network collector: counters per interface, lo left out by default; fake psutil and the real one."""

from __future__ import annotations

import math
from collections import namedtuple
from types import SimpleNamespace

import pytest

from dsat.errors import ConfigError
from dsat.naming import metric_path
from dsat.satellites import REGISTRY, network

NIC = namedtuple("NIC", "bytes_sent bytes_recv packets_sent packets_recv errin errout dropin dropout")
FAKE = SimpleNamespace(
    net_io_counters=lambda pernic: {
        "lo": NIC(*range(8)),
        "eth0": NIC(*range(10, 18)),
        "eth0.100": NIC(*range(20, 28)),
    }
)


def test_counters_per_interface_without_lo() -> None:
    """Each interface but lo gives <nic>.<field> for the eight counters; eth0.100 is one component."""
    metrics = network.collector({}, _psutil=FAKE)()
    assert metrics[:8] == [(f"eth0.{field}", float(10 + n)) for n, field in enumerate(network.FIELDS)]
    assert metrics[8:] == [(f"eth0_100.{field}", float(20 + n)) for n, field in enumerate(network.FIELDS)]


def test_exclude_names_interfaces_to_skip() -> None:
    """exclude replaces the default: [] keeps lo, ["eth0", "eth0.100"] leaves only lo."""
    assert len(network.collector({"exclude": []}, _psutil=FAKE)()) == 24
    only_lo = network.collector({"exclude": ["eth0", "eth0.100"]}, _psutil=FAKE)()
    assert {metric.split(".")[0] for metric, _ in only_lo} == {"lo"}


@pytest.mark.parametrize("exclude", ["lo", ["lo", 1], None])
def test_exclude_must_be_a_list_of_names(exclude: object) -> None:
    """exclude = "lo" (a string, not a list) is a ConfigError showing the right form."""
    with pytest.raises(ConfigError, match=r'exclude must be a list of interface names, e.g. \["lo"\]'):
        network.collector({"exclude": exclude})


def test_registered_as_a_counter_collector() -> None:
    """The registry's "network" is this module's collector, sending counters for the rate step."""
    spec = REGISTRY["network"]
    assert spec is network.SPEC and spec.kind == "collector" and spec.type == "counter"


def test_real_psutil_shape() -> None:
    """On this machine (lo included): eight counters per interface, names already safe, values finite."""
    metrics = network.collector({"exclude": []})()
    assert metrics and len(metrics) % 8 == 0
    for metric, value in metrics:
        assert metric_path("dsat", "h", "network", metric) == f"dsat.h.network.{metric}"
        assert isinstance(value, float) and math.isfinite(value)

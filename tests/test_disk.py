"""The disk collector (I/O counters per disk) and disk_usage (space per mount point), fake and real psutil."""

from __future__ import annotations

import math
from collections import namedtuple
from types import SimpleNamespace

import psutil
import pytest

from dsat.errors import ConfigError
from dsat.naming import metric_path
from dsat.satellites import REGISTRY, disk

IO = namedtuple("IO", "read_count write_count read_bytes write_bytes read_time write_time busy_time")
IONoBusy = namedtuple("IONoBusy", "read_count write_count read_bytes write_bytes")
Part = namedtuple("Part", "device mountpoint")
Usage = namedtuple("Usage", "total used free percent")


def test_io_counters_per_disk() -> None:
    """Each disk gives io.<disk>.<field> for the five I/O counters (busy_time if present), names made safe."""
    fake = SimpleNamespace(
        disk_io_counters=lambda perdisk: {"sda": IO(1, 2, 3, 4, 5, 6, 7), "md.0 x": IONoBusy(8, 9, 10, 11)}
    )
    assert disk.io_collector({}, _psutil=fake)() == [
        ("io.md_0_x.read_bytes", 10.0),
        ("io.md_0_x.write_bytes", 11.0),
        ("io.md_0_x.read_count", 8.0),
        ("io.md_0_x.write_count", 9.0),
        ("io.sda.read_bytes", 3.0),
        ("io.sda.write_bytes", 4.0),
        ("io.sda.read_count", 1.0),
        ("io.sda.write_count", 2.0),
        ("io.sda.busy_time", 7.0),
    ]


def test_no_disks_gives_no_metrics() -> None:
    """A platform where disk_io_counters() returns None (no disks) gives an empty batch, not an error."""
    fake = SimpleNamespace(disk_io_counters=lambda perdisk: None)
    assert disk.io_collector({}, _psutil=fake)() == []


@pytest.mark.parametrize(
    ("mountpoint", "name"),
    [
        ("/", "root"),
        ("/var/lib", "var_lib"),
        ("/mnt/my disk/", "mnt_my_disk"),
        ("/media/usb.key", "media_usb_key"),
    ],
)
def test_mount_names(mountpoint: str, name: str) -> None:
    """A mount point is named without its outer slashes, inner ones and unsafe characters becoming _."""
    assert disk.mount_name(mountpoint) == name


def fake_partitions(parts: list[Part], calls: list[bool]) -> SimpleNamespace:
    def disk_partitions(all: bool) -> list[Part]:
        calls.append(all)
        return parts

    def disk_usage(mountpoint: str) -> Usage:
        if mountpoint == "/mnt/gone":
            raise FileNotFoundError(mountpoint)
        size = len(mountpoint) * 100
        return Usage(size, size / 4, size * 3 / 4, 25.0)

    return SimpleNamespace(disk_partitions=disk_partitions, disk_usage=disk_usage)


def test_usage_per_mount_point() -> None:
    """Each mount gives usage.<mount>.{total,used,free,percent}: / once, a vanished mount skipped."""
    calls: list[bool] = []
    parts = [Part("/dev/sda1", "/"), Part("/dev/sdb1", "/var/lib"), Part("nfs:/x", "/mnt/gone")]
    metrics = disk.usage_collector({}, _psutil=fake_partitions(parts, calls))()
    assert metrics == [
        ("usage.root.total", 100.0),
        ("usage.root.used", 25.0),
        ("usage.root.free", 75.0),
        ("usage.root.percent", 25.0),
        ("usage.var_lib.total", 800.0),
        ("usage.var_lib.used", 200.0),
        ("usage.var_lib.free", 600.0),
        ("usage.var_lib.percent", 25.0),
    ]
    assert calls == [False]


def test_usage_reports_root_even_when_not_listed() -> None:
    """In a container "/" is often not a listed partition; usage.root is reported all the same."""
    calls: list[bool] = []
    metrics = disk.usage_collector({"all_partitions": True}, _psutil=fake_partitions([], calls))()
    assert [metric for metric, _ in metrics] == [f"usage.root.{f}" for f in ("total", "used", "free", "percent")]
    assert calls == [True]


def test_all_partitions_must_be_a_boolean() -> None:
    """all_partitions = 1 is a ConfigError naming the option."""
    with pytest.raises(ConfigError, match="all_partitions must be true or false"):
        disk.usage_collector({"all_partitions": 1})


def test_registered_as_a_counter_and_a_gauge_collector() -> None:
    """The registry's "disk" sends counters for the rate step and "disk_usage" sends gauges."""
    assert REGISTRY["disk"] is disk.SPEC and disk.SPEC.type == "counter"
    assert REGISTRY["disk_usage"] is disk.USAGE_SPEC and disk.USAGE_SPEC.type == "gauge"
    assert disk.SPEC.kind == disk.USAGE_SPEC.kind == "collector"


def assert_safe_and_finite(step: str, metrics: list[tuple[str, float]]) -> None:
    assert metrics
    for metric, value in metrics:
        assert metric_path("dsat", "h", step, metric) == f"dsat.h.{step}.{metric}"
        assert isinstance(value, float) and math.isfinite(value)


def test_real_psutil_io_shape() -> None:
    """On this machine: read and write counters for each disk, names already safe, values finite."""
    if not psutil.disk_io_counters(perdisk=True):
        pytest.skip("this machine reports no disks")
    metrics = disk.io_collector({})()
    assert_safe_and_finite("disk", metrics)
    assert any(metric.endswith(".read_bytes") for metric, _ in metrics)


def test_real_psutil_usage_shape() -> None:
    """On this machine: usage.root.* at least, names already safe, values finite."""
    metrics = disk.usage_collector({})()
    assert_safe_and_finite("disk_usage", metrics)
    assert {"usage.root.total", "usage.root.percent"} <= {metric for metric, _ in metrics}

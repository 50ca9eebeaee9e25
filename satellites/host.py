"""Host collectors on psutil: cpu, memory, load, disk, disk_usage, network.

Each factory takes the step's options and returns ``collect()``, which
returns ``(metric, value)`` pairs relative to the step (the runtime builds
``<prefix>.<where>.<step>.<metric>``).  Names that come from the system
(disks, interfaces, mount points) go through :func:`dsat.naming.component`.
Counters that only grow (cpu seconds, bytes, packets) are sent as type
``counter`` so the demo topology routes them through the ``rate`` transform;
levels are type ``gauge``.  Tests pass a fake ``psutil`` as the ``_psutil``
keyword.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import psutil as real_psutil

from dsat.naming import component
from dsat.plugins import SatelliteSpec

Collect = Callable[[], list[tuple[str, float]]]


def _fields(prefix: str, record: Any) -> list[tuple[str, float]]:
    return [(f"{prefix}.{name}", float(value)) for name, value in record._asdict().items()]


def cpu(options: Mapping[str, Any], _psutil: Any = real_psutil) -> Collect:
    """CPU seconds by mode (``total.user``...), per core too with ``percpu = true``."""
    percpu = bool(options.get("percpu", False))

    def collect() -> list[tuple[str, float]]:
        out = _fields("total", _psutil.cpu_times())
        if percpu:
            for n, times in enumerate(_psutil.cpu_times(percpu=True)):
                out += _fields(f"core{n}", times)
        return out

    return collect


def memory(options: Mapping[str, Any], _psutil: Any = real_psutil) -> Collect:
    """Virtual memory (``virtual.used``...) and swap (``swap.used``...) in bytes and percent."""

    def collect() -> list[tuple[str, float]]:
        swap = _psutil.swap_memory()
        return _fields("virtual", _psutil.virtual_memory()) + [
            (f"swap.{name}", float(getattr(swap, name))) for name in ("total", "used", "free", "percent")
        ]

    return collect


def load(options: Mapping[str, Any], _psutil: Any = real_psutil) -> Collect:
    """Load averages ``load1``, ``load5``, ``load15``."""

    def collect() -> list[tuple[str, float]]:
        one, five, fifteen = _psutil.getloadavg()
        return [("load1", one), ("load5", five), ("load15", fifteen)]

    return collect


def disk(options: Mapping[str, Any], _psutil: Any = real_psutil) -> Collect:
    """Disk I/O counters per disk: ``io.<disk>.read_bytes``..."""

    def collect() -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        for name, io in sorted((_psutil.disk_io_counters(perdisk=True) or {}).items()):
            out += _fields(f"io.{component(name)}", io)
        return out

    return collect


def mount_name(mountpoint: str) -> str:
    """``/`` -> ``root``, ``/var/lib`` -> ``var_lib``."""
    stripped = mountpoint.strip("/")
    return "root" if not stripped else component(stripped.replace("/", "_"))


def disk_usage(options: Mapping[str, Any], _psutil: Any = real_psutil) -> Collect:
    """Usage per mount point: ``usage.<mount>.{total,used,free,percent}``."""
    all_partitions = bool(options.get("all_partitions", False))

    def collect() -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        seen = set()
        for part in _psutil.disk_partitions(all=all_partitions):
            name = mount_name(part.mountpoint)
            if name in seen:
                continue
            seen.add(name)
            try:
                usage = _psutil.disk_usage(part.mountpoint)
            except OSError:
                continue  # unmounted or unreadable since it was listed
            out += [(f"usage.{name}.{f}", float(getattr(usage, f))) for f in ("total", "used", "free", "percent")]
        if "root" not in seen and os.path.exists("/"):
            usage = _psutil.disk_usage("/")
            out += [(f"usage.root.{f}", float(getattr(usage, f))) for f in ("total", "used", "free", "percent")]
        return out

    return collect


NETWORK_FIELDS = ("bytes_sent", "bytes_recv", "packets_sent", "packets_recv", "errin", "errout", "dropin", "dropout")


def network(options: Mapping[str, Any], _psutil: Any = real_psutil) -> Collect:
    """Counters per interface: ``<nic>.bytes_sent``...; ``exclude`` lists nics to skip (default lo)."""
    exclude = set(options.get("exclude", ["lo"]))

    def collect() -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        for nic, io in sorted(_psutil.net_io_counters(pernic=True).items()):
            if nic in exclude:
                continue
            out += [(f"{component(nic)}.{f}", float(getattr(io, f))) for f in NETWORK_FIELDS]
        return out

    return collect


SPECS = (
    SatelliteSpec("cpu", "collector", cpu, type="counter", doc=cpu.__doc__ or ""),
    SatelliteSpec("memory", "collector", memory, type="gauge", doc=memory.__doc__ or ""),
    SatelliteSpec("load", "collector", load, type="gauge", doc=load.__doc__ or ""),
    SatelliteSpec("disk", "collector", disk, type="counter", doc=disk.__doc__ or ""),
    SatelliteSpec("disk_usage", "collector", disk_usage, type="gauge", doc=disk_usage.__doc__ or ""),
    SatelliteSpec("network", "collector", network, type="counter", doc=network.__doc__ or ""),
)

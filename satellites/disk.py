"""The ``disk`` collector (I/O counters per disk) and the ``disk_usage`` collector (space per mount point).

``disk`` sends ``io.<disk>.{read_bytes,write_bytes,read_count,write_count}``
and ``io.<disk>.busy_time`` where the platform reports it, for every disk
psutil lists: counters, to route through the ``rate`` step.  Usage is a
gauge and cannot share a counter batch, hence the separate ``disk_usage``:
``usage.<mount>.{total,used,free,percent}`` for ``/`` (always, even where it
is not a listed partition, as in a container) and the partitions psutil lists
(all of them, pseudo file systems included, with ``all_partitions = true``).
Disk and mount names go through :func:`dsat.naming.component`; a mount point
is named without its slashes: ``/`` is ``root``, ``/var/lib`` is ``var_lib``.
Tests pass a fake ``psutil`` as ``_psutil``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import psutil

from dsat.errors import ConfigError
from dsat.naming import component
from dsat.plugins import SatelliteSpec

Collect = Callable[[], list[tuple[str, float]]]

IO_FIELDS = ("read_bytes", "write_bytes", "read_count", "write_count", "busy_time")
USAGE_FIELDS = ("total", "used", "free", "percent")
USAGE_OPTIONS: Mapping[str, Any] = {"all_partitions": False}


def io_collector(options: Mapping[str, Any], *, _psutil: Any = psutil) -> Collect:
    """Disk I/O counters per disk: ``io.<disk>.read_bytes``..."""

    def collect() -> list[tuple[str, float]]:
        metrics: list[tuple[str, float]] = []
        for disk, io in sorted((_psutil.disk_io_counters(perdisk=True) or {}).items()):
            name = component(disk)
            metrics += [(f"io.{name}.{f}", float(getattr(io, f))) for f in IO_FIELDS if hasattr(io, f)]
        return metrics

    return collect


def mount_name(mountpoint: str) -> str:
    """The path component naming a mount point: ``/`` -> ``root``, ``/var/lib`` -> ``var_lib``."""
    stripped = mountpoint.strip("/")
    return component(stripped) if stripped else "root"


def usage_collector(options: Mapping[str, Any], *, _psutil: Any = psutil) -> Collect:
    """Space per mount point: ``usage.<mount>.{total,used,free,percent}``."""
    all_partitions = options.get("all_partitions", USAGE_OPTIONS["all_partitions"])
    if not isinstance(all_partitions, bool):
        raise ConfigError(f"disk_usage: option all_partitions must be true or false, not {all_partitions!r}")

    def collect() -> list[tuple[str, float]]:
        metrics: list[tuple[str, float]] = []
        seen: set[str] = set()
        for mountpoint in ["/", *(part.mountpoint for part in _psutil.disk_partitions(all=all_partitions))]:
            name = mount_name(mountpoint)
            if name in seen:
                continue
            seen.add(name)
            try:
                usage = _psutil.disk_usage(mountpoint)
            except OSError:
                continue  # unmounted or unreadable since it was listed: nothing to report for it
            metrics += [(f"usage.{name}.{f}", float(getattr(usage, f))) for f in USAGE_FIELDS]
        return metrics

    return collect


SPEC = SatelliteSpec("disk", "collector", io_collector, type="counter", doc=io_collector.__doc__ or "")
USAGE_SPEC = SatelliteSpec(
    "disk_usage",
    "collector",
    usage_collector,
    type="gauge",
    doc=usage_collector.__doc__ or "",
    options=USAGE_OPTIONS,
)

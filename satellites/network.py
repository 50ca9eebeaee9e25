"""The ``network`` collector: traffic and error counters per network interface.

``<nic>.{bytes_sent,bytes_recv,packets_sent,packets_recv,errin,errout,dropin,dropout}``
from psutil's ``net_io_counters(pernic=True)``, as counters to route through
the ``rate`` step.  Interface names go through
:func:`dsat.naming.component` (a VLAN interface ``eth0.100`` is ``eth0_100``);
the option ``exclude`` lists the interfaces to skip, by their system name
(default ``["lo"]``).  Tests pass a fake ``psutil`` as ``_psutil``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import psutil

from dsat.errors import ConfigError
from dsat.naming import component
from dsat.plugins import SatelliteSpec

Collect = Callable[[], list[tuple[str, float]]]

FIELDS = ("bytes_sent", "bytes_recv", "packets_sent", "packets_recv", "errin", "errout", "dropin", "dropout")
OPTIONS: Mapping[str, Any] = {"exclude": ["lo"]}


def collector(options: Mapping[str, Any], *, _psutil: Any = psutil) -> Collect:
    """Counters per interface: ``<nic>.bytes_sent``...; ``exclude`` lists interfaces to skip (default lo)."""
    exclude = options.get("exclude", OPTIONS["exclude"])
    if not isinstance(exclude, list) or not all(isinstance(nic, str) for nic in exclude):
        raise ConfigError(f'network: option exclude must be a list of interface names, e.g. ["lo"], not {exclude!r}')
    skipped = frozenset(exclude)

    def collect() -> list[tuple[str, float]]:
        metrics: list[tuple[str, float]] = []
        for nic, io in sorted(_psutil.net_io_counters(pernic=True).items()):
            if nic not in skipped:
                name = component(nic)
                metrics += [(f"{name}.{f}", float(getattr(io, f))) for f in FIELDS]
        return metrics

    return collect


SPEC = SatelliteSpec("network", "collector", collector, type="counter", doc=collector.__doc__ or "", options=OPTIONS)

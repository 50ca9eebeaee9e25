"""The ``load`` collector: the 1, 5 and 15 minute load averages, a gauge.

``load1``, ``load5``, ``load15`` from psutil's ``getloadavg()`` (which is
``os.getloadavg()`` where the OS has one).  Tests pass a fake ``psutil`` as
``_psutil``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import psutil

from dsat.plugins import SatelliteSpec

Collect = Callable[[], list[tuple[str, float]]]


def collector(options: Mapping[str, Any], *, _psutil: Any = psutil) -> Collect:
    """Load averages ``load1``, ``load5``, ``load15``."""

    def collect() -> list[tuple[str, float]]:
        one, five, fifteen = _psutil.getloadavg()
        return [("load1", float(one)), ("load5", float(five)), ("load15", float(fifteen))]

    return collect


SPEC = SatelliteSpec("load", "collector", collector, type="gauge", doc=collector.__doc__ or "")

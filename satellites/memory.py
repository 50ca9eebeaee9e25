"""The ``memory`` collector: virtual memory and swap levels, a gauge.

``virtual.<field>`` for each field psutil's ``virtual_memory()`` reports on
this platform (``total``, ``available``, ``used``, ``free``, ``percent``...,
bytes except ``percent``) and ``swap.{total,used,free,percent}``.  Swap's
``sin``/``sout`` are left out: they are counters and cannot share a gauge
batch.  Tests pass a fake ``psutil`` as ``_psutil``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import psutil

from dsat.plugins import SatelliteSpec

Collect = Callable[[], list[tuple[str, float]]]

SWAP_FIELDS = ("total", "used", "free", "percent")


def collector(options: Mapping[str, Any], *, _psutil: Any = psutil) -> Collect:
    """Virtual memory (``virtual.used``...) and swap (``swap.used``...) in bytes and percent."""

    def collect() -> list[tuple[str, float]]:
        virtual = _psutil.virtual_memory()._asdict()
        swap = _psutil.swap_memory()
        return [(f"virtual.{name}", float(value)) for name, value in virtual.items()] + [
            (f"swap.{name}", float(getattr(swap, name))) for name in SWAP_FIELDS
        ]

    return collect


SPEC = SatelliteSpec("memory", "collector", collector, type="gauge", doc=collector.__doc__ or "")

"""The built-in satellites: collectors, transforms and sinks.

:data:`REGISTRY` is the explicit registry a topology's ``use = "..."`` is
looked up in (see :mod:`dsat.plugins`).
"""

from __future__ import annotations

from dsat.plugins import Registry, SatelliteSpec

REGISTRY = Registry([])

__all__ = ["REGISTRY", "SatelliteSpec"]

"""The built-in satellites: collectors, transforms and sinks.

:data:`REGISTRY` is the explicit registry a topology's ``use = "..."`` is
looked up in (see :mod:`dsat.plugins`); every built-in satellite is listed
here by hand.
"""

from __future__ import annotations

from dsat.plugins import Registry, SatelliteSpec
from satellites import capture, host, rate

REGISTRY = Registry([*host.SPECS, rate.SPEC, capture.SPEC])

__all__ = ["REGISTRY", "SatelliteSpec"]

"""The built-in satellites: collectors, transforms and sinks.

:data:`REGISTRY` is the explicit registry a topology's ``use = "..."`` is
looked up in (see :mod:`dsat.plugins`); every built-in satellite is listed
here by hand, one module each (``disk`` holds both ``disk`` and
``disk_usage``).
"""

from __future__ import annotations

from dsat.plugins import Registry, SatelliteSpec
from dsat.satellites import capture, cpu, disk, load, memory, network, rate, synthetic

#: The satellites DSAT ships, by the name a topology's ``use`` gives.
REGISTRY = Registry(
    [
        cpu.SPEC,
        memory.SPEC,
        load.SPEC,
        disk.SPEC,
        disk.USAGE_SPEC,
        network.SPEC,
        rate.SPEC,
        capture.SPEC,
        synthetic.SPEC,
    ]
)

__all__ = ["REGISTRY", "SatelliteSpec"]

"""The ``cpu`` collector: CPU seconds by mode, a counter.

``total.<mode>`` for each mode psutil's ``cpu_times()`` reports on this
platform (``user``, ``nice``, ``system``, ``idle``, ``iowait``...) and, with
the option ``percpu = true``, ``core<N>.<mode>`` for each logical CPU.  The
batches are of type ``counter``: route them through the ``rate`` step to get
seconds of CPU per second.  Tests pass a fake ``psutil`` as ``_psutil``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import psutil

from dsat.errors import ConfigError
from dsat.plugins import SatelliteSpec

Collect = Callable[[], list[tuple[str, float]]]

OPTIONS: Mapping[str, Any] = {"percpu": False}


def _fields(prefix: str, times: Any) -> list[tuple[str, float]]:
    return [(f"{prefix}.{mode}", float(seconds)) for mode, seconds in times._asdict().items()]


def collector(options: Mapping[str, Any], *, _psutil: Any = psutil) -> Collect:
    """CPU seconds by mode: ``total.user``...; per core too (``core0.user``...) with ``percpu = true``."""
    percpu = options.get("percpu", OPTIONS["percpu"])
    if not isinstance(percpu, bool):
        raise ConfigError(f"cpu: option percpu must be true or false, not {percpu!r}")

    def collect() -> list[tuple[str, float]]:
        metrics = _fields("total", _psutil.cpu_times())
        if percpu:
            for n, times in enumerate(_psutil.cpu_times(percpu=True)):
                metrics += _fields(f"core{n}", times)
        return metrics

    return collect


SPEC = SatelliteSpec("cpu", "collector", collector, type="counter", doc=collector.__doc__ or "", options=OPTIONS)

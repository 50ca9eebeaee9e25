"""The ``synthetic`` collector: a steady, checkable load for testing a pipeline.

Each run returns ``metrics`` datapoints named ``m0`` ... ``m<N-1>`` whose
value is the run's sequence number (1, 2, 3...), so whoever reads them back
(from Whisper, say) can tell exactly which runs arrived: every metric should
hold every number from 1 to the last.  Options: ``metrics`` (default 100).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dsat.plugins import SatelliteSpec


def synthetic(options: Mapping[str, Any]) -> Callable[[], list[tuple[str, float]]]:
    names = [f"m{i}" for i in range(int(options.get("metrics", 100)))]
    run = [0]

    def collect() -> list[tuple[str, float]]:
        run[0] += 1
        value = float(run[0])
        return [(name, value) for name in names]

    return collect


SPEC = SatelliteSpec("synthetic", "collector", synthetic, type="gauge", doc=synthetic.__doc__ or "")

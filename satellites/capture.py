"""The ``capture`` sink: appends every datapoint to a file as Graphite plaintext.

For tests and debugging: option ``path`` names the file; each batch is
written as ``path value timestamp`` lines and flushed before the batch ends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dsat.envelope import Batch
from dsat.errors import ConfigError
from dsat.plugins import SatelliteSpec


def capture(options: Mapping[str, Any]) -> Callable[[Batch], None]:
    if "path" not in options:
        raise ConfigError('the capture sink needs options = { path = "FILE" }')
    target = Path(options["path"])

    def consume(batch: Batch) -> None:
        with target.open("a") as out:
            out.write("".join(f"{path} {value!r} {ts}\n" for path, ts, value in batch))

    return consume


SPEC = SatelliteSpec("capture", "sink", capture, doc=capture.__doc__ or "")

"""The ``capture`` sink: appends every datapoint to a file as Graphite plaintext.

For tests and debugging: the option ``path`` names the file; each batch is
appended as ``path value timestamp`` lines (UTF-8) and the file is closed,
hence flushed, before the batch ends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dsat.envelope import Batch
from dsat.errors import ConfigError
from dsat.plugins import SatelliteSpec


def capture(options: Mapping[str, Any]) -> Callable[[Batch], None]:
    """Append each batch to the file ``path`` as ``path value timestamp`` lines."""
    target = options.get("path")
    if not isinstance(target, str) or not target:
        raise ConfigError(f'the capture sink needs options = {{ path = "FILE" }}, not path = {target!r}')
    file = Path(target)

    def consume(batch: Batch) -> None:
        with file.open("a", encoding="utf-8") as out:
            out.write("".join(f"{path} {value!r} {ts!r}\n" for path, ts, value in batch))

    return consume


SPEC = SatelliteSpec("capture", "sink", capture, doc=capture.__doc__ or "")

"""A misbehaving transform for the reliability tests, loaded with ``[dsat] plugins = ["tests.chaos"]``.

Options: ``fail = true`` raises on every batch; ``delay = 0.5`` blocks that
many seconds on every batch; ``busy_file = "PATH"`` exists exactly while a
batch is being worked on, so a test can kill the process mid-batch for sure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dsat.envelope import Batch
from dsat.plugins import SatelliteSpec


def chaos(options: Mapping[str, Any]) -> Callable[[Batch], Batch]:
    fail = bool(options.get("fail", False))
    delay = float(options.get("delay", 0.0))
    busy = Path(options["busy_file"]) if "busy_file" in options else None

    def transform(batch: Batch) -> Batch:
        if busy is not None:
            busy.touch()
        if delay:
            time.sleep(delay)
        if busy is not None:
            busy.unlink()
        if fail:
            raise RuntimeError("chaos: this transform fails on purpose")
        return batch

    return transform


SPECS = [SatelliteSpec("chaos", "transform", chaos, doc=chaos.__doc__ or "")]

"""Misbehaving satellites for the reliability tests, loaded with ``[dsat] plugins = ["tests.chaos"]``.

``chaos``, a transform.  Options: ``fail = true`` raises on every batch;
``delay = 0.5`` blocks that many seconds on every batch; ``busy_file = "PATH"``
exists exactly while a batch is being worked on, so a test can kill the
process mid-batch for sure.

``chaos_collector``, a collector.  Option ``mode``: ``"hang"`` never returns
from its first run (it creates ``hang_file`` first, so a test knows the hang
began) and, once ``hang_file`` exists, returns ``ok`` = 1 on every run: a
process restarted after the hang works again; ``"raise"`` raises on every
run; ``"garbage"`` returns :data:`GARBAGE` (each item wrong in its own way)
and :data:`MADE_SAFE` (names stored under safe ones) and one good datapoint,
``ok`` = 1, on every run.
"""

from __future__ import annotations

import math
import threading
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


#: What the garbage collector returns besides its good ``("ok", 1.0)``: each item refused, with its reason.
GARBAGE: list[Any] = [
    ("nan", math.nan),  # nan
    ("inf", -math.inf),  # nan (not finite)
    ("text", "12"),  # bad_value: a string is no number
    ("flag", True),  # bad_value: a bool is no number
    ("huge_int", 10**400),  # bad_value: too large for a float
    ("huge_value", "x" * 1_000_000),  # bad_value
    ("y" * 1_000_000, 1.0),  # bad_name: a component over 200 bytes
    ("../../../../../../tmp/dsat-evil", 1.0),  # bad_name: empty components
    ("a/../../dsat-evil", 1.0),  # bad_name
    ("..", 1.0),  # bad_name
    ("", 1.0),  # bad_name
    ("old", 1.0, -5),  # bad_timestamp
    ("when", 1.0, "yesterday"),  # bad_timestamp
    (None, 1.0),  # bad_datapoint: a name that is no string
    (["a", "list"], 1.0),  # bad_datapoint: unhashable name
    42,  # bad_datapoint: no item at all
    {"metric": "m", "value": 1.0},  # bad_datapoint: a mapping (KeyError on [0])
    ("lonely",),  # bad_datapoint: no value
]


#: Names the garbage collector returns that are made safe (each unsafe character a "_"), not refused.
MADE_SAFE: list[Any] = [("/etc/dsat-evil", 1.0), ("sub/dir", 1.0), ("back\\slash", 1.0), ("nul\x00byte", 1.0)]


def chaos_collector(options: Mapping[str, Any]) -> Callable[[], list[Any]]:
    mode = options["mode"]
    hang_file = Path(options["hang_file"]) if "hang_file" in options else None

    def collect() -> list[Any]:
        if mode == "raise":
            raise RuntimeError("chaos: this collector fails on purpose")
        if mode == "hang" and hang_file is not None and not hang_file.exists():
            hang_file.touch()
            threading.Event().wait()  # never set: this run never returns
        if mode == "garbage":
            return [("ok", 1.0), *MADE_SAFE, *GARBAGE]
        return [("ok", 1.0)]

    return collect


SPECS = [
    SatelliteSpec("chaos", "transform", chaos, doc=chaos.__doc__ or ""),
    SatelliteSpec("chaos_collector", "collector", chaos_collector, type="gauge", doc="misbehaves by its mode"),
]

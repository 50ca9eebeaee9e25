"""The capture sink: every datapoint appended to a file as a Graphite plaintext line."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsat.errors import ConfigError
from dsat.satellites import REGISTRY, capture


def test_batches_are_appended_as_plaintext_lines(tmp_path: Path) -> None:
    """Each batch adds "path value timestamp" lines, readable as soon as consume() returns."""
    target = tmp_path / "capture.txt"
    consume = capture.capture({"path": str(target)})
    consume([("dsat.h.load.load1", 1700000000, 0.5), ("dsat.h.load.load5", 1700000000, 2.0)])
    assert target.read_text() == "dsat.h.load.load1 0.5 1700000000\ndsat.h.load.load5 2.0 1700000000\n"
    consume([("dsat.h\u00f4te.load.load1", 1700000010.0, 1)])
    assert target.read_text(encoding="utf-8").splitlines()[2] == "dsat.h\u00f4te.load.load1 1 1700000010.0"


@pytest.mark.parametrize("options", [{}, {"path": ""}, {"path": 3}])
def test_path_is_required(options: dict[str, object]) -> None:
    """Without a path option the sink cannot be built: a ConfigError shows the option to write."""
    with pytest.raises(ConfigError, match='needs options = { path = "FILE" }'):
        capture.capture(options)


def test_registered_as_a_sink() -> None:
    """The registry's "capture" is this module's sink."""
    assert REGISTRY["capture"] is capture.SPEC and capture.SPEC.kind == "sink"

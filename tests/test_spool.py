"""The disk spool: order, bounds, drop accounting, and what survives a crash."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dsat.errors import ConfigError
from dsat.spool import Spool


def test_batches_come_back_in_order_per_destination(tmp_path: Path) -> None:
    """peek returns a destination's batches oldest first; other destinations are kept apart."""
    spool = Spool(tmp_path / "s.db")
    for i in range(5):
        spool.put("a", f"a{i}".encode(), 10)
        spool.put("b", f"b{i}".encode(), 10)
    got = spool.peek("a", max_points=30)
    assert [b.data for b in got] == [b"a0", b"a1", b"a2"]
    spool.delete(got)
    assert [b.data for b in spool.peek("a", 1000)] == [b"a3", b"a4"]
    assert spool.pending("a") == 20 and spool.pending("b") == 50 and spool.pending() == 70


def test_peek_returns_at_least_one_batch_even_if_large(tmp_path: Path) -> None:
    """A batch bigger than the replay budget still comes out, alone."""
    spool = Spool(tmp_path / "s.db")
    spool.put("a", b"x", 5000)
    spool.put("a", b"y", 1)
    assert [b.data for b in spool.peek("a", max_points=10)] == [b"x"]


def test_drop_oldest_counts_every_dropped_datapoint(tmp_path: Path) -> None:
    """When full, the oldest batches go first and their datapoints are counted exactly."""
    spool = Spool(tmp_path / "s.db", max_bytes=100, policy="drop_oldest")
    for i in range(10):
        assert spool.put("a", bytes([i]) * 20, points=i + 1)
    assert spool.bytes <= 100
    kept = [b.points for b in spool.peek("a", 10_000)]
    assert kept == [6, 7, 8, 9, 10]
    assert spool.dropped == 1 + 2 + 3 + 4 + 5
    assert spool.dropped + sum(kept) == sum(range(1, 11))


def test_block_policy_refuses_when_full(tmp_path: Path) -> None:
    """Under `block` a full spool refuses the batch and keeps what it has."""
    spool = Spool(tmp_path / "s.db", max_bytes=50, policy="block")
    assert spool.put("a", b"x" * 40, 1)
    assert not spool.put("a", b"y" * 20, 1)
    assert spool.refused == 1 and spool.dropped == 0 and spool.pending() == 1


def test_state_is_read_back_on_open(tmp_path: Path) -> None:
    """A reopened spool knows its size and contents."""
    spool = Spool(tmp_path / "s.db")
    spool.put("a", b"abc", 7)
    spool.close()
    again = Spool(tmp_path / "s.db")
    assert again.bytes == 3 and again.pending("a") == 7
    assert again.peek("a", 100)[0].data == b"abc"


def test_move_replaces_rows_in_one_transaction_and_keeps_the_totals_true(tmp_path: Path) -> None:
    """move() swaps a destination's batches for others' rows; a failure half-way leaves the old rows."""
    spool = Spool(tmp_path / "s.db")
    spool.put("old:1", b"x" * 10, 4)
    spool.put("keep:1", b"k", 1)
    batches = spool.peek("old:1", 100)
    spool.move(batches, [("a:1", b"aa", 3), ("b:1", b"b", 1)])
    assert spool.destinations() == {"a:1", "b:1", "keep:1"}
    assert (spool.pending(), spool.pending("a:1"), spool.pending("old:1")) == (5, 3, 0)
    assert spool.bytes == 4
    with pytest.raises(sqlite3.IntegrityError):
        spool.move(spool.peek("a:1", 100), [("c:1", b"c", 3), (None, b"broken", 1)])  # type: ignore[list-item]
    assert spool.destinations() == {"a:1", "b:1", "keep:1"} and spool.pending() == 5
    reopened = Spool(tmp_path / "s.db")
    assert (reopened.points, reopened.bytes) == (spool.points, spool.bytes)


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    """An unknown policy or sync mode is refused with the valid ones listed."""
    with pytest.raises(ConfigError, match="drop_oldest, block"):
        Spool(tmp_path / "s.db", policy="keep")
    with pytest.raises(ConfigError, match="full, normal"):
        Spool(tmp_path / "s.db", sync="never")


WRITER = """
import sys
from dsat.spool import Spool
spool = Spool(sys.argv[1])
i = 0
while True:
    spool.put("a", i.to_bytes(4, "big") * 256, 1)
    i += 1
    if i == 200:
        print("ready", flush=True)
"""


def test_committed_batches_survive_kill_9(tmp_path: Path) -> None:
    """A process killed with SIGKILL mid-stream leaves a readable spool holding an unbroken prefix."""
    db = tmp_path / "s.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    spool = Spool(db)
    values = [int.from_bytes(b.data[:4], "big") for b in spool.peek("a", 10**9)]
    assert len(values) >= 200
    assert values == list(range(len(values)))
    assert all(b.data == b.data[:4] * 256 for b in spool.peek("a", 10**9))

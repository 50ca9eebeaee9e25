"""The disk spool: order, bounds, drop accounting, and what survives a crash."""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dsat.errors import ConfigError
from dsat.spool import DISK_RETRY, EPISODE_GAP, Spool
from dsat.testing import FailingDisk


def test_batches_come_back_in_order_per_destination(tmp_path: Path) -> None:
    """peek returns a destination's batches oldest first; other destinations are kept apart."""
    spool = Spool(tmp_path / "s.db")
    for i in range(5):
        spool.put("a", f"a{i}".encode(), 10)
        spool.put("b", f"b{i}".encode(), 10)
    got = spool.peek("a", max_points=30)
    assert [b.data for b in got] == [b"a0", b"a1", b"a2"]
    spool.delete("a", got)
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


def spool_files(path: Path) -> list[Path]:
    return [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


def test_adopt_takes_every_batch_of_another_spool_in_order_then_removes_the_file(tmp_path: Path) -> None:
    """A worker's spool that no longer runs: its batches follow this spool's own, per destination, in order."""
    mine = Spool(tmp_path / "carbon.db")
    mine.put("a:1", b"mine", 3)
    other_path = tmp_path / "carbon.w3.db"
    other = Spool(other_path)
    for i in range(2500):  # more than one slice of rows
        other.put("a:1" if i % 2 else "b:2", f"w3-{i}".encode(), 2)
    other.close()
    assert mine.adopt(other_path) == (5000, 0)
    assert spool_files(other_path) == []
    assert (mine.pending(), mine.pending("a:1"), mine.pending("b:2")) == (5003, 2503, 2500)
    assert mine.bytes == len(b"mine") + sum(len(f"w3-{i}") for i in range(2500))
    a = [b.data for b in mine.peek("a:1", 10**9)]
    assert a[:3] == [b"mine", b"w3-1", b"w3-3"] and len(a) == 1000  # peek's slice; the order is what counts
    reopened = Spool(tmp_path / "carbon.db")
    assert reopened.pending() == 5003 and reopened.bytes == mine.bytes


def test_adopt_under_block_takes_what_fits_and_leaves_the_rest_where_it_was(tmp_path: Path) -> None:
    mine = Spool(tmp_path / "carbon.db", max_bytes=100, policy="block")
    mine.put("a:1", b"x" * 40, 1)
    other_path = tmp_path / "carbon.w2.db"
    other = Spool(other_path)
    for i in range(5):
        other.put("a:1", bytes([i]) * 20, 10)
    other.close()
    assert mine.adopt(other_path) == (30, 20)  # 40 + 3 * 20 fit in 100
    assert mine.bytes == 100 and mine.pending() == 31
    left = Spool(other_path)
    assert [b.data for b in left.peek("a:1", 100)] == [bytes([3]) * 20, bytes([4]) * 20]


def test_adopt_under_drop_oldest_keeps_the_bound_and_counts_what_it_drops(tmp_path: Path) -> None:
    mine = Spool(tmp_path / "carbon.db", max_bytes=100)
    other_path = tmp_path / "carbon.w2.db"
    other = Spool(other_path)
    for i in range(8):
        other.put("a:1", bytes([i]) * 20, 10)
    other.close()
    assert mine.adopt(other_path) == (80, 0)
    assert mine.bytes <= 100 and mine.dropped == 80 - mine.pending()
    assert [b.data for b in mine.peek("a:1", 1000)][-1] == bytes([7]) * 20


def test_adopt_leaves_a_file_that_is_not_a_spool_and_says_so(tmp_path: Path) -> None:
    mine = Spool(tmp_path / "carbon.db")
    garbage = tmp_path / "carbon.w2.db"
    garbage.write_bytes(b"not sqlite at all" * 100)
    assert mine.adopt(garbage) == (0, -1)
    assert garbage.read_bytes() == b"not sqlite at all" * 100 and mine.pending() == 0


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    """An unknown policy or sync mode is refused with the valid ones listed."""
    with pytest.raises(ConfigError, match="drop_oldest, block"):
        Spool(tmp_path / "s.db", policy="keep")
    with pytest.raises(ConfigError, match="full, normal"):
        Spool(tmp_path / "s.db", sync="never")


WRITER = """
import sys
from dsat.spool import DISK_RETRY, EPISODE_GAP, Spool
from dsat.testing import FailingDisk
spool = Spool(sys.argv[1])
i = 0
while True:
    spool.put("a", i.to_bytes(4, "big") * 256, 1)
    i += 1
    if i == 200:
        print("ready", flush=True)
"""


@pytest.mark.integration  # a writer process killed -9
def test_committed_batches_survive_kill_9(tmp_path: Path) -> None:
    """A process killed with SIGKILL mid-stream leaves a readable spool holding an unbroken prefix."""
    db = tmp_path / "s.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        readable, _, _ = select.select([proc.stdout], [], [], 30)  # the writer says ready, or the wait ends
        assert readable and proc.stdout.readline().strip() == b"ready"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    spool = Spool(db)
    assert spool.quarantined is None
    rows = [data for (data,) in spool.db.execute("SELECT data FROM batches WHERE dest = 'a' ORDER BY id")]
    values = [int.from_bytes(data[:4], "big") for data in rows]
    assert len(values) >= 200 and len(values) == spool.pending("a")
    assert values == list(range(len(values)))
    assert all(data == data[:4] * 256 for data in rows)


def _filled(path: Path, batches: int) -> None:
    """A spool of *batches* batches of 4 KiB each (batch i: i+1 datapoints, its 4-byte index repeated)."""
    spool = Spool(path, sync="normal")
    for i in range(batches):
        spool.put("a", i.to_bytes(4, "big") * 1024, i + 1)
    spool.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    spool.close()


def _assert_quarantined(spool: Spool, path: Path, caplog_text: list[str]) -> None:
    assert spool.quarantined is not None and spool.quarantined.exists()
    assert spool.quarantined.name.startswith("s.db.corrupt-") and spool.path == path
    assert any("ALERT spool_corrupt" in line for line in caplog_text)
    assert spool.pending() == spool.salvaged
    # the new spool works
    assert spool.put("b", b"new", 1) and spool.peek("b", 10)[0].data == b"new"


def _critical_lines(observer: list[dict]) -> list[str]:
    from twisted.logger import LogLevel, formatEvent

    return [formatEvent(e) for e in observer if e["log_level"] == LogLevel.critical]


@pytest.fixture
def logged() -> Iterator[list[dict]]:
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_truncated_spool_is_quarantined_and_its_readable_batches_replayed(tmp_path: Path, logged: list[dict]) -> None:
    """A spool file cut in half is moved aside with an alert; the whole batches before the cut are in the new one."""
    path = tmp_path / "s.db"
    _filled(path, 400)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size // 2)
    spool = Spool(path)
    _assert_quarantined(spool, path, _critical_lines(logged))
    rows = list(spool.db.execute("SELECT points, data FROM batches WHERE dest = 'a' ORDER BY id"))
    indexes = [int.from_bytes(data[:4], "big") for _, data in rows]
    assert 0 < len(rows) < 400
    pairs = zip(rows, indexes, strict=True)
    assert all(data == data[:4] * 1024 and points == index + 1 for (points, data), index in pairs)
    assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)
    assert spool.salvaged == sum(points for points, _ in rows) == spool.pending("a")


def test_garbage_spool_is_quarantined_and_a_new_one_started(tmp_path: Path, logged: list[dict]) -> None:
    """A file of random bytes is not a database: moved aside with an alert, an empty spool in its place."""
    path = tmp_path / "s.db"
    path.write_bytes(os.urandom(64 * 1024))
    spool = Spool(path)
    _assert_quarantined(spool, path, _critical_lines(logged))
    assert spool.quarantined is not None and spool.quarantined.stat().st_size == 64 * 1024
    assert spool.salvaged == 0


@pytest.mark.parametrize(
    "schema",
    [
        "CREATE TABLE batches (id INTEGER PRIMARY KEY, payload BLOB)",
        "CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('x')",
    ],
)
def test_spool_of_another_schema_is_quarantined(tmp_path: Path, logged: list[dict], schema: str) -> None:
    """An SQLite file that holds other tables or other columns is moved aside untouched, never written into."""
    path = tmp_path / "s.db"
    other = sqlite3.connect(path)
    other.executescript(schema)
    other.commit()
    other.close()
    before = path.read_bytes()
    spool = Spool(path)
    _assert_quarantined(spool, path, _critical_lines(logged))
    assert spool.quarantined is not None and spool.quarantined.read_bytes() == before
    assert spool.salvaged == 0


def test_a_sound_spool_is_not_quarantined(tmp_path: Path, logged: list[dict]) -> None:
    """A spool that passes its check opens as it is, with no alert."""
    path = tmp_path / "s.db"
    _filled(path, 10)
    spool = Spool(path)
    assert spool.quarantined is None and spool.pending("a") == sum(range(1, 11))
    assert not _critical_lines(logged)
    assert not [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]


class FakeTime:
    """The spool's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def full_disk_spool(tmp_path: Path, policy: str = "block") -> tuple[Spool, FakeTime]:
    """A spool whose database may not grow past its pages now: SQLite's own SQLITE_FULL, as on a full disk."""
    clock = FakeTime()
    spool = Spool(tmp_path / "s.db", policy=policy, clock=clock)
    spool.db.execute("PRAGMA max_page_count = 10")
    return spool, clock


@pytest.mark.parametrize("policy", ["block", "drop_oldest"])
def test_a_full_disk_refuses_the_batch_without_raising_whatever_the_policy(
    tmp_path: Path, logged: list[dict], policy: str
) -> None:
    """SQLITE_FULL makes put return False (the caller applies its policy), once alerted, each refusal counted."""
    spool, _ = full_disk_spool(tmp_path, policy)
    stored = 0
    while spool.put("a", b"x" * 4000, 1):
        stored += 1
    for _ in range(5):
        assert not spool.put("a", b"x" * 4000, 1)
    assert spool.disk_full and spool.disk_episodes == 1 and spool.disk_refused == 6
    assert "disk is full" in spool.disk_error
    assert spool.pending() == stored and spool.dropped == 0  # nothing already spooled is lost
    alerts = [line for line in _critical_lines(logged) if "ALERT spool_disk_full" in line]
    assert len(alerts) == 1
    assert spool.state()["spool_full"] == "full (database or disk is full)"


def test_writes_resume_by_themselves_when_space_comes_back(tmp_path: Path) -> None:
    """While full the disk is tried again every DISK_RETRY seconds, not at every batch; space back, puts succeed."""
    spool, clock = full_disk_spool(tmp_path)
    while spool.put("a", b"x" * 4000, 1):
        pass
    spool.db.execute("PRAGMA max_page_count = 1000000")  # space came back
    assert not spool.put("a", b"y", 1)  # not tried yet
    clock.now += DISK_RETRY
    assert spool.put("a", b"y", 1)
    assert not spool.disk_full and spool.state()["spool_full"] == "no"
    spool.db.execute("PRAGMA max_page_count = 1")
    assert not spool.put("a", b"z" * 100_000, 1)
    assert spool.disk_full and spool.disk_episodes == 1  # full again at once: the same episode, no new alert
    spool.db.execute("PRAGMA max_page_count = 1000000")
    clock.now += DISK_RETRY
    assert spool.put("a", b"y", 1)
    clock.now += EPISODE_GAP
    spool.db.execute("PRAGMA max_page_count = 1")
    assert not spool.put("a", b"z" * 100_000, 1)
    assert spool.disk_episodes == 2  # full again after a while: a new episode, alerted again


def test_a_read_only_database_is_a_full_spool(tmp_path: Path) -> None:
    """SQLITE_READONLY (a filesystem remounted read-only) is refused as a full disk is, never raised."""
    spool = Spool(tmp_path / "s.db")
    spool.put("a", b"first", 1)
    spool.db.close()
    spool.db = sqlite3.connect(f"file:{tmp_path / 's.db'}?mode=ro", uri=True, isolation_level=None)
    assert not spool.put("a", b"second", 1)
    assert spool.disk_full and "readonly" in spool.disk_error
    assert [b.data for b in spool.peek("a", 10)] == [b"first"]


def test_a_delete_the_disk_refuses_is_retried_and_its_rows_are_not_handed_out_twice(tmp_path: Path) -> None:
    """Replay goes on past rows whose delete failed; check() deletes them once the disk takes writes."""
    spool = Spool(tmp_path / "s.db")
    for i in range(6):
        spool.put("a", f"b{i}".encode(), 10)
    real = spool.db
    spool.db = FailingDisk(real, fail_on=["DELETE", "COMMIT"])  # type: ignore[assignment]
    first = spool.peek("a", 20)
    spool.delete("a", first)  # refused by the disk: no exception
    second = spool.peek("a", 20)
    assert [b.data for b in first] == [b"b0", b"b1"] and [b.data for b in second] == [b"b2", b"b3"]
    spool.delete("a", second)
    assert spool.pending() == 60  # every row is still on disk
    spool.check()
    assert spool.pending() == 60
    spool.db = real  # space came back
    spool.check()
    assert spool.pending() == 20 and [b.data for b in spool.peek("a", 100)] == [b"b4", b"b5"]
    assert not real.in_transaction


def test_rows_whose_delete_failed_are_replayed_after_a_restart(tmp_path: Path) -> None:
    """A duplicate rather than a loss: the rows handed out but not deleted are on disk for the next start."""
    spool = Spool(tmp_path / "s.db")
    spool.put("a", b"sent", 1)
    spool.db = FailingDisk(spool.db, fail_on=["COMMIT"])  # type: ignore[assignment]
    spool.delete("a", spool.peek("a", 10))
    spool.close()
    again = Spool(tmp_path / "s.db")
    assert [b.data for b in again.peek("a", 10)] == [b"sent"]


def test_a_spool_file_deleted_while_open_is_opened_again_with_everything_it_held(
    tmp_path: Path, logged: list[dict]
) -> None:
    """rm of the spool: check() notices, opens a new file at the path and copies every batch into it, in order."""
    path = tmp_path / "s.db"
    spool = Spool(path)
    for i in range(5):
        spool.put("a", f"b{i}".encode(), 2)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    assert spool.check()
    assert path.exists() and spool.reopened == 1
    assert [b.data for b in spool.peek("a", 100)] == [f"b{i}".encode() for i in range(5)]
    assert spool.pending() == 10
    assert any("ALERT spool_replaced" in line for line in _critical_lines(logged))
    assert not spool.check() and spool.reopened == 1  # once
    spool.close()
    assert Spool(path).pending("a") == 10  # what a restart finds


def test_a_spool_file_replaced_by_garbage_is_quarantined_and_the_open_spool_kept(
    tmp_path: Path, logged: list[dict]
) -> None:
    """Another file put in its place goes through the checks of an open; the batches of the open one are kept."""
    path = tmp_path / "s.db"
    spool = Spool(path)
    spool.put("a", b"kept", 3)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.unlink()
    path.write_bytes(os.urandom(8192))
    assert spool.check()
    assert spool.quarantined is not None and spool.quarantined.stat().st_size == 8192
    assert [b.data for b in spool.peek("a", 10)] == [b"kept"] and spool.pending() == 3


def test_check_of_a_spool_left_alone_changes_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.put("a", b"x", 1)
    assert not spool.check() and not spool.check()
    assert spool.reopened == 0 and spool.pending() == 1


def test_a_sound_spool_on_a_disk_that_will_not_let_it_open_is_not_quarantined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full or read-only disk at start is not corruption: the file stays where it is, and the error says why."""
    from dsat import spool as spool_module
    from dsat.errors import SpoolUnavailable

    path = tmp_path / "s.db"
    _filled(path, 10)
    before = path.read_bytes()
    real_connect = sqlite3.connect
    monkeypatch.setattr(
        spool_module.sqlite3, "connect", lambda *a, **kw: FailingDisk(real_connect(*a, **kw), fail_on=["CREATE"])
    )
    with pytest.raises(SpoolUnavailable, match="cannot be opened: database or disk is full.*bytes free"):
        Spool(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and not list(tmp_path.glob("*.corrupt-*"))
    assert Spool(path).pending("a") == sum(range(1, 11))

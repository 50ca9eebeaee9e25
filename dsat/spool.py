"""The disk spool: batches for Carbon that cannot be sent now, kept until they can.

An embedded SQLite database in WAL mode (stdlib ``sqlite3``, no server):
each row is one encoded batch for one destination, in arrival order.  A
committed row survives ``kill -9`` of the process (and, with
``sync = "full"``, a power cut); SQLite's journal keeps the file consistent,
so a crash mid-write loses only the batch being written, which was not yet
acknowledged.  Why SQLite rather than segment files: transactions, crash
recovery and ordered deletes come tested by decades of use, and a batch of
thousands of datapoints makes one insert cheap next to its fsync.

The spool is bounded by bytes.  When full, the ``drop_oldest`` policy deletes
the oldest batches and counts every datapoint dropped; the ``block`` policy
refuses the new batch so the caller can push back upstream.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from twisted.logger import Logger

from dsat.errors import ConfigError

POLICIES = ("drop_oldest", "block")
SYNC_MODES = {"full": "FULL", "normal": "NORMAL"}


@dataclass(frozen=True)
class Spooled:
    """One spooled batch, as read back for replay."""

    id: int
    data: bytes
    points: int


class Spool:
    """Ordered, bounded, crash-safe storage of encoded batches per destination."""

    log = Logger()

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int = 1 << 30,
        policy: str = "drop_oldest",
        sync: str = "full",
    ) -> None:
        if policy not in POLICIES:
            raise ConfigError(f"spool policy {policy!r} is not one of {', '.join(POLICIES)}")
        if sync not in SYNC_MODES:
            raise ConfigError(f"spool sync {sync!r} is not one of {', '.join(SYNC_MODES)}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.policy = policy
        self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={SYNC_MODES[sync]}")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS batches ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " dest TEXT NOT NULL, points INTEGER NOT NULL, size INTEGER NOT NULL, data BLOB NOT NULL)"
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS batches_dest ON batches (dest, id)")
        size, points = self.db.execute(
            "SELECT COALESCE(SUM(size), 0), COALESCE(SUM(points), 0) FROM batches"
        ).fetchone()
        self.bytes = int(size)
        self.points = int(points)
        #: Datapoints deleted unsent by the drop_oldest policy since start.
        self.dropped = 0
        #: Batches refused by the block policy since start.
        self.refused = 0

    def put(self, dest: str, data: bytes, points: int) -> bool:
        """Store one batch durably; False when full under the ``block`` policy."""
        size = len(data)
        if self.bytes + size > self.max_bytes:
            if self.policy == "block" or size > self.max_bytes:
                self.refused += 1
                return False
            self._drop_oldest(self.bytes + size - self.max_bytes)
        self.db.execute(
            "INSERT INTO batches (dest, points, size, data) VALUES (?, ?, ?, ?)", (dest, points, size, data)
        )
        self.bytes += size
        self.points += points
        return True

    def _drop_oldest(self, need: int) -> None:
        freed = dropped = 0
        ids = []
        for row_id, points, size in self.db.execute("SELECT id, points, size FROM batches ORDER BY id"):
            ids.append(row_id)
            freed += size
            dropped += points
            if freed >= need:
                break
        self._delete(ids)
        self.dropped += dropped
        self.log.warn(
            "spool {path} full ({max_bytes} bytes): dropped the {batches} oldest batches, {points} datapoints",
            path=str(self.path),
            max_bytes=self.max_bytes,
            batches=len(ids),
            points=dropped,
        )

    def peek(self, dest: str, max_points: int) -> list[Spooled]:
        """The oldest batches for *dest*, at least one, up to about *max_points* datapoints."""
        out: list[Spooled] = []
        total = 0
        for row_id, data, points in self.db.execute(
            "SELECT id, data, points FROM batches WHERE dest = ? ORDER BY id LIMIT 1000", (dest,)
        ):
            if out and total + points > max_points:
                break
            out.append(Spooled(row_id, data, points))
            total += points
        return out

    def delete(self, batches: list[Spooled]) -> None:
        """Forget batches that were handed to their destination."""
        self._delete([b.id for b in batches])

    def move(self, batches: list[Spooled], rows: list[tuple[str, bytes, int]]) -> None:
        """Replace *batches* by *rows* (``(dest, data, points)``) in one transaction.

        How a removed destination's data is placed on the others: a crash
        leaves either the old rows or the new ones, never neither.  The size
        bound is not applied to a move (it changes little).
        """
        self.db.execute("BEGIN")
        try:
            size, points = self._delete_rows([b.id for b in batches])
            self.db.executemany(
                "INSERT INTO batches (dest, points, size, data) VALUES (?, ?, ?, ?)",
                [(dest, n, len(data), data) for dest, data, n in rows],
            )
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        self.bytes += sum(len(data) for _, data, _ in rows) - size
        self.points += sum(n for _, _, n in rows) - points

    def destinations(self) -> set[str]:
        """Names of the destinations that have batches waiting."""
        return {dest for (dest,) in self.db.execute("SELECT DISTINCT dest FROM batches")}

    def _delete(self, ids: list[int]) -> None:
        if not ids:
            return
        self.db.execute("BEGIN")
        size, points = self._delete_rows(ids)
        self.db.execute("COMMIT")
        self.bytes -= size
        self.points -= points

    def _delete_rows(self, ids: list[int]) -> tuple[int, int]:
        """Delete rows inside the caller's transaction; their total size and points."""
        size, points = 0, 0
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            s, p = self.db.execute(
                f"SELECT COALESCE(SUM(size), 0), COALESCE(SUM(points), 0) FROM batches WHERE id IN ({marks})", chunk
            ).fetchone()
            self.db.execute(f"DELETE FROM batches WHERE id IN ({marks})", chunk)
            size += s
            points += p
        return size, points

    def pending(self, dest: str | None = None) -> int:
        """Datapoints waiting (for one destination, or in all)."""
        if dest is None:
            return self.points
        (points,) = self.db.execute("SELECT COALESCE(SUM(points), 0) FROM batches WHERE dest = ?", (dest,)).fetchone()
        return int(points)

    def close(self) -> None:
        self.db.close()

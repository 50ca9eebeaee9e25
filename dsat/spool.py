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

A disk that fails the spool is a full spool.  An error writing it (SQLite's
``SQLITE_FULL``, an I/O error, a read-only filesystem) refuses the batch as
the size bound does under ``block``, whatever the policy: the caller applies
its policy to what the spool did not take (:class:`dsat.carbon.Destination`:
the inputs pause under ``block``; the oldest in memory are dropped and
counted under ``drop_oldest``).  The spool is then :attr:`Spool.disk_full`
(an *episode*, counted, with one critical ``ALERT spool_disk_full``; full
again within :data:`EPISODE_GAP` of taking writes is the same episode) and
writes are tried again every :data:`DISK_RETRY` seconds, so writing resumes
by itself when space comes back.  A delete that fails (its ``COMMIT`` needs
the disk too) leaves its rows where they are, to be deleted later; they are
not handed out again meanwhile (:meth:`Spool.peek` reads past them), and a
restart replays them once more: a duplicate, which Whisper stores once,
rather than a loss.

A spool file deleted or replaced while the orchester runs (:meth:`Spool.check`,
every second) is noticed by its inode: a new spool is opened at the path (a
file found there goes through the checks of an open) and every batch the old
one still held is copied into it, so a restart finds them.

A spool that cannot be trusted never stops the orchester: at open, a file
that is not an SQLite database, fails SQLite's ``quick_check`` or holds
another schema is renamed aside (``<name>.corrupt-<UTC time>``, with its WAL
and shared-memory files), a critical ``ALERT spool_corrupt`` is logged, a new
spool is started in its place, and every batch that still reads back whole
from the old file is copied into the new one, so it is replayed as usual.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from twisted.logger import Logger

from dsat.errors import ConfigError, SpoolCorrupt, SpoolUnavailable

POLICIES = ("drop_oldest", "block")
SYNC_MODES = {"full": "FULL", "normal": "NORMAL"}
#: ``[spool]`` defaults (:class:`dsat.topology.SpoolConf` takes them from here).
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_POLICY = "drop_oldest"
DEFAULT_SYNC = "full"
#: The one table a spool holds, and its columns in order.
TABLE = "batches"
#: Rows :meth:`Spool.adopt` moves per transaction.
ADOPT_ROWS = 1000
COLUMNS = ("id", "dest", "points", "size", "data")
#: Seconds between two tries of a spool whose disk failed a write.
DISK_RETRY = 1.0
#: A disk that refuses writes again within this many seconds of taking them is the same episode (one alert):
#: a disk hovering at full, where SQLite reuses the pages a replay freed, would otherwise alert every second.
EPISODE_GAP = 60.0


def is_disk_error(exc: sqlite3.Error) -> bool:
    """Did *exc* come from the storage (full, read-only, I/O, file gone) rather than from DSAT's own SQL?"""
    return isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.NotSupportedError
    )


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
        max_bytes: int = DEFAULT_MAX_BYTES,
        policy: str = DEFAULT_POLICY,
        sync: str = DEFAULT_SYNC,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if policy not in POLICIES:
            raise ConfigError(f"spool policy {policy!r} is not one of {', '.join(POLICIES)}")
        if sync not in SYNC_MODES:
            raise ConfigError(f"spool sync {sync!r} is not one of {', '.join(SYNC_MODES)}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.policy = policy
        self.sync = SYNC_MODES[sync]
        #: Where a spool that failed its check at open was moved, and the datapoints read back from it.
        self.quarantined: Path | None = None
        self.salvaged = 0
        #: Datapoints deleted unsent by the drop_oldest policy since start.
        self.dropped = 0
        #: Batches refused by the block policy since start.
        self.refused = 0
        self.clock = clock
        #: True while the disk refuses writes (an episode); ``disk_episodes`` counts them since start.
        self.disk_full = False
        self.disk_episodes = 0
        #: Why the last write failed (SQLite's message), for the log and ``dsat status``.
        self.disk_error = ""
        #: Batches not written because the disk refused them, since start.
        self.disk_refused = 0
        #: Times the file was found deleted or replaced under the running spool, and opened again.
        self.reopened = 0
        self._retry_at = 0.0
        self._back_at = -EPISODE_GAP
        #: Per destination, the highest id handed out whose delete failed: :meth:`peek` reads past it.
        self._handed: dict[str, int] = {}
        self._undeleted: list[int] = []
        #: A file deleted or replaced under the spool whose rows are not all copied yet (the disk was full).
        self._orphan: sqlite3.Connection | None = None
        self._open_checked()
        if self.quarantined is not None:
            self._salvage(self.quarantined)

    def _open_checked(self) -> None:
        """Open the file at :attr:`path` (quarantined if it cannot be trusted) and read its totals."""
        try:
            self.db = self._open()
        except SpoolCorrupt as exc:
            self._quarantine(exc)
        size, points = self.db.execute(
            "SELECT COALESCE(SUM(size), 0), COALESCE(SUM(points), 0) FROM batches"
        ).fetchone()
        self.bytes = int(size)
        self.points = int(points)
        self._inode = _inode(self.path)

    def _open(self) -> sqlite3.Connection:
        """Connect, check the file and its schema, create the table.

        SpoolCorrupt if the file cannot be trusted (it is then quarantined);
        SpoolUnavailable if its disk will not let it open (full, read-only, an
        I/O error): a sound file on a full disk is never moved aside.
        """
        try:
            db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None
        try:
            problems = [row[0] for row in db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise SpoolCorrupt(f"SQLite's quick_check: {'; '.join(problems[:3])}")
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            tables -= {"sqlite_sequence"}
            if tables - {TABLE}:
                raise SpoolCorrupt(f"not a DSAT spool: it holds the tables {', '.join(sorted(tables))}")
            if TABLE in tables:
                columns = tuple(row[1] for row in db.execute(f"PRAGMA table_info({TABLE})"))
                if columns != COLUMNS:
                    raise SpoolCorrupt(f"table {TABLE} has the columns {columns}, a spool has {COLUMNS}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.sync}")
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " dest TEXT NOT NULL, points INTEGER NOT NULL, size INTEGER NOT NULL, data BLOB NOT NULL)"
            )
            db.execute(f"CREATE INDEX IF NOT EXISTS batches_dest ON {TABLE} (dest, id)")
        except sqlite3.DatabaseError as exc:
            db.close()
            name = getattr(exc, "sqlite_errorname", "")
            if name.startswith("SQLITE_CORRUPT") or name == "SQLITE_NOTADB":  # "file is not a database", "malformed"
                raise SpoolCorrupt(str(exc)) from None
            raise self._unavailable(exc) from None
        except SpoolCorrupt:
            db.close()
            raise
        return db

    def _unavailable(self, exc: sqlite3.Error) -> SpoolUnavailable:
        name = getattr(exc, "sqlite_errorname", type(exc).__name__)
        return SpoolUnavailable(
            f"spool {self.path} cannot be opened: {exc} ({name}), {self.disk_free()} bytes free on its disk;"
            " free space on it or make it writable (the supervisor starts the orchester again)"
        )

    def _quarantine(self, exc: SpoolCorrupt) -> None:
        """Move the untrusted file (and its WAL) aside and start an empty spool in its place."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            part = self.path.with_name(self.path.name + suffix)
            if part.exists():
                part.rename(aside.with_name(aside.name + suffix))
        self.quarantined = aside
        self.log.critical(
            "ALERT spool_corrupt: {path} cannot be trusted ({reason}); moved to {aside}, a new spool is started"
            " and what still reads back from the old one is replayed",
            path=str(self.path),
            reason=str(exc),
            aside=str(aside),
        )
        self.db = self._open()

    def _salvage(self, old: Path) -> None:
        """Copy every batch that reads back whole from a quarantined file into this spool, in order."""
        batches = refused = 0
        for dest, points, data in _readable_rows(old):
            if self.put(dest, data, points):
                batches += 1
                self.salvaged += points
            else:
                refused += points
        self.log.warn(
            "spool {path}: {batches} batches, {points} datapoints read back from {old}{refused}",
            path=str(self.path),
            batches=batches,
            points=self.salvaged,
            old=str(old),
            refused=f"; {refused} datapoints did not fit (policy block)" if refused else "",
        )

    def put(self, dest: str, data: bytes, points: int) -> bool:
        """Store one batch durably; False when full under the ``block`` policy, or when the disk refuses it."""
        size = len(data)
        if self.disk_full and self.clock() < self._retry_at:
            self.disk_refused += 1
            return False
        if self.bytes + size > self.max_bytes:
            if self.policy == "block" or size > self.max_bytes:
                self.refused += 1
                return False
        try:
            if self.bytes + size > self.max_bytes:
                self._drop_oldest(self.bytes + size - self.max_bytes)
            self.db.execute(
                "INSERT INTO batches (dest, points, size, data) VALUES (?, ?, ?, ?)", (dest, points, size, data)
            )
        except sqlite3.Error as exc:
            if not is_disk_error(exc):
                raise
            self._disk_failed(exc)
            self.disk_refused += 1
            return False
        self.bytes += size
        self.points += points
        if self.disk_full:
            self._disk_back()
        return True

    def _disk_failed(self, exc: sqlite3.Error) -> None:
        """A write failed on the storage: the spool is full until a try in DISK_RETRY seconds succeeds."""
        _rollback(self.db)
        self._retry_at = self.clock() + DISK_RETRY
        self.disk_error = str(exc)
        if self.disk_full:
            return
        self.disk_full = True
        if self.clock() - self._back_at < EPISODE_GAP:
            return  # the same episode: the disk took a few writes and is full again
        self.disk_episodes += 1
        self.log.critical(
            "ALERT spool_disk_full: {path}: {error} ({free} bytes free); the spool is full: batches stay in memory"
            " (policy block: the inputs pause) or the oldest are dropped and counted (drop_oldest), and writes are"
            " tried again every {retry:g}s",
            path=str(self.path),
            error=self.disk_error,
            free=self.disk_free(),
            retry=DISK_RETRY,
        )

    def _disk_back(self) -> None:
        self.disk_full = False
        self._back_at = self.clock()
        self.log.warn(
            "spool {path}: the disk takes writes again ({refused} batches refused while it did not)",
            path=str(self.path),
            refused=self.disk_refused,
        )

    def disk_free(self) -> int:
        """Bytes free for this process on the spool's filesystem (-1: it cannot be read)."""
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return -1
        return st.f_bavail * st.f_frsize

    def state(self) -> dict[str, int | str]:
        """What ``dsat status`` shows of the spool: bytes held, the disk's free bytes, full or not, and why."""
        full = "disk" if self.disk_full else "size" if self.bytes >= self.max_bytes else ""
        return {
            "spool_bytes": self.bytes,
            "spool_max_bytes": self.max_bytes,
            "spool_disk_free": self.disk_free(),
            "spool_full": f"full ({self.disk_error})" if full == "disk" else "full (max_mb)" if full else "no",
            "spool_disk_full": self.disk_episodes,
        }

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
        """The oldest batches for *dest* not yet handed out, at least one, up to about *max_points* datapoints."""
        out: list[Spooled] = []
        total = 0
        for row_id, data, points in self.db.execute(
            "SELECT id, data, points FROM batches WHERE dest = ? AND id > ? ORDER BY id LIMIT 1000",
            (dest, self._handed.get(dest, 0)),
        ):
            if out and total + points > max_points:
                break
            out.append(Spooled(row_id, data, points))
            total += points
        return out

    def delete(self, dest: str, batches: list[Spooled]) -> None:
        """Forget batches that were handed to *dest*; a delete the disk refuses is tried again later.

        Until then :meth:`peek` reads past them, so they are not sent twice
        while the process runs (a restart sends them again: a duplicate,
        never a loss).
        """
        ids = [b.id for b in batches]
        if not ids:
            return
        self._handed[dest] = max(self._handed.get(dest, 0), ids[-1])
        self._undeleted.extend(ids)
        self.retry_deletes()

    def retry_deletes(self) -> None:
        """Delete the rows handed out whose delete failed (called by :meth:`delete` and :meth:`check`)."""
        if not self._undeleted:
            return
        try:
            self._delete(self._undeleted)
        except sqlite3.Error as exc:
            if not is_disk_error(exc):
                raise
            _rollback(self.db)
            self.log.warn(
                "spool {path}: {rows} replayed batches not deleted yet ({error}); tried again in a second",
                path=str(self.path),
                rows=len(self._undeleted),
                error=str(exc),
            )
            return
        self._undeleted = []

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

    def adopt(self, other: Path) -> tuple[int, int]:
        """Take the batches of another spool file (a worker's that no longer runs), oldest first; then remove it.

        They go after this spool's own, under this spool's bound: ``drop_oldest``
        drops (and counts) the oldest to make room, ``block`` takes what fits
        and leaves the rest in *other*.  Each slice of :data:`ADOPT_ROWS` rows
        is committed here before it is deleted there, so a crash in between
        sends that slice twice, never zero times.  Returns the datapoints
        taken and those left in *other* (-1: it could not be read; what was
        taken before stays taken).
        """
        try:
            src = sqlite3.connect(str(other), isolation_level=None)
        except sqlite3.Error:
            return 0, -1
        try:
            taken, left = self._take_from(src, bounded=True)
        finally:
            src.close()
        if not left:
            for path in (other, Path(f"{other}-wal"), Path(f"{other}-shm")):
                path.unlink(missing_ok=True)
        return taken, left

    def _take_from(self, src: sqlite3.Connection, *, bounded: bool) -> tuple[int, int]:
        """Move the rows of *src* after this spool's own, a committed slice at a time; (taken, left or -1)."""
        taken = 0
        try:
            while True:
                rows = src.execute(
                    f"SELECT id, dest, points, size, data FROM {TABLE} ORDER BY id LIMIT ?", (ADOPT_ROWS,)
                ).fetchall()
                fit = self._fitting(rows) if bounded else rows
                if not fit:
                    break
                self.db.execute("BEGIN")
                try:
                    self.db.executemany(
                        "INSERT INTO batches (dest, points, size, data) VALUES (?, ?, ?, ?)",
                        [(dest, points, len(data), data) for _, dest, points, _, data in fit],
                    )
                except BaseException:
                    self.db.execute("ROLLBACK")
                    raise
                self.db.execute("COMMIT")
                self.bytes += sum(len(row[4]) for row in fit)
                self.points += sum(row[2] for row in fit)
                taken += sum(row[2] for row in fit)
                src.execute("BEGIN")
                src.executemany(f"DELETE FROM {TABLE} WHERE id = ?", [(row[0],) for row in fit])
                src.execute("COMMIT")
                if bounded and self.bytes > self.max_bytes:
                    self._drop_oldest(self.bytes - self.max_bytes)
                if len(fit) < len(rows):
                    break
            (left,) = src.execute(f"SELECT COALESCE(SUM(points), 0) FROM {TABLE}").fetchone()
        except sqlite3.Error:
            return taken, -1
        return taken, int(left)

    def check(self) -> bool:
        """The periodic look (every second): retry failed deletes; reopen a file deleted or replaced under us.

        True when the spool was opened again (what each destination has
        waiting may then differ: ask :meth:`pending`).
        """
        reopened = False
        if _inode(self.path) != self._inode:
            reopened = self._reopen()
        elif self._orphan is not None:
            reopened = self._take_orphan()[0] > 0
        self.retry_deletes()
        return reopened

    def _reopen(self) -> bool:
        """The file at :attr:`path` is not the one open: open it (or a new one) and copy what the old one holds."""
        old, old_bytes, old_points = self.db, self.bytes, self.points
        found = "deleted" if _inode(self.path) is None else "replaced by another file"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open_checked()
        except (OSError, sqlite3.Error, SpoolUnavailable) as exc:
            self.db, self.bytes, self.points = old, old_bytes, old_points
            self.log.error(
                "spool {path} was {found}; a new one cannot be opened yet ({error}): the open one goes on",
                path=str(self.path),
                found=found,
                error=str(exc),
            )
            return False
        self.reopened += 1
        try:  # rows handed out whose delete failed: sent again only if they cannot be deleted now
            old.execute("BEGIN")
            for start in range(0, len(self._undeleted), 500):
                chunk = self._undeleted[start : start + 500]
                old.execute(f"DELETE FROM {TABLE} WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            old.execute("COMMIT")
        except sqlite3.Error:
            _rollback(old)
        self._handed.clear()
        self._undeleted = []
        self._orphan = old
        taken, left = self._take_orphan()
        self.log.critical(
            "ALERT spool_replaced: {path} was {found} while open: a new spool is opened there and the"
            " {taken} datapoints the old one held are copied into it{left}",
            path=str(self.path),
            found=found,
            taken=taken,
            left=f"; {left} more are copied as the disk allows" if left else "",
        )
        return True

    def _take_orphan(self) -> tuple[int, int]:
        """Copy what the file deleted or replaced under the spool still holds; close it once empty."""
        orphan = self._orphan
        if orphan is None:
            return 0, 0
        taken, left = self._take_from(orphan, bounded=False)
        if left == 0:
            orphan.close()
            self._orphan = None
        return taken, left

    def _fitting(self, rows: list[tuple[int, str, int, int, bytes]]) -> list[tuple[int, str, int, int, bytes]]:
        """The first of *rows* this spool takes: all under ``drop_oldest``, those that fit under ``block``."""
        room = self.max_bytes - self.bytes
        fit = []
        for row in rows:
            size = len(row[4])
            if size > self.max_bytes or (self.policy == "block" and size > room):
                break
            fit.append(row)
            room -= size
        return fit

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
        if self._orphan is not None:
            self._orphan.close()
        self.db.close()


def _rollback(db: sqlite3.Connection) -> None:
    """End a transaction a failed statement left open (SQLite rolls some back by itself, not all)."""
    if db.in_transaction:
        # the rollback itself may fail on a failing disk: the journal undoes the transaction at the next open
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


def _inode(path: Path) -> tuple[int, int] | None:
    """The file at *path* as (device, inode); None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _readable_rows(path: Path) -> Iterator[tuple[str, int, bytes]]:
    """The rows of a damaged spool that still read back whole, oldest first.

    Reads forward from the first row until an error, then backward from the
    last one until an error or the rows already read: a damaged page in the
    middle (or a cut tail) costs only the rows it holds.
    """
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows: dict[int, tuple[str, int, bytes]] = {}
    try:
        # read-only; lets SQLite read a file shorter than its header says instead of refusing it whole
        db.execute("PRAGMA writable_schema=ON")
        for order in ("ASC", "DESC"):
            try:
                for row_id, dest, points, size, data in db.execute(
                    f"SELECT id, dest, points, size, data FROM {TABLE} ORDER BY id {order}"
                ):
                    if row_id in rows:
                        break
                    whole = isinstance(dest, str) and isinstance(data, bytes) and len(data) == size
                    if whole and isinstance(points, int) and points > 0:
                        rows[row_id] = (dest, points, data)
            except sqlite3.DatabaseError:
                continue
    finally:
        db.close()
    for row_id in sorted(rows):
        yield rows[row_id]

"""Test helpers, shipped as public API (as ``structlog.testing`` is).

mypy checks each fake against the protocol the real part satisfies
(:class:`dsat.transport.Sender`, :class:`dsat.orchester.Egress`,
:class:`dsat.flow.PushProducer`): see the end of this module.

:class:`FakeSender` stands in for a ZeroMQ link and keeps every frame sent
(``envelopes()`` reads them back); :class:`CaptureEgress` stands
in for the carbon egress, :class:`FakeProducer` for an input it pauses,
:class:`FailingDisk` for a spool's disk that refuses writes.
Use them with ``twisted.internet.task.Clock`` as the clock, so timers run
with ``clock.advance()`` instead of sleeping.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dsat.envelope import Envelope, decode
from dsat.flow import Producers, PushProducer
from dsat.orchester import Egress
from dsat.spool import Spool
from dsat.transport import Sender


class FakeSender:
    """A sending link that keeps what it is given, in memory."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.dropped = 0
        self.closed = False

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)

    def pending(self) -> int:
        return 0

    async def flush(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    def envelopes(self) -> list[Envelope]:
        return [decode(frame) for frame in self.frames]


class FakeProducer:
    """A push producer (``IPushProducer``) that only records whether it is paused: an input for dsat.flow."""

    def __init__(self) -> None:
        self.paused = False

    def pauseProducing(self) -> None:  # noqa: N802 (Twisted API)
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False

    def stopProducing(self) -> None:  # noqa: N802
        self.paused = True


class CaptureEgress:
    """Stands in for :class:`dsat.carbon.CarbonEgress`: keeps batches, acknowledges at once
    (or later, with ``hold=True`` and :meth:`CaptureEgress.release`)."""

    def __init__(self, *, hold: bool = False) -> None:
        self.batches: list[list[tuple[str, float, float]]] = []
        self.hold = hold
        self._held: list[Callable[[], None]] = []
        self.dropped = 0
        self.queued_points = 0
        self.spooled = 0
        self.replayed = 0
        self.resent = 0
        self.spool_pending = 0
        self.timer_failures = 0
        self.spool: Spool | None = None
        self.producers = Producers()
        self.placing = ["127.0.0.1:2004"]
        self.started = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> list[object]:
        return []

    def send(self, points: Sequence[tuple[str, float, float]], on_written: Callable[[], None] | None = None) -> None:
        self.batches.append(list(points))
        if on_written is not None:
            if self.hold:
                self._held.append(on_written)
            else:
                on_written()

    def add_destination(self, text: str) -> bool:
        if text in self.placing:
            return False
        self.placing.append(text)
        return True

    def drain_destination(self, text: str) -> bool:
        return text in self.placing

    def remove_destination(self, text: str) -> bool:
        if text not in self.placing:
            return False
        self.placing.remove(text)
        return True

    def release(self) -> None:
        """Acknowledge the batches held so far (``hold=True``): their ``on_written`` callbacks run now."""
        held, self._held = self._held, []
        for callback in held:
            callback()

    @property
    def points(self) -> list[tuple[str, float, float]]:
        return [p for batch in self.batches for p in batch]


class FailingDisk:
    """A spool's SQLite connection whose disk refuses writes while ``failing``.

    Put in place with ``spool.db = FailingDisk(spool.db)``.

    A statement whose first word is in *fail_on* raises what SQLite raises
    on a full disk (or *error*); every other statement, and every statement
    while not failing, goes to the real connection.  ``refused`` counts
    the statements it failed.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        *,
        fail_on: Sequence[str] = ("INSERT", "DELETE", "COMMIT"),
        error: str = "database or disk is full",
    ) -> None:
        self.db = db
        self.fail_on = {word.upper() for word in fail_on}
        self.error = error
        self.failing = True
        self.refused = 0

    def _check(self, sql: str) -> None:
        if self.failing and sql.split(None, 1)[0].upper() in self.fail_on:
            self.refused += 1
            raise sqlite3.OperationalError(self.error)

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self._check(sql)
        return self.db.execute(sql, *args)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        self._check(sql)
        return self.db.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


if TYPE_CHECKING:  # each fake stands in for a protocol: mypy checks it against that protocol
    _fakes: tuple[Sender, Egress, PushProducer] = (FakeSender(), CaptureEgress(), FakeProducer())

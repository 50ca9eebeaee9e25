"""Calls on the clock's multiples of an interval, each handed the time of its own slot.

A collector's run, a statsd flush and a step's own metrics are data: their
datapoints carry a timestamp, and Whisper keeps one value per slot.  Stamped
with the moment the call happened, on a schedule started at any moment, a
late call can take the next call's slot: due at 101.9 s and run at 102.05 s,
a run shares second 102 with the one due at 102.9 s, one value overwrites
the other and second 101 stays empty.  A :class:`SlotSchedule` runs its
function at the multiples of the interval on the clock (every 10 s: at :00,
:10, :20...) and hands it the time of that multiple, however late the call
runs, so each call has a slot of its own.  A call so late that whole slots
went by takes the latest; the slots it missed stay empty, and are counted
(``missed``) and logged.

A :class:`Repeat` is the same promise for a task whose calls carry no
timestamp (a heartbeat, the spool's replay, a file watch): every *every*
seconds from its start.  Both are the one way DSAT runs a periodic task: a
call that raises is logged (a bounded sample, :func:`dsat.counters.should_log`)
and counted in ``failures``, and the schedule goes on.  A bare
``LoopingCall`` stops for good at its first exception, and nothing says so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from dsat.counters import should_log

#: A call this fraction of an interval before a multiple belongs to that multiple (float rounding of the clock).
TOLERANCE = 1e-6


class _Guarded:
    """What both schedules share: the clock and interval, the pending call, stop, and the failure handling (log a
    sample, count, go on)."""

    log = Logger()

    def __init__(self, clock: IReactorTime, every: float, *, name: str) -> None:
        if not (math.isfinite(every) and every > 0):
            raise ValueError(f"{name}: every must be a positive number of seconds, not {every!r}")
        self.clock = clock
        self.every = every
        self.name = name
        #: Calls that raised since start (each one logged up to should_log's sample).
        self.failures = 0
        self._delayed: IDelayedCall | None = None
        self._stopped = True

    def stop(self) -> None:
        self._stopped = True
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        self._delayed = None

    def _call(self, fn: Callable[..., object], *args: float) -> None:
        try:
            fn(*args)
        except Exception:
            self.failures += 1
            if should_log(self.failures):
                self.log.failure(
                    "{name}: scheduled call failed ({failures} so far); the schedule goes on",
                    name=self.name,
                    failures=self.failures,
                )


class Repeat(_Guarded):
    """Call ``fn()`` every *every* seconds on *clock*; an exception is logged and counted, and it runs again.

    With ``now=True`` the first call is at ``start()``.  A call that runs
    late does not bunch the next ones: each is *every* seconds after the end
    of the one before.
    """

    def __init__(
        self, clock: IReactorTime, every: float, fn: Callable[[], object], *, name: str, now: bool = False
    ) -> None:
        super().__init__(clock, every, name=name)
        self.fn = fn
        self.now = now

    @property
    def running(self) -> bool:
        return not self._stopped

    def start(self) -> None:
        self._stopped = False
        if self.now:
            self._run()
        else:
            self._schedule()

    def _schedule(self) -> None:
        self._delayed = self.clock.callLater(self.every, self._run)

    def _run(self) -> None:
        self._delayed = None
        self._call(self.fn)
        if not self._stopped and self._delayed is None:
            self._schedule()


class SlotSchedule(_Guarded):
    """Call ``fn(slot_time)`` at each multiple of *every* seconds on *clock*.

    The first call is at the first multiple after ``start()``, not at
    once: a call stamped with a multiple then always runs at it or after it,
    never before, so what it measures (a counter read for a rate, say)
    belongs to its stamp.  Started at 7.3 s with every 10 s, a call at once
    would be stamped 0 and read at 7.3 s, and a rate taken with the next
    one, stamped 10, would come out 2.7/10 of the truth.  An exception from
    *fn* is logged and the schedule goes on.  A call that fires in the slot
    of the last one (the clock stepped back) waits for the next multiple, so
    no slot is called twice; a restart follows the clock as it is.
    """

    def __init__(self, clock: IReactorTime, every: float, fn: Callable[[float], object], *, name: str) -> None:
        super().__init__(clock, every, name=name)
        self.fn = fn
        #: Slots that went by without a call, because a call ran that late.
        self.missed = 0
        self._late = 0
        self._slot: int | None = None

    @property
    def running(self) -> bool:
        return self._delayed is not None

    def start(self) -> None:
        """Call at each multiple of the interval from the next one on."""
        self._stopped = False
        self._slot = self._slot_at(self.clock.seconds())
        self._schedule()

    def next_time(self) -> float:
        """The multiple that ends the slot the clock is in now: the stamp of a call made early, such as at a stop."""
        return (self._slot_at(self.clock.seconds()) + 1) * self.every

    def _slot_at(self, t: float) -> int:
        return math.floor(t / self.every + TOLERANCE)

    def _schedule(self) -> None:
        assert self._slot is not None
        due = (self._slot + 1) * self.every - self.every * TOLERANCE / 2
        self._delayed = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._run)

    def _run(self) -> None:
        self._delayed = None
        now = self.clock.seconds()
        slot, last = self._slot_at(now), self._slot
        assert last is not None
        try:
            if slot == last:
                return  # this slot had its call: the clock stepped back within it
            if slot > last + 1:
                self._count_missed(slot - last - 1, now - (last + 1) * self.every)
            self._slot = slot
            self._call(self.fn, slot * self.every)
        finally:
            if not self._stopped:
                self._schedule()

    def _count_missed(self, slots: int, late: float) -> None:
        self.missed += slots
        self._late += 1
        if should_log(self._late):
            self.log.warn(
                "{name}: a call ran {late:.3g}s late: {slots} slot(s) of {every:g}s had none ({missed} so far)",
                name=self.name,
                late=late,
                slots=slots,
                every=self.every,
                missed=self.missed,
            )


#: The wall clock moving this many seconds more (or less) than the monotonic clock between two looks is a step.
STEP_TOLERANCE = 1.0


class ClockWatch:
    """Keeps a process's timers on time when the wall clock steps (NTP, an operator's ``date``, a VM resumed).

    Twisted times its delayed calls on the wall clock (``reactor.seconds()``
    is ``time.time()``).  Stepped back an hour, every timer of a process
    (heartbeats, the spool's replay, the tracker's deadlines, collector
    runs, the watchdog's pets, so the watchdog would kill it) would wait an
    hour; stepped forward, all would fire at once (every batch in flight
    timed out).  A ClockWatch looks every *every* seconds on a timer the
    step cannot delay (*call_later*: asyncio's loop, on the monotonic
    clock) and, when the wall clock moved more than :data:`STEP_TOLERANCE`
    against *monotonic*, moves every pending delayed call by the step
    (``IDelayedCall.reset``): each fires when it was meant to, as a clock
    that does not step measures it.  Timestamps stay on the wall clock: a
    :class:`SlotSchedule` stamps its calls with the multiples of the clock
    as it now reads (stepped back within a slot, it waits; stepped forward,
    the slots between are counted as missed).
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        *,
        call_later: Callable[[float, Callable[[], None]], Any],
        monotonic: Callable[[], float] = time.monotonic,
        every: float = 1.0,
    ) -> None:
        self.reactor = reactor
        self.call_later = call_later
        self.monotonic = monotonic
        self.every = every
        #: Steps seen since start, and the last one (seconds: positive forward).
        self.steps = 0
        self.last_step = 0.0
        self._offset = 0.0
        self._handle: Any = None

    def start(self) -> None:
        self._offset = self.reactor.seconds() - self.monotonic()
        self._handle = self.call_later(self.every, self.look)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def look(self) -> None:
        """Compare the clocks; after a step, move every pending timer by it.  Never raises: it looks again."""
        try:
            wall = self.reactor.seconds()
            offset = wall - self.monotonic()
            step, self._offset = offset - self._offset, offset
            if abs(step) > STEP_TOLERANCE:
                self._moved(step, wall)
        except Exception:
            self.log.failure("clock watch: a look failed; it looks again")
        self._handle = self.call_later(self.every, self.look)

    def _moved(self, step: float, wall: float) -> None:
        moved = 0
        for call in self.reactor.getDelayedCalls():
            if call.active():
                call.reset(max(0.0, call.getTime() - wall + step))
                moved += 1
        self.steps += 1
        self.last_step = step
        self.log.warn(
            "the wall clock stepped {direction} by {step:.1f}s: {moved} timers moved with it, so each fires when it"
            " was meant to; timestamps follow the clock ({steps} steps so far)",
            direction="forward" if step > 0 else "back",
            step=abs(step),
            moved=moved,
            steps=self.steps,
        )

"""The tracker's finite-state machine: one record per batch, driven by hop events.

Pure logic on an injected clock (``IReactorTime``): the tracker process
(:mod:`dsat.tracker`) feeds it events and publishes its changes.  Events for
a batch may arrive out of order (hops report on different sockets), so the
machine keeps a **leg balance** instead of a strict sequence: the emitter's
``SEND`` adds its legs, another hop's ``SEND`` adds ``legs - 1`` (it consumed
the leg it received), ``HAPPY_END`` removes one; the batch is ``HAPPY_END``
once the emitter's ``SEND`` was seen and the balance is zero.  ``ERROR`` ends
it in ``ERROR``; a batch still in flight at its deadline is ``TIMEOUT``.
Everything is bounded: in-flight batches, remembered finished ones.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class State(enum.Enum):
    IN_FLIGHT = "IN_FLIGHT"
    HAPPY_END = "HAPPY_END"
    ERROR = "ERROR"
    TIMEOUT = "TIMEOUT"
    #: Reserved for tracker-driven retries: a timed-out batch being re-sent.
    RETRY = "RETRY"
    #: Reserved for tracker-driven retries: retries exhausted.
    FAILURE = "FAILURE"


TERMINAL = frozenset({State.HAPPY_END, State.ERROR, State.TIMEOUT, State.FAILURE})


class Event(Protocol):
    """What the FSM reads from a tracker event (an envelope on the ``event`` channel)."""

    @property
    def task_id(self) -> str: ...
    @property
    def emitter(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def step(self) -> str: ...
    @property
    def event(self) -> str: ...
    @property
    def meta(self) -> Any: ...


@dataclass(frozen=True)
class Change:
    """One state transition of one batch."""

    task_id: str
    emitter: str
    type: str
    seq: int
    old: State | None
    new: State
    step: str
    reason: str
    at: float


@dataclass
class StepCounters:
    batches_received: int = 0
    batches_sent: int = 0
    batches_ended: int = 0
    batches_failed: int = 0
    batches_timed_out: int = 0
    points_received: int = 0
    points_sent: int = 0
    late: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Task:
    __slots__ = ("task_id", "emitter", "type", "seq", "balance", "emitter_seen", "state", "last_step", "timer")

    def __init__(self, event: Event) -> None:
        self.task_id = event.task_id
        self.emitter = event.emitter
        self.type = event.type
        self.seq = event.seq
        self.balance = 0
        self.emitter_seen = False
        self.state = State.IN_FLIGHT
        self.last_step = event.step
        self.timer: IDelayedCall | None = None


class BatchTracker:
    """Follows every batch from its emitter's SEND to its end."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        timeout: float,
        on_change: Callable[[Change], None] | None = None,
        max_in_flight: int = 100_000,
        max_finished: int = 10_000,
    ) -> None:
        self.clock = clock
        self.timeout = timeout
        self.on_change = on_change
        self.max_in_flight = max_in_flight
        self.max_finished = max_finished
        self.in_flight: OrderedDict[str, _Task] = OrderedDict()
        self.finished: OrderedDict[str, State] = OrderedDict()
        self.steps: dict[str, StepCounters] = {}
        self.totals = {"happy_end": 0, "error": 0, "timeout": 0, "evicted": 0, "bad_events": 0}

    def _counters(self, step: str) -> StepCounters:
        counters = self.steps.get(step)
        if counters is None:
            counters = self.steps[step] = StepCounters()
        return counters

    def handle(self, event: Event) -> None:
        """Apply one hop event."""
        kind = event.event
        meta = event.meta
        counters = self._counters(event.step)
        if kind == "ACK":
            counters.batches_received += 1
            counters.points_received += int(meta.get("points", 0))
        elif kind == "SEND":
            counters.batches_sent += 1
            counters.points_sent += int(meta.get("points", 0))
        elif kind == "HAPPY_END":
            counters.batches_ended += 1
        elif kind == "ERROR":
            counters.batches_failed += 1
        else:
            self.totals["bad_events"] += 1
            return
        if not event.task_id:
            return
        if event.task_id in self.finished:
            counters.late += 1
            return
        task = self.in_flight.get(event.task_id)
        if task is None:
            task = self._start(event)
        task.last_step = event.step
        if kind == "SEND":
            legs = int(meta.get("legs", 1))
            if event.step == task.emitter and not task.emitter_seen:
                task.emitter_seen = True
                task.balance += legs
            else:
                task.balance += legs - 1
        elif kind == "HAPPY_END":
            task.balance -= 1
        elif kind == "ERROR":
            self._finish(task, State.ERROR, event.step, str(meta.get("reason", "")))
            return
        if task.emitter_seen and task.balance <= 0:
            self._finish(task, State.HAPPY_END, event.step, "")

    def _start(self, event: Event) -> _Task:
        if len(self.in_flight) >= self.max_in_flight:
            _, oldest = self.in_flight.popitem(last=False)
            if oldest.timer is not None and oldest.timer.active():
                oldest.timer.cancel()
            self.totals["evicted"] += 1
        task = _Task(event)
        self.in_flight[task.task_id] = task
        task.timer = self.clock.callLater(self.timeout, self._expire, task.task_id)
        self._changed(task, None, State.IN_FLIGHT, event.step, "")
        return task

    def _expire(self, task_id: str) -> None:
        task = self.in_flight.get(task_id)
        if task is None:
            return
        task.timer = None
        self._counters(task.last_step).batches_timed_out += 1
        self._finish(task, State.TIMEOUT, task.last_step, f"no end within {self.timeout:g}s")

    def _finish(self, task: _Task, state: State, step: str, reason: str) -> None:
        if task.timer is not None and task.timer.active():
            task.timer.cancel()
        task.timer = None
        del self.in_flight[task.task_id]
        self.finished[task.task_id] = state
        if len(self.finished) > self.max_finished:
            self.finished.popitem(last=False)
        self.totals[state.value.lower()] += 1
        old, task.state = task.state, state
        self._changed(task, old, state, step, reason)

    def _changed(self, task: _Task, old: State | None, new: State, step: str, reason: str) -> None:
        if self.on_change is not None:
            self.on_change(
                Change(task.task_id, task.emitter, task.type, task.seq, old, new, step, reason, self.clock.seconds())
            )

    def state_of(self, task_id: str) -> State | None:
        task = self.in_flight.get(task_id)
        if task is not None:
            return task.state
        return self.finished.get(task_id)

    def snapshot(self) -> dict[str, Any]:
        """Counts by state and per step; JSON-serialisable (``dsat status`` prints it)."""
        return {
            "tasks": {"in_flight": len(self.in_flight), **self.totals},
            "steps": {step: c.as_dict() for step, c in sorted(self.steps.items())},
        }

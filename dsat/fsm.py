"""The tracker's finite-state machine: one record per batch, driven by hop events.

Pure logic on an injected clock (``IReactorTime``): the tracker process
(:mod:`dsat.tracker`) feeds it events and publishes its changes.  Events for
a batch may arrive out of order (hops report on different sockets; only the
events of one hop keep their order), so the machine keeps **legs per step**
instead of a strict sequence: a ``SEND`` names the step each of its legs goes
to (``to``), and every hop other than the emitter resolves each leg it
received exactly once, with a ``SEND`` of its own or a ``HAPPY_END``.  The
batch is ``HAPPY_END`` once the emitter's ``SEND`` was seen and, at every
step, the legs sent there equal the legs it resolved.  Counting per step, not
in one total, is what keeps a leg that ended early from balancing a fan-out
whose ``SEND`` has not arrived yet.  (The orchester addresses a leg it writes
to Carbon itself to itself.)  ``ERROR`` ends
it in ``ERROR``; a batch still in flight at its deadline is ``TIMEOUT``.
Everything is bounded: in-flight batches, remembered finished ones.  Odd
input (an unknown event, a missing task id, ``legs`` or ``points`` that are
not whole numbers, a ``SEND`` whose ``to`` does not name one step per leg) is
counted in ``bad_events`` and ignored, never raised.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Times a batch is sent again after its first attempt before it is given up (``[tracker] max_retries``).
DEFAULT_MAX_RETRIES = 3
#: Each retry's deadline is the one before times this (``[tracker] backoff``).
DEFAULT_BACKOFF = 2.0


class State(enum.Enum):
    """Where a batch is.  ``HAPPY_END`` and ``FAILURE`` are final; ``ERROR`` and ``TIMEOUT`` lead to
    ``RETRY`` (the emitter sends the batch again) until the retries are spent."""

    IN_FLIGHT = "IN_FLIGHT"
    HAPPY_END = "HAPPY_END"
    ERROR = "ERROR"
    TIMEOUT = "TIMEOUT"
    #: The emitter sends the batch again (attempt 2, 3...).
    RETRY = "RETRY"
    #: Retries spent: the batch is given up, and the tracker alerts.
    FAILURE = "FAILURE"


_KINDS = frozenset({"ACK", "SEND", "HAPPY_END", "ERROR"})


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
    def meta(self) -> Mapping[str, object]: ...


@dataclass(frozen=True)
class Change:
    """One state transition of one batch (``old`` is ``None`` when the batch is first seen)."""

    task_id: str
    emitter: str
    type: str
    seq: int
    old: State | None
    new: State
    step: str
    reason: str
    at: float
    attempt: int = 1


@dataclass
class StepCounters:
    """What one step reported, the batches that timed out after it last reported, and the retries its errors and
    timeouts caused (the retry is counted against the step where the attempt failed)."""

    batches_received: int = 0
    batches_sent: int = 0
    batches_ended: int = 0
    batches_failed: int = 0
    batches_timed_out: int = 0
    batches_retried: int = 0
    points_received: int = 0
    points_sent: int = 0
    late: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _whole(meta: Mapping[str, object], key: str, default: int | None) -> int | None:
    """``meta[key]`` if it is a whole number >= 0 (``default`` if absent), else ``None``."""
    value = meta.get(key, default)
    if type(value) is int and value >= 0:
        return value
    return None


def _legs_to(meta: Mapping[str, object], legs: int | None) -> tuple[str, ...] | None:
    """The receiving step of each leg of a SEND (``to``, comma-separated), or None if it does not fit ``legs``."""
    to = meta.get("to")
    if legs is None or not isinstance(to, str):
        return None
    names = tuple(to.split(",")) if to else ()
    if len(names) != legs or not all(names):
        return None
    return names


class _Task:
    __slots__ = (
        "task_id",
        "emitter",
        "type",
        "seq",
        "open_legs",
        "unbalanced",
        "emitter_seen",
        "state",
        "last_step",
        "timer",
        "attempt",
    )

    def __init__(self, event: Event) -> None:
        self.task_id = event.task_id
        self.emitter = event.emitter
        self.type = event.type
        self.seq = event.seq
        self.emitter_seen = False
        self.reset_legs()
        self.state = State.IN_FLIGHT
        self.last_step = event.step
        self.timer: IDelayedCall | None = None
        self.attempt = 1

    def reset_legs(self) -> None:
        #: per step, legs sent to it minus legs it resolved (by a SEND or a HAPPY_END of its own)
        self.open_legs: dict[str, int] = {}
        #: the sum over steps of |open_legs|: zero when every leg is accounted for
        self.unbalanced = 0

    def legs(self, step: str, delta: int) -> None:
        """*delta* more legs open at *step* (-1: it resolved one)."""
        old = self.open_legs.get(step, 0)
        new = self.open_legs[step] = old + delta
        self.unbalanced += abs(new) - abs(old)


class BatchTracker:
    """Follows every batch from the first event about it to its end."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        timeout: float,
        on_change: Callable[[Change], None] | None = None,
        max_in_flight: int = 100_000,
        max_finished: int = 10_000,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
    ) -> None:
        self.clock = clock
        self.timeout = timeout
        self.on_change = on_change
        self.max_in_flight = max_in_flight
        self.max_finished = max_finished
        self.max_retries = max_retries
        self.backoff = backoff
        #: In-flight batches, oldest first (the first evicted when full).
        self.in_flight: OrderedDict[str, _Task] = OrderedDict()
        #: Final state of recently finished batches, least recently used first.
        self.finished: OrderedDict[str, State] = OrderedDict()
        self.steps: dict[str, StepCounters] = {}
        self.totals = {
            "happy_end": 0,
            "error": 0,
            "timeout": 0,
            "retry": 0,
            "failure": 0,
            "evicted": 0,
            "bad_events": 0,
        }

    def _counters(self, step: str) -> StepCounters:
        counters = self.steps.get(step)
        if counters is None:
            counters = self.steps[step] = StepCounters()
        return counters

    def handle(self, event: Event) -> None:
        """Apply one hop event; raises nothing, odd events are counted in ``bad_events``."""
        kind = event.event
        meta = event.meta
        points = _whole(meta, "points", 0)
        legs = _whole(meta, "legs", None) if kind == "SEND" else 0
        to = _legs_to(meta, legs) if kind == "SEND" else ()
        attempt = _whole(meta, "attempt", 1)
        if kind not in _KINDS or not event.task_id or points is None or to is None or not attempt:
            self.totals["bad_events"] += 1
            return
        step = event.step
        counters = self._counters(step)
        if kind == "ACK":
            counters.batches_received += 1
            counters.points_received += points
        elif kind == "SEND":
            counters.batches_sent += 1
            counters.points_sent += points
        elif kind == "HAPPY_END":
            counters.batches_ended += 1
        else:
            counters.batches_failed += 1

        task_id = event.task_id
        if task_id in self.finished:
            self.finished.move_to_end(task_id)
            counters.late += 1
            return
        task = self.in_flight.get(task_id)
        if task is None:
            task = self._start(event, attempt)
        elif attempt < task.attempt:
            counters.late += 1  # an event of an attempt already given up
            return
        elif attempt > task.attempt:
            self._restart(task, attempt)
        task.last_step = step
        if kind == "ERROR":
            self._failed(task, State.ERROR, step, str(meta.get("reason", "")))
            return
        if kind == "SEND" and step == task.emitter:
            task.emitter_seen = True
        elif kind != "ACK":
            task.legs(step, -1)
        for target in to:
            task.legs(target, 1)
        if task.emitter_seen and task.unbalanced == 0:
            self._finish(task, State.HAPPY_END, step, "")

    def _start(self, event: Event, attempt: int) -> _Task:
        if len(self.in_flight) >= self.max_in_flight:
            _, oldest = self.in_flight.popitem(last=False)
            if oldest.timer is not None:
                oldest.timer.cancel()
            self.totals["evicted"] += 1
        task = _Task(event)
        task.attempt = attempt
        self.in_flight[task.task_id] = task
        task.timer = self.clock.callLater(self._deadline(task), self._expire, task)
        self._changed(task, None, State.IN_FLIGHT, event.step, "")
        return task

    def _deadline(self, task: _Task) -> float:
        """Seconds the current attempt has: ``timeout``, times ``backoff`` for each retry."""
        return self.timeout * self.backoff ** (task.attempt - 1)

    def _restart(self, task: _Task, attempt: int) -> None:
        """Begin attempt *attempt* of *task*: a new journey with a new deadline."""
        task.attempt = attempt
        task.reset_legs()
        task.emitter_seen = False
        if task.timer is not None:
            task.timer.cancel()
        task.timer = self.clock.callLater(self._deadline(task), self._expire, task)

    def _expire(self, task: _Task) -> None:
        task.timer = None
        self._counters(task.last_step).batches_timed_out += 1
        self._failed(task, State.TIMEOUT, task.last_step, f"not ended within {self._deadline(task):g}s")

    def _failed(self, task: _Task, state: State, step: str, reason: str) -> None:
        """ERROR or TIMEOUT: retry the batch, or give it up when the retries are spent."""
        self.totals[state.value.lower()] += 1
        old, task.state = task.state, state
        self._changed(task, old, state, step, reason)
        if task.attempt > self.max_retries:
            self._finish(task, State.FAILURE, step, f"gave up after {task.attempt} attempts; last: {reason}")
            return
        self.totals["retry"] += 1
        self._counters(step).batches_retried += 1
        self._restart(task, task.attempt + 1)
        task.state = State.RETRY
        self._changed(task, state, State.RETRY, step, reason)

    def _finish(self, task: _Task, state: State, step: str, reason: str) -> None:
        if task.timer is not None:
            task.timer.cancel()
            task.timer = None
        del self.in_flight[task.task_id]
        self.finished[task.task_id] = state
        if len(self.finished) > self.max_finished:
            self.finished.popitem(last=False)
        if state is State.HAPPY_END or state is State.FAILURE:
            self.totals[state.value.lower()] += 1
        old, task.state = task.state, state
        self._changed(task, old, state, step, reason)

    def _changed(self, task: _Task, old: State | None, new: State, step: str, reason: str) -> None:
        if self.on_change is not None:
            self.on_change(
                Change(
                    task.task_id,
                    task.emitter,
                    task.type,
                    task.seq,
                    old,
                    new,
                    step,
                    reason,
                    self.clock.seconds(),
                    task.attempt,
                )
            )

    def state_of(self, task_id: str) -> State | None:
        """The batch's state, or ``None`` if it was never seen, evicted or forgotten."""
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

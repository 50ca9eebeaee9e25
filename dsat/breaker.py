"""Circuit breakers: stop hammering a step that keeps failing.

The tracker keeps one :class:`Breaker` per step and feeds it the step's
outcomes (an ``ERROR`` it reported is a failure; a ``SEND`` or ``HAPPY_END``
a success).  When, within ``window`` seconds, at least ``min_failures``
failures make more than ``threshold`` of the outcomes, the breaker **opens**:
the tracker alerts and publishes it, and the steps upstream stop sending to
it (their batches wait in the emitters' retry windows).  After ``cooldown``
seconds it is **half-open**: upstream may send one probe batch; a success
closes it, a failure opens it again for another cool-down.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Topic of circuit-breaker changes on the tracker's PUB socket (:mod:`dsat.events`).
BREAKER_TOPIC = b"breaker\0"
#: Seconds of outcomes a breaker looks back over (``[tracker] breaker_window``).
DEFAULT_WINDOW = 30.0
#: Share of failures among those outcomes above which it opens (``[tracker] breaker_threshold``).
DEFAULT_THRESHOLD = 0.5
#: Failures within the window it takes to open, whatever the share (``[tracker] breaker_min_failures``).
DEFAULT_MIN_FAILURES = 5
#: Seconds it stays open before it lets one probe batch through (``[tracker] breaker_cooldown``).
DEFAULT_COOLDOWN = 30.0


class Circuit(enum.Enum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


class Breaker:
    """One step's circuit, on an injected clock."""

    def __init__(
        self,
        step: str,
        clock: IReactorTime,
        *,
        on_change: Callable[[str, Circuit, str], None],
        window: float = DEFAULT_WINDOW,
        threshold: float = DEFAULT_THRESHOLD,
        min_failures: int = DEFAULT_MIN_FAILURES,
        cooldown: float = DEFAULT_COOLDOWN,
    ) -> None:
        self.step = step
        self.clock = clock
        self.on_change = on_change
        self.window = window
        self.threshold = threshold
        self.min_failures = min_failures
        self.cooldown = cooldown
        self.state = Circuit.CLOSED
        self.outcomes: deque[tuple[float, bool]] = deque()
        self.failures = 0
        self.opened = 0
        self._timer: IDelayedCall | None = None

    def record(self, ok: bool) -> None:
        """One outcome of the step."""
        now = self.clock.seconds()
        if self.state is Circuit.HALF_OPEN:
            if ok:
                self._set(Circuit.CLOSED, "the probe batch went through")
            else:
                self._open("the probe batch failed")
            return
        if self.state is Circuit.OPEN:
            return
        outcomes = self.outcomes
        outcomes.append((now, ok))
        if not ok:
            self.failures += 1
        while outcomes and outcomes[0][0] <= now - self.window:
            _, was_ok = outcomes.popleft()
            if not was_ok:
                self.failures -= 1
        if self.failures >= self.min_failures and self.failures > self.threshold * len(outcomes):
            self._open(f"{self.failures} failures in {len(outcomes)} outcomes within {self.window:g}s")

    def _open(self, reason: str) -> None:
        self.opened += 1
        self.outcomes.clear()
        self.failures = 0
        self._set(Circuit.OPEN, reason)
        self._timer = self.clock.callLater(self.cooldown, self._half_open)

    def _half_open(self) -> None:
        self._timer = None
        self._set(Circuit.HALF_OPEN, f"cool-down of {self.cooldown:g}s over: probing")

    def _set(self, state: Circuit, reason: str) -> None:
        self.state = state
        self.on_change(self.step, state, reason)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()


class Circuits:
    """What an upstream step knows of its targets' breakers, from the tracker's PUB socket.

    ``allow(step)`` is true while a circuit is closed; false while it is open;
    and true exactly once while it is half-open (the probe), false after that
    until the tracker says how the probe went.
    """

    def __init__(self) -> None:
        self.states: dict[str, Circuit] = {}
        self._probed: set[str] = set()
        #: Batches not sent to a step because its circuit was open.
        self.diverted = 0

    def take(self, topic: bytes, body: Mapping[str, Any]) -> bool:
        """Apply a frame from the tracker's PUB socket if it is a circuit change; True if it was."""
        if topic != BREAKER_TOPIC:
            return False
        self.update(str(body.get("step")), str(body.get("state")))
        return True

    def update(self, step: str, state: str) -> None:
        """Take one published change; an unknown state name is ignored."""
        if state in Circuit.__members__:
            self.states[step] = Circuit[state]
            self._probed.discard(step)

    def allow(self, step: str) -> bool:
        state = self.states.get(step, Circuit.CLOSED)
        if state is Circuit.CLOSED:
            return True
        if state is Circuit.HALF_OPEN and step not in self._probed:
            self._probed.add(step)
            return True
        self.diverted += 1
        return False

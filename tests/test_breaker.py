"""Circuit breakers on an injected clock: open on a failure rate, half-open after cool-down, close on a probe."""

from __future__ import annotations

from twisted.internet.task import Clock

from dsat.breaker import Breaker, Circuit


def make(**kw: float) -> tuple[Breaker, list[tuple[Circuit, str]], Clock]:
    clock = Clock()
    changes: list[tuple[Circuit, str]] = []
    breaker = Breaker("t", clock, on_change=lambda step, state, reason: changes.append((state, reason)), **kw)
    return breaker, changes, clock


def test_opens_when_failures_pass_the_threshold() -> None:
    """Five failures out of seven outcomes in the window open the circuit, with the reason."""
    breaker, changes, _ = make(min_failures=5, threshold=0.5)
    for ok in (True, True, False, False, False, False):
        breaker.record(ok)
    assert breaker.state is Circuit.CLOSED
    breaker.record(False)
    assert breaker.state is Circuit.OPEN
    assert changes[-1][0] is Circuit.OPEN and "5 failures in 7 outcomes" in changes[-1][1]


def test_a_healthy_majority_keeps_it_closed() -> None:
    """Failures under the threshold rate do not open it."""
    breaker, changes, _ = make(min_failures=5, threshold=0.5)
    for _ in range(6):
        breaker.record(False)
        breaker.record(True)
        breaker.record(True)
    assert breaker.state is Circuit.CLOSED and changes == []


def test_old_failures_leave_the_window() -> None:
    """Failures older than the window no longer count."""
    breaker, _, clock = make(min_failures=3, window=10)
    breaker.record(False)
    breaker.record(False)
    clock.advance(11)
    breaker.record(False)
    assert breaker.state is Circuit.CLOSED


def test_half_open_after_cooldown_then_probe_decides() -> None:
    """After the cool-down it is half-open; a failed probe reopens, a good one closes."""
    breaker, changes, clock = make(min_failures=1, threshold=0.0, cooldown=30)
    breaker.record(False)
    assert breaker.state is Circuit.OPEN
    clock.advance(29.9)
    assert breaker.state is Circuit.OPEN
    clock.advance(0.1)
    assert breaker.state is Circuit.HALF_OPEN
    breaker.record(False)
    assert breaker.state is Circuit.OPEN and breaker.opened == 2
    clock.advance(30)
    breaker.record(True)
    assert breaker.state is Circuit.CLOSED
    assert [c[0] for c in changes] == [Circuit.OPEN, Circuit.HALF_OPEN, Circuit.OPEN, Circuit.HALF_OPEN, Circuit.CLOSED]


def test_outcomes_while_open_are_ignored() -> None:
    """Late outcomes that arrive while open change nothing."""
    breaker, changes, _ = make(min_failures=1, threshold=0.0)
    breaker.record(False)
    breaker.record(True)
    breaker.record(False)
    assert breaker.state is Circuit.OPEN and len(changes) == 1
    breaker.stop()


def test_upstream_view_sends_one_probe_when_half_open() -> None:
    """Circuits lets everything through when closed, nothing when open, one probe when half-open."""
    from dsat.breaker import Circuits

    circuits = Circuits()
    assert circuits.allow("t")
    circuits.update("t", "OPEN")
    assert not circuits.allow("t") and circuits.diverted == 1
    circuits.update("t", "HALF_OPEN")
    assert circuits.allow("t")
    assert not circuits.allow("t")
    circuits.update("t", "CLOSED")
    assert circuits.allow("t") and circuits.allow("t")

"""The watchdog of a step's process: petted by its reactor, it kills the process whose reactor stops turning."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
from twisted.internet.task import Clock

from dsat.watchdog import PETS, SIGNAL, Watchdog


class KernelTimer:
    """What ``setitimer(ITIMER_REAL)`` does, on a fake clock: one deadline, replaced by each call, 0 disarms."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.deadline: float | None = None
        self.installed = 0

    def install(self) -> None:
        self.installed += 1

    def alarm(self, seconds: float) -> None:
        self.deadline = self.clock.seconds() + seconds if seconds else None

    def fires_within(self, seconds: float) -> bool:
        """Whether the signal would come if the reactor did not turn for the next *seconds*."""
        return self.deadline is not None and self.deadline <= self.clock.seconds() + seconds


def armed(timeout: float = 60.0) -> tuple[Watchdog, KernelTimer, Clock]:
    clock = Clock()
    timer = KernelTimer(clock)
    watchdog = Watchdog(clock, timeout, name="s1", install=timer.install, alarm=timer.alarm)
    watchdog.start()
    return watchdog, timer, clock


def test_a_reactor_that_turns_is_never_killed() -> None:
    """An hour of a reactor turning every second: the alarm is always further than the timeout ahead."""
    _, timer, clock = armed(60.0)
    assert timer.installed == 1
    for _ in range(3600):
        clock.advance(1.0)
        assert not timer.fires_within(60.0)


def test_a_reactor_stuck_for_the_timeout_is_killed_and_not_before() -> None:
    """The signal comes once the reactor has not turned for the timeout, within a tenth more, never sooner."""
    _, timer, clock = armed(60.0)
    for stuck_from in (0.0, 2.0, 5.9):  # right after a pet, between two, just before the next
        clock.advance(stuck_from)
        assert not timer.fires_within(60.0)
        assert timer.fires_within(60.0 * (1 + 1 / PETS))
        clock.advance(6.0 - stuck_from)  # the reactor turns again: the pets go on


def test_a_stopped_watchdog_is_disarmed_and_schedules_nothing() -> None:
    """At a stop the alarm is cancelled (0) and no pet is left on the reactor."""
    watchdog, timer, clock = armed(10.0)
    watchdog.stop()
    assert timer.deadline is None and not watchdog.running
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan"), float("inf")])
def test_a_timeout_that_is_no_duration_is_refused(timeout: float) -> None:
    """A watchdog's timeout is a positive, finite number of seconds."""
    with pytest.raises(ValueError, match="s1: the watchdog's timeout"):
        Watchdog(Clock(), timeout, name="s1", install=lambda: None, alarm=lambda _s: None)


HANGS = """
import re
from dsat.watchdog import alarm, install

def hang_for_ever(kind):
    if kind == "loop":
        while True:
            pass
    re.match(r"(a+)+$", "a" * 64 + "b")  # backtracks for ever, holding the GIL

install()
alarm(0.5)
hang_for_ever({kind!r})
"""


@pytest.mark.integration  # a child process that hangs
@pytest.mark.parametrize("kind", ["loop", "regex"])
def test_a_process_that_hangs_is_killed_by_the_signal_with_its_traceback(kind: str) -> None:
    """A real process stuck in Python code, or in C holding the GIL, dies by SIGALRM after printing where it was."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(HANGS.format(kind=kind))], capture_output=True, text=True, timeout=60
    )
    assert SIGNAL == signal.SIGALRM
    assert done.returncode == -signal.SIGALRM, done.stderr
    assert "in hang_for_ever" in done.stderr

"""SlotSchedule: calls on the multiples of an interval, each given the time of its own slot (fake clock)."""

from __future__ import annotations

from itertools import pairwise

import pytest
from twisted.internet.task import Clock

from dsat.schedule import ClockWatch, Repeat, SlotSchedule


def clock_at(t: float) -> Clock:
    clock = Clock()
    clock.advance(t)
    return clock


def started(clock: Clock, every: float) -> tuple[SlotSchedule, list[float]]:
    slots: list[float] = []
    schedule = SlotSchedule(clock, every, slots.append, name="test")
    schedule.start()
    return schedule, slots


def test_the_first_call_is_at_the_next_multiple_then_at_each_one() -> None:
    """Not at once: a call stamped 1,000,000 at 1,000,007.3 would have read its measure 7.3 s after its stamp."""
    clock = clock_at(1_000_007.3)
    _, slots = started(clock, 10)
    assert slots == []
    clock.advance(2.6)
    assert slots == []
    clock.advance(0.1)  # 1,000,010: the next multiple
    assert slots == [1_000_010]
    clock.pump([10, 10])
    assert slots == [1_000_010, 1_000_020, 1_000_030]


def test_a_late_call_keeps_its_own_slot_and_the_next_keeps_its_own() -> None:
    """The bug this fixes: due at 101.9, run at 102.05 and stamped then, a run took second 102 from the next."""
    clock = clock_at(100.9)
    _, slots = started(clock, 1)
    clock.advance(1.05)  # due at 101.0 (the multiple, not 101.9), run 0.95 s late
    assert slots == [101]
    clock.advance(0.05)  # 102.0: on time again
    assert slots == [101, 102]


def test_a_call_late_by_whole_slots_takes_the_latest_and_counts_the_missed() -> None:
    clock = clock_at(60)
    schedule, slots = started(clock, 10)
    clock.advance(35)  # due at 70, runs at 95: slots 70 and 80 had no call
    assert slots == [90]
    assert schedule.missed == 2
    clock.advance(5)
    assert slots == [90, 100]
    assert schedule.missed == 2


def test_each_call_gets_a_distinct_slot_however_late_the_calls_run() -> None:
    """Seeded jitter of up to 1.5 intervals on every call: slots strictly increase, all on the grid."""
    import random

    rng = random.Random(7)
    begin = 1_700_000_000.42
    clock = clock_at(begin)
    every = 0.25
    schedule, slots = started(clock, every)
    for _ in range(2000):
        due = clock.getDelayedCalls()[0].getTime()
        clock.advance(due - clock.seconds() + rng.random() * every * 1.5)
    assert all(b > a for a, b in pairwise(slots))
    assert all(abs(s / every - round(s / every)) < 1e-6 for s in slots)
    # every slot after the one it started in either had its call or was counted missed
    assert len(slots) + schedule.missed == round(slots[-1] / every) - int(begin // every)


def test_a_fractional_interval_lands_on_its_grid_without_float_drift() -> None:
    clock = clock_at(0)
    _, slots = started(clock, 0.1)
    clock.pump([0.1] * 1000)
    assert len(slots) == 1000
    assert slots[-1] == pytest.approx(100.0)
    assert len(set(slots)) == 1000


def test_a_restart_in_the_slot_of_the_last_call_waits_for_the_next_multiple() -> None:
    clock = clock_at(100.5)
    schedule, slots = started(clock, 1)
    clock.advance(0.5)
    assert slots == [101]
    schedule.stop()
    clock.rightNow = 101.2  # still slot 101 (or the clock stepped back within it)
    schedule.start()
    clock.advance(0.7)
    assert slots == [101]
    clock.advance(0.1)
    assert slots == [101, 102]


def test_a_clock_stepped_back_by_more_than_a_slot_is_followed() -> None:
    clock = clock_at(100.5)
    schedule, slots = started(clock, 1)
    clock.advance(0.5)
    schedule.stop()
    clock.rightNow = 40.5  # stepped back a minute: the stamps follow the clock, not wait a minute
    schedule.start()
    clock.advance(0.5)
    assert slots == [101, 41]
    assert schedule.missed == 0


def test_an_exception_is_logged_and_counted_and_the_schedule_goes_on() -> None:
    clock = clock_at(0)
    calls: list[float] = []

    def fn(at: float) -> None:
        calls.append(at)
        if len(calls) == 2:
            raise RuntimeError("a bug in the callee")

    schedule = SlotSchedule(clock, 1, fn, name="test")
    schedule.start()
    clock.pump([1, 1, 1, 1])
    assert calls == [1, 2, 3, 4]
    assert schedule.running
    assert schedule.failures == 1


def test_next_time_is_the_multiple_that_ends_the_slot_the_clock_is_in() -> None:
    clock = clock_at(1_000_007.3)
    schedule, slots = started(clock, 10)
    assert schedule.next_time() == 1_000_010
    clock.advance(2.7)
    assert slots == [1_000_010] and schedule.next_time() == 1_000_020


def test_stop_cancels_the_next_call() -> None:
    clock = clock_at(0)
    schedule, slots = started(clock, 1)
    clock.advance(1)
    assert schedule.running and slots == [1]
    schedule.stop()
    assert not schedule.running
    assert clock.getDelayedCalls() == []
    clock.advance(5)
    assert slots == [1]


def test_stop_from_inside_the_call_holds() -> None:
    clock = clock_at(0)
    schedule = SlotSchedule(clock, 1, lambda at: schedule.stop(), name="test")
    schedule.start()
    clock.advance(1)
    assert not schedule.running
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("every", [0, -1, float("nan"), float("inf")])
def test_an_interval_that_is_not_a_positive_finite_number_is_refused(every: float) -> None:
    with pytest.raises(ValueError, match="every"):
        SlotSchedule(Clock(), every, lambda at: None, name="test")


def test_repeat_calls_every_interval_from_its_start() -> None:
    clock = clock_at(0.3)
    calls: list[float] = []
    repeat = Repeat(clock, 2, lambda: calls.append(clock.seconds()), name="test")
    repeat.start()
    assert calls == []
    clock.pump([2, 2, 2])
    assert calls == pytest.approx([2.3, 4.3, 6.3])
    assert repeat.running


def test_repeat_with_now_calls_at_start() -> None:
    clock = clock_at(5)
    calls: list[float] = []
    Repeat(clock, 1, lambda: calls.append(clock.seconds()), name="test", now=True).start()
    assert calls == [5]
    clock.advance(1)
    assert calls == [5, 6]


def test_repeat_that_raises_every_time_keeps_running_and_counts_each_failure() -> None:
    """What a bare LoopingCall did not: its first exception stopped it for good (the spool's replay did)."""
    clock = clock_at(0)
    calls = [0]

    def broken() -> None:
        calls[0] += 1
        raise OSError("disk full")

    repeat = Repeat(clock, 0.1, broken, name="test")
    repeat.start()
    clock.pump([0.1] * 50)
    assert calls[0] == 50
    assert repeat.failures == 50
    assert repeat.running


def test_repeat_stopped_from_inside_its_call_is_not_called_again() -> None:
    clock = clock_at(0)
    calls = [0]

    def once() -> None:
        calls[0] += 1
        repeat.stop()

    repeat = Repeat(clock, 1, once, name="test")
    repeat.start()
    clock.pump([1, 1, 1])
    assert calls[0] == 1
    assert not repeat.running
    assert not clock.getDelayedCalls()


def test_repeat_stopped_and_started_again_has_one_pending_call() -> None:
    clock = clock_at(0)
    calls = [0]
    repeat = Repeat(clock, 1, lambda: calls.__setitem__(0, calls[0] + 1), name="test")
    repeat.start()
    repeat.stop()
    repeat.start()
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(1)
    assert calls[0] == 1


def test_repeat_refuses_an_interval_that_is_not_a_positive_number() -> None:
    for every in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive"):
            Repeat(clock_at(0), every, lambda: None, name="test")


class Monotonic:
    """A monotonic clock moved by hand, beside the wall clock (a twisted Clock) that may step."""

    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def watched(clock: Clock) -> tuple[ClockWatch, Monotonic, list[float]]:
    """A Repeat every second on *clock*, and a ClockWatch (looked at by hand) over it."""
    mono = Monotonic()
    calls: list[float] = []
    Repeat(clock, 1, lambda: calls.append(mono.now), name="test").start()
    watch = ClockWatch(clock, call_later=lambda delay, fn: None, monotonic=mono)
    watch.start()
    return watch, mono, calls


def walk(clock: Clock, mono: Monotonic, seconds: float) -> None:
    """Both clocks go on by *seconds* (no step)."""
    mono.now += seconds
    clock.advance(seconds)


@pytest.mark.parametrize("step", [-3600.0, 3600.0], ids=["back_an_hour", "forward_an_hour"])
def test_a_wall_clock_step_leaves_every_timer_firing_when_it_was_meant_to(step: float) -> None:
    """Twisted times calls on the wall clock: stepped back an hour they would wait an hour, forward all fire at once;
    the watch moves them by the step, so the Repeat keeps its one call a second of monotonic time."""
    clock = clock_at(1_000_000)
    watch, mono, calls = watched(clock)
    walk(clock, mono, 0.5)
    clock.rightNow += step  # the step: the monotonic clock does not move
    watch.look()
    assert watch.steps == 1 and watch.last_step == pytest.approx(step)
    clock.advance(0)
    assert calls == []  # forward: nothing fired at once
    walk(clock, mono, 0.5)
    assert calls == [501.0]  # back: it did not wait an hour
    walk(clock, mono, 1.0)
    assert calls == [501.0, 502.0]


def test_without_the_watch_a_step_back_stalls_the_timers() -> None:
    """What the watch is for, shown on the same clock: no call in the next seconds."""
    clock = clock_at(1_000_000)
    calls: list[float] = []
    Repeat(clock, 1, lambda: calls.append(clock.seconds()), name="test").start()
    clock.advance(0.5)
    clock.rightNow -= 3600
    clock.pump([1.0] * 10)
    assert calls == []


@pytest.mark.parametrize("step", [-3600, 3600], ids=["back_an_hour", "forward_an_hour"])
def test_slots_follow_the_wall_clock_after_a_step(step: int) -> None:
    """A SlotSchedule's next call comes after the same monotonic wait, stamped with the clock as it now reads."""
    clock = clock_at(1_000_000)
    mono = Monotonic()
    slots: list[float] = []
    schedule = SlotSchedule(clock, 10, slots.append, name="test")
    schedule.start()
    watch = ClockWatch(clock, call_later=lambda delay, fn: None, monotonic=mono)
    watch.start()
    walk(clock, mono, 10)
    clock.rightNow += step
    watch.look()
    walk(clock, mono, 10)
    walk(clock, mono, 10)
    assert slots == [1_000_010, 1_000_020 + step, 1_000_030 + step]
    assert schedule.failures == 0


def test_small_drift_is_not_a_step_and_a_failing_look_looks_again() -> None:
    clock = clock_at(1_000_000)
    mono = Monotonic()
    scheduled: list[float] = []
    watch = ClockWatch(clock, call_later=lambda delay, fn: scheduled.append(delay), monotonic=mono)
    watch.start()
    clock.rightNow += 0.5  # NTP slewing, a late look: under STEP_TOLERANCE
    watch.look()
    assert watch.steps == 0
    watch.reactor = None  # type: ignore[assignment]  # anything that makes a look raise
    watch.look()
    assert len(scheduled) == 3  # start, and after each look, the failing one included

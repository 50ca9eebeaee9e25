"""Tests for dsat.fsm: the per-batch state machine, driven on a fake clock."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from twisted.internet.task import Clock

from dsat.envelope import Envelope
from dsat.fsm import BatchTracker, Change, State, StepCounters

TIMEOUT = 30.0


@dataclass(frozen=True)
class Ev:
    """A tracker event with just the fields the FSM reads."""

    event: str
    step: str
    task_id: str = "t1"
    emitter: str = "cpu"
    type: str = "host"
    seq: int = 7
    meta: Mapping[str, object] = field(default_factory=dict)


def send(step: str, *to: str, points: int = 0, task_id: str = "t1") -> Ev:
    """*step* sends the batch on, one leg to each of *to* (the orchester when none is named)."""
    to = to or ("orchester",)
    return Ev("SEND", step, task_id, meta={"legs": len(to), "to": ",".join(to), "points": points})


def ack(step: str, points: int = 0, task_id: str = "t1") -> Ev:
    return Ev("ACK", step, task_id, meta={"points": points})


def end(step: str, task_id: str = "t1") -> Ev:
    return Ev("HAPPY_END", step, task_id)


def error(step: str, reason: str, task_id: str = "t1") -> Ev:
    return Ev("ERROR", step, task_id, meta={"reason": reason})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def changes() -> list[Change]:
    return []


@pytest.fixture
def fsm(clock: Clock, changes: list[Change]) -> BatchTracker:
    return BatchTracker(clock, timeout=TIMEOUT, on_change=changes.append, max_retries=0)


def feed(fsm: BatchTracker, *events: Ev) -> None:
    for event in events:
        fsm.handle(event)


def transitions(changes: list[Change]) -> list[tuple[State | None, State, str]]:
    return [(c.old, c.new, c.step) for c in changes]


def test_states_are_named_by_their_values() -> None:
    """Every state's value is its name, including the retry states reserved for later."""
    assert [s.value for s in State] == ["IN_FLIGHT", "HAPPY_END", "ERROR", "TIMEOUT", "RETRY", "FAILURE"]
    assert all(s.name == s.value for s in State)


def test_simple_chain_ends_happy(fsm: BatchTracker) -> None:
    """emitter SEND, orchester ACK and HAPPY_END take a batch to HAPPY_END."""
    feed(fsm, send("cpu"), ack("orchester"))
    assert fsm.state_of("t1") is State.IN_FLIGHT
    feed(fsm, end("orchester"))
    assert fsm.state_of("t1") is State.HAPPY_END
    assert fsm.snapshot()["tasks"]["in_flight"] == 0
    assert fsm.snapshot()["tasks"]["happy_end"] == 1


def test_fan_out_ends_when_every_leg_has_ended(fsm: BatchTracker) -> None:
    """A hop that sends 2 legs keeps the batch in flight until both legs report HAPPY_END."""
    feed(fsm, send("cpu"), ack("orchester"), send("orchester", "a", "b"), ack("a"), ack("b"), end("a"))
    assert fsm.state_of("t1") is State.IN_FLIGHT
    feed(fsm, end("b"))
    assert fsm.state_of("t1") is State.HAPPY_END


def test_happy_end_before_the_emitter_send(fsm: BatchTracker) -> None:
    """A HAPPY_END that overtakes the emitter's SEND does not end the batch until that SEND arrives."""
    feed(fsm, end("orchester"), ack("orchester"))
    assert fsm.state_of("t1") is State.IN_FLIGHT
    feed(fsm, send("cpu"))
    assert fsm.state_of("t1") is State.HAPPY_END


def test_ends_overtaking_every_send_wait_for_the_legs_they_end(fsm: BatchTracker) -> None:
    """With both legs' ends first, the batch ends only once the SENDs of those legs are in."""
    feed(fsm, end("a"), end("b"), send("cpu"))
    assert fsm.state_of("t1") is State.IN_FLIGHT
    feed(fsm, send("orchester", "a", "b"))
    assert fsm.state_of("t1") is State.HAPPY_END


def test_a_leg_ending_before_the_middle_hop_reports_its_fan_out(fsm: BatchTracker) -> None:
    """cpu -> rate -> {a, b}: a's end, seen before rate's SEND, does not end the batch (events race)."""
    feed(fsm, send("cpu", "rate"), ack("a"), end("a"))
    assert fsm.state_of("t1") is State.IN_FLIGHT
    feed(fsm, ack("rate"))
    assert fsm.state_of("t1") is State.IN_FLIGHT
    feed(fsm, send("rate", "a", "b"))
    assert fsm.state_of("t1") is State.IN_FLIGHT
    feed(fsm, ack("b"), end("b"))
    assert fsm.state_of("t1") is State.HAPPY_END


def interleavings(lengths: dict[str, int]) -> set[tuple[str, ...]]:
    """Every distinct order of hop names in which hop h appears lengths[h] times."""
    return set(itertools.permutations([hop for hop, n in lengths.items() for _ in range(n)]))


def test_any_arrival_order_ends_exactly_when_the_last_event_is_in(clock: Clock) -> None:
    """Each hop's events in order (one socket each), hops interleaved every possible way: HAPPY_END only at the last."""
    by_hop = {
        "cpu": [send("cpu", "rate")],
        "rate": [ack("rate"), send("rate", "a", "b")],
        "a": [ack("a"), end("a")],
        "b": [ack("b"), end("b")],
    }
    orders = interleavings({hop: len(events) for hop, events in by_hop.items()})
    assert len(orders) == 630  # 7! / (1! 2! 2! 2!)
    for order in orders:
        fsm = BatchTracker(clock, timeout=TIMEOUT, on_change=lambda change: None, max_retries=0)
        cursor = dict.fromkeys(by_hop, 0)
        events = []
        for hop in order:
            events.append(by_hop[hop][cursor[hop]])
            cursor[hop] += 1
        for event in events[:-1]:
            fsm.handle(event)
            assert fsm.state_of("t1") is State.IN_FLIGHT, (order, event)
        fsm.handle(events[-1])
        assert fsm.state_of("t1") is State.HAPPY_END, order


def test_orchester_writing_one_leg_to_carbon_itself(fsm: BatchTracker) -> None:
    """A type routed to [archive, carbon]: the orchester addresses the carbon leg to itself and ends it."""
    feed(fsm, send("cpu"), ack("orchester"), send("orchester", "archive", "orchester"), ack("archive"))
    feed(fsm, end("archive"))
    assert fsm.state_of("t1") is State.IN_FLIGHT
    feed(fsm, end("orchester"))
    assert fsm.state_of("t1") is State.HAPPY_END


def test_two_legs_to_the_same_step_need_two_ends(fsm: BatchTracker) -> None:
    """A transform returning two batches for one next step sends two legs there; both must end."""
    feed(fsm, send("cpu", "split"), send("split", "orchester", "orchester"), end("orchester"))
    assert fsm.state_of("t1") is State.IN_FLIGHT
    feed(fsm, end("orchester"))
    assert fsm.state_of("t1") is State.HAPPY_END


def test_transform_that_drops_ends_the_batch(fsm: BatchTracker, changes: list[Change]) -> None:
    """A transform that drops the batch reports HAPPY_END, which ends it at that step."""
    feed(fsm, send("cpu", "filter"), ack("filter"), end("filter"))
    assert fsm.state_of("t1") is State.HAPPY_END
    assert changes[-1].step == "filter"


def test_error_is_final_and_keeps_its_reason(fsm: BatchTracker, clock: Clock, changes: list[Change]) -> None:
    """With no retries left an ERROR is published with its reason, then FAILURE; the deadline is cancelled."""
    feed(fsm, send("cpu"), ack("orchester"), error("orchester", "carbon refused"))
    assert fsm.state_of("t1") is State.FAILURE
    assert (changes[-2].old, changes[-2].new, changes[-2].reason) == (
        State.IN_FLIGHT,
        State.ERROR,
        "carbon refused",
    )
    assert (changes[-1].old, changes[-1].new) == (State.ERROR, State.FAILURE)
    assert "carbon refused" in changes[-1].reason
    assert clock.getDelayedCalls() == []
    assert fsm.snapshot()["tasks"]["error"] == 1


def test_error_wins_over_a_zero_balance(fsm: BatchTracker) -> None:
    """A batch whose error arrives first is not saved by legs that later balance out."""
    feed(fsm, error("orchester", "boom"), send("cpu"), end("orchester"))
    assert fsm.state_of("t1") is State.FAILURE
    assert fsm.snapshot()["tasks"]["happy_end"] == 0


def test_timeout_fires_at_exactly_the_deadline(fsm: BatchTracker, clock: Clock, changes: list[Change]) -> None:
    """A batch not ended by first-seen + timeout goes to TIMEOUT at that instant, not before."""
    feed(fsm, send("cpu"), ack("orchester"))
    clock.advance(TIMEOUT - 0.001)
    assert fsm.state_of("t1") is State.IN_FLIGHT
    clock.advance(0.001)
    assert fsm.state_of("t1") is State.FAILURE
    last = changes[-2]
    assert (last.old, last.new, last.step, last.at) == (State.IN_FLIGHT, State.TIMEOUT, "orchester", TIMEOUT)
    assert last.reason == "not ended within 30s"
    assert fsm.snapshot()["tasks"]["timeout"] == 1


def test_deadline_counts_from_the_first_event(fsm: BatchTracker, clock: Clock) -> None:
    """The deadline is set when the batch is first seen; later events do not push it back."""
    clock.advance(100)
    feed(fsm, ack("orchester"))
    clock.advance(20)
    feed(fsm, send("cpu", "a", "b"))
    clock.advance(TIMEOUT - 20 - 1)
    assert fsm.state_of("t1") is State.IN_FLIGHT
    clock.advance(1)
    assert fsm.state_of("t1") is State.FAILURE
    assert fsm.snapshot()["tasks"]["timeout"] == 1


def test_happy_end_cancels_the_deadline(fsm: BatchTracker, clock: Clock, changes: list[Change]) -> None:
    """A batch that ended well leaves no timer behind and never times out."""
    feed(fsm, send("cpu"), end("orchester"))
    assert clock.getDelayedCalls() == []
    clock.advance(TIMEOUT * 2)
    assert fsm.state_of("t1") is State.HAPPY_END
    assert [c.new for c in changes] == [State.IN_FLIGHT, State.HAPPY_END]


def test_late_events_after_happy_end_are_counted_not_replayed(fsm: BatchTracker, changes: list[Change]) -> None:
    """An event for a finished batch is counted as late for its step and changes nothing."""
    feed(fsm, send("cpu"), end("orchester"))
    before = list(changes)
    feed(fsm, ack("orchester"), error("orchester", "too late"))
    assert fsm.state_of("t1") is State.HAPPY_END
    assert changes == before
    assert fsm.snapshot()["tasks"]["in_flight"] == 0
    assert fsm.steps["orchester"].late == 2


def test_late_events_after_timeout_are_counted_not_replayed(
    fsm: BatchTracker, clock: Clock, changes: list[Change]
) -> None:
    """An event for a batch given up after its timeout is late: it is not recreated."""
    feed(fsm, send("cpu"))
    clock.advance(TIMEOUT)
    count = len(changes)
    feed(fsm, end("orchester"))
    assert fsm.state_of("t1") is State.FAILURE
    assert len(changes) == count
    assert fsm.steps["orchester"].late == 1
    assert fsm.snapshot()["tasks"] == {
        "in_flight": 0,
        "happy_end": 0,
        "error": 0,
        "timeout": 1,
        "retry": 0,
        "failure": 1,
        "evicted": 0,
        "bad_events": 0,
    }


def test_finished_batches_are_forgotten_least_recently_used_first(clock: Clock) -> None:
    """Only max_finished finished batches are remembered; a late event keeps its batch remembered."""
    fsm = BatchTracker(clock, timeout=TIMEOUT, max_finished=2)
    for task_id in ("a", "b"):
        feed(fsm, send("cpu", task_id=task_id), end("orchester", task_id=task_id))
    feed(fsm, ack("orchester", task_id="a"))  # late: "a" is now the most recently used
    feed(fsm, send("cpu", task_id="c"), end("orchester", task_id="c"))
    assert fsm.state_of("b") is None
    assert fsm.state_of("a") is State.HAPPY_END
    assert fsm.state_of("c") is State.HAPPY_END


def test_oldest_in_flight_batch_is_evicted_when_full(clock: Clock, changes: list[Change]) -> None:
    """At max_in_flight, a new batch evicts the oldest in-flight one, which is counted and never times out."""
    fsm = BatchTracker(clock, timeout=TIMEOUT, on_change=changes.append, max_in_flight=2)
    for task_id in ("a", "b", "c"):
        feed(fsm, send("cpu", task_id=task_id))
    assert fsm.state_of("a") is None
    assert fsm.state_of("b") is fsm.state_of("c") is State.IN_FLIGHT
    assert fsm.snapshot()["tasks"]["evicted"] == 1
    assert len(clock.getDelayedCalls()) == 2
    clock.advance(TIMEOUT)
    assert [c.task_id for c in changes if c.new is State.TIMEOUT] == ["b", "c"]


def test_per_step_counters(fsm: BatchTracker, clock: Clock) -> None:
    """Each step counts the batches and points it received, sent, ended, failed and left to time out."""
    feed(
        fsm,
        send("cpu", points=10),
        ack("orchester", points=10),
        send("orchester", "a", "b", points=10),
        ack("a", points=10),
        end("a"),
        send("cpu", points=3, task_id="t2"),
        ack("orchester", points=3, task_id="t2"),
        error("orchester", "bad", task_id="t2"),
        send("cpu", points=5, task_id="t3"),
        ack("b", points=10),
    )
    clock.advance(TIMEOUT)
    steps = fsm.snapshot()["steps"]
    assert steps["cpu"] == StepCounters(batches_sent=3, points_sent=18, batches_timed_out=1).as_dict()
    orchester = StepCounters(batches_received=2, points_received=13, batches_sent=1, points_sent=10, batches_failed=1)
    assert steps["orchester"] == orchester.as_dict()
    assert steps["a"] == StepCounters(batches_received=1, points_received=10, batches_ended=1).as_dict()
    assert steps["b"] == StepCounters(batches_received=1, points_received=10, batches_timed_out=1).as_dict()
    assert list(steps) == ["a", "b", "cpu", "orchester"]


def test_on_change_sequence(fsm: BatchTracker, clock: Clock, changes: list[Change]) -> None:
    """on_change gets every transition, from first sight to the end, with the batch's identity and time."""
    clock.advance(5)
    feed(fsm, send("cpu"), ack("orchester"))
    clock.advance(1)
    feed(fsm, end("orchester"))
    assert changes == [
        Change("t1", "cpu", "host", 7, None, State.IN_FLIGHT, "cpu", "", 5.0),
        Change("t1", "cpu", "host", 7, State.IN_FLIGHT, State.HAPPY_END, "orchester", "", 6.0),
    ]


def test_unknown_event_is_counted_and_ignored(fsm: BatchTracker, changes: list[Change]) -> None:
    """An unknown event name raises nothing: it is counted in bad_events and creates no batch or step."""
    feed(fsm, Ev("EXPLODE", "cpu"))
    assert fsm.snapshot() == {
        "tasks": {
            "in_flight": 0,
            "happy_end": 0,
            "error": 0,
            "timeout": 0,
            "retry": 0,
            "failure": 0,
            "evicted": 0,
            "bad_events": 1,
        },
        "steps": {},
    }
    assert fsm.state_of("t1") is None
    assert changes == []


@pytest.mark.parametrize(
    "event",
    [
        Ev("SEND", "cpu"),
        Ev("SEND", "cpu", meta={"legs": "2"}),
        Ev("SEND", "cpu", meta={"legs": -1}),
        Ev("SEND", "cpu", meta={"legs": 1.5}),
        Ev("SEND", "cpu", meta={"legs": True}),
        Ev("SEND", "cpu", meta={"legs": 1}),
        Ev("SEND", "cpu", meta={"legs": 2, "to": "orchester"}),
        Ev("SEND", "cpu", meta={"legs": 2, "to": "a,"}),
        Ev("SEND", "cpu", meta={"legs": 1, "to": 7}),
        Ev("ACK", "orchester", meta={"points": "many"}),
        Ev("ACK", "orchester", task_id=""),
    ],
    ids=[
        "no-legs",
        "legs-str",
        "legs-negative",
        "legs-float",
        "legs-bool",
        "no-to",
        "to-fewer-than-legs",
        "to-empty-name",
        "to-not-a-string",
        "points-str",
        "no-task-id",
    ],
)
def test_malformed_event_is_counted_and_ignored(fsm: BatchTracker, event: Ev) -> None:
    """A known event with a missing task id, legs/points that are not whole numbers >= 0, or a SEND
    whose ``to`` does not name one step per leg, is a bad event."""
    fsm.handle(event)
    assert fsm.snapshot()["tasks"]["bad_events"] == 1
    assert fsm.snapshot()["steps"] == {}
    assert fsm.state_of(event.task_id) is None


def test_snapshot_is_json_serialisable(fsm: BatchTracker, clock: Clock) -> None:
    """snapshot() survives json.dumps unchanged, in every kind of state."""
    feed(fsm, send("cpu"), end("orchester"), send("cpu", task_id="t2"), error("x", "e", task_id="t3"))
    feed(fsm, Ev("NOPE", "cpu"), send("cpu", task_id="t4"))
    clock.advance(TIMEOUT)
    snap = fsm.snapshot()
    assert json.loads(json.dumps(snap)) == snap
    assert snap["tasks"] == {
        "in_flight": 0,
        "happy_end": 1,
        "error": 1,
        "timeout": 2,
        "retry": 0,
        "failure": 3,
        "evicted": 0,
        "bad_events": 1,
    }


def test_accepts_real_envelope_events(fsm: BatchTracker) -> None:
    """Envelopes built with Envelope.event_for drive the FSM like the test events do."""
    batch = Envelope.new_batch([("a.b", 1.0, 2.0)], type="host", emitter="cpu", where="h", seq=1)
    fsm.handle(batch.event_for("SEND", step="cpu", where="h", legs=1, to="orchester", points=1))
    fsm.handle(batch.event_for("ACK", step="orchester", where="h", points=1))
    assert fsm.state_of(batch.task_id) is State.IN_FLIGHT
    fsm.handle(batch.event_for("HAPPY_END", step="orchester", where="h"))
    assert fsm.state_of(batch.task_id) is State.HAPPY_END


def test_timeout_leads_to_retry_with_a_longer_deadline() -> None:
    """With retries left a TIMEOUT is followed by RETRY (attempt 2) and a deadline `backoff` times longer."""
    clock = Clock()
    changes: list[Change] = []
    fsm = BatchTracker(clock, timeout=10, on_change=changes.append, max_retries=2, backoff=2.0)
    feed(fsm, send("cpu"))
    clock.advance(10)
    assert [(c.new, c.attempt) for c in changes[-2:]] == [(State.TIMEOUT, 1), (State.RETRY, 2)]
    assert fsm.state_of("t1") is State.RETRY
    clock.advance(19.9)
    assert fsm.state_of("t1") is State.RETRY
    clock.advance(0.1)
    assert [(c.new, c.attempt) for c in changes[-2:]] == [(State.TIMEOUT, 2), (State.RETRY, 3)]
    clock.advance(40)
    assert [c.new for c in changes[-2:]] == [State.TIMEOUT, State.FAILURE]
    assert fsm.snapshot()["tasks"]["retry"] == 2 and fsm.snapshot()["tasks"]["failure"] == 1


def test_the_retried_attempt_can_end_well_and_old_attempts_are_late() -> None:
    """Events of attempt 2 end the batch; events still arriving from attempt 1 count as late."""
    clock = Clock()
    changes: list[Change] = []
    fsm = BatchTracker(clock, timeout=10, on_change=changes.append, max_retries=3)
    feed(fsm, send("cpu"), error("transform", "crashed"))
    assert changes[-1].new is State.RETRY
    feed(fsm, Ev("SEND", "cpu", meta={"legs": 1, "to": "orchester", "attempt": 2}), end("orchester"))
    assert fsm.state_of("t1") is State.RETRY
    assert fsm.steps["orchester"].late == 1
    feed(fsm, Ev("HAPPY_END", "orchester", meta={"attempt": 2}))
    assert fsm.state_of("t1") is State.HAPPY_END
    assert clock.getDelayedCalls() == []


def test_a_retry_is_counted_against_the_step_where_the_attempt_failed(clock: Clock) -> None:
    """An ERROR at one step and a timeout after another each count one batches_retried there, and nowhere else."""
    fsm = BatchTracker(clock, timeout=TIMEOUT, max_retries=1)
    feed(
        fsm,
        send("cpu", points=3, task_id="t1"),
        ack("orchester", points=3, task_id="t1"),
        error("orchester", "bad", task_id="t1"),
        send("cpu", points=5, task_id="t2"),
        ack("b", points=5, task_id="t2"),
    )
    clock.advance(TIMEOUT)
    retried = {step: c["batches_retried"] for step, c in fsm.snapshot()["steps"].items()}
    assert retried == {"cpu": 0, "orchester": 1, "b": 1}
    assert fsm.snapshot()["tasks"]["retry"] == 2

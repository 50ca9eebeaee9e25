"""The satellite runtime, in memory: fake links, a fake clock, tiny satellites."""

from __future__ import annotations

import math
from collections import Counter
from types import MappingProxyType
from typing import Any

from twisted.internet.task import Clock

from dsat.envelope import Batches, Envelope, decode, encode
from dsat.events import HEARTBEAT_EVERY, Reporter
from dsat.plugins import SatelliteSpec
from dsat.satellite import SatelliteRuntime
from dsat.testing import FakeSender
from dsat.topology import Link, Step


def make_step(
    name: str,
    kind: str,
    *,
    next: tuple[str, ...] = ("orchester",),
    every: float | None = None,
    codec: str = "msgpack",
) -> Step:
    return Step(
        name=name,
        use=name,
        kind=kind,
        type=None,
        every=every,
        next=next,
        options=MappingProxyType({}),
        hosts=(),
        codec=codec,
        listen=None if kind == "collector" else Link(f"ipc:///tmp/{name}", "pull"),
    )


def make_runtime(
    kind: str,
    fn: Any,
    *,
    next: tuple[str, ...] = ("orchester",),
    type: str | None = None,
    every: float | None = None,
    link: type[FakeSender] = FakeSender,
    choice: Any = None,
    clock: Clock | None = None,
    unconfirmed_after: float | None = None,
) -> tuple[SatelliteRuntime, dict[str, FakeSender], FakeSender, Clock]:
    if clock is None:
        clock = Clock()
        clock.advance(1_700_000_000)
    senders = {name: link() for name in next}
    events = link()
    step = make_step("s1", kind, next=next, every=every if kind == "collector" else None)
    spec = SatelliteSpec(name="s1", kind=kind, factory=lambda options: fn, type=type)
    runtime = SatelliteRuntime(
        step,
        spec,
        clock=clock,
        prefix="dsat",
        where="host1",
        senders=senders,
        reporter=Reporter(events, step="s1", where="host1", pid=7),
        pid=7,
        choice=choice,
        unconfirmed_after=unconfirmed_after,
    )
    return runtime, senders, events, clock


class BreaksOnce(FakeSender):
    """A link whose send raises once, when told to (``fail_next``), then works again."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next = False

    def send(self, frame: bytes) -> None:
        if self.fail_next:
            self.fail_next = False
            raise OSError("the link broke, once")
        super().send(frame)


def heartbeats(events: FakeSender) -> list[Envelope]:
    return [e for e in events.envelopes() if e.channel == "control" and e.type == "heartbeat"]


def data_events(events: FakeSender) -> list[Envelope]:
    return [e for e in events.envelopes() if e.channel == "event"]


def test_collector_builds_paths_stamps_time_and_sends_to_every_next() -> None:
    """A collector's (metric, value) pairs become one batch with full paths, sent once per `next`."""
    runtime, senders, events, clock = make_runtime(
        "collector", lambda: [("a.b", 1.5), ("c", 2, 1_600_000_000)], next=("x", "y"), type="gauge", every=10
    )
    env = runtime.collect_once()
    assert env is not None
    assert env.points == (("dsat.host1.s1.a.b", 1_700_000_000, 1.5), ("dsat.host1.s1.c", 1_600_000_000, 2))
    for name in ("x", "y"):
        [sent] = senders[name].envelopes()
        assert sent.next == (name,) and sent.points == env.points and sent.type == "gauge"
        assert sent.emitter == "s1" and sent.task_id == env.task_id
    [send] = data_events(events)
    assert (send.event, send.meta["legs"], send.meta["points"]) == ("SEND", 2, 2)


def test_collector_rejects_bad_values_and_names_and_keeps_the_rest() -> None:
    """The datapoint rule at the source: NaN, booleans, strings, millisecond timestamps and malformed items are
    counted by reason (the orchester's reasons); good points still go."""
    runtime, senders, _, _ = make_runtime(
        "collector",
        lambda: (
            [("ok", 1), ("nan", math.nan), ("flag", True), ("s", "x"), ("short",), ("", 3)]
            + [("ms", 1.0, 1_700_000_000_000), ("when", 1.0, True)]
        ),
        every=10,
    )
    env = runtime.collect_once()
    assert env is not None and [p[0] for p in env.points] == ["dsat.host1.s1.ok"]
    assert runtime.rejected == {"nan": 1, "bad_value": 2, "bad_timestamp": 2, "bad_datapoint": 1, "bad_name": 1}


def test_collector_metrics_may_carry_graphite_tags() -> None:
    """A plain-function collector's ``metric;k=v`` becomes a tagged path in the tree; a bad tag is counted."""
    runtime, senders, _, _ = make_runtime(
        "collector",
        lambda: [("lat.p99;region=eu;az=b", 5.0), ('lat.p50{az="b",region="eu"}', 2.0), ("lat;region=~eu", 1.0)],
        next=("out",),
        every=10,
    )
    env = runtime.collect_once()
    assert env is not None
    assert [p[0] for p in env.points] == [
        "dsat.host1.s1.lat.p99;az=b;region=eu",
        "dsat.host1.s1.lat.p50;az=b;region=eu",
    ]
    assert runtime.rejected == Counter({"bad_tag": 1})
    [sent] = senders["out"].envelopes()
    assert decode(encode(sent)).points == env.points  # wire format v1 carries the tagged path as it is


def test_collector_that_raises_is_counted_and_keeps_its_schedule() -> None:
    """An exception in collect() is counted; the next tick runs again."""
    calls = []

    def collect() -> list[tuple[str, float]]:
        calls.append(1)
        raise RuntimeError("boom")

    runtime, senders, _, clock = make_runtime("collector", collect, every=10)
    runtime.start()
    clock.advance(10)
    clock.advance(10)
    assert len(calls) == 2
    assert runtime.rejected["collect_failed"] == 2
    assert senders["orchester"].frames == []
    runtime.stop()


def test_collector_runs_are_stamped_with_their_slot_however_late_they_run() -> None:
    """Runs at the multiples of every (dsat.schedule): a late run keeps its slot, so no two share a Whisper slot."""
    runtime, senders, _, clock = make_runtime("collector", lambda: [("m", 1.0)], every=10)
    clock.advance(7.3)  # started between two multiples: the first run waits for the next one
    runtime.start()
    assert senders["orchester"].frames == []
    clock.advance(2.7 + 9.9)  # the run due at 1_700_000_010 runs 9.9 s late
    clock.advance(0.1)  # the next is on time
    stamps = [decode(frame).points[0][1] for frame in senders["orchester"].frames]
    assert stamps == [1_700_000_010, 1_700_000_020]
    runtime.stop()
    assert clock.getDelayedCalls() == []


def test_heartbeats_go_to_the_tracker_on_schedule() -> None:
    """The runtime sends a heartbeat at start and every HEARTBEAT_EVERY seconds."""
    runtime, _, events, clock = make_runtime("transform", lambda batch: batch)
    runtime.start()
    clock.advance(HEARTBEAT_EVERY)
    clock.advance(HEARTBEAT_EVERY)
    beats = [e for e in events.envelopes() if e.channel == "control"]
    assert len(beats) == 3 and all(b.type == "heartbeat" and b.step == "s1" for b in beats)
    runtime.stop()


def test_a_collector_run_that_raises_is_counted_and_the_next_run_goes_out() -> None:
    """A collector run that raises (its link broke) is counted in timer_failures; the next slot runs."""
    runtime, senders, events, clock = make_runtime("collector", lambda: [("m", 1.0)], every=10, link=BreaksOnce)
    link = senders["orchester"]
    assert isinstance(link, BreaksOnce)
    runtime.start()
    link.fail_next = True
    clock.advance(10)
    assert link.frames == [] and runtime.timer_failures == 1
    clock.advance(10)
    assert [decode(frame).points[0][1] for frame in link.frames] == [1_700_000_020]
    runtime.heartbeat()
    assert heartbeats(events)[-1].meta["timer_failures"] == 1
    runtime.stop()


def test_a_heartbeat_that_raises_is_counted_and_the_next_one_goes_out() -> None:
    """A heartbeat whose send raises is counted; the heartbeats keep their schedule and say so."""
    runtime, _, events, clock = make_runtime("transform", lambda batch: batch, link=BreaksOnce)
    assert isinstance(events, BreaksOnce)
    runtime.start()
    assert len(heartbeats(events)) == 1
    events.fail_next = True
    clock.advance(HEARTBEAT_EVERY)
    assert len(heartbeats(events)) == 1 and runtime.timer_failures == 1
    clock.advance(HEARTBEAT_EVERY)
    beats = heartbeats(events)
    assert len(beats) == 2 and beats[-1].meta["timer_failures"] == 1
    runtime.stop()
    assert clock.getDelayedCalls() == []


def test_the_pair_check_that_raises_is_counted_and_runs_again() -> None:
    """With an orchester pair, a check of the servers that raises is counted and the next one runs."""
    from dsat.binarystar import ServerChoice

    calls: list[float] = []

    class ChecksBadlyOnce(ServerChoice):
        def check(self, stalled_for: float) -> None:
            calls.append(self.clock.seconds())
            if len(calls) == 1:
                raise RuntimeError("the check failed, once")
            super().check(stalled_for)

    clock = Clock()
    choice = ChecksBadlyOnce(clock, ("a", "b"), heartbeat=0.5, missed_beats=3)
    runtime, _, _, _ = make_runtime("collector", lambda: [("m", 1.0)], every=10, choice=choice, clock=clock)
    runtime.start()
    clock.advance(0.5)
    assert runtime.timer_failures == 1
    clock.advance(0.5)
    assert calls == [0.5, 1.0]
    runtime.stop()
    assert clock.getDelayedCalls() == []


def batch_frame(points: tuple[tuple[str, float, float], ...], type: str = "counter") -> tuple[Envelope, bytes]:
    env = Envelope.new_batch(points, type=type, emitter="c", where="h", seq=1).evolve(next=("s1",))
    return env, encode(env)


def test_transform_output_goes_on_with_the_same_task_and_is_reported() -> None:
    """A transform's batch keeps the task id, takes the step's name and is ACKed then SENT."""
    runtime, senders, events, _ = make_runtime("transform", lambda batch: [(p, t, v * 2) for p, t, v in batch])
    env, frame = batch_frame((("m", 1, 2.0),))
    runtime.on_frame(frame)
    [out] = senders["orchester"].envelopes()
    assert out.points == (("m", 1, 4.0),) and out.task_id == env.task_id and out.step == "s1"
    assert out.type == "counter"
    assert [(e.event, e.meta.get("legs")) for e in data_events(events)] == [("ACK", None), ("SEND", 1)]


def test_transform_returning_nothing_ends_the_batch() -> None:
    """None (or an empty batch) drops the batch: HAPPY_END, nothing sent on."""
    runtime, senders, events, _ = make_runtime("transform", lambda batch: None)
    runtime.on_frame(batch_frame((("m", 1, 2.0),))[1])
    assert senders["orchester"].frames == []
    assert [e.event for e in data_events(events)] == ["ACK", "HAPPY_END"]


def test_transform_returning_several_batches_sends_each_and_counts_legs() -> None:
    """Batches([...]) fans out: every batch to every next; SEND carries batches x nexts legs."""
    runtime, senders, events, _ = make_runtime(
        "transform", lambda batch: Batches([batch, [], batch]), next=("a", "b"), type="rate"
    )
    runtime.on_frame(batch_frame((("m", 1, 2.0),))[1])
    assert len(senders["a"].frames) == 2 and len(senders["b"].frames) == 2
    assert all(e.type == "rate" for e in senders["a"].envelopes())
    send = data_events(events)[-1]
    assert (send.event, send.meta["legs"], send.meta["points"]) == ("SEND", 4, 2)
    assert send.meta["to"] == "a,b,a,b"


def test_transform_that_raises_reports_an_error_and_keeps_going() -> None:
    """An exception in transform() is an ERROR event with the reason; the next frame is handled."""
    state = {"fail": True}

    def transform(batch: Any) -> Any:
        if state["fail"]:
            raise ValueError("bad input")
        return batch

    runtime, senders, events, _ = make_runtime("transform", transform)
    runtime.on_frame(batch_frame((("m", 1, 2.0),))[1])
    error = data_events(events)[-1]
    assert error.event == "ERROR" and "ValueError: bad input" in error.meta["reason"]
    state["fail"] = False
    runtime.on_frame(batch_frame((("m", 1, 2.0),))[1])
    assert len(senders["orchester"].frames) == 1


def test_garbage_frames_are_counted_and_do_not_stop_the_step() -> None:
    """Undecodable frames and event frames on a data link are rejected by reason."""
    runtime, senders, events, _ = make_runtime("transform", lambda batch: batch)
    runtime.on_frame(b"")
    runtime.on_frame(b"nonsense")
    runtime.on_frame(encode(Envelope(channel="event", event="ACK", task_id="t")))
    runtime.on_frame(batch_frame((("m", 1, 2.0),))[1])
    assert runtime.rejected["truncated"] == 1 and runtime.rejected["bad_magic"] == 1
    assert runtime.rejected["wrong_channel"] == 1
    assert len(senders["orchester"].frames) == 1


def test_sink_consumes_and_ends_the_batch() -> None:
    """A sink gets the points and the leg ends with HAPPY_END; a failing sink reports ERROR."""
    got: list[Any] = []
    runtime, _, events, _ = make_runtime("sink", got.append, next=())
    runtime.on_frame(batch_frame((("m", 1, 2.0),))[1])
    assert got == [(("m", 1, 2.0),)]
    assert [e.event for e in data_events(events)] == ["ACK", "HAPPY_END"]

    def broken(batch: Any) -> None:
        raise OSError("disk full")

    runtime, _, events, _ = make_runtime("sink", broken, next=())
    runtime.on_frame(batch_frame((("m", 1, 2.0),))[1])
    assert data_events(events)[-1].event == "ERROR" and runtime.rejected["sink_failed"] == 1


def published_change(task_id: str, new: str, emitter: str = "s1", attempt: int = 1) -> bytes:
    from dsat.events import published, topic_for

    return published(topic_for(emitter), {"task_id": task_id, "new": new, "attempt": attempt})


def test_emitter_sends_a_batch_again_on_retry_with_its_attempt() -> None:
    """A RETRY published for one of its batches makes the collector send it again, marked attempt 2."""
    runtime, senders, events, _ = make_runtime("collector", lambda: [("m", 1.0)], every=10)
    env = runtime.collect_once()
    assert env is not None
    runtime.on_published(published_change(env.task_id, "RETRY", attempt=2))
    first, again = senders["orchester"].envelopes()
    assert again.task_id == env.task_id and again.points == env.points and again.meta["attempt"] == 2
    sends = [e for e in data_events(events) if e.event == "SEND"]
    assert [e.meta.get("attempt") for e in sends] == [None, 2]


def test_emitter_forgets_ended_and_failed_batches() -> None:
    """HAPPY_END and FAILURE remove a batch from the retry window; a later RETRY for it does nothing."""
    runtime, senders, _, _ = make_runtime("collector", lambda: [("m", 1.0)], every=10)
    a, b = runtime.collect_once(), runtime.collect_once()
    assert a is not None and b is not None
    runtime.on_published(published_change(a.task_id, "HAPPY_END"))
    runtime.on_published(published_change(b.task_id, "FAILURE"))
    runtime.on_published(published_change(a.task_id, "RETRY", attempt=2))
    assert len(senders["orchester"].frames) == 2 and runtime.window.failed == 1 and not runtime.window.batches


def test_a_batch_no_tracker_follows_any_more_is_sent_once_more_then_forgotten() -> None:
    """A batch unconfirmed past the tracker's whole retry budget (its end died with a killed tracker) is sent
    again once, as a new attempt, forgotten and counted (window_expired); a batch that ended is not."""
    from dsat.topology import TrackerConf

    budget = TrackerConf(events="", states="", status="", timeout=30.0, max_retries=3, backoff=2.0).gives_up_after
    assert budget == 30.0 * (1 + 2 + 4 + 8 + 1)
    runtime, senders, events, clock = make_runtime(
        "collector", lambda: [("m", 1.0)], every=10, unconfirmed_after=budget
    )
    runtime.start()
    clock.advance(10)
    clock.advance(10)
    confirmed, orphan = senders["orchester"].envelopes()
    runtime.on_published(published_change(confirmed.task_id, "HAPPY_END"))
    clock.advance(budget - 20 - 1)
    sent = len(senders["orchester"].frames)
    assert orphan.task_id in runtime.window.batches
    clock.advance(budget / 10)
    again = [e for e in senders["orchester"].envelopes()[sent:] if e.task_id == orphan.task_id]
    assert [e.meta.get("attempt") for e in again] == [2]
    assert orphan.task_id not in runtime.window.batches and runtime.window.expired == 1
    runtime.heartbeat()
    assert heartbeats(events)[-1].meta["window_expired"] == 1
    clock.advance(budget)  # the later batches expire in their turn; the orphan is not sent a third time
    assert [e.task_id for e in senders["orchester"].envelopes()].count(orphan.task_id) == 2
    runtime.stop()


def test_retry_window_is_bounded() -> None:
    """Past its size the window forgets the oldest batch and counts it."""
    from dsat.satellite import RetryWindow

    window = RetryWindow(max_batches=2)
    envs = [Envelope.new_batch((), type="g", emitter="e", where="h", seq=i) for i in range(3)]
    for env in envs:
        window.keep(env)
    assert list(window.batches) == [envs[1].task_id, envs[2].task_id] and window.evicted == 1


def test_open_circuit_holds_the_leg_and_half_open_sends_one_probe() -> None:
    """No frame goes to a step whose circuit is open (the leg still counts); half-open lets one through."""
    from dsat.breaker import BREAKER_TOPIC
    from dsat.events import published

    runtime, senders, events, _ = make_runtime("collector", lambda: [("m", 1.0)], next=("t", "u"), every=10)
    runtime.on_published(published(BREAKER_TOPIC, {"step": "t", "state": "OPEN"}))
    runtime.collect_once()
    assert senders["t"].frames == [] and len(senders["u"].frames) == 1
    assert data_events(events)[-1].meta["legs"] == 2
    runtime.on_published(published(BREAKER_TOPIC, {"step": "t", "state": "HALF_OPEN"}))
    runtime.collect_once()
    runtime.collect_once()
    assert len(senders["t"].frames) == 1 and runtime.circuits.diverted == 2
    runtime.on_published(b"no topic")
    runtime.on_published(BREAKER_TOPIC + b"\xc1")
    assert runtime.rejected["bad_state"] == 2


def test_a_satellite_of_a_pair_sends_its_unconfirmed_batches_to_the_server_it_moves_to() -> None:
    """Batches waiting past the deadline while the current server is silent move the satellite (a vote), and
    every unconfirmed batch goes again; a confirmed one does not; the new server's ACTIVE sends them once more."""
    from dsat.binarystar import HEARTBEAT_TOPIC, ServerChoice
    from dsat.events import published

    runtime, senders, _, clock = make_runtime("collector", lambda: [("m", 1.0)], every=1.0)
    choice = ServerChoice(clock, ("a", "b"), heartbeat=0.5, missed_beats=3)
    runtime.choice = choice
    choice.on_move, choice.on_active = runtime.on_server_move, lambda _host: runtime.resend_window()
    runtime.on_heartbeat(published(HEARTBEAT_TOPIC, {"host": "a", "state": "ACTIVE"}))
    confirmed = runtime.collect_once()
    assert confirmed is not None
    runtime.on_published(published_change(confirmed.task_id, "HAPPY_END"))
    waiting = [runtime.collect_once() for _ in range(2)]
    clock.advance(1.0)
    choice.check(runtime.window.stalled_for())
    assert choice.current == "a" and runtime.window.stalled_for() == 1.0
    clock.advance(1.0)
    choice.check(runtime.window.stalled_for())
    assert choice.current == "b"
    resent = [e.task_id for e in senders["orchester"].envelopes()[3:]]
    assert resent == [e.task_id for e in waiting if e is not None]
    runtime.on_heartbeat(published(HEARTBEAT_TOPIC, {"host": "b", "state": "ACTIVE"}))
    assert len(senders["orchester"].envelopes()) == 7
    runtime.on_heartbeat(b"garbage")
    assert runtime.rejected["bad_heartbeat"] == 1

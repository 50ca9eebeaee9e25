"""The tracker process's logic, in memory: events in, states published, status and own metrics out."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
from twisted.internet.task import Clock

from dsat import topology
from dsat.envelope import Envelope, encode
from dsat.events import Reporter
from dsat.plugins import Registry, SatelliteSpec
from dsat.testing import FakeSender
from dsat.tracker import TrackerService

TOPOLOGY = """
[dsat]
where = "h"
run_dir = "/tmp/dsat-tracker-test"
[tracker]
timeout = "30s"
metrics_every = "10s"
[carbon]
destinations = ["127.0.0.1:2004"]
[satellites.c]
use = "c"
every = "1s"
"""

REGISTRY = Registry([SatelliteSpec(name="c", kind="collector", factory=lambda o: lambda: [], type="gauge")])


def make() -> tuple[TrackerService, FakeSender, FakeSender, Clock]:
    clock = Clock()
    clock.advance(1_700_000_000)
    topo = topology.loads(TOPOLOGY, path=Path("/tmp/t.toml"), registry=REGISTRY)
    publisher, orchester = FakeSender(), FakeSender()
    svc = TrackerService(topo, clock=clock, where="h", publisher=publisher, orchester=orchester, pid=3)
    return svc, publisher, orchester, clock


def journey(svc: TrackerService) -> Envelope:
    """One batch c -> orchester -> carbon, reported as the real steps report it."""
    env = Envelope.new_batch((("a", 1, 1.0),), type="gauge", emitter="c", where="h", seq=1)
    events = FakeSender()
    Reporter(events, step="c", where="h", pid=1).sent(env, legs=1)
    orch = Reporter(events, step="orchester", where="h", pid=2)
    orch.ack(env)
    orch.ended(env, points=1)
    for frame in events.frames:
        svc.on_event(frame)
    return env


def test_a_full_journey_is_published_and_counted() -> None:
    """Events from two hops end the batch well; state changes go out on PUB as msgpack maps."""
    svc, publisher, _, _ = make()
    env = journey(svc)
    changes = [msgpack.unpackb(f) for f in publisher.frames]
    assert [c["new"] for c in changes] == ["IN_FLIGHT", "HAPPY_END"]
    assert changes[-1]["task_id"] == env.task_id
    status = svc.status()
    assert status["tasks"]["happy_end"] == 1
    assert status["steps"]["orchester"]["batches_received"] == 1


def test_a_batch_that_never_ends_times_out_on_the_clock() -> None:
    """Without a HAPPY_END the batch is TIMEOUT after the topology's timeout, and published."""
    svc, publisher, _, clock = make()
    env = Envelope.new_batch((("a", 1, 1.0),), type="gauge", emitter="c", where="h", seq=1)
    svc.on_event(encode(env.event_for("SEND", step="c", where="h", legs=1, points=1)))
    clock.advance(30)
    assert msgpack.unpackb(publisher.frames[-1])["new"] == "TIMEOUT"
    assert svc.status()["tasks"]["timeout"] == 1


def test_heartbeats_and_garbage() -> None:
    """Heartbeats record each step's age; garbage frames are counted, never raised."""
    svc, _, _, clock = make()
    events = FakeSender()
    Reporter(events, step="c", where="h", pid=1).heartbeat()
    svc.on_event(events.frames[0])
    svc.on_event(b"garbage")
    svc.on_event(encode(Envelope(channel="data", step="c")))
    clock.advance(4)
    status = json.loads(svc.on_status_request(b"status"))
    assert status["heartbeats"]["c"]["age"] == 4.0
    assert status["rejected"] == {"bad_magic": 1, "wrong_channel": 1}


def test_own_metrics_go_to_the_orchester_as_a_tracked_batch() -> None:
    """Every metrics_every seconds the tracker sends self.* counts since last time to the orchester."""
    svc, _, orchester, clock = make()
    svc.start()
    journey(svc)
    clock.advance(10)
    [env] = orchester.envelopes()
    values = {p: v for p, _, v in env.points}
    assert values["dsat.h.self.tracker.tasks.happy_end"] == 1
    assert values["dsat.h.self.steps.orchester.batches_ended"] == 1
    assert values["dsat.h.self.steps.c.batches_sent"] == 1
    assert env.emitter == "tracker" and env.next == ("orchester",)
    assert svc.fsm.state_of(env.task_id) is not None
    clock.advance(10)
    values = {p: v for p, _, v in orchester.envelopes()[-1].points}
    assert values["dsat.h.self.tracker.tasks.happy_end"] == 0
    svc.stop()

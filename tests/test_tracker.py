"""The tracker process's logic, in memory: events in, states published, status and own metrics out."""

from __future__ import annotations

import json
from pathlib import Path

from twisted.internet.task import Clock

from dsat import topology
from dsat.breaker import BREAKER_TOPIC
from dsat.envelope import Envelope, encode
from dsat.events import Reporter, parse_published
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
    Reporter(events, step="c", where="h", pid=1).sent(env, to=["orchester"])
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
    topics, changes = zip(*[parse_published(f) for f in publisher.frames], strict=True)
    assert [c["new"] for c in changes] == ["HAPPY_END"]
    assert topics == (b"c\0",) and changes[-1]["task_id"] == env.task_id
    status = svc.status()
    assert status["tasks"]["happy_end"] == 1
    assert status["steps"]["orchester"]["batches_received"] == 1


def test_a_batch_that_never_ends_times_out_on_the_clock() -> None:
    """Without a HAPPY_END the batch is TIMEOUT after the topology's timeout, and published."""
    svc, publisher, _, clock = make()
    env = Envelope.new_batch((("a", 1, 1.0),), type="gauge", emitter="c", where="h", seq=1)
    svc.on_event(encode(env.event_for("SEND", step="c", where="h", legs=1, to="orchester", points=1)))
    clock.advance(30)
    published_states = [parse_published(f)[1] for f in publisher.frames]
    assert [(c["new"], c["attempt"]) for c in published_states] == [("TIMEOUT", 1), ("RETRY", 2)]
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
    """At each multiple of metrics_every the tracker sends self.* counts since last time, stamped with it."""
    svc, _, orchester, clock = make()
    clock.advance(3.6)
    svc.start()
    journey(svc)
    clock.advance(6.3)
    assert orchester.envelopes() == []
    clock.advance(0.1)
    [env] = orchester.envelopes()
    assert {ts for _, ts, _ in env.points} == {1_700_000_010}
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


class SpawningClock(Clock):
    """A Clock that records the processes it is asked to spawn."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[object, str, list[str]]] = []

    def spawnProcess(self, protocol: object, executable: str, args: list[str], env: object = None) -> None:  # noqa: N802
        self.spawned.append((protocol, executable, args))


def test_failure_after_the_last_retry_raises_an_alert_and_runs_the_hook() -> None:
    """A batch given up (FAILURE) is an alert: counted, and fed as JSON to the alert command."""
    clock = SpawningClock()
    topo = topology.loads(
        TOPOLOGY.replace('timeout = "30s"', 'timeout = "1s"\nmax_retries = 1\nalert_command = "/bin/cat -"'),
        path=Path("/tmp/t.toml"),
        registry=REGISTRY,
    )
    svc = TrackerService(topo, clock=clock, where="h", publisher=FakeSender(), orchester=FakeSender())
    env = Envelope.new_batch((("a", 1, 1.0),), type="gauge", emitter="c", where="h", seq=1)
    svc.on_event(encode(env.event_for("SEND", step="c", where="h", legs=1, to="orchester", points=1)))
    clock.advance(1)
    clock.advance(2)
    assert svc.status()["tasks"]["failure"] == 1 and svc.alerts["batch_failure"] == 1
    [(hook, executable, args)] = clock.spawned
    assert executable == "/bin/cat" and args == ["/bin/cat", "-"]
    alert = json.loads(hook.payload)  # type: ignore[attr-defined]
    assert alert["alert"] == "batch_failure" and alert["task_id"] == env.task_id and alert["new"] == "FAILURE"


def test_a_failing_step_opens_its_circuit_publishes_it_and_alerts() -> None:
    """ERRORs from one step open its breaker: published under the breaker topic, alerted, shown in status."""
    svc, publisher, _, clock = make()
    for i in range(5):
        env = Envelope.new_batch((("a", 1, 1.0),), type="gauge", emitter="c", where="h", seq=i)
        svc.on_event(encode(env.event_for("ERROR", step="c", where="h", reason="boom")))
    breaker_msgs = [body for topic, body in map(parse_published, publisher.frames) if topic == BREAKER_TOPIC]
    assert breaker_msgs[-1]["step"] == "c" and breaker_msgs[-1]["state"] == "OPEN"
    assert svc.alerts["circuit_open"] == 1
    assert svc.status()["circuits"] == {"c": "OPEN"}
    clock.advance(30)
    assert svc.status()["circuits"] == {"c": "HALF_OPEN"}
    values = {p: v for p, _, v in svc.own_metrics()}
    assert values["dsat.h.self.steps.c.circuit_open"] == 1.0 and values["dsat.h.self.tracker.alerts"] == 1


def test_a_failover_in_the_orchester_heartbeat_is_an_alert() -> None:
    """Each increase of the failover count an orchester's heartbeat carries raises one failover alert."""
    svc, _, _, _ = make()
    reporter = Reporter(events := FakeSender(), step="orchester", where="hub-b", pid=2)
    for count in (0, 1, 1, 2):
        reporter.heartbeat(failovers=count, ha_state="hub-b (backup) ACTIVE", ha_last_failover="at 5: peer silent")
    for frame in events.frames:
        svc.on_event(frame)
    assert svc.alerts["failover"] == 2
    assert svc.status()["heartbeats"]["orchester"]["counters"]["failovers"] == 2


def test_a_spool_quarantined_at_start_reaches_the_alert_command_once(tmp_path: Path) -> None:
    """An orchester whose spool was quarantined says so in every heartbeat; the tracker alerts once, through the
    alert command, with where the file went."""
    from dsat.orchester import Orchester
    from dsat.spool import Spool
    from dsat.testing import CaptureEgress

    path = tmp_path / "s.db"
    path.write_bytes(b"this is not an SQLite database" * 100)
    egress = CaptureEgress()
    egress.spool = Spool(path)
    assert egress.spool.quarantined is not None
    clock = SpawningClock()
    topo = topology.loads(
        TOPOLOGY.replace('timeout = "30s"', 'timeout = "30s"\nalert_command = "/bin/cat -"'),
        path=Path("/tmp/t.toml"),
        registry=REGISTRY,
    )
    events = FakeSender()
    orch = Orchester(
        topo, clock=clock, egress=egress, senders={}, reporter=Reporter(events, step="orchester", where="h", pid=2),
        where="h",
    )  # fmt: skip
    svc = TrackerService(topo, clock=clock, where="h", publisher=FakeSender(), orchester=FakeSender())
    for _ in range(3):
        orch.heartbeat()
    for frame in events.frames:
        svc.on_event(frame)
    assert svc.alerts == {"spool_corrupt": 1}
    [(hook, executable, _)] = clock.spawned
    alert = json.loads(hook.payload)  # type: ignore[attr-defined]
    assert alert["alert"] == "spool_corrupt" and alert["step"] == "orchester" and alert["count"] == 1
    assert str(egress.spool.quarantined) in alert["quarantined"] and str(path) in alert["quarantined"]
    values = {p: v for p, _, v in svc.own_metrics()}
    assert values["dsat.h.self.steps.orchester.spool_corrupt"] == 1 and values["dsat.h.self.tracker.alerts"] == 1


def test_a_sound_spool_raises_no_alert(tmp_path: Path) -> None:
    from dsat.orchester import Orchester
    from dsat.spool import Spool
    from dsat.testing import CaptureEgress

    egress = CaptureEgress()
    egress.spool = Spool(tmp_path / "s.db")
    svc, _, _, clock = make()
    events = FakeSender()
    reporter = Reporter(events, step="orchester", where="h", pid=2)
    orch = Orchester(svc.topology, clock=clock, egress=egress, senders={}, reporter=reporter, where="h")
    orch.heartbeat()
    svc.on_event(events.frames[-1])
    assert svc.alerts == {} and "spool_corrupt" not in events.envelopes()[-1].meta


def test_a_spool_disk_that_refuses_writes_alerts_once_per_episode(tmp_path: Path) -> None:
    """spool_disk_full goes through alert_command once when the disk fills, not at every heartbeat; again next time."""
    from dsat.orchester import Orchester
    from dsat.spool import DISK_RETRY, EPISODE_GAP, Spool
    from dsat.testing import CaptureEgress, FailingDisk

    clock = SpawningClock()
    egress = CaptureEgress()
    spool = Spool(tmp_path / "s.db", clock=clock.seconds)
    disk = FailingDisk(spool.db)
    spool.db = disk  # type: ignore[assignment]
    egress.spool = spool
    topo = topology.loads(
        TOPOLOGY.replace('timeout = "30s"', 'timeout = "30s"\nalert_command = "/bin/cat -"'),
        path=Path("/tmp/t.toml"),
        registry=REGISTRY,
    )
    events = FakeSender()
    reporter = Reporter(events, step="orchester", where="h", pid=2)
    orch = Orchester(topo, clock=clock, egress=egress, senders={}, reporter=reporter, where="h")
    svc = TrackerService(topo, clock=clock, where="h", publisher=FakeSender(), orchester=FakeSender())

    def beats(n: int) -> None:
        for _ in range(n):
            orch.heartbeat()
            svc.on_event(events.frames[-1])

    beats(1)
    for _ in range(3):
        spool.put("a", b"x", 1)  # refused: one episode
    beats(3)
    assert svc.alerts == {"spool_disk_full": 1}
    alert = json.loads(clock.spawned[-1][0].payload)  # type: ignore[attr-defined]
    assert alert["alert"] == "spool_disk_full" and "database or disk is full" in alert["spool"]
    disk.failing = False
    clock.advance(DISK_RETRY)
    assert spool.put("a", b"x", 1)  # space back: the episode ends
    clock.advance(EPISODE_GAP)
    disk.failing = True
    spool.put("a", b"x", 1)
    beats(2)
    assert svc.alerts == {"spool_disk_full": 2}

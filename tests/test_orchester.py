"""The orchester, in memory: routing by type, the one check of every datapoint, its own metrics."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from dsat import topology
from dsat.envelope import Envelope, encode
from dsat.errors import ConfigError
from dsat.events import Reporter
from dsat.orchester import Orchester, PairMember
from dsat.plugins import Registry, SatelliteSpec
from dsat.testing import CaptureEgress, FakeProducer, FakeSender

TOPOLOGY = """
[dsat]
where = "h"
run_dir = "/tmp/dsat-orchester-test"

[tracker]
metrics_every = "10s"

[orchester.routes]
"*" = ["carbon"]
"audit" = ["archive", "carbon"]
"cold" = ["archive"]

[carbon]
destinations = ["127.0.0.1:2004"]

[satellites.c]
use = "c"
every = "1s"

[satellites.archive]
use = "s"
"""

REGISTRY = Registry(
    [
        SatelliteSpec(name="c", kind="collector", factory=lambda o: lambda: [], type="gauge"),
        SatelliteSpec(name="s", kind="sink", factory=lambda o: lambda batch: None),
    ]
)


def make(
    hold: bool = False, pair: Callable[[Clock, Callable[[], Orchester]], PairMember] | None = None
) -> tuple[Orchester, CaptureEgress, FakeSender, FakeSender, Clock]:
    """An orchester on a fake clock; *pair* builds its PairMember (given the clock and the orchester, late)."""
    clock = Clock()
    clock.advance(1_700_000_000)
    topo = topology.loads(TOPOLOGY, path=Path("/tmp/t.toml"), registry=REGISTRY)
    egress = CaptureEgress(hold=hold)
    events, archive = FakeSender(), FakeSender()
    orch = Orchester(
        topo,
        clock=clock,
        egress=egress,
        senders={"archive": archive},  # type: ignore[arg-type]
        reporter=Reporter(events, step="orchester", where="h", pid=1),
        where="h",
        pair=pair(clock, lambda: orch) if pair is not None else None,
    )
    return orch, egress, events, archive, clock


def frame(points: tuple, type: str = "gauge") -> tuple[Envelope, bytes]:
    env = Envelope.new_batch(points, type=type, emitter="c", where="h", seq=1).evolve(next=("orchester",))
    return env, encode(env)


def test_default_route_sends_to_carbon_and_ends_when_written() -> None:
    """A batch routed only to carbon is ACKed, then HAPPY_END once the egress has written it."""
    orch, egress, events, _, _ = make(hold=True)
    env, data = frame((("a.b", 1_700_000_000, 1.0), ("a.c", 1_700_000_000, 2)))
    orch.on_frame(data)
    assert egress.points == [("a.b", 1_700_000_000, 1.0), ("a.c", 1_700_000_000, 2)]
    assert [e.event for e in events.envelopes()] == ["ACK"]
    egress.release()
    ended = events.envelopes()[-1]
    assert ended.event == "HAPPY_END" and ended.task_id == env.task_id and ended.meta["points"] == 2


def test_type_routes_fan_out_to_satellites_and_carbon() -> None:
    """A type routed to [archive, carbon] is SENT with two legs: forwarded to archive, written to carbon."""
    orch, egress, events, archive, _ = make()
    env, data = frame((("a.b", 1_700_000_000, 1.0),), type="audit")
    orch.on_frame(data)
    [forwarded] = archive.envelopes()
    assert forwarded.task_id == env.task_id and forwarded.step == "orchester" and forwarded.next == ("archive",)
    assert egress.points == [("a.b", 1_700_000_000, 1.0)]
    assert [(e.event, e.meta.get("legs"), e.meta.get("to")) for e in events.envelopes()] == [
        ("ACK", None, None),
        ("SEND", 2, "archive,orchester"),  # the carbon leg is the orchester's own
        ("HAPPY_END", None, None),
    ]


def test_route_without_carbon_only_forwards() -> None:
    """A type routed only to a satellite never reaches carbon."""
    orch, egress, events, archive, _ = make()
    orch.on_frame(frame((("a.b", 1, 1.0),), type="cold")[1])
    assert len(archive.frames) == 1 and egress.batches == []


def test_every_datapoint_is_checked_once_and_bad_ones_are_counted() -> None:
    """Hostile names, NaN, inf and bad timestamps are rejected by reason; the rest of the batch goes on."""
    orch, egress, events, _, _ = make()
    points = (
        ("good.one", 1_700_000_000, 1.0),
        ("../../etc/passwd", 1_700_000_000, 1.0),
        ("nul\x00name", 1_700_000_000, 1.0),
        ("x" * 5000, 1_700_000_000, 1.0),
        ("nan.value", 1_700_000_000, math.nan),
        ("inf.value", 1_700_000_000, math.inf),
        ("old.time", -5, 1.0),
        ("a..b", 1_700_000_000, 3),
    )
    orch.on_frame(frame(points)[1])
    sent = [p[0] for p in egress.points]
    assert sent[0] == "good.one" and sent[-1] == "a.b"
    assert all("/" not in p and ".." not in p and "\x00" not in p for p in sent)
    assert orch.rejected["bad_name"] == 2
    assert orch.rejected["nan"] == 2
    assert orch.rejected["bad_timestamp"] == 1
    assert events.envelopes()[-1].meta["rejected"] == 5


def test_garbage_frames_are_counted_and_do_not_stop_routing() -> None:
    """Frames that do not decode are rejected by reason and the next good frame is routed."""
    orch, egress, _, _, _ = make()
    for garbage in (b"", b"DS", b"DS\x09\x01", b"\xff" * 40):
        orch.on_frame(garbage)
    orch.on_frame(frame((("a.b", 1, 1.0),))[1])
    assert sum(orch.rejected.values()) == 4
    assert len(egress.points) == 1


def test_own_metrics_are_counts_since_last_time() -> None:
    """self.orchester.* carries points in/out and rejections as deltas, and the queue depth as a level."""
    orch, egress, _, _, _ = make()
    orch.on_frame(frame((("a.b", 1, 1.0), ("bad\x00", 1, 1.0)))[1])
    first = {p: v for p, _, v in orch.own_metrics()}
    assert first["dsat.h.self.orchester.points_in"] == 2
    assert first["dsat.h.self.orchester.points_out"] == 1
    assert first["dsat.h.self.orchester.rejected.bad_name"] == 1
    assert first["dsat.h.self.orchester.queue_depth"] == 0
    second = {p: v for p, _, v in orch.own_metrics()}
    assert second["dsat.h.self.orchester.points_in"] == 0


def test_own_metrics_are_written_on_the_clock() -> None:
    """start() writes the orchester's own metrics at each multiple of metrics_every, stamped with it."""
    orch, egress, _, _, clock = make()
    clock.advance(3.6)
    orch.start()
    clock.advance(6.3)
    assert egress.points == []
    clock.advance(0.1)
    assert {ts for path, ts, _ in egress.points if path == "dsat.h.self.orchester.points_in"} == {1_700_000_010}
    orch.stop()


def test_the_input_link_is_one_of_the_egress_producers() -> None:
    """start() registers the input link with the egress's producers: paused and resumed with them, no timer."""
    orch, egress, _, _, clock = make()
    link = FakeProducer()
    orch.start(link)
    egress.producers.pause()
    assert link.paused
    clock.advance(60)
    assert link.paused
    egress.producers.resume()
    assert not link.paused
    orch.stop()


def test_control_changes_routes_and_refuses_unknown_targets() -> None:
    """A route change on the control channel takes effect for the next batch; a bad one is counted, not applied."""
    orch, egress, _, archive, _ = make()
    change = Envelope(channel="control", type="route", meta={"action": "route", "type": "gauge", "targets": "archive"})
    orch.on_control(encode(change))
    orch.on_frame(frame((("a.b", 1, 1.0),))[1])
    assert len(archive.frames) == 1 and egress.batches == []
    bad = change.evolve(meta={"action": "route", "type": "gauge", "targets": "nowhere"})
    orch.on_control(encode(bad))
    orch.on_control(encode(change.evolve(meta={"action": "explode"})))
    orch.on_control(b"garbage")
    assert orch.rejected["bad_control"] == 2 and orch.rejected["bad_magic"] == 1
    assert orch.routes["gauge"] == ("archive",)


def test_control_adds_drains_and_removes_carbon_destinations() -> None:
    """add, drain and remove on the control channel change where the orchester places new data."""
    from twisted.internet.testing import MemoryReactorClock

    from dsat.carbon import CarbonEgress

    orch, _, _, _, clock = make()
    egress = CarbonEgress(MemoryReactorClock(), [("127.0.0.1", 2004, "a"), ("127.0.0.1", 2104, "b")])
    orch = Orchester(orch.topology, clock=clock, egress=egress, senders={}, reporter=orch.reporter, where="h")
    control = Envelope(channel="control", type="route")
    for meta in (
        {"action": "add", "destination": "127.0.0.1:2204:c"},
        {"action": "drain", "destination": "127.0.0.1:2004"},
        {"action": "remove", "destination": "127.0.0.1:2104"},
    ):
        orch.on_control(encode(control.evolve(meta=meta)))
    assert egress.placing == ["127.0.0.1:2204"] and orch.rejected["bad_control"] == 0
    with pytest.raises(ConfigError, match="valid: route, add, drain, remove"):
        orch.apply_control({"action": "explode"})


def test_rules_apply_and_reload_when_the_file_changes_keeping_them_on_a_bad_file(tmp_path: Path) -> None:
    """Rewrite rules rename on the way; a changed file is reloaded; one that does not parse leaves the old rules."""
    import dataclasses
    import os

    from dsat.rules import load_rules
    from dsat.topology import RulesConf

    rules_file = tmp_path / "rewrite-rules.conf"
    rules_file.write_text("[pre]\n^old\\. = new.\n")
    orch, egress, _, _, clock = make()
    topo = dataclasses.replace(orch.topology, rules=RulesConf(rewrite=rules_file))
    orch = Orchester(
        topo, clock=clock, egress=egress, senders={}, reporter=orch.reporter, where="h", rules=load_rules(rules_file)
    )
    orch.on_frame(frame((("old.a", 1, 1.0),))[1])
    assert egress.points[-1][0] == "new.a"

    rules_file.write_text("[pre]\n^old\\. = newer.\n")
    os.utime(rules_file, (1, 1))
    orch.watch_rules()
    orch.on_frame(frame((("old.a", 1, 1.0),))[1])
    assert egress.points[-1][0] == "newer.a"

    rules_file.write_text("[pre]\n^old\\.( = broken\n")
    os.utime(rules_file, (2, 2))
    orch.watch_rules()
    assert orch.rules_refused == 1
    orch.on_frame(frame((("old.a", 1, 1.0),))[1])
    assert egress.points[-1][0] == "newer.a"


def test_ingest_sends_client_datapoints_through_the_rules_to_carbon(tmp_path: Path) -> None:
    """Graphite/statsd datapoints go through the rules (deny counted by reason) to the egress, untracked."""
    from dsat.rules import load_rules

    orch, egress, events, _, _ = make()
    orch.rules = load_rules(deny=["^secret\\."])
    orch.ingest([("app.requests", 1_700_000_000, 1.0), ("secret.key", 1_700_000_000, 2.0)])
    assert egress.batches == [[("app.requests", 1_700_000_000, 1.0)]]
    assert (orch.points_in, orch.points_out) == (2, 1)
    assert orch.rejected == {"filtered": 1}
    assert events.frames == []  # no batch to track: nothing for the tracker


def aggregating(tmp_path: Path, rules: str) -> tuple[Orchester, CaptureEgress, Clock, int]:
    """An orchester with these aggregation rules, and the start of the current 10 s interval."""
    from dsat.rules import load_rules

    rules_file = tmp_path / "aggregation-rules.conf"
    rules_file.write_text(rules)
    orch, egress, _, _, clock = make()
    orch.rules = load_rules(aggregation_path=rules_file, clock=clock)
    return orch, egress, clock, int(clock.seconds()) // 10 * 10


def test_flush_aggregates_sends_each_closed_interval_once(tmp_path: Path) -> None:
    """An aggregation rule's output is sent when its interval is closed (past the lateness), and only then."""
    orch, egress, clock, start = aggregating(tmp_path, "app.all.requests (10) = sum app.<host>.requests\n")
    orch.ingest([("app.a.requests", start, 1.0), ("app.b.requests", start + 5, 2.0)])
    orch.flush_aggregates()
    assert ("app.all.requests", float(start), 3.0) not in egress.points  # the interval is still open
    clock.advance(40)
    orch.flush_aggregates()
    orch.flush_aggregates()
    assert egress.points.count(("app.all.requests", float(start), 3.0)) == 1
    assert orch.points_out == 2 + 1  # the inputs go on too (forward_all), then the aggregate


def test_a_circuit_opened_by_the_tracker_holds_the_legs_to_its_step() -> None:
    """on_published: an open circuit holds legs to the step (counted as diverted), carbon legs still go; closed again,
    the step gets batches again; a frame that does not parse is counted bad_state."""
    from dsat.breaker import BREAKER_TOPIC
    from dsat.events import published

    orch, egress, _, archive, _ = make()
    orch.on_published(published(BREAKER_TOPIC, {"step": "archive", "state": "OPEN"}))
    orch.on_frame(frame((("a.b", 1_700_000_000, 1.0),), type="audit")[1])
    assert archive.frames == [] and len(egress.points) == 1 and orch.circuits.diverted == 1
    orch.heartbeat()
    assert orch.reporter.sender.envelopes()[-1].meta["diverted"] == 1  # type: ignore[attr-defined]
    orch.on_published(published(BREAKER_TOPIC, {"step": "archive", "state": "CLOSED"}))
    orch.on_frame(frame((("a.b", 1_700_000_001, 1.0),), type="audit")[1])
    assert len(archive.frames) == 1
    orch.on_published(b"no topic here")
    assert orch.rejected == {"bad_state": 1}


def test_under_block_a_full_carbon_egress_pauses_the_input_link_until_carbon_takes_data(tmp_path: Path) -> None:
    """The block path end to end in memory: Carbon down, spool full, queue at max_queue: the orchester's input link
    is paused; once a connection to carbon drains the queue it is resumed, and every held batch ends."""
    from twisted.internet.testing import MemoryReactorClock

    from dsat.carbon import CarbonEgress
    from dsat.spool import Spool
    from tests.harness import connect

    spool = Spool(tmp_path / "s.db", max_bytes=2000, policy="block")
    egress = CarbonEgress(MemoryReactorClock(), [("127.0.0.1", 2004)], spool=spool, max_queue=50)
    orch, _, events, _, _ = make()
    orch = Orchester(orch.topology, clock=orch.clock, egress=egress, senders={}, reporter=orch.reporter, where="h")
    link = FakeProducer()
    orch.start(link)
    sent = 0
    while not link.paused:
        orch.on_frame(frame(tuple((f"m{sent}.{j}", 1_700_000_000, 1.0) for j in range(10)))[1])
        sent += 1
        assert sent < 100, "never paused"
    assert spool.refused > 0 and egress.queued_points >= 50 and egress.dropped == 0
    ended = [e for e in events.envelopes() if e.event == "HAPPY_END"]
    assert len(ended) < sent  # the held batches have not ended
    connect(egress.destinations[0])
    assert not link.paused
    assert len([e for e in events.envelopes() if e.event == "HAPPY_END"]) == sent
    orch.stop()


def make_pair_member(role: str = "backup") -> tuple[Orchester, CaptureEgress, FakeSender, Clock, list[bool]]:
    beats = FakeSender()
    listening: list[bool] = []

    def member(clock: Clock, orch: Callable[[], Orchester]) -> PairMember:
        """Built as dsat.process builds it: the listeners follow ACTIVE, each transition beats to the tracker."""
        return PairMember(
            clock,
            host="hub-b",
            role=role,
            heartbeat=0.5,
            missed_beats=3,
            publisher=beats,
            on_active=listening.append,
            on_change=lambda _transition: orch().heartbeat(),
        )

    orch, egress, _events, _, clock = make(pair=member)
    assert orch.pair is not None
    orch.pair.start()
    return orch, egress, beats, clock, listening


def peer_beat(state: str, host: str = "hub-a") -> bytes:
    from dsat.binarystar import HEARTBEAT_TOPIC
    from dsat.events import published

    return published(HEARTBEAT_TOPIC, {"host": host, "state": state})


def test_a_passive_orchester_refuses_batches_until_a_vote_after_the_peer_fell_silent() -> None:
    """A passive server routes nothing (rejected.passive) while its peer beats, lets its own tracker's metrics
    through, fails over on the first batch after the peer missed its beats, opens its ingress and says so."""
    from dsat.events import parse_published

    orch, egress, beats, clock, listening = make_pair_member()
    orch.on_peer_heartbeat(peer_beat("ACTIVE"))
    assert orch.pair is not None and orch.pair.fsm.state.value == "PASSIVE"
    _, data = frame((("a.b", 1_700_000_000, 1.0),))
    orch.on_frame(data)
    own = Envelope.new_batch((("dsat.h.self.t", 1_700_000_000, 1.0),), type="self", emitter="tracker", where="h", seq=1)
    orch.on_frame(encode(own.evolve(next=("orchester",))))
    assert egress.points == [("dsat.h.self.t", 1_700_000_000, 1.0)] and orch.rejected["passive"] == 1
    clock.advance(1.6)
    orch.on_frame(data)
    assert orch.pair.fsm.active and listening == [True]
    assert egress.points[-1] == ("a.b", 1_700_000_000, 1.0)
    assert parse_published(beats.frames[-1])[1]["state"] == "ACTIVE"  # told at once, not at the next beat
    metrics = {path.split(".self.orchester.")[1]: v for path, _, v in orch.own_metrics()}
    assert (metrics["ha.failovers"], metrics["ha.active"], metrics["ha.refused"]) == (1, 1, 1)


def test_two_actives_the_backup_yields_and_odd_heartbeats_are_counted() -> None:
    """An active backup hearing an active primary goes passive and closes its ingress; a heartbeat that is not a
    peer's (its own host, garbage) is counted as bad_heartbeat."""
    orch, _, _, clock, listening = make_pair_member()
    orch.on_peer_heartbeat(peer_beat("PRIMARY"))  # BACKUP ignores a primary still waiting
    orch.on_peer_heartbeat(peer_beat("ACTIVE"))
    orch.on_peer_heartbeat(peer_beat("PRIMARY"))  # the primary restarted: take over
    assert orch.pair is not None and orch.pair.fsm.active and listening == [True]
    orch.on_peer_heartbeat(peer_beat("ACTIVE"))
    assert orch.pair.fsm.state.value == "PASSIVE" and listening == [True, False]
    assert orch.pair.fsm.counts["dual_active"] == 1
    orch.on_peer_heartbeat(peer_beat("ACTIVE", host="hub-b"))
    orch.on_peer_heartbeat(b"junk")
    assert orch.rejected["bad_heartbeat"] == 2


def test_a_satellite_sending_milliseconds_is_refused_as_the_ingress_refuses_them() -> None:
    """The one datapoint rule at the satellites' entry: a timestamp at or past 2**32 (milliseconds) is bad_timestamp,
    as over the Graphite ingress; the rest of the batch lands."""
    orch, egress, events, _, _ = make()
    points = (("ms", 1_700_000_000_000, 1.0), ("edge", 2**32, 1.0), ("ok", 2**32 - 1, 1.0), ("zero", 0, 1.0))
    orch.on_frame(frame(points)[1])
    assert egress.points == [("ok", 2**32 - 1, 1.0)]
    assert orch.rejected == {"bad_timestamp": 3}
    assert events.envelopes()[-1].meta == {"points": 1, "rejected": 3}


def test_a_deny_rule_filters_the_orchesters_own_metrics_as_any_datapoint() -> None:
    """write_own_metrics takes the one path: a deny rule on self.orchester drops them (counted filtered)."""
    from dsat.rules import load_rules

    orch, egress, _, _, _ = make()
    orch.rules = load_rules(deny=["\\.self\\.orchester\\.rejected\\."])
    orch.on_frame(frame((("a.b", 1_700_000_000, 1.0), ("bad\x00", 1_700_000_000, 1.0)))[1])
    orch.write_own_metrics()
    written = [path for path, _, _ in egress.points]
    assert "dsat.h.self.orchester.points_in" in written
    assert not [path for path in written if ".rejected." in path]
    assert orch.rejected["filtered"] == 1  # the one rejected.bad_name datapoint


def test_an_aggregate_that_overflows_is_refused_by_the_rule_alone(tmp_path: Path) -> None:
    """Aggregates go through the datapoint rule (not the rules again): a sum past 1e308 is nan, the others land."""
    orch, egress, clock, start = aggregating(
        tmp_path, "big.all (10) = sum big.<host>\nsmall.all (10) = sum small.<host>\n"
    )
    orch.ingest([("big.a", start, 1e308), ("big.b", start, 1e308), ("small.a", start, 1.0), ("small.b", start, 2.0)])
    clock.advance(40)
    orch.flush_aggregates()
    assert ("small.all", float(start), 3.0) in egress.points
    assert not [p for p in egress.points if p[0] == "big.all"]
    assert orch.rejected == {"nan": 1}


def test_a_reload_counts_the_aggregation_buffers_it_discards(tmp_path: Path) -> None:
    """Rules reloaded without an aggregation rule: the datapoints it held are counted as rejected.rule_removed, and
    the refused reloads as rules_refused, both in the orchester's own metrics."""
    import dataclasses
    import os

    from dsat.rules import load_rules
    from dsat.topology import RulesConf

    rules_file = tmp_path / "aggregation-rules.conf"
    rules_file.write_text("app.all (60) = sum app.<host>\n")
    orch, egress, _, _, clock = make()
    topo = dataclasses.replace(orch.topology, rules=RulesConf(aggregation=rules_file))
    rules = load_rules(aggregation_path=rules_file, clock=clock)
    orch = Orchester(topo, clock=clock, egress=egress, senders={}, reporter=orch.reporter, where="h", rules=rules)
    orch.ingest([("app.a", 1_700_000_000, 1.0), ("app.b", 1_700_000_001, 2.0), ("app.c", 1_700_000_002, 3.0)])
    rules_file.write_text("other.all (60) = sum other.<host>\n")
    os.utime(rules_file, (1, 1))
    orch.watch_rules()
    assert orch.rejected == {"rule_removed": 3}
    rules_file.write_text("this is ( not a rule\n")
    os.utime(rules_file, (2, 2))
    orch.watch_rules()
    metrics = {path.split(".self.orchester.")[1]: v for path, _, v in orch.own_metrics()}
    assert metrics["rejected.rule_removed"] == 3 and metrics["rules_refused"] == 1


def test_the_spools_refusals_are_in_the_own_metrics(tmp_path: Path) -> None:
    """Spool.refused (batches a full spool refused under block) is reported as self.orchester.spool_refused."""
    from dsat.spool import Spool

    orch, egress, _, _, _ = make()
    egress.spool = Spool(tmp_path / "s.db", max_bytes=10, policy="block")
    assert not egress.spool.put("a", b"x" * 100, 1) and not egress.spool.put("a", b"x" * 100, 1)
    first = {path.split(".self.orchester.")[1]: v for path, _, v in orch.own_metrics()}
    second = {path.split(".self.orchester.")[1]: v for path, _, v in orch.own_metrics()}
    assert (first["spool_refused"], second["spool_refused"]) == (2, 0)


def raise_once(obj: object, attr: str) -> list[int]:
    """Make *obj.attr* raise on its first call and work after; returns the list its calls are counted in."""
    real = getattr(obj, attr)
    calls: list[int] = []

    def flaky(*args: object, **kw: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(f"{attr}: injected")
        return real(*args, **kw)

    setattr(obj, attr, flaky)
    return calls


def test_a_heartbeat_that_raises_is_counted_and_the_next_one_is_sent() -> None:
    orch, _, events, _, clock = make()
    calls = raise_once(events, "send")
    orch.start()  # the first heartbeat, at once, raises
    clock.advance(5.0)
    assert len(calls) >= 2 and orch.timer_failures == 1
    assert any(env.type == "heartbeat" for env in events.envelopes())
    orch.stop()


def test_an_aggregate_flush_that_raises_is_counted_and_the_next_one_sends(tmp_path: Path) -> None:
    orch, egress, clock, start = aggregating(tmp_path, "app.all.requests (10) = sum app.<host>.requests\n")
    assert orch.rules is not None
    calls = raise_once(orch.rules, "flush")
    orch.ingest([("app.a.requests", start, 1.0)])
    orch.start()
    clock.pump([1.0] * 45)
    assert len(calls) >= 40 and orch.timer_failures == 1
    assert ("app.all.requests", float(start), 1.0) in egress.points
    orch.stop()


def test_a_rule_file_watch_that_raises_is_counted_and_the_next_one_looks_again() -> None:
    orch, _, _, _, clock = make()
    calls = raise_once(orch, "_rule_files_stamp")
    orch.start()
    clock.pump([2.0, 2.0])
    assert len(calls) == 2 and orch.timer_failures == 1
    orch.stop()


def test_an_own_metrics_write_that_raises_is_counted_and_the_next_slot_is_written() -> None:
    orch, egress, _, _, clock = make()
    calls = raise_once(egress, "send")
    orch.start()
    clock.pump([10.0, 10.0])
    assert len(calls) >= 2 and orch.timer_failures == 1
    assert {ts for path, ts, _ in egress.points if path == "dsat.h.self.orchester.points_in"} == {1_700_000_020}
    orch.stop()


def test_a_pair_heartbeat_that_raises_is_counted_and_the_next_one_is_published() -> None:
    orch, _, beats, clock, _ = make_pair_member()
    assert orch.pair is not None
    before = len(beats.frames)
    calls = raise_once(beats, "send")
    clock.pump([0.5, 0.5])
    assert len(calls) == 2 and len(beats.frames) == before + 1
    assert orch.timer_failures == 1


def test_the_heartbeat_carries_the_spool_state_and_its_disk_full_episodes(tmp_path: Path) -> None:
    """dsat status shows the spool (held, free on disk, full or not); the tracker alerts when the episodes go up."""
    from dsat.spool import Spool
    from dsat.testing import FailingDisk

    orch, egress, events, _, _ = make()
    spool = Spool(tmp_path / "s.db")
    spool.db = FailingDisk(spool.db)  # type: ignore[assignment]
    egress.spool = spool
    assert not spool.put("a", b"x", 1)
    orch.heartbeat()
    meta = [env for env in events.envelopes() if env.type == "heartbeat"][-1].meta
    assert meta["spool_disk_full"] == 1
    assert "full: full (database or disk is full)" in meta["spool_state"]
    assert "MiB free on its disk" in meta["spool_state"]

"""`dsat status` formatting of a tracker snapshot."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock

from dsat import topology
from dsat.events import Reporter
from dsat.orchester import PairMember
from dsat.testing import FakeSender
from dsat.tools.status import format_status
from dsat.tracker import TrackerService


def test_table_has_a_row_per_step_with_counts_and_heartbeat_age() -> None:
    """Each step with counters or a heartbeat gets a row; the FSM totals head the table."""
    snap = {
        "tasks": {"in_flight": 2, "happy_end": 10, "error": 1, "timeout": 0},
        "steps": {"cpu": {"batches_sent": 12}, "orchester": {"batches_received": 11, "batches_ended": 10}},
        "heartbeats": {"cpu": {"age": 3.2}, "rate": {"age": 1.0}},
        "rejected": {"bad_magic": 2},
    }
    text = format_status(snap)
    lines = text.splitlines()
    assert lines[0] == "batches: error 1, happy_end 10, in_flight 2, timeout 0"
    rows = {line.split()[0]: line.split() for line in lines[3:] if line and not line.startswith("tracker")}
    assert rows["cpu"][2] == "12" and rows["cpu"][-2:] == ["3s", "ago"]
    assert rows["orchester"][1] == "11" and rows["orchester"][3] == "10"
    assert rows["rate"][-1] == "ago"
    assert "tracker rejected: bad_magic 2" in text


def test_a_server_of_a_pair_shows_its_state_its_peer_and_the_last_failover() -> None:
    """On a pair, the orchester's heartbeat fields become two lines: the states, the failovers and the last one."""
    snap = {
        "tasks": {"in_flight": 0},
        "steps": {},
        "heartbeats": {
            "orchester": {
                "age": 0.2,
                "counters": {"failovers": 1},
                "config": {
                    "ha_state": "hub-b (backup) ACTIVE",
                    "ha_peer": "PASSIVE",
                    "ha_last_failover": "at 1700000000: failover: peer silent for 1.6s (deadline 1.5s); a client asked",
                },
            }
        },
    }
    text = format_status(snap)
    assert "pair: this server hub-b (backup) ACTIVE; peer PASSIVE" in text
    assert "failovers: 1; last: at 1700000000: failover: peer silent for 1.6s" in text
    assert "pair:" not in format_status(
        {"tasks": {}, "steps": {}, "heartbeats": {"orchester": {"age": 1, "config": {}}}}
    )


def test_the_orchesters_ingress_workers_are_shown_from_its_heartbeat() -> None:
    snap = {
        "tasks": {},
        "steps": {},
        "heartbeats": {"orchester": {"age": 1, "config": {"workers": "2 of 3 processes running; down: orchester.w2"}}},
    }
    assert "ingress workers: 2 of 3 processes running; down: orchester.w2" in format_status(snap)
    assert "ingress workers" not in format_status(
        {"tasks": {}, "steps": {}, "heartbeats": {"orchester": {"age": 1, "config": {}}}}
    )


def test_the_spool_state_is_shown_from_the_orchesters_heartbeat() -> None:
    state = "3.9 MiB held of 1024.0 MiB, 0.0 MiB free on its disk, full: full (database or disk is full)"
    snap = {"tasks": {}, "steps": {}, "heartbeats": {"orchester": {"age": 1, "config": {"spool_state": state}}}}
    assert f"spool: {state}" in format_status(snap)


def test_the_restarts_dsat_up_counted_are_shown_by_step_and_cause() -> None:
    snap = {"tasks": {}, "steps": {}, "restarts": {"hang": {"hung": 1}, "orchester": {"exited": 2, "killed": 1}}}
    assert "restarts (this host): hang hung 1; orchester exited 2, killed 1" in format_status(snap)
    assert "restarts" not in format_status({"tasks": {}, "steps": {}, "restarts": {}})


def test_after_a_failover_the_dead_peer_shows_as_silent_with_its_age_not_as_its_last_state() -> None:
    """The backup that took over shows its peer silent for as long as it has been, heartbeat's age included,
    through the real path: the pair's heartbeat fields, the orchester's heartbeat, the tracker's snapshot."""
    clock = Clock()
    clock.advance(1_700_000_000)
    topo = topology.loads(
        '[ingress]\nplaintext = "127.0.0.1:2003"\n[carbon]\ndestinations = ["127.0.0.1:2004"]\n',
        path=Path("/tmp/t.toml"),
    )
    tracker = TrackerService(topo, clock=clock, where="hub-b", publisher=FakeSender(), orchester=FakeSender())
    events = FakeSender()
    reporter = Reporter(events, step="orchester", where="hub-b", pid=2)
    pair = PairMember(clock, host="hub-b", role="backup", heartbeat=0.5, missed_beats=3, publisher=FakeSender())

    def status_after_a_heartbeat(age: float) -> str:
        reporter.heartbeat(**pair.heartbeat_fields())
        tracker.on_event(events.frames[-1])
        clock.advance(age)
        return format_status(tracker.status())

    pair.fsm.on_peer("ACTIVE")
    assert "pair: this server hub-b (backup) PASSIVE; peer ACTIVE\n" in status_after_a_heartbeat(1.0)
    clock.advance(1.0)
    assert pair.client_request()  # 2 s of silence: past the 1.5 s deadline, and a client asked: the failover
    assert "pair: this server hub-b (backup) ACTIVE; peer silent for 2s (last heard ACTIVE)" in (
        status_after_a_heartbeat(0.0)
    )
    clock.advance(10)
    assert "peer silent for 15s (last heard ACTIVE)" in status_after_a_heartbeat(3.0)
    pair.fsm.on_peer("PRIMARY")  # the old primary is back: heard again, no longer silent
    assert "; peer PRIMARY\n" in status_after_a_heartbeat(0.5)


def test_a_peer_never_heard_shows_as_silent_since_the_server_started() -> None:
    """A server whose peer never beat, past the deadline, says so rather than a state it never heard."""
    config = {"ha_state": "hub-a (primary) ACTIVE", "ha_peer": "unheard", "ha_peer_silent": "40.0"}
    snap = {"tasks": {}, "steps": {}, "heartbeats": {"orchester": {"age": 2.0, "config": config}}}
    assert "pair: this server hub-a (primary) ACTIVE; peer silent for 42s (never heard)" in format_status(snap)

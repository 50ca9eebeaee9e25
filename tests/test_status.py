"""`dsat status` formatting of a tracker snapshot."""

from __future__ import annotations

from dsat.tools.status import format_status


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

"""`dsat status`'s table: what it prints from a tracker snapshot."""

from __future__ import annotations

from dsat.status import format_status


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

"""The Binary Star FSM (every row of the guide's table, on an injected clock) and a satellite's choice of server."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from dsat.binarystar import BinaryStar, Event, ServerChoice, State, Transition

HEARTBEAT, MISSED = 1.0, 3
DEADLINE = HEARTBEAT * MISSED


def star(role: str, state: State | None = None, clock: Clock | None = None) -> tuple[BinaryStar, list[Transition]]:
    """A server of *role*, brought to *state* through the events that lead there; its transitions from then on."""
    clock = clock or Clock()
    changes: list[Transition] = []
    fsm = BinaryStar(clock, role=role, heartbeat=HEARTBEAT, missed_beats=MISSED, on_change=changes.append)
    if state is State.ACTIVE:
        fsm.on_peer("BACKUP" if role == "primary" else "PRIMARY")
        if role == "backup":  # a backup reaches ACTIVE only through PASSIVE
            fsm.on_peer("ACTIVE")
            fsm.on_peer("PRIMARY")
    elif state is State.PASSIVE:
        fsm.on_peer("ACTIVE")
    assert state is None or fsm.state is state
    changes.clear()
    return fsm, changes


# (role, state, event, next state, client served, alert)
TABLE = [
    ("primary", State.PRIMARY, Event.PEER_BACKUP, State.ACTIVE, True, ""),
    ("primary", State.PRIMARY, Event.PEER_ACTIVE, State.PASSIVE, True, ""),
    ("primary", State.PRIMARY, Event.PEER_PRIMARY, State.PRIMARY, True, ""),
    ("primary", State.PRIMARY, Event.PEER_PASSIVE, State.PRIMARY, True, ""),
    ("backup", State.BACKUP, Event.PEER_ACTIVE, State.PASSIVE, True, ""),
    ("backup", State.BACKUP, Event.PEER_PRIMARY, State.BACKUP, True, ""),
    ("backup", State.BACKUP, Event.PEER_BACKUP, State.BACKUP, True, ""),
    ("backup", State.BACKUP, Event.PEER_PASSIVE, State.BACKUP, True, ""),
    ("primary", State.ACTIVE, Event.PEER_PRIMARY, State.ACTIVE, True, ""),
    ("primary", State.ACTIVE, Event.PEER_BACKUP, State.ACTIVE, True, ""),
    ("primary", State.ACTIVE, Event.PEER_PASSIVE, State.ACTIVE, True, ""),
    ("primary", State.ACTIVE, Event.PEER_ACTIVE, State.ACTIVE, True, "dual_active"),
    ("backup", State.ACTIVE, Event.PEER_ACTIVE, State.PASSIVE, True, "dual_active"),
    ("primary", State.PASSIVE, Event.PEER_PRIMARY, State.ACTIVE, True, "failover"),
    ("backup", State.PASSIVE, Event.PEER_PRIMARY, State.ACTIVE, True, "failover"),
    ("primary", State.PASSIVE, Event.PEER_BACKUP, State.ACTIVE, True, "failover"),
    ("primary", State.PASSIVE, Event.PEER_ACTIVE, State.PASSIVE, True, ""),
    ("primary", State.PASSIVE, Event.PEER_PASSIVE, State.ACTIVE, True, "dual_passive"),
    ("backup", State.PASSIVE, Event.PEER_PASSIVE, State.PASSIVE, True, "dual_passive"),
]


@pytest.mark.parametrize(("role", "state", "event", "after", "served", "alert"), TABLE)
def test_every_peer_event_of_the_table(
    role: str, state: State, event: Event, after: State, served: bool, alert: str
) -> None:
    """Each (state, peer state) row of the guide's table leads to its next state, alerting where DSAT says so."""
    fsm, changes = star(role, state)
    fsm.on_peer(event.value.removeprefix("PEER_"))
    assert fsm.state is after
    assert [c.alert for c in changes if c.alert] == ([alert] if alert else [])
    if after is not state:
        assert [(c.old, c.new, c.event) for c in changes] == [(state, after, event)]


def test_a_primary_serves_a_client_alone_only_after_the_peer_had_a_full_deadline_to_show_up() -> None:
    """PRIMARY refuses a client before the deadline (the backup may be active after a failover), then goes ACTIVE."""
    clock = Clock()
    fsm, changes = star("primary", clock=clock)
    clock.advance(DEADLINE - 0.1)
    assert not fsm.client_request() and fsm.state is State.PRIMARY
    clock.advance(0.1)
    assert fsm.client_request() and fsm.state is State.ACTIVE
    assert changes[0].event is Event.CLIENT_REQUEST and not changes[0].alert
    assert fsm.counts["refused"] == 1 and fsm.counts["failovers"] == 0


def test_a_backup_refuses_clients_however_long_it_waits() -> None:
    """BACKUP never serves before it met an active primary: recovery without the primary is deliberate."""
    clock = Clock()
    fsm, _ = star("backup", clock=clock)
    clock.advance(DEADLINE * 100)
    assert not fsm.client_request() and fsm.state is State.BACKUP


def test_active_serves_every_client_request() -> None:
    """ACTIVE answers clients and does not change."""
    fsm, changes = star("primary", State.ACTIVE)
    assert all(fsm.client_request() for _ in range(5)) and fsm.state is State.ACTIVE and not changes


def test_passive_fails_over_only_on_a_client_vote_after_the_peer_missed_its_beats() -> None:
    """PASSIVE refuses clients while the peer beats; silence alone changes nothing; silence plus a vote fails over."""
    clock = Clock()
    fsm, changes = star("backup", State.PASSIVE, clock)
    for _ in range(10):
        clock.advance(HEARTBEAT)
        fsm.on_peer("ACTIVE")
        assert not fsm.client_request()
    clock.advance(DEADLINE - 0.5)
    assert not fsm.client_request() and fsm.state is State.PASSIVE
    clock.advance(10.0)  # long silent, but no one asked: still passive
    assert fsm.state is State.PASSIVE and not changes
    assert fsm.client_request() and fsm.state is State.ACTIVE
    (change,) = changes
    assert (change.old, change.new, change.event, change.alert) == (
        State.PASSIVE,
        State.ACTIVE,
        Event.CLIENT_REQUEST,
        "failover",
    )
    assert "peer silent for 12.5s (deadline 3s)" in change.reason
    assert fsm.counts == {"failovers": 1, "dual_active": 0, "dual_passive": 0, "refused": 11, "bad_heartbeats": 0}
    assert fsm.snapshot()["last_failover"]["reason"] == change.reason


def test_a_cut_between_the_servers_alone_never_makes_two_actives() -> None:
    """Both servers lose each other's heartbeats while clients still reach the active one: no vote, one active."""
    clock = Clock()
    primary, _ = star("primary", State.ACTIVE, clock)
    backup, _ = star("backup", State.PASSIVE, clock)
    clock.advance(DEADLINE * 10)  # the link between them is cut: no heartbeats either way
    for _ in range(100):
        assert primary.client_request()
    assert [primary.state, backup.state] == [State.ACTIVE, State.PASSIVE]


def test_the_failed_primary_comes_back_passive() -> None:
    """After a failover to the backup, the restarted primary hears an active peer and stands by."""
    clock = Clock()
    backup, _ = star("backup", State.PASSIVE, clock)
    clock.advance(DEADLINE + 1)
    assert backup.client_request() and backup.active
    primary, _ = star("primary", clock=clock)
    backup.on_peer(primary.state.value)  # PRIMARY: a restarting peer changes nothing for the active one
    primary.on_peer(backup.state.value)
    assert [primary.state, backup.state] == [State.PASSIVE, State.ACTIVE]
    clock.advance(HEARTBEAT)
    assert not primary.client_request()


def test_odd_heartbeats_are_counted_and_ignored() -> None:
    """A heartbeat naming no state (or not a string) changes nothing and does not count as the peer alive."""
    clock = Clock()
    fsm, _ = star("backup", State.PASSIVE, clock)
    clock.advance(DEADLINE + 1)
    for odd in ("LEADER", 3, None, "active"):
        fsm.on_peer(odd)
    assert fsm.counts["bad_heartbeats"] == 4 and fsm.state is State.PASSIVE
    assert fsm.client_request()  # the odd beats did not keep the peer alive


def test_history_is_bounded() -> None:
    """Only the latest ``max_history`` transitions are kept."""
    clock = Clock()
    fsm = BinaryStar(clock, role="primary", heartbeat=HEARTBEAT, missed_beats=MISSED, max_history=3)
    for _ in range(10):
        fsm.on_peer("ACTIVE")  # to PASSIVE (or an alert while ACTIVE)
        fsm.on_peer("BACKUP")  # PASSIVE -> ACTIVE
    assert len(fsm.history) == 3 and len(fsm.snapshot()["history"]) == 3


def choice(clock: Clock) -> tuple[ServerChoice, list[tuple[str, str]], list[str]]:
    moves: list[tuple[str, str]] = []
    actives: list[str] = []
    pick = ServerChoice(
        clock,
        ("a", "b"),
        heartbeat=HEARTBEAT,
        missed_beats=MISSED,
        max_backoff=12.0,
        on_move=lambda host, why: moves.append((host, why)),
        on_active=actives.append,
    )
    return pick, moves, actives


def test_a_satellite_follows_the_server_that_announces_active() -> None:
    """A satellite moves to the other server when it announces ACTIVE and the current one does not."""
    clock = Clock()
    pick, moves, _ = choice(clock)
    pick.on_heartbeat({"host": "a", "state": "ACTIVE"})
    pick.on_heartbeat({"host": "b", "state": "PASSIVE"})
    assert pick.current == "a" and not moves
    pick.on_heartbeat({"host": "b", "state": "ACTIVE"})  # two actives: stay where the batches go
    assert pick.current == "a"
    clock.advance(DEADLINE + 0.1)
    pick.on_heartbeat({"host": "b", "state": "ACTIVE"})
    assert pick.current == "b" and moves == [("b", "b announces ACTIVE")]


def test_a_satellite_votes_only_when_its_batches_wait_and_the_server_is_silent_with_backoff() -> None:
    """Batches waiting past the deadline while the current server is silent move the satellite; moves back off."""
    clock = Clock()
    pick, moves, actives = choice(clock)
    pick.on_heartbeat({"host": "a", "state": "ACTIVE"})
    assert actives == ["a"]
    clock.advance(1.0)
    pick.check(stalled_for=DEADLINE + 5)  # the server beats: slow batches are not a reason to leave
    clock.advance(DEADLINE)
    pick.check(stalled_for=DEADLINE)  # silent, but the batches have not waited past the deadline
    assert not moves
    pick.check(stalled_for=DEADLINE + 0.1)
    assert moves == [("b", "batches waited 3.1s and a is silent")]
    times = [clock.seconds()]
    for _ in range(80):  # neither server answers: the satellite goes back and forth, ever slower
        clock.advance(0.5)
        before = len(moves)
        pick.check(stalled_for=100)
        if len(moves) > before:
            times.append(clock.seconds())
    gaps = [round(b - a, 1) for a, b in zip(times, times[1:], strict=False)]
    assert gaps[:3] == [3.0, 6.0, 12.0] and set(gaps[3:]) <= {12.0}
    pick.on_heartbeat({"host": pick.current, "state": "ACTIVE"})
    assert actives == ["a", pick.current]


def test_a_heartbeat_from_a_stranger_is_counted() -> None:
    """A heartbeat from a host not of the pair, or with no known state, is counted and ignored."""
    pick, moves, _ = choice(Clock())
    pick.on_heartbeat({"host": "z", "state": "ACTIVE"})
    pick.on_heartbeat({"host": "b", "state": "LEADER"})
    assert pick.bad_heartbeats == 2 and not moves and pick.current == "a"


def test_the_change_callback_sees_the_new_state() -> None:
    """on_change runs once the state has changed, so what it publishes is the new state."""
    clock = Clock()
    seen: list[State] = []
    fsm = BinaryStar(clock, role="primary", heartbeat=HEARTBEAT, missed_beats=MISSED)
    fsm.on_change = lambda transition: seen.append(fsm.state)
    fsm.on_peer("BACKUP")
    assert seen == [State.ACTIVE]

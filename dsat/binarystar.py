"""The Binary Star pair: which of two orchester servers serves, as pure logic.

Two servers run the orchester (and its tracker) side by side, one configured
**primary**, the other **backup**; they publish their state to each other
every ``heartbeat`` seconds (the ZeroMQ guide, chapter 4, "Binary Star").
:class:`BinaryStar` is the finite-state machine of one server, on an
injected clock (``IReactorTime``): it starts ``PRIMARY`` or ``BACKUP``, goes
``ACTIVE`` (it routes, its ingress listens) or ``PASSIVE`` (it neither routes
nor listens, but still drains its spool to Carbon) from its peer's state, and
fails over only when the peer has been silent for ``missed_beats`` heartbeats
**and** a client asks (a satellite's batch reaching the passive server: the
*client vote*).  The vote is what keeps a cut between the two servers alone
from making two actives: the satellites still reach the active one and never
ask the other.

The guide's table, with the two rules DSAT adds where the guide aborts:

========  ==============  =========================================================
state     event           next state
========  ==============  =========================================================
PRIMARY   PEER_BACKUP     ACTIVE
PRIMARY   PEER_ACTIVE     PASSIVE
PRIMARY   CLIENT_REQUEST  ACTIVE once the peer was silent past the deadline, else refused
BACKUP    PEER_ACTIVE     PASSIVE
BACKUP    CLIENT_REQUEST  refused (a backup never serves before it met an active primary)
ACTIVE    PEER_ACTIVE     two actives: alert; the backup goes PASSIVE, the primary stays
PASSIVE   PEER_PRIMARY    ACTIVE (the peer restarted; it will go passive)
PASSIVE   PEER_BACKUP     ACTIVE (the peer restarted; it will go passive)
PASSIVE   PEER_PASSIVE    two passives: alert; the primary goes ACTIVE, the backup stays
PASSIVE   CLIENT_REQUEST  ACTIVE (a failover) once the peer was silent past the deadline,
                          else refused
========  ==============  =========================================================

Every other (state, event) pair changes nothing.  A heartbeat naming no known
state is counted in ``bad_heartbeats`` and ignored; nothing here raises.  The
history of transitions is bounded (``max_history``).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime

#: Topic of a server's state heartbeat on its ``orchester.heartbeat`` PUB socket (peer and satellites listen).
HEARTBEAT_TOPIC = b"bstar\0"


class State(enum.Enum):
    """Where one server of the pair is."""

    #: Configured primary, waiting to hear its peer.
    PRIMARY = "PRIMARY"
    #: Configured backup, waiting to hear its peer.
    BACKUP = "BACKUP"
    #: Serving: routes batches, its ingress listens, satellites send to it.
    ACTIVE = "ACTIVE"
    #: Standing by: refuses batches (each one is a vote), ingress closed, spool still drained.
    PASSIVE = "PASSIVE"


class Event(enum.Enum):
    """What moves the machine: the peer's state in a heartbeat, or a client's request."""

    PEER_PRIMARY = "PEER_PRIMARY"
    PEER_BACKUP = "PEER_BACKUP"
    PEER_ACTIVE = "PEER_ACTIVE"
    PEER_PASSIVE = "PEER_PASSIVE"
    CLIENT_REQUEST = "CLIENT_REQUEST"


#: The event a heartbeat announcing each state is.
PEER_EVENTS = {state.value: Event[f"PEER_{state.value}"] for state in State}
#: Roles a server is configured with.
ROLES = ("primary", "backup")


@dataclass(frozen=True)
class Transition:
    """One change of state, why, and whether an operator must be told (``alert``: a kind, or "")."""

    old: State
    new: State
    event: Event
    reason: str
    at: float
    alert: str = ""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(old=self.old.value, new=self.new.value, event=self.event.value)
        return out


class BinaryStar:
    """One server's view of the pair: its state, its peer's, and the transitions so far."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        role: str,
        heartbeat: float,
        missed_beats: int,
        on_change: Callable[[Transition], None] | None = None,
        max_history: int = 20,
    ) -> None:
        self.clock = clock
        self.role = role
        self.heartbeat = heartbeat
        self.missed_beats = missed_beats
        self.on_change = on_change
        self.state = State.PRIMARY if role == "primary" else State.BACKUP
        self.started_at = clock.seconds()
        #: The peer is taken for dead after this moment (set again by each heartbeat from it).
        #: At start the peer has one deadline to show up before a primary serves alone.
        self.peer_expiry = self.started_at + self.deadline
        self.peer_state: State | None = None
        self.peer_heard: float | None = None
        self.history: deque[Transition] = deque(maxlen=max_history)
        self.counts = {"failovers": 0, "dual_active": 0, "dual_passive": 0, "refused": 0, "bad_heartbeats": 0}

    @property
    def deadline(self) -> float:
        """Seconds of silence after which the peer is taken for dead: ``heartbeat`` x ``missed_beats``."""
        return self.heartbeat * self.missed_beats

    @property
    def active(self) -> bool:
        return self.state is State.ACTIVE

    def peer_silent(self) -> bool:
        return self.clock.seconds() >= self.peer_expiry

    def silence(self) -> float:
        """Seconds since the peer was last heard (since this server started if it never was)."""
        return self.clock.seconds() - (self.peer_heard if self.peer_heard is not None else self.started_at)

    # -- events ----------------------------------------------------------------

    def on_peer(self, announced: object) -> None:
        """A heartbeat from the peer announcing its state (a :class:`State` value); odd ones are counted."""
        event = PEER_EVENTS.get(announced) if isinstance(announced, str) else None
        if event is None:
            self.counts["bad_heartbeats"] += 1
            return
        now = self.clock.seconds()
        self.peer_state = State(announced)
        self.peer_heard = now
        self.handle(event)
        self.peer_expiry = now + self.deadline

    def client_request(self) -> bool:
        """A client (a satellite's batch) asks this server: True if it serves it, False if refused."""
        served = self.handle(Event.CLIENT_REQUEST)
        if not served:
            self.counts["refused"] += 1
        return served

    def handle(self, event: Event) -> bool:
        """Apply one event; returns False for a client request this server refuses."""
        state = self.state
        if event is Event.CLIENT_REQUEST:
            if state is State.ACTIVE:
                return True
            if state is State.BACKUP or not self.peer_silent():
                return False
            silent = self.silence()
            if state is State.PRIMARY:
                self._move(State.ACTIVE, event, f"no peer heard for {silent:.1f}s; a client asked")
            else:
                self.counts["failovers"] += 1
                self._move(
                    State.ACTIVE,
                    event,
                    f"failover: peer silent for {silent:.1f}s (deadline {self.deadline:g}s); a client asked",
                    alert="failover",
                )
            return True
        if state is State.PRIMARY:
            if event is Event.PEER_BACKUP:
                self._move(State.ACTIVE, event, "met the backup; primary serves")
            elif event is Event.PEER_ACTIVE:
                self._move(State.PASSIVE, event, "the peer is active; standing by")
        elif state is State.BACKUP:
            if event is Event.PEER_ACTIVE:
                self._move(State.PASSIVE, event, "the peer is active; standing by")
        elif state is State.ACTIVE:
            if event is Event.PEER_ACTIVE:
                self.counts["dual_active"] += 1
                if self.role == "backup":
                    self._move(State.PASSIVE, event, "two actives: the primary keeps serving", alert="dual_active")
                else:
                    self._alert(event, "two actives: the primary keeps serving, the backup goes passive")
        elif event in (Event.PEER_PRIMARY, Event.PEER_BACKUP):  # PASSIVE
            self.counts["failovers"] += 1
            self._move(State.ACTIVE, event, "the peer restarted; taking over", alert="failover")
        elif event is Event.PEER_PASSIVE:
            self.counts["dual_passive"] += 1
            if self.role == "primary":
                self._move(State.ACTIVE, event, "two passives: the primary serves", alert="dual_passive")
            else:
                self._alert(event, "two passives: the primary serves, the backup stays passive")
        return True

    # -- changes ---------------------------------------------------------------

    def _move(self, new: State, event: Event, reason: str, alert: str = "") -> None:
        transition = Transition(self.state, new, event, reason, self.clock.seconds(), alert)
        self.state = new  # before the callback: it publishes the new state
        self._record(transition)

    def _alert(self, event: Event, reason: str) -> None:
        """A condition an operator must know of that does not change this server's state."""
        kind = "dual_active" if event is Event.PEER_ACTIVE else "dual_passive"
        self._record(Transition(self.state, self.state, event, reason, self.clock.seconds(), kind))

    def _record(self, transition: Transition) -> None:
        self.history.append(transition)
        if self.on_change is not None:
            self.on_change(transition)

    @property
    def last_failover(self) -> Transition | None:
        """The latest transition into ACTIVE from PASSIVE (a failover), if any is remembered."""
        for transition in reversed(self.history):
            if transition.alert == "failover":
                return transition
        return None

    def snapshot(self) -> dict[str, Any]:
        """State, peer, counts and the latest transitions; JSON-serialisable."""
        now = self.clock.seconds()
        last = self.last_failover
        return {
            "role": self.role,
            "state": self.state.value,
            "peer_state": self.peer_state.value if self.peer_state is not None else None,
            "peer_heard_ago": round(now - self.peer_heard, 1) if self.peer_heard is not None else None,
            "deadline": self.deadline,
            **self.counts,
            "last_failover": last.as_dict() if last is not None else None,
            "history": [t.as_dict() for t in self.history],
        }


class ServerChoice:
    """A satellite's side of the pair: which server it sends to, and when it moves to the other.

    It hears both servers' heartbeats (:meth:`on_heartbeat`) and moves:

    * to the other server as soon as that one announces ACTIVE while the current
      one has not announced ACTIVE within the deadline (a failover happened, or
      this satellite started while the backup serves);
    * to the other server when its batches have waited past the deadline
      (``stalled_for``, from the retry window) **and** the current server has been
      silent past the deadline (:meth:`check`): its batches reaching the other,
      passive server are the client vote.  Such moves back off: the next one
      waits twice as long (up to ``max_backoff``), until a server answers ACTIVE.

    ``on_move(host, reason)`` is called after each move and ``on_active(host)``
    when the current server has just become ACTIVE: the satellite then sends
    its unconfirmed batches again (what a passive server refused is not lost).
    """

    def __init__(
        self,
        clock: IReactorTime,
        hosts: tuple[str, ...],
        *,
        heartbeat: float,
        missed_beats: int,
        max_backoff: float = 60.0,
        on_move: Callable[[str, str], None] | None = None,
        on_active: Callable[[str], None] | None = None,
    ) -> None:
        self.clock = clock
        self.hosts = hosts
        #: Seconds between two :meth:`check` calls (the servers' heartbeat interval).
        self.heartbeat = heartbeat
        self.deadline = heartbeat * missed_beats
        self.max_backoff = max_backoff
        self.on_move = on_move
        self.on_active = on_active
        self.index = 0
        #: host -> (announced state, when heard)
        self.heard: dict[str, tuple[str, float]] = {}
        self.moves = 0
        self.bad_heartbeats = 0
        self._backoff = self.deadline
        self._next_vote = clock.seconds()

    @property
    def current(self) -> str:
        return self.hosts[self.index]

    @property
    def other(self) -> str:
        return self.hosts[1 - self.index]

    def _recent(self, host: str, state: str | None = None) -> bool:
        """Whether *host* was heard within the deadline (announcing *state*, if given)."""
        heard = self.heard.get(host)
        if heard is None or self.clock.seconds() - heard[1] > self.deadline:
            return False
        return state is None or heard[0] == state

    def on_heartbeat(self, body: dict[str, Any]) -> None:
        """One server's heartbeat (``host``, ``state``); one from a host not of the pair is counted."""
        host, state = body.get("host"), body.get("state")
        if host not in self.hosts or state not in PEER_EVENTS:
            self.bad_heartbeats += 1
            return
        assert isinstance(host, str) and isinstance(state, str)
        was_active = self._recent(host, State.ACTIVE.value)
        self.heard[host] = (state, self.clock.seconds())
        if state != State.ACTIVE.value:
            return
        self._backoff = self.deadline
        if host == self.current:
            if not was_active and self.on_active is not None:
                self.on_active(host)
        elif not self._recent(self.current, State.ACTIVE.value):
            self._move(f"{host} announces ACTIVE")

    def check(self, stalled_for: float) -> None:
        """Called every heartbeat interval: move (a vote) if batches wait and the current server is silent."""
        now = self.clock.seconds()
        if stalled_for <= self.deadline or self._recent(self.current) or now < self._next_vote:
            return
        self._next_vote = now + self._backoff
        self._backoff = min(self._backoff * 2, self.max_backoff)
        self._move(f"batches waited {stalled_for:.1f}s and {self.current} is silent")

    def _move(self, reason: str) -> None:
        self.index = 1 - self.index
        self.moves += 1
        if self.on_move is not None:
            self.on_move(self.current, reason)

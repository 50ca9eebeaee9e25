"""The tracker process: follows every batch, publishes its states, answers ``dsat status``.

Events from every hop arrive on a PULL socket and feed the per-batch
finite-state machine in :mod:`dsat.fsm`.  Each state change is published on a
PUB socket (the emitters' retries and the orchester's rerouting listen there);
the current counts are answered on a REP socket for ``dsat status``; and
every ``metrics_every`` seconds the tracker sends DSAT's own metrics
(``<prefix>.<where>.self.tracker.*`` and ``.self.steps.<step>.*``) to the
orchester as an ordinary tracked batch.

It also keeps a circuit breaker per step (:mod:`dsat.breaker`), fed by the
steps' outcomes, and raises **alerts** when a batch is given up (FAILURE), a
circuit opens, or an orchester's heartbeat says it failed over, found two
actives or quarantined a corrupt spool (:data:`ALERTING_COUNTERS`): a
critical log line, the ``self.tracker.alerts`` count, and, when ``[tracker]
alert_command`` is set, that command run with the alert as a JSON object on
its standard input.
"""

from __future__ import annotations

import json
import shlex
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from dsat import naming
from dsat.breaker import BREAKER_TOPIC, Breaker, Circuit
from dsat.counters import Rejections, should_log
from dsat.envelope import Envelope, decode, encode
from dsat.errors import EnvelopeError
from dsat.events import published, topic_for
from dsat.fsm import BatchTracker, Change, State
from dsat.schedule import SlotSchedule
from dsat.topology import Topology
from dsat.transport import Sender

STEP = "tracker"
#: Alert commands running at once, at most; alerts past that are logged and counted only.
MAX_ALERT_HOOKS = 4


class _AlertHook(ProcessProtocol):
    """Feeds one alert to the alert command's standard input."""

    def __init__(self, payload: bytes, done: Callable[[], None]) -> None:
        self.payload = payload
        self.done = done

    def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
        assert self.transport is not None
        self.transport.write(self.payload)
        self.transport.closeStdin()

    def processEnded(self, reason: object) -> None:  # noqa: N802
        self.done()


#: Per-step counters that are sent as counts per interval (summed in Carbon).
STEP_COUNTERS = (
    "batches_received",
    "batches_sent",
    "batches_ended",
    "batches_failed",
    "batches_timed_out",
    "batches_retried",
    "points_received",
    "points_sent",
)
TASK_COUNTERS = ("happy_end", "error", "timeout", "retry", "failure")
#: Totals a step sends in its heartbeats, written as counts per interval.
HEARTBEAT_COUNTERS = (
    "link_dropped",
    "window_evicted",
    "diverted",
    "rejected",
    "dropped",
    "failovers",
    "dual_active",
    "spool_corrupt",
    "spool_disk_full",
    "timer_failures",
    "window_expired",
)
_HA_DETAILS = {"state": "ha_state", "last_failover": "ha_last_failover"}
#: Heartbeat counters whose every increase is an alert: an orchester pair's failovers and two actives, and a
#: spool quarantined at start, a spool whose disk refused writes (once an episode); each with its alert's kind and
#: the heartbeat fields it carries (detail: field).
ALERTING_COUNTERS: dict[str, tuple[str, dict[str, str]]] = {
    "failovers": ("failover", _HA_DETAILS),
    "dual_active": ("dual_active", _HA_DETAILS),
    "spool_corrupt": ("spool_corrupt", {"quarantined": "spool_quarantined"}),
    "spool_disk_full": ("spool_disk_full", {"spool": "spool_state"}),
}


class TrackerService:
    """Feeds events into the FSM and shares what it knows."""

    log = Logger()

    def __init__(
        self,
        topology: Topology,
        *,
        clock: IReactorTime,
        where: str,
        publisher: Sender,
        orchester: Sender,
        pid: int = 0,
    ) -> None:
        self.topology = topology
        self.clock = clock
        self.where = where
        self.pid = pid
        self.publisher = publisher
        self.orchester = orchester
        conf = topology.tracker
        self.fsm = BatchTracker(
            clock, timeout=conf.timeout, on_change=self.publish, max_retries=conf.max_retries, backoff=conf.backoff
        )
        self.breakers = {
            step: Breaker(
                step,
                clock,
                on_change=self.on_breaker,
                window=conf.breaker_window,
                threshold=conf.breaker_threshold,
                min_failures=conf.breaker_min_failures,
                cooldown=conf.breaker_cooldown,
            )
            for step in [*topology.satellites, "orchester"]
        }
        self.alerts: Counter[str] = Counter()
        self.alert_hook = shlex.split(conf.alert_command) if conf.alert_command else []
        self._hooks_running = 0
        self.rejected = Rejections(STEP)
        self.heartbeats: dict[str, dict[str, Any]] = {}
        self.seq = 0
        self._reported: dict[str, float] = {}
        self._metrics = SlotSchedule(self.clock, self.topology.tracker.metrics_every, self.write_own_metrics, name=STEP)

    def start(self) -> None:
        self._metrics.start()

    def stop(self) -> None:
        self._metrics.stop()
        for breaker in self.breakers.values():
            breaker.stop()

    def on_event(self, frame: bytes) -> None:
        """Handle one frame from the events socket."""
        try:
            env = decode(frame)
        except EnvelopeError as exc:
            self.rejected.reject(exc.reason, exc)
            return
        if env.channel == "event":
            self.fsm.handle(env)
            breaker = self.breakers.get(env.step)
            if breaker is not None and env.event != "ACK":
                breaker.record(env.event != "ERROR")
        elif env.channel == "control" and env.type == "heartbeat":
            self._alert_on_increase(env)
            self.heartbeats[env.step] = {
                "where": env.where,
                "pid": env.pid,
                "at": self.clock.seconds(),
                "counters": {k: v for k, v in env.meta.items() if k in HEARTBEAT_COUNTERS and isinstance(v, int)},
                "config": {k: v for k, v in env.meta.items() if isinstance(v, str)},
            }
        else:
            self.rejected.reject("wrong_channel", f"{env.channel!r}/{env.type!r} from {env.step!r}")

    def _alert_on_increase(self, env: Envelope) -> None:
        """Alert when one of a heartbeat's :data:`ALERTING_COUNTERS` went up since the step's last heartbeat."""
        before = self.heartbeats.get(env.step, {}).get("counters", {})
        for name, (kind, fields) in ALERTING_COUNTERS.items():
            now = env.meta.get(name)
            if isinstance(now, int) and now > before.get(name, 0):
                details = {detail: env.meta.get(field, "") for detail, field in fields.items()}
                self.alert(kind, {"step": env.step, "host": env.where, **details, "count": now})

    def publish(self, change: Change) -> None:
        """Publish one state change under its emitter's topic; alert on FAILURE.

        A batch's first sighting (IN_FLIGHT) is not published: nobody acts on it,
        and it would double the traffic.
        """
        if change.old is None:
            return
        body = {
            "task_id": change.task_id,
            "emitter": change.emitter,
            "type": change.type,
            "seq": change.seq,
            "old": change.old.value,
            "new": change.new.value,
            "step": change.step,
            "reason": change.reason,
            "at": change.at,
            "attempt": change.attempt,
        }
        self.publisher.send(published(topic_for(change.emitter), body))
        if change.new is State.FAILURE:
            self.alert("batch_failure", body)

    def on_breaker(self, step: str, state: Circuit, reason: str) -> None:
        """Publish a circuit change to the steps upstream; alert when one opens."""
        body = {"step": step, "state": state.value, "reason": reason, "at": self.clock.seconds()}
        self.publisher.send(published(BREAKER_TOPIC, body))
        if state is Circuit.OPEN:
            self.alert("circuit_open", body)
        else:
            self.log.info("circuit of {step} is {state}: {reason}", step=step, state=state.value, reason=reason)

    def alert(self, kind: str, details: dict[str, Any]) -> None:
        """An operator must know: log it, count it, and run the alert command if there is one."""
        self.alerts[kind] += 1
        if should_log(self.alerts[kind]):
            self.log.critical(
                "ALERT {kind}: {details} ({count} so far)", kind=kind, details=details, count=self.alerts[kind]
            )
        if self.alert_hook and self._hooks_running < MAX_ALERT_HOOKS:
            payload = json.dumps({"alert": kind, "where": self.where, **details}).encode()
            self._hooks_running += 1
            self.clock.spawnProcess(  # type: ignore[attr-defined]
                _AlertHook(payload, self._hook_done), self.alert_hook[0], self.alert_hook, env=None
            )

    def _hook_done(self) -> None:
        self._hooks_running -= 1

    def status(self) -> dict[str, Any]:
        """What ``dsat status`` shows: FSM counts, per-step counters, heartbeat ages."""
        snap = self.fsm.snapshot()
        now = self.clock.seconds()
        snap["heartbeats"] = {
            step: {**beat, "age": round(now - beat["at"], 1)} for step, beat in sorted(self.heartbeats.items())
        }
        snap["rejected"] = dict(self.rejected)
        snap["circuits"] = {step: b.state.value for step, b in self.breakers.items() if b.opened}
        snap["alerts"] = dict(self.alerts)
        return snap

    def on_status_request(self, frame: bytes) -> bytes:
        return json.dumps(self.status()).encode()

    def own_metrics(self, at: float | None = None) -> list[tuple[str, float, float]]:
        """``self.tracker.tasks.*`` and ``self.steps.<step>.*`` since the last call, stamped *at* (else now)."""
        now = int(self.clock.seconds() if at is None else at)
        snap = self.fsm.snapshot()
        values: dict[str, float] = {"tracker.tasks.in_flight": snap["tasks"]["in_flight"]}
        deltas: dict[str, float] = {f"tracker.tasks.{name}": snap["tasks"][name] for name in TASK_COUNTERS}
        for step, counters in snap["steps"].items():
            for name in STEP_COUNTERS:
                deltas[f"steps.{naming.component(step)}.{name}"] = counters[name]
        deltas["tracker.alerts"] = sum(self.alerts.values())
        deltas.update({f"tracker.rejected.{reason}": n for reason, n in self.rejected.items()})
        for step, beat in self.heartbeats.items():
            for name, total in beat["counters"].items():
                deltas[f"steps.{naming.component(step)}.{name}"] = total
        for step, breaker in self.breakers.items():
            values[f"steps.{naming.component(step)}.circuit_open"] = float(breaker.state is not Circuit.CLOSED)
        for name, total in deltas.items():
            values[name] = total - self._reported.get(name, 0)
            self._reported[name] = total
        prefix = self.topology.prefix
        return [(naming.metric_path(prefix, self.where, "self", name), now, v) for name, v in values.items()]

    def write_own_metrics(self, at: float | None = None) -> None:
        self.seq += 1
        env = Envelope.new_batch(
            self.own_metrics(at), type="self", emitter=STEP, where=self.where, seq=self.seq, pid=self.pid
        ).evolve(next=("orchester",))
        self.orchester.send(encode(env))
        self.fsm.handle(
            env.event_for(
                "SEND", step=STEP, where=self.where, pid=self.pid, legs=1, to="orchester", points=len(env.points)
            )
        )

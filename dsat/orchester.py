"""The orchester: receives every batch, routes it by ``type``, egresses to Carbon.

It is the one place where data from satellites and from external Graphite
and statsd clients becomes Carbon datapoints: each envelope is
routed with the topology's ``[orchester.routes]`` (``type`` -> steps, where
``carbon`` is the egress).  Every datapoint bound for Carbon takes one path,
:meth:`Orchester.to_egress`: the datapoint rule (:mod:`dsat.datapoint`: a
safe path, a finite value, a timestamp in ``(0, 2**32)``), then the
carbon-compatible rules (:mod:`dsat.rules`: rewrite, allow/deny,
aggregation), then placement and the egress.  A rejected datapoint is counted
by reason and logged; the rest of its batch goes on.  The four entries differ
only where ``docs/architecture.rst`` ("One path to Carbon") says why:
satellite batches (:meth:`Orchester.to_carbon`) and the orchester's own
metrics (:meth:`Orchester.write_own_metrics`) take all of it; Graphite and
statsd datapoints (:meth:`Orchester.ingest`) were checked by the same rule as
they were read; aggregates (:meth:`Orchester.flush_aggregates`) are the
rules' own output and skip them.

The rules are reloaded on SIGHUP or when a rule file changes; a rule file
that does not parse is refused with its line and reason (counted as
``rules_refused``), and the rules in force stay.  Aggregation buffers whose
rule is gone are discarded and counted (``rejected.rule_removed``).

The orchester writes its own metrics (``<prefix>.<where>.self.orchester.*``)
every ``metrics_every`` seconds.  A spool quarantined at start
(:class:`dsat.spool.Spool`) is told to the tracker in every heartbeat
(``spool_corrupt``), which raises the ``spool_corrupt`` alert.

In an orchester pair (``docs/ha.rst``) each server's orchester holds a
:class:`PairMember`: the Binary Star machine of :mod:`dsat.binarystar`, its
heartbeats, and the switch that opens the Graphite ingress only while ACTIVE.
A passive orchester routes nothing: a satellite's batch reaching it is a
client vote, refused (counted as ``rejected.passive``) unless it makes the
server ACTIVE.  Its own tracker's metrics are not votes and always pass, and
its egress keeps draining the spool to Carbon.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dsat import naming
from dsat.binarystar import HEARTBEAT_TOPIC, BinaryStar, State, Transition
from dsat.breaker import Circuits
from dsat.counters import Rejections
from dsat.datapoint import Datapoint, Validator
from dsat.envelope import Envelope, decode_checked, encode
from dsat.errors import ConfigError
from dsat.events import HEARTBEAT_EVERY, Reporter, parse_published, published
from dsat.flow import Producers, PushProducer
from dsat.rules import RuleSet, load_rules
from dsat.schedule import Repeat, SlotSchedule
from dsat.spool import Spool
from dsat.topology import Topology
from dsat.transport import Sender

STEP = "orchester"


class Egress(Protocol):
    """What the orchester uses of its way to Carbon (:class:`dsat.carbon.CarbonEgress`; a fake in tests)."""

    @property
    def producers(self) -> Producers: ...

    @property
    def spool(self) -> Spool | None: ...

    @property
    def dropped(self) -> int: ...

    @property
    def spooled(self) -> int: ...

    @property
    def replayed(self) -> int: ...

    @property
    def resent(self) -> int: ...

    @property
    def placing(self) -> list[str]: ...

    @property
    def queued_points(self) -> int: ...

    @property
    def spool_pending(self) -> int: ...

    @property
    def timer_failures(self) -> int: ...

    def start(self) -> None: ...

    def stop(self) -> list[object]: ...

    def send(self, points: Sequence[Datapoint], on_written: Callable[[], None] | None = None) -> None: ...

    def add_destination(self, text: str) -> bool: ...

    def drain_destination(self, text: str) -> bool: ...

    def remove_destination(self, text: str) -> bool: ...


class IngressTotals(Protocol):
    """What the orchester's listeners counted since start (dsat.process.Listeners), for its own metrics."""

    def totals(self) -> Mapping[str, int]: ...


#: Seconds between two checks of the rule files' modification times.
RULES_CHECK_EVERY = 2.0


def _mb(n: int | str) -> str:
    """Bytes in MiB for ``dsat status``; a size that could not be read (-1) as such."""
    return f"{int(n) / 2**20:.1f} MiB" if int(n) >= 0 else "(unknown)"


class PairMember:
    """One server of an orchester pair: its :class:`~dsat.binarystar.BinaryStar`, beating its state, hearing its peer's.

    *publisher* is the server's ``orchester.heartbeat`` PUB link (its peer and
    every satellite subscribe); ``on_active(bool)`` is called when the server
    starts or stops being ACTIVE (the process opens or closes the ingress);
    ``on_change(transition)`` after every transition (the orchester sends a
    heartbeat to its tracker at once, so ``dsat status`` and the alert follow).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        *,
        host: str,
        role: str,
        heartbeat: float,
        missed_beats: int,
        publisher: Sender,
        on_active: Callable[[bool], object] | None = None,
        on_change: Callable[[Transition], object] | None = None,
    ) -> None:
        self.clock = clock
        self.host = host
        self.publisher = publisher
        self.fsm = BinaryStar(clock, role=role, heartbeat=heartbeat, missed_beats=missed_beats, on_change=self._changed)
        self.on_active = on_active
        self.on_change = on_change
        self.beats = Repeat(clock, self.fsm.heartbeat, self.beat, name=f"pair {host}: heartbeat", now=True)

    def start(self) -> None:
        self.beats.start()

    def stop(self) -> None:
        self.beats.stop()

    def beat(self) -> None:
        """Publish this server's state (to its peer and the satellites)."""
        body = {"host": self.host, "role": self.fsm.role, "state": self.fsm.state.value, "at": self.clock.seconds()}
        self.publisher.send(published(HEARTBEAT_TOPIC, body))

    def client_request(self) -> bool:
        return self.fsm.client_request()

    def _changed(self, transition: Transition) -> None:
        fields = {"old": transition.old.value, "new": transition.new.value, "reason": transition.reason}
        if transition.alert:
            self.log.critical(
                "ALERT {kind} on {host}: {old} -> {new}: {reason}", kind=transition.alert, host=self.host, **fields
            )
        else:
            self.log.info("pair: {host} {old} -> {new}: {reason}", host=self.host, **fields)
        if transition.old is not transition.new:
            self.beat()  # the peer and the satellites learn at once, not at the next beat
        if (transition.old is State.ACTIVE) != (transition.new is State.ACTIVE) and self.on_active is not None:
            self.on_active(transition.new is State.ACTIVE)
        if self.on_change is not None:
            self.on_change(transition)

    def heartbeat_fields(self) -> dict[str, int | str]:
        """What the orchester's heartbeat tells its tracker: counts (ints) and the state (strings).

        ``ha_peer`` is the peer's state as last heard; ``ha_peer_silent`` (seconds, only once the
        peer has been silent past the deadline) says that state is stale, and for how long.
        """
        fsm = self.fsm
        last = fsm.last_failover
        peer = fsm.peer_state.value if fsm.peer_state is not None else "unheard"
        return {
            "failovers": fsm.counts["failovers"],
            "dual_active": fsm.counts["dual_active"],
            "ha_state": f"{self.host} ({fsm.role}) {fsm.state.value}",
            "ha_peer": peer,
            **({"ha_peer_silent": f"{fsm.silence():.1f}"} if fsm.peer_silent() else {}),
            "ha_last_failover": f"at {last.at:.0f}: {last.reason}" if last is not None else "none",
        }


class Orchester:
    """Routes envelopes and sends clean datapoints to Carbon."""

    log = Logger()

    def __init__(
        self,
        topology: Topology,
        *,
        clock: IReactorTime,
        egress: Egress,
        senders: Mapping[str, Sender],
        reporter: Reporter,
        where: str,
        rules: RuleSet | None = None,
        pair: PairMember | None = None,
        ingress: IngressTotals | None = None,
        workers_state: Callable[[], str] | None = None,
        name: str = STEP,
    ) -> None:
        #: ``orchester``, or ``orchester.wN`` for ingress worker N (dsat.workers): its own metrics' names.
        self.name = name
        self.topology = topology
        self.pair = pair
        self.routes: dict[str, tuple[str, ...]] = dict(topology.orchester.routes)
        self.rules = rules
        self._rule_stamp = self._rule_files_stamp()
        self.clock = clock
        self.egress = egress
        self.senders = senders
        self.reporter = reporter
        self.where = where
        self.validator = Validator()
        #: Rule reloads refused because a rule file did not parse.
        self.rules_refused = 0
        #: Its Graphite and statsd listeners (dsat.process.Listeners): their counts join its own metrics.
        self.ingress = ingress
        self.rejected = Rejections(name)
        self.circuits = Circuits()
        self.points_in = 0
        self.points_out = 0
        self._reported: dict[str, int] = {}
        self._tasks = [
            Repeat(clock, every, fn, name=f"{name}: {fn.__name__}", now=fn == self.heartbeat)
            for fn, every in (
                (self.heartbeat, HEARTBEAT_EVERY),
                (self.flush_aggregates, 1.0),
                (self.watch_rules, RULES_CHECK_EVERY),
            )
        ]
        #: How its ingress workers are (dsat.workers.Workers.describe), for the heartbeat; None without workers.
        self.workers_state = workers_state
        #: ``self.orchester.*`` counts are deltas: each write needs a slot of its own (dsat.schedule).
        self._metrics = SlotSchedule(
            self.clock, topology.tracker.metrics_every, self.write_own_metrics, name="orchester"
        )

    def start(self, input_link: PushProducer | None = None) -> None:
        """Start the egress and the timers; *input_link* is paused while Carbon cannot take more (dsat.flow)."""
        if input_link is not None:
            self.egress.producers.register(input_link)
        self.egress.start()
        for task in self._tasks:
            task.start()
        self._metrics.start()

    @property
    def timer_failures(self) -> int:
        """Calls of the orchester's periodic tasks (its own, its pair's, its egress's) that raised since start."""
        tasks = [*self._tasks, self._metrics, *([self.pair.beats] if self.pair is not None else [])]
        return sum(task.failures for task in tasks) + self.egress.timer_failures

    def heartbeat(self) -> None:
        """Alive, with what its links and Carbon queues dropped and the legs held by open circuits."""
        self.reporter.heartbeat(
            link_dropped=sum(sender.dropped for sender in self.senders.values()),
            dropped=self.egress.dropped,
            diverted=self.circuits.diverted,
            routes=json.dumps({t: list(steps) for t, steps in sorted(self.routes.items())}),
            destinations=",".join(self.egress.placing),
            timer_failures=self.timer_failures,
            **self._spool_fields(),
            **(self.pair.heartbeat_fields() if self.pair is not None else {}),
            **({"workers": self.workers_state()} if self.workers_state is not None else {}),
        )

    def _spool_fields(self) -> dict[str, int | str]:
        """What the heartbeat says of the spool: its state for ``dsat status``, and what the tracker alerts on.

        ``spool_corrupt`` (quarantined at start) and ``spool_disk_full`` (episodes of a disk that refused
        writes) are counts: the tracker alerts when one goes up.
        """
        spool = self.egress.spool
        if spool is None:
            return {}
        state = spool.state()
        fields: dict[str, int | str] = {
            "spool_disk_full": state["spool_disk_full"],
            "spool_state": (
                f"{self.egress.queued_points} datapoints waiting in memory;"
                f" {_mb(state['spool_bytes'])} held of {_mb(state['spool_max_bytes'])},"
                f" {_mb(state['spool_disk_free'])} free on its disk, full: {state['spool_full']}"
            ),
        }
        if spool.quarantined is not None:
            fields.update(spool_corrupt=1, spool_quarantined=f"{spool.path} moved to {spool.quarantined}")
        return fields

    def stop(self) -> None:
        self._metrics.stop()
        for task in self._tasks:
            task.stop()

    # -- the data path -----------------------------------------------------

    def on_frame(self, frame: bytes) -> None:
        """Handle one frame from the input link: decode, route, egress."""
        env = decode_checked(frame, self.rejected, channel="data")
        if env is None:
            return
        if self.pair is not None and env.emitter != "tracker" and not self.pair.client_request():
            self.rejected.reject(
                "passive",
                f"batch {env.task_id} of {env.emitter}: this server is {self.pair.fsm.state.value} and its peer is"
                " alive; the emitter sends it again",
            )
            return
        self.route(env)

    def route(self, env: Envelope) -> None:
        """Send one envelope to every step its type is routed to."""
        self.reporter.ack(env)
        self.points_in += len(env.points)
        targets = self.routes.get(env.type) or self.routes.get("*") or ()
        if not targets:
            self.rejected.reject("no_route", f"no route for type {env.type!r} (batch {env.task_id})")
            self.reporter.error(env, f"no route for type {env.type!r}")
            return
        if len(targets) > 1 or targets[0] != "carbon":
            # the leg the orchester writes to Carbon itself is addressed to itself (see dsat.fsm)
            self.reporter.sent(env, to=[STEP if target == "carbon" else target for target in targets])
        for target in targets:
            if target == "carbon":
                self.to_carbon(env)
            elif self.circuits.allow(target):
                # A leg held back by an open circuit times out; its emitter sends the batch again.
                out = env.evolve(step=STEP, where=self.where, next=(target,))
                self.senders[target].send(encode(out, self.topology.codec))

    # -- the control channel -----------------------------------------------------

    def on_control(self, frame: bytes) -> None:
        """A change from `dsat route`: set a type's route, add or drain a carbon destination."""
        env = decode_checked(frame, self.rejected, channel="control", type="route")
        if env is None:
            return
        try:
            self.apply_control(dict(env.meta))
        except ConfigError as exc:
            self.rejected.reject("bad_control", exc)

    def apply_control(self, change: dict[str, Any]) -> None:
        """Apply one routing change; raises ConfigError for one that cannot be applied."""
        action = change.get("action")
        if action == "route":
            type_name = str(change.get("type", ""))
            targets = tuple(t for t in str(change.get("targets", "")).split(",") if t)
            unknown = [t for t in targets if t != "carbon" and t not in self.senders]
            if not type_name or not targets or unknown:
                valid = ", ".join(["carbon", *sorted(self.senders)])
                raise ConfigError(f"route {type_name!r} -> {targets}: unknown targets {unknown}; valid: {valid}")
            if self.routes.get(type_name) != targets:
                self.routes[type_name] = targets
                self.log.info("route changed: {type} -> {targets}", type=type_name, targets=", ".join(targets))
        elif action == "add":
            if self.egress.add_destination(str(change.get("destination", ""))):
                self.log.info("carbon destination added: {dest}", dest=change.get("destination"))
        elif action == "drain":
            if self.egress.drain_destination(str(change.get("destination", ""))):
                self.log.info("carbon destination draining: {dest}", dest=change.get("destination"))
        elif action == "remove":
            self.egress.remove_destination(str(change.get("destination", "")))
        else:
            raise ConfigError(f"unknown control action {action!r}; valid: route, add, drain, remove")

    def on_peer_heartbeat(self, frame: bytes) -> None:
        """A heartbeat from the pair's other server (its ``orchester.heartbeat`` PUB socket)."""
        if self.pair is None:
            return
        try:
            topic, body = parse_published(frame)
        except ValueError as exc:
            self.rejected.reject("bad_heartbeat", exc)
            return
        if topic != HEARTBEAT_TOPIC or body.get("host") == self.pair.host:
            self.rejected.reject("bad_heartbeat", f"not a peer's heartbeat: topic {topic!r}, host {body.get('host')!r}")
            return
        self.pair.fsm.on_peer(body.get("state"))

    def on_published(self, frame: bytes) -> None:
        """Circuit changes from the tracker's PUB socket."""
        try:
            topic, body = parse_published(frame)
        except ValueError as exc:
            self.rejected.reject("bad_state", exc)
            return
        self.circuits.take(topic, body)

    # -- the one path to Carbon ---------------------------------------------

    def to_egress(
        self,
        points: Sequence[Datapoint],
        *,
        checked: bool = False,
        ruled: bool = False,
        on_written: Callable[[Sequence[Datapoint]], None] | None = None,
    ) -> None:
        """The one way to Carbon: the datapoint rule, the rules, placement and the egress.

        *checked*: the entry applied the datapoint rule already (the Graphite
        ingress as it parsed, the statsd flush).  *ruled*: the points are the
        rules' own output (aggregates), which the rules must not see again.
        *on_written* is called with the datapoints that went, once the egress
        has them.
        """
        if not checked:
            points = self.validator.keep(points, self.rejected)
        if not ruled and self.rules is not None:
            kept, drops = self.rules.apply(points)
            for reason, count in drops.items():
                self.rejected.reject(reason, f"{count} datapoints ({reason}) by the rules", count)
            points = kept
        self.egress.send(points, None if on_written is None else partial(on_written, points))
        self.points_out += len(points)

    def ingest(self, points: list[Datapoint]) -> None:
        """Datapoints from Graphite or statsd clients, checked by the datapoint rule as they were read."""
        self.points_in += len(points)
        self.to_egress(points, checked=True)

    def flush_aggregates(self) -> None:
        """Send the aggregates whose intervals are complete (checked, not ruled again: they are the rules' output)."""
        if self.rules is None:
            return
        points, drops = self.rules.flush()
        for reason, count in drops.items():
            self.rejected.reject(reason, f"{count} datapoints ({reason}) at aggregation", count)
        if points:
            self.to_egress(points, ruled=True)

    # -- rules reload ----------------------------------------------------------

    def _rule_files_stamp(self) -> tuple[float, ...]:
        conf = self.topology.rules
        stamps = []
        for path in (conf.rewrite, conf.aggregation):
            try:
                stamps.append(path.stat().st_mtime if path is not None else 0.0)
            except OSError:
                stamps.append(-1.0)
        return tuple(stamps)

    def watch_rules(self) -> None:
        """Reload the rules when a rule file changed on disk."""
        stamp = self._rule_files_stamp()
        if stamp != self._rule_stamp:
            self._rule_stamp = stamp
            self.reload_rules()

    def reload_rules(self) -> bool:
        """Load the rule files again (SIGHUP, file change); on error keep the rules in force."""
        conf = self.topology.rules
        try:
            new = load_rules(conf.rewrite, conf.aggregation, conf.allow, conf.deny, clock=self.clock)
        except ConfigError as exc:
            self.log.error("rules not reloaded, the ones in force stay: {problems}", problems="; ".join(exc.problems))
            self.rules_refused += 1
            return False
        if self.rules is not None:
            for reason, count in new.adopt(self.rules).items():
                self.rejected.reject(reason, f"{count} datapoints held for aggregation, their rule gone", count)
        self.rules = new
        self.log.info(
            "rules reloaded from {rewrite} and {aggregation}", rewrite=conf.rewrite, aggregation=conf.aggregation
        )
        return True

    def to_carbon(self, env: Envelope) -> None:
        """A batch routed to carbon, by the one path; HAPPY_END once written, with how many were rejected."""

        def written(sent: Sequence[Datapoint]) -> None:
            self.reporter.ended(env, points=len(sent), rejected=len(env.points) - len(sent))

        self.to_egress(env.points, on_written=written)

    # -- DSAT's own metrics --------------------------------------------------

    def own_metrics(self, at: float | None = None) -> list[Datapoint]:
        """``self.orchester.*``: counts since the last call, queue and spool depths now; stamped *at* (else now)."""
        now = int(self.clock.seconds() if at is None else at)
        egress = self.egress
        totals = {
            "points_in": self.points_in,
            "points_out": self.points_out,
            "dropped": egress.dropped,
            "spooled": egress.spooled,
            "replayed": egress.replayed,
            "resent": egress.resent,
            "rules_refused": self.rules_refused,
            "spool_refused": egress.spool.refused if egress.spool is not None else 0,
            "spool_disk_refused": egress.spool.disk_refused if egress.spool is not None else 0,
            "timer_failures": self.timer_failures,
            **{f"rejected.{reason}": n for reason, n in self.rejected.items()},
            **({f"ha.{name}": n for name, n in self.pair.fsm.counts.items()} if self.pair is not None else {}),
            **(self.ingress.totals() if self.ingress is not None else {}),
        }
        path = naming.metric_path
        points: list[Datapoint] = []
        for name, total in totals.items():
            points.append(
                (
                    path(self.topology.prefix, self.where, "self", f"{self.name}.{name}"),
                    now,
                    total - self._reported.get(name, 0),
                )
            )
            self._reported[name] = total
        levels = [("queue_depth", egress.queued_points), ("spool_depth", egress.spool_pending)]
        if self.pair is not None:
            levels.append(("ha.active", int(self.pair.fsm.active)))
        for name, level in levels:
            points.append((path(self.topology.prefix, self.where, "self", f"{self.name}.{name}"), now, level))
        return points

    def write_own_metrics(self, at: float | None = None) -> None:
        """``self.orchester.*`` to Carbon, by the one path: a ``deny`` rule filters them as any datapoint."""
        self.to_egress(self.own_metrics(at))

"""The tracker process: follows every batch, publishes its states, answers ``dsat status``.

Events from every hop arrive on a PULL socket and feed the per-batch
finite-state machine in :mod:`dsat.fsm`.  Each state change is published on a
PUB socket (the emitters' retries and the orchester's rerouting listen there);
the current counts are answered on a REP socket for ``dsat status``; and
every ``metrics_every`` seconds the tracker sends DSAT's own metrics
(``<prefix>.<where>.self.tracker.*`` and ``.self.steps.<step>.*``) to the
orchester as an ordinary tracked batch.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from dsat import naming
from dsat.counters import Rejections
from dsat.envelope import Envelope, decode, encode
from dsat.errors import EnvelopeError
from dsat.fsm import BatchTracker, Change
from dsat.topology import Topology
from dsat.transport import Sender

STEP = "tracker"

#: Per-step counters that are sent as counts per interval (summed in Carbon).
STEP_COUNTERS = (
    "batches_received",
    "batches_sent",
    "batches_ended",
    "batches_failed",
    "batches_timed_out",
    "points_received",
    "points_sent",
)
TASK_COUNTERS = ("happy_end", "error", "timeout")


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
        self.fsm = BatchTracker(clock, timeout=topology.tracker.timeout, on_change=self.publish)
        self.rejected = Rejections(STEP)
        self.heartbeats: dict[str, dict[str, Any]] = {}
        self.seq = 0
        self._reported: dict[str, float] = {}
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        self._loop = LoopingCall(self.write_own_metrics)
        self._loop.clock = self.clock
        self._loop.start(self.topology.tracker.metrics_every, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def on_event(self, frame: bytes) -> None:
        """Handle one frame from the events socket."""
        try:
            env = decode(frame)
        except EnvelopeError as exc:
            self.rejected.reject(exc.reason, exc)
            return
        if env.channel == "event":
            self.fsm.handle(env)
        elif env.channel == "control" and env.type == "heartbeat":
            self.heartbeats[env.step] = {"where": env.where, "pid": env.pid, "at": self.clock.seconds()}
        else:
            self.rejected.reject("wrong_channel", f"{env.channel!r}/{env.type!r} from {env.step!r}")

    def publish(self, change: Change) -> None:
        """Publish one state change: a msgpack map on the PUB socket."""
        self.publisher.send(
            msgpack.packb(
                {
                    "task_id": change.task_id,
                    "emitter": change.emitter,
                    "type": change.type,
                    "seq": change.seq,
                    "old": change.old.value if change.old else None,
                    "new": change.new.value,
                    "step": change.step,
                    "reason": change.reason,
                    "at": change.at,
                }
            )
        )

    def status(self) -> dict[str, Any]:
        """What ``dsat status`` shows: FSM counts, per-step counters, heartbeat ages."""
        snap = self.fsm.snapshot()
        now = self.clock.seconds()
        snap["heartbeats"] = {
            step: {**beat, "age": round(now - beat["at"], 1)} for step, beat in sorted(self.heartbeats.items())
        }
        snap["rejected"] = dict(self.rejected)
        return snap

    def on_status_request(self, frame: bytes) -> bytes:
        return json.dumps(self.status()).encode()

    def own_metrics(self) -> list[tuple[str, float, float]]:
        """``self.tracker.tasks.*`` and ``self.steps.<step>.*`` since the last call."""
        now = int(self.clock.seconds())
        snap = self.fsm.snapshot()
        values: dict[str, float] = {"tracker.tasks.in_flight": snap["tasks"]["in_flight"]}
        deltas: dict[str, float] = {f"tracker.tasks.{name}": snap["tasks"][name] for name in TASK_COUNTERS}
        for step, counters in snap["steps"].items():
            for name in STEP_COUNTERS:
                deltas[f"steps.{naming.component(step)}.{name}"] = counters[name]
        for name, total in deltas.items():
            values[name] = total - self._reported.get(name, 0)
            self._reported[name] = total
        prefix = self.topology.prefix
        return [(naming.metric_path(prefix, self.where, "self", name), now, v) for name, v in values.items()]

    def write_own_metrics(self) -> None:
        self.seq += 1
        env = Envelope.new_batch(
            self.own_metrics(), type="self", emitter=STEP, where=self.where, seq=self.seq, pid=self.pid
        ).evolve(next=("orchester",))
        self.orchester.send(encode(env))
        self.fsm.handle(
            env.event_for("SEND", step=STEP, where=self.where, pid=self.pid, legs=1, points=len(env.points))
        )

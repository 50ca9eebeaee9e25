"""The satellite runtime: everything around a satellite author's plain function.

A satellite author writes ``collect()``, ``transform(batch)`` or
``consume(batch)`` (see :mod:`dsat.plugins`).  The runtime owns the rest:
scheduling collectors on the reactor's clock, building metric paths (through
:mod:`dsat.naming`), wrapping batches in envelopes, sending them on every
``next`` link, reporting tracker events, heartbeats, and a graceful stop that
hands what is in flight to the links before the process exits.

Nothing here opens a socket: links are passed in, so the runtime is tested
in memory with :mod:`dsat.testing`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from dsat import naming
from dsat.counters import Rejections
from dsat.envelope import Batches, Datapoint, Envelope, decode, encode
from dsat.errors import BadName, EnvelopeError
from dsat.events import Reporter
from dsat.plugins import SatelliteSpec
from dsat.topology import Step
from dsat.transport import Sender

#: Seconds between two heartbeats of a step.
HEARTBEAT_EVERY = 5.0


class SatelliteRuntime:
    """Drives one satellite step: a collector, a transform or a sink."""

    log = Logger()

    def __init__(
        self,
        step: Step,
        spec: SatelliteSpec,
        *,
        clock: IReactorTime,
        prefix: str,
        where: str,
        senders: Mapping[str, Sender],
        reporter: Reporter,
        pid: int | None = None,
    ) -> None:
        self.step = step
        self.spec = spec
        self.clock = clock
        self.prefix = prefix
        self.where = where
        self.senders = senders
        self.reporter = reporter
        self.pid = os.getpid() if pid is None else pid
        self.seq = 0
        self.rejected = Rejections(f"step {step.name}")
        self.fn: Callable[..., Any] = spec.factory(step.options)
        self._paths: dict[str, str] = {}
        self._loops: list[LoopingCall] = []

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the collector's schedule (if any) and the heartbeats."""
        if self.step.kind == "collector":
            assert self.step.every is not None
            self._loop(self.collect_once, self.step.every, now=True)
        self._loop(self.reporter.heartbeat, HEARTBEAT_EVERY, now=True)

    def _loop(self, fn: Callable[[], object], every: float, *, now: bool) -> None:
        loop = LoopingCall(fn)
        loop.clock = self.clock
        loop.start(every, now=now).addErrback(
            lambda failure: self.log.failure("{step}: scheduled call failed", failure, step=self.step.name)
        )
        self._loops.append(loop)

    def stop(self) -> None:
        """Stop scheduling; what was already sent stays queued on the links."""
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()

    # -- collectors --------------------------------------------------------

    def _path(self, metric: str) -> str:
        path = self._paths.get(metric)
        if path is None:
            path = self._paths[metric] = naming.metric_path(self.prefix, self.where, self.step.name, metric)
        return path

    def collect_once(self) -> Envelope | None:
        """Run the collector once and send its batch; returns the envelope sent."""
        now = int(self.clock.seconds())
        try:
            raw = list(self.fn())
        except Exception as exc:  # a satellite author's bug must not stop the schedule
            self.rejected.reject("collect_failed", exc)
            return None
        points: list[Datapoint] = []
        for item in raw:
            try:
                metric, value = item[0], item[1]
                ts = item[2] if len(item) > 2 else now
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    self.rejected.reject("bad_value", f"{metric}: {value!r} is not a finite number")
                    continue
                points.append((self._path(metric), ts, value))
            except BadName as exc:
                self.rejected.reject("bad_name", exc)
            except (TypeError, IndexError, AttributeError) as exc:
                self.rejected.reject("bad_datapoint", exc)
        if not points:
            return None
        self.seq += 1
        env = Envelope.new_batch(
            points,
            type=self.spec.type or "gauge",
            emitter=self.step.name,
            where=self.where,
            seq=self.seq,
            pid=self.pid,
        )
        self._send_on(env, [env])
        return env

    # -- transforms and sinks ----------------------------------------------

    def on_frame(self, frame: bytes) -> None:
        """Handle one frame from the input link."""
        try:
            env = decode(frame)
        except EnvelopeError as exc:
            self.rejected.reject(exc.reason, exc)
            return
        if env.channel != "data":
            self.rejected.reject("wrong_channel", EnvelopeError(f"channel {env.channel!r} on a data link"))
            return
        self.reporter.ack(env)
        if self.step.kind == "sink":
            try:
                self.fn(env.points)
            except Exception as exc:
                self.reporter.error(env, f"{type(exc).__name__}: {exc}")
                self.rejected.reject("sink_failed", exc)
                return
            self.reporter.ended(env)
            return
        try:
            result = self.fn(env.points)
        except Exception as exc:
            self.reporter.error(env, f"{type(exc).__name__}: {exc}")
            self.rejected.reject("transform_failed", exc)
            return
        batches = list(result) if isinstance(result, Batches) else [result]
        out_type = self.spec.type or env.type
        outs = [
            env.evolve(points=tuple(batch), type=out_type, step=self.step.name, where=self.where, pid=self.pid)
            for batch in batches
            if batch
        ]
        if not outs:
            self.reporter.ended(env, dropped=1)
            return
        self._send_on(env, outs)

    # -- shared ------------------------------------------------------------

    def _send_on(self, tracked: Envelope, outs: list[Envelope]) -> None:
        nexts = self.step.next
        codec = self.step.codec
        for out in outs:
            for name in nexts:
                self.senders[name].send(encode(out.evolve(next=(name,)), codec))
        self.reporter.sent(tracked, legs=len(outs) * len(nexts), points=sum(len(out.points) for out in outs))

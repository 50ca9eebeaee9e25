"""The satellite runtime: everything around a satellite author's plain function.

A satellite author writes ``collect()``, ``transform(batch)`` or
``consume(batch)`` (see :mod:`dsat.plugins`).  The runtime owns the rest:
scheduling collectors on the reactor's clock, building metric paths (through
:mod:`dsat.naming`), wrapping batches in envelopes, sending them on every
``next`` link, reporting tracker events, heartbeats, and a graceful stop that
hands what is in flight to the links before the process exits.

With an orchester pair (``docs/ha.rst``) the runtime holds a
:class:`dsat.binarystar.ServerChoice`: it hears both servers' heartbeats,
checks every heartbeat interval whether its batches wait while the current
server is silent, and when it moves (or the current server becomes ACTIVE)
sends every batch of its retry window again, to the server now chosen.
The links to the pair (:class:`dsat.transport.PairSender`) follow the choice.

Nothing here opens a socket: links are passed in, so the runtime is tested
in memory with :mod:`dsat.testing`.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dsat import naming
from dsat.binarystar import HEARTBEAT_TOPIC, ServerChoice
from dsat.breaker import Circuits
from dsat.cache import GenerationalCache
from dsat.counters import Rejections, should_log
from dsat.datapoint import Datapoint, number_problem
from dsat.envelope import Batches, Envelope, decode_checked, encode
from dsat.errors import BadName, EnvelopeError
from dsat.events import HEARTBEAT_EVERY, Reporter, parse_published
from dsat.plugins import SatelliteSpec
from dsat.schedule import Repeat, SlotSchedule
from dsat.topology import Step
from dsat.transport import Sender

#: Batches an emitter keeps for retries until the tracker says they ended.
RETRY_WINDOW = 1_000
#: Estimated bytes of the paths a collector's metric names became, kept for its next runs (dsat.cache).
PATHS_CACHE_BYTES = 8 * 1024 * 1024


class Kept(NamedTuple):
    """A batch in the retry window, and when the emitter created it (its clock's seconds)."""

    env: Envelope
    at: float


class RetryWindow:
    """The batches an emitter created, kept until the tracker says they ended or failed.

    Bounded: past ``max_batches`` the oldest is forgotten (counted in
    ``evicted`` and logged), and can no longer be sent again.  With a *clock*,
    it knows how long its batches have waited without any of them ending
    (:meth:`stalled_for`), and, with *max_age* (the tracker's whole retry
    budget, :meth:`dsat.topology.TrackerConf.gives_up_after`), which of them no
    tracker follows any more (:meth:`expire`): a tracker killed after it heard
    a batch's events and before it published the batch's end took that end
    with it, and the tracker started in its place never heard of the batch.
    """

    log = Logger()

    def __init__(
        self, max_batches: int = RETRY_WINDOW, clock: IReactorTime | None = None, max_age: float | None = None
    ) -> None:
        self.max_batches = max_batches
        self.clock = clock
        self.max_age = max_age
        self.batches: OrderedDict[str, Kept] = OrderedDict()
        self.evicted = 0
        #: Batches kept past max_age: sent once more, then forgotten.
        self.expired = 0
        self.retried = 0
        self.failed = 0
        #: Since when batches wait with none ending (None while the window is empty).
        self.waiting_since: float | None = None

    def stalled_for(self) -> float:
        """Seconds the window has held batches with none of them ending (0 when empty or without a clock)."""
        if not self.batches or self.waiting_since is None or self.clock is None:
            return 0.0
        return self.clock.seconds() - self.waiting_since

    def _progress(self) -> None:
        if self.clock is not None:
            self.waiting_since = self.clock.seconds() if self.batches else None

    def envelopes(self) -> list[Envelope]:
        """The batches kept, oldest first."""
        return [kept.env for kept in self.batches.values()]

    def keep(self, env: Envelope) -> None:
        self.batches[env.task_id] = Kept(env, self.clock.seconds() if self.clock is not None else 0.0)
        if len(self.batches) == 1:
            self._progress()  # the window was empty: its batches wait from now
        if len(self.batches) > self.max_batches:
            task_id, _ = self.batches.popitem(last=False)
            self.evicted += 1
            if should_log(self.evicted):
                self.log.warn(
                    "retry window full ({max} batches): batch {task_id} can no longer be retried; {n} so far",
                    max=self.max_batches,
                    task_id=task_id,
                    n=self.evicted,
                )

    def on_change(self, change: Mapping[str, Any]) -> Envelope | None:
        """Apply one published state change; returns the envelope to send again, if any."""
        task_id = change.get("task_id")
        new = change.get("new")
        if not isinstance(task_id, str) or task_id not in self.batches:
            return None
        if new == "HAPPY_END":
            del self.batches[task_id]
            self._progress()
        elif new == "FAILURE":
            del self.batches[task_id]
            self.failed += 1
            self._progress()
        elif new == "RETRY":
            kept = self.batches[task_id]
            env = kept.env.evolve(meta={**kept.env.meta, "attempt": int(change.get("attempt", 2))})
            self.batches[task_id] = kept._replace(env=env)
            self.retried += 1
            return env
        return None

    def expire(self) -> list[Envelope]:
        """Forget the batches kept longer than *max_age*; returns them, each to be sent once more.

        No tracker follows such a batch any more (a live one would have
        published its end or its FAILURE by then), so it would wait here
        until evicted, and if it was lost on its way, nothing would ever
        send it again.  Sent once more, as a new attempt, it is followed by
        the tracker now running; a duplicate lands once (Whisper keeps one
        value per slot).
        """
        if self.max_age is None or self.clock is None:
            return []
        oldest = self.clock.seconds() - self.max_age
        out: list[Envelope] = []
        while self.batches:
            task_id, kept = next(iter(self.batches.items()))
            if kept.at > oldest:
                break
            del self.batches[task_id]
            out.append(kept.env.evolve(meta={**kept.env.meta, "attempt": int(kept.env.meta.get("attempt", 1)) + 1}))
        if out:
            self.expired += len(out)
            self._progress()
            self.log.warn(
                "{n} batches unconfirmed after {age:g}s, longer than the tracker follows one (was it restarted?):"
                " sent once more and forgotten; {total} so far",
                n=len(out),
                age=self.max_age,
                total=self.expired,
            )
        return out


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
        choice: ServerChoice | None = None,
        unconfirmed_after: float | None = None,
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
        #: *unconfirmed_after*: seconds after which no tracker follows a batch (TrackerConf.gives_up_after).
        self.window = RetryWindow(clock=clock, max_age=unconfirmed_after)
        self.circuits = Circuits()
        self.choice = choice
        if choice is not None:
            choice.on_move = self.on_server_move
            choice.on_active = lambda _host: self.resend_window()
        self.fn: Callable[..., Any] = spec.factory(step.options)
        self._paths: GenerationalCache[str, str] = GenerationalCache(PATHS_CACHE_BYTES)
        #: The collector's runs (a collector only), then the heartbeats and the pair's check (with a pair).
        self.schedules: list[SlotSchedule | Repeat] = []
        if step.kind == "collector":
            assert step.every is not None
            self.schedules.append(SlotSchedule(clock, step.every, self.collect_once, name=f"step {step.name}"))
        self.schedules.append(
            Repeat(clock, HEARTBEAT_EVERY, self.heartbeat, name=f"step {step.name}: heartbeat", now=True)
        )
        if choice is not None:
            self.schedules.append(
                Repeat(
                    clock,
                    choice.heartbeat,
                    lambda: choice.check(self.window.stalled_for()),
                    name=f"step {step.name}: server choice",
                )
            )
        if unconfirmed_after is not None:
            self.schedules.append(
                Repeat(
                    clock,
                    max(1.0, unconfirmed_after / 10),
                    self.send_unconfirmed,
                    name=f"step {step.name}: unconfirmed batches",
                )
            )

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the collector's schedule (if any), the heartbeats, and the pair's check (with a pair)."""
        for schedule in self.schedules:
            schedule.start()

    @property
    def timer_failures(self) -> int:
        """Calls of this step's schedules that raised (each logged; every schedule went on)."""
        return sum(schedule.failures for schedule in self.schedules)

    def heartbeat(self) -> None:
        """Tell the tracker this step is alive, with what it dropped, diverted or rejected so far."""
        self.reporter.heartbeat(
            link_dropped=sum(sender.dropped for sender in self.senders.values()),
            window_evicted=self.window.evicted,
            window_expired=self.window.expired,
            diverted=self.circuits.diverted,
            rejected=sum(self.rejected.values()),
            timer_failures=self.timer_failures,
        )

    def stop(self) -> None:
        """Stop scheduling; what was already sent stays queued on the links."""
        for schedule in self.schedules:
            schedule.stop()

    # -- collectors --------------------------------------------------------

    def _path(self, metric: str) -> str:
        path = self._paths.get(metric)
        if path is None:
            path = naming.metric_path(self.prefix, self.where, self.step.name, metric)
            self._paths.put(metric, path)
        return path

    def collect_once(self, at: float | None = None) -> Envelope | None:
        """Run the collector once and send its batch; returns the envelope sent.

        Its datapoints are stamped *at* (the run's slot, :mod:`dsat.schedule`),
        or now, in whole seconds, unless the collector gives its own.
        """
        now = int(self.clock.seconds() if at is None else at)
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
                problem = number_problem(ts, value)
                if problem is not None:
                    self.rejected.reject(problem, f"{metric!r:.100}: timestamp {ts!r:.40}, value {value!r:.40}")
                    continue
                points.append((self._path(metric), ts, value))
            except BadName as exc:
                self.rejected.reject(exc.reason, exc)
            except Exception as exc:  # an item of any shape from the author's code: refused, counted, the rest kept
                self.rejected.reject("bad_datapoint", f"{type(exc).__name__}: {exc!s:.200}")
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
        self.window.keep(env)
        self._send_on(env, [env])
        return env

    # -- transforms and sinks ----------------------------------------------

    def on_frame(self, frame: bytes) -> None:
        """Handle one frame from the input link."""
        env = decode_checked(frame, self.rejected, channel="data")
        if env is None:
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
        try:
            self._send_on(env, outs)
        except EnvelopeError as exc:  # the transform returned something no codec can carry
            self.reporter.error(env, f"transform output: {exc}")
            self.rejected.reject(exc.reason, exc)

    # -- shared ------------------------------------------------------------

    def _send_on(self, tracked: Envelope, outs: list[Envelope]) -> None:
        """Send every output to every next step whose circuit allows it.

        A leg not sent because its circuit is open still counts: the tracker
        times it out and the emitter sends the batch again later, with backoff.
        """
        nexts = self.step.next
        codec = self.step.codec
        allowed = [name for name in nexts if self.circuits.allow(name)]
        for out in outs:
            for name in allowed:
                self.senders[name].send(encode(out.evolve(next=(name,)), codec))
        self.reporter.sent(
            tracked, to=[name for _out in outs for name in nexts], points=sum(len(out.points) for out in outs)
        )

    def on_published(self, frame: bytes) -> None:
        """Handle one frame from the tracker's PUB socket: retries and circuit changes."""
        try:
            topic, body = parse_published(frame)
        except ValueError as exc:
            self.rejected.reject("bad_state", exc)
            return
        if self.circuits.take(topic, body):
            return
        env = self.window.on_change(body)
        if env is not None:
            self._send_on(env, [env])

    # -- an orchester pair ---------------------------------------------------

    def on_heartbeat(self, frame: bytes) -> None:
        """Handle one frame from a server's heartbeat PUB socket."""
        try:
            topic, body = parse_published(frame)
        except ValueError as exc:
            self.rejected.reject("bad_heartbeat", exc)
            return
        if topic == HEARTBEAT_TOPIC and self.choice is not None:
            self.choice.on_heartbeat(body)

    def on_server_move(self, host: str, reason: str) -> None:
        """The satellite now sends to *host*: what is not confirmed goes there (each batch a client vote)."""
        self.log.warn(
            "{step}: sending to the orchester on {host} now ({reason}); {n} unconfirmed batches sent again",
            step=self.step.name,
            host=host,
            reason=reason,
            n=len(self.window.batches),
        )
        self.resend_window()

    def send_unconfirmed(self) -> None:
        """Send once more, and forget, the batches no tracker follows any more (:meth:`RetryWindow.expire`)."""
        for env in self.window.expire():
            self._send_on(env, [env])

    def resend_window(self) -> None:
        """Send every unconfirmed batch again (duplicates land once: Whisper keeps one value per slot)."""
        for env in self.window.envelopes():
            self._send_on(env, [env])

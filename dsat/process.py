"""One step as one OS process: ``dsat run TOPOLOGY STEP``.

Installs Twisted's asyncio reactor (once, here, so ``zmq.asyncio`` and
Twisted share one loop), opens the step's links from the topology, builds the
tracker, the orchester or a satellite runtime around them, and runs until
SIGTERM or SIGINT.  Each kind of step has its builder (:func:`tracker`,
:func:`orchester`, :func:`satellite`), given a :class:`Wiring`: the reactor,
the topology and the factories of its links, ZeroMQ ones from :func:`run`,
fakes in a test.  Stopping is graceful: the input links close first, then
the process waits (up to ``DRAIN_SECONDS``) for what is in flight to be handed
to the next links and to Carbon.  While its reactor runs, a step's
:class:`dsat.watchdog.Watchdog` kills it if the reactor stops turning for the
step's timeout (:meth:`dsat.topology.Topology.watchdog_of`), so the supervisor
starts it again.

With an orchester pair, the tracker and the orchester of each server use that
server's own addresses (:meth:`dsat.topology.Topology.for_server`); the
orchester beats on ``orchester.heartbeat``, hears its peer's, and opens its
Graphite ingress only while ACTIVE.  A satellite connects to both servers and
sends to the one its :class:`dsat.binarystar.ServerChoice` picks.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.stdio import StandardIO
from twisted.logger import globalLogBeginner, textFileLogObserver

from dsat import compiled, keys, topology
from dsat.binarystar import HEARTBEAT_TOPIC, ServerChoice
from dsat.breaker import BREAKER_TOPIC
from dsat.carbon import CarbonEgress
from dsat.errors import ConfigError
from dsat.events import Reporter, topic_for
from dsat.ingress import PickleFactory, PlaintextDatagram, PlaintextFactory, StatsdFactory
from dsat.orchester import Orchester, PairMember
from dsat.reactor import install as install_reactor
from dsat.reactor import stop_on_sigterm
from dsat.rules import RuleSet, load_rules
from dsat.satellite import SatelliteRuntime
from dsat.schedule import ClockWatch
from dsat.shards import Shards
from dsat.spool import Spool
from dsat.statsd import StatsdAggregator, StatsdFeed, StatsdProtocol
from dsat.supervisor import Supervisor
from dsat.tls import server_options
from dsat.topology import Server, Topology, preflight
from dsat.tracker import TrackerService
from dsat.transport import PairSender, Sender, ZmqReceiver, ZmqSender, start_zap
from dsat.udp import CountingPort, listen_udp, listen_unix_datagram
from dsat.watchdog import Watchdog
from dsat.workers import Discard, ParentLink, Workers, adopt_stranded, listen_tcp, worker_name, worker_spool

#: How long a stopping step waits for its queues to drain.
DRAIN_SECONDS = 5.0


def watch_clock(reactor: Any) -> None:
    """Keep the reactor's timers on time across a step of the wall clock (:class:`dsat.schedule.ClockWatch`).

    The watch looks on asyncio's own timer (the monotonic clock), which no
    Twisted timer can delay; it runs while the reactor does.
    """
    watch = ClockWatch(reactor, call_later=asyncio.get_event_loop().call_later)
    reactor.callWhenRunning(watch.start)
    reactor.addSystemEventTrigger("before", "shutdown", watch.stop)


def start_logging() -> None:
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)


class Listeners:
    """The orchester's Graphite and statsd listeners (``[ingress]``): opened and closed by the process, counted.

    With ``[ingress] workers`` above 1 the TCP listeners are shared with the
    ingress workers (``SO_REUSEPORT``, :mod:`dsat.workers`), and each process
    passes the lines of the names it does not own to their owners
    (:mod:`dsat.shards`; its links close with the ports).  A *worker* (its
    index, 1 and up) opens the Graphite TCP listeners alone: UDP and statsd
    (over UDP and TCP) stay with the orchester.  A pair's server opens them
    while ACTIVE and closes them otherwise; :meth:`totals` keeps counting
    across (a closed UDP port keeps what the kernel dropped on it), so the
    orchester's deltas never go back.
    """

    def __init__(self, reactor: Any, topo: Topology, *, host: str = "", worker: int = 0) -> None:
        self.reactor = reactor
        self.topo = topo
        self.host = host
        self.worker = worker
        self.ports: list[Any] = []
        #: Every UDP listener opened (dsat.udp.CountingPort): what the kernel dropped on them is reported.
        self.udp_ports: list[CountingPort] = []
        #: With ``[ingress] workers``: the links that pass each name to its owner process (dsat.shards).
        self.shards: Shards | None = None

    @property
    def open(self) -> bool:
        return bool(self.ports)

    def listen(self, orch: Orchester) -> None:
        """Open the listeners, feeding *orch* (its ingest, its rejections, its egress's flow control)."""
        reactor, topo, conf = self.reactor, self.topo, self.topo.ingress
        shared = conf.workers > 1
        ports = self.ports
        # one factory for the plain and the TLS listener: the same parser, the same flow control (paused under block)
        limits: dict[str, Any] = {
            "max_connections": conf.max_connections,
            "idle_timeout": conf.idle_timeout,
            "idle_grace": conf.idle_grace,
        }
        shards = None
        if shared:
            shards = self.shards = Shards(
                reactor,
                self.worker,
                conf.workers,
                topology_path=topo.path,
                host=self.host,
                producers=orch.egress.producers,
            )
        plaintext = PlaintextFactory(
            orch.ingest,
            orch.rejected,
            reactor,
            max_line_length=conf.max_line,
            producers=orch.egress.producers,
            shards=shards,
            **limits,
        )
        if shards is not None:
            shards.start(plaintext.take)
            ports.append(shards)
        if conf.plaintext:
            ports.append(listen_tcp(reactor, conf.plaintext, plaintext, reuse_port=shared))
        if conf.plaintext_tls:
            assert conf.tls_certificate is not None and conf.tls_key is not None  # the topology requires them
            # pyOpenSSL comes with the [tls] extra only: imported where the topology asks for TLS
            from twisted.protocols.tls import TLSMemoryBIOFactory

            options = server_options(conf.tls_certificate, conf.tls_key)
            # what reactor.listenSSL does: TLS over a TCP listener
            tls = TLSMemoryBIOFactory(options, False, plaintext)
            ports.append(listen_tcp(reactor, conf.plaintext_tls, tls, reuse_port=shared))
        if conf.pickle:
            pickle = PickleFactory(
                orch.ingest, orch.rejected, reactor, producers=orch.egress.producers, shards=shards, **limits
            )
            ports.append(listen_tcp(reactor, conf.pickle, pickle, reuse_port=shared))
        if self.worker:
            return
        udp: list[CountingPort] = []
        if conf.plaintext_udp:
            datagram = PlaintextDatagram(orch.ingest, orch.rejected, reactor, max_line_length=conf.max_line)
            udp.append(listen_udp(reactor, conf.plaintext_udp, datagram, receive_buffer=conf.udp_buffer))
        if conf.statsd:
            aggregator = StatsdAggregator(
                reactor,
                conf.statsd_flush,
                conf.statsd_prefix,
                percentiles=conf.statsd_percentiles,
                rejections=orch.rejected,
            )
            # statsd over TCP on the same address, into the same aggregator, which the UDP protocol flushes;
            # the orchester's alone, as the UDP listeners are
            stream = StatsdFactory(
                aggregator.receive,
                orch.rejected,
                reactor,
                max_line_length=conf.max_line,
                producers=orch.egress.producers,
                **limits,
            )
            ports.append(listen_tcp(reactor, conf.statsd, stream, reuse_port=False))
            statsd = StatsdProtocol(aggregator, orch.ingest)
            udp.append(listen_udp(reactor, conf.statsd, statsd, receive_buffer=conf.udp_buffer))
            if conf.statsd_socket is not None:  # DogStatsD's Unix datagram socket, into the same aggregator
                ports.append(listen_unix_datagram(reactor, str(conf.statsd_socket), StatsdFeed(aggregator)))
        self.udp_ports.extend(udp)
        ports.extend(udp)

    def close(self) -> Any:
        """Stop listening; a Deferred that fires when every port has closed."""
        closing = [defer.maybeDeferred(port.stopListening) for port in self.ports]
        self.ports.clear()
        return defer.gatherResults(closing)

    def totals(self) -> dict[str, int]:
        """What the listeners counted since start, for the orchester's own metrics."""
        return {
            "udp.dropped": sum(port.kernel_dropped for port in self.udp_ports),
            **(self.shards.totals() if self.shards is not None else {}),
        }


def host_of(topo: Any, step: str, host: str) -> str:
    """The host *step* runs on in this process: *host*, checked against the topology ("" without hosts)."""
    if not topo.multi_host:
        return ""
    if host not in topo.hosts:
        choices = ", ".join(topo.hosts)
        raise ConfigError(f"{topo.path}: say which host this is with --host NAME (one of: {choices}), not {host!r}")
    if step in ("tracker", "orchester", *topo.satellites) and host not in topo.hosts_of(step):
        raise ConfigError(
            f"{topo.path}: step {step!r} does not run on host {host!r}; it runs on {', '.join(topo.hosts_of(step))}"
        )
    return host


class Wiring:
    """What a step's builder needs: the reactor, the topology, and the factories of its links.

    *sender* ``(pattern, address, *, bind=False)`` opens a sending link and
    *receiver* ``(pattern, address, on_frame, *, bind=True, **options)`` a
    receiving one; :func:`run` gives ZeroMQ ones, a test gives fakes that
    record what the step listens on and sends to.  *stop_hooks* are called in
    order at a graceful stop, after the receivers have closed.
    """

    def __init__(
        self,
        reactor: Any,
        topo: Topology,
        step: str,
        *,
        host: str,
        pid: int,
        sender: Callable[..., Sender],
        receiver: Callable[..., Any],
    ) -> None:
        self.reactor = reactor
        self.topo = topo
        self.step = step
        self.host = host
        # `where` in metric paths is the host a step runs on.
        self.where = host or topo.where
        self.pid = pid
        self.sender = sender
        self.receiver = receiver
        self.stop_hooks: list[Callable[[], object]] = []
        #: The orchester's ingress workers, when ``[ingress] workers`` is above 1 (dsat.workers).
        self.workers: Workers | None = None
        #: The orchester's (or an ingress worker's) Graphite and statsd listeners.
        self.listeners: Listeners | None = None
        self.choice = None
        if topo.servers and step not in ("tracker", "orchester"):
            self.choice = ServerChoice(
                reactor,
                tuple(server.host for server in topo.servers),
                heartbeat=topo.orchester.heartbeat,
                missed_beats=topo.orchester.missed_beats,
            )

    def to_pair(self, address_of: Callable[[Server], str], pattern: str) -> Sender:
        """One link to each server of the pair, used as one: frames go to the server ``choice`` picks."""
        choice = self.choice
        assert choice is not None
        return PairSender(
            {s.host: self.sender(pattern, address_of(s)) for s in self.topo.servers}, lambda: choice.current
        )

    def sender_to(self, name: str) -> Sender:
        """The link to step *name*'s input (to the pair's chosen server for the orchester)."""
        link = self.topo.input_of(name)
        if name == "orchester" and self.choice is not None:
            return self.to_pair(lambda server: server.listen, link.sender_pattern)
        return self.sender(link.sender_pattern, link.address)

    @cached_property
    def reporter(self) -> Reporter:
        """The step's task events and heartbeats, to its tracker (to both trackers of a pair)."""
        if self.choice is not None:
            events = self.to_pair(lambda server: server.events, "push")
        else:
            events = self.sender("push", self.topo.tracker.events)
        return Reporter(events, step=self.step, where=self.where, pid=self.pid)


def tracker(wiring: Wiring) -> TrackerService:
    """The tracker: hears every step's events, publishes states, answers ``dsat status``."""
    topo, sender, receiver = wiring.topo, wiring.sender, wiring.receiver
    svc = TrackerService(
        topo,
        clock=wiring.reactor,
        where=wiring.where,
        publisher=sender("pub", topo.tracker.states, bind=True),
        orchester=wiring.sender_to("orchester"),
        pid=wiring.pid,
    )
    receiver("pull", topo.tracker.events, svc.on_event)
    receiver("rep", topo.tracker.status, svc.on_status_request)
    svc.start()
    wiring.stop_hooks.append(svc.stop)
    return svc


def carbon_egress(
    reactor: Any, topo: Topology, spool_path: Path | None, *, adopt_workers: bool = False
) -> CarbonEgress:
    """The orchester's queues and connections to Carbon, with its spool at *spool_path* (None: no spool).

    *adopt_workers* (the orchester, not a worker): the spool first takes what the spools of workers that
    no longer run hold (:func:`dsat.workers.adopt_stranded`), before its destinations count what it holds.
    """
    spool = None
    if spool_path is not None:
        spool = Spool(spool_path, max_bytes=topo.spool.max_bytes, policy=topo.spool.policy, sync=topo.spool.sync)
        if adopt_workers:
            adopt_stranded(spool, topo.ingress.workers)
    return CarbonEgress(
        reactor,
        topo.carbon.destinations,
        protocol=topo.carbon.protocol,
        max_queue=topo.orchester.max_queue,
        timeout=topo.carbon.timeout,
        spool=spool,
        replay_rate=topo.spool.replay_rate,
        replication=topo.carbon.replication,
        hashing=topo.carbon.hashing,
    )


def rules_of(reactor: Any, topo: Topology) -> RuleSet | None:
    """The topology's carbon-compatible rules (``[rules]``), or None without any."""
    conf = topo.rules
    if not (conf.rewrite or conf.aggregation or conf.allow or conf.deny):
        return None
    return load_rules(conf.rewrite, conf.aggregation, conf.allow, conf.deny, clock=reactor)


def drain_and_stop(stop_hooks: list[Callable[[], object]], egress: CarbonEgress) -> None:
    """At a graceful stop: wait (up to ``DRAIN_SECONDS``) for the carbon queues to empty, then close the egress."""

    async def drain_carbon() -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_SECONDS
        while egress.queued_points and loop.time() < deadline:
            await asyncio.sleep(0.05)

    stop_hooks.append(lambda: defer.Deferred.fromFuture(asyncio.ensure_future(drain_carbon())))
    stop_hooks.append(lambda: defer.gatherResults(egress.stop()))  # type: ignore[arg-type]


def orchester(wiring: Wiring) -> Orchester:
    """The orchester: its carbon egress and spool, its rules, its links, its Graphite ingress (while ACTIVE)."""
    reactor, topo, host, sender, receiver = wiring.reactor, wiring.topo, wiring.host, wiring.sender, wiring.receiver
    egress = carbon_egress(reactor, topo, topo.spool.path, adopt_workers=True)
    # Every transform and sink can be a route target (`dsat route` may point a type at any of them).
    targets = {name for name, sat in topo.satellites.items() if sat.kind != "collector"}
    listeners = wiring.listeners = Listeners(reactor, topo, host=host)

    def listening(active: bool) -> Any:
        """Open the Graphite and statsd listeners (a pair's ACTIVE server), or close them."""
        if active and not listeners.open:
            listeners.listen(orch)
            return None
        return listeners.close()

    pair = None
    if topo.servers:
        server = topo.server(host)
        pair = PairMember(
            reactor,
            host=host,
            role=server.role,
            heartbeat=topo.orchester.heartbeat,
            missed_beats=topo.orchester.missed_beats,
            publisher=sender("pub", server.heartbeat, bind=True),
            on_active=listening,
            on_change=lambda _transition: orch.heartbeat(),  # dsat status and the alert follow at once
        )
    workers = None
    if topo.ingress.workers > 1:
        workers = wiring.workers = Workers(reactor, topo.path, topo.ingress.workers, host=host)
    orch = Orchester(
        topo,
        clock=reactor,
        egress=egress,
        reporter=wiring.reporter,
        where=wiring.where,
        senders={name: wiring.sender_to(name) for name in targets},
        rules=rules_of(reactor, topo),
        pair=pair,
        ingress=listeners,
        workers_state=workers.describe if workers is not None else None,  # `dsat status` shows it
    )
    orch.log.info("hot path: {how}", how=compiled.describe())
    stop_hooks = wiring.stop_hooks
    if pair is None:
        listening(True)
    else:
        peer = next(s for s in topo.servers if s.host != host)
        receiver("sub", peer.heartbeat, orch.on_peer_heartbeat, bind=False, topics=(HEARTBEAT_TOPIC,))
        pair.start()
        stop_hooks.append(pair.stop)
    stop_hooks.append(listeners.close)
    on_control: Callable[[bytes], object] = orch.on_control
    stopping: list[Any] = []
    if workers is not None:
        on_control = workers.forwarding(orch.on_control)  # every process places names on the same destinations
        reactor.callWhenRunning(workers.start)
        # the workers drain while this process does (dsat up gives it KILL_AFTER seconds in all)
        stop_hooks.append(lambda: stopping.append(workers.stop()))
    link = topo.orchester.listen
    orchester_input = receiver(link.pattern, link.address, orch.on_frame)
    receiver("sub", topo.tracker.states, orch.on_published, bind=False, topics=(BREAKER_TOPIC,))
    receiver("sub", topo.orchester.control, on_control)
    orch.start(orchester_input)
    stop_hooks.append(orch.stop)
    drain_and_stop(stop_hooks, egress)
    if workers is not None:
        stop_hooks.append(lambda: stopping[0])
    return orch


def ingress_worker(wiring: Wiring, index: int) -> Orchester:
    """Ingress worker *index* of the orchester (:mod:`dsat.workers`): its Graphite TCP listeners, egress and spool.

    It has no link of its own: the control frames come from the orchester, on
    standard input (:class:`dsat.workers.ParentLink`, set up by :func:`run`).
    """
    reactor, topo = wiring.reactor, wiring.topo
    name = worker_name(index)
    egress = carbon_egress(reactor, topo, worker_spool(topo.spool.path, index))
    listeners = wiring.listeners = Listeners(reactor, topo, host=wiring.host, worker=index)
    orch = Orchester(
        topo,
        clock=reactor,
        egress=egress,
        # the tracker follows the orchester; a worker's health is in its own metrics
        reporter=Reporter(Discard(), step=name, where=wiring.where, pid=wiring.pid),
        where=wiring.where,
        senders={},
        rules=rules_of(reactor, topo),
        ingress=listeners,
        name=name,
    )
    listeners.listen(orch)
    stop_hooks = wiring.stop_hooks
    stop_hooks.append(listeners.close)
    orch.start()
    stop_hooks.append(orch.stop)
    drain_and_stop(stop_hooks, egress)
    return orch


def satellite(wiring: Wiring) -> SatelliteRuntime:
    """A satellite: its plugin's runtime, its input (transforms and sinks), the tracker's states it follows."""
    topo, step, receiver = wiring.topo, wiring.step, wiring.receiver
    reporter = wiring.reporter
    conf = topo.satellites[step]
    runtime = SatelliteRuntime(
        conf,
        topo.registry[conf.use],
        clock=wiring.reactor,
        prefix=topo.prefix,
        where=wiring.where,
        senders={name: wiring.sender_to(name) for name in conf.next},
        reporter=reporter,
        pid=wiring.pid,
        choice=wiring.choice,
        unconfirmed_after=topo.tracker.gives_up_after,
    )
    if conf.listen is not None:
        receiver(conf.listen.pattern, conf.listen.address, runtime.on_frame)
    topics = (topic_for(step), BREAKER_TOPIC)
    if topo.servers:
        for server in topo.servers:  # both trackers: the one of the server in use answers
            receiver("sub", server.states, runtime.on_published, bind=False, topics=topics)
            receiver("sub", server.heartbeat, runtime.on_heartbeat, bind=False, topics=(HEARTBEAT_TOPIC,))
    else:
        receiver("sub", topo.tracker.states, runtime.on_published, bind=False, topics=topics)
    runtime.start()
    wiring.stop_hooks.insert(0, runtime.stop)
    return runtime


def run(topology_path: str | Path, step: str, host: str = "", worker: int | None = None) -> int:
    """Run one step of a topology (on *host*, for a topology with ``[hosts]``) until stopped.

    *worker* (``--worker I``, orchester only) runs its ingress worker I instead (:mod:`dsat.workers`).
    """
    reactor = install_reactor()
    start_logging()

    topo = topology.load(topology_path)
    preflight.check(topo)
    host = host_of(topo, step, host)
    if worker is not None and not (step == "orchester" and 0 < worker < topo.ingress.workers):
        raise ConfigError(
            f"{topo.path}: --worker {worker}: the orchester's ingress workers are 1 to {topo.ingress.workers - 1}"
            " ([ingress] workers)"
        )
    if topo.servers and step in ("tracker", "orchester"):
        topo = topo.for_server(host)
    keyring = zap = None
    if topo.multi_host and not topo.insecure and worker is None:  # a worker has no ZeroMQ link
        keys.require_curve(topo)
        keyring = keys.KeyRing(topo, host)
        zap = start_zap(keyring.allow_list())
    senders: list[Sender] = []
    receivers: list[ZmqReceiver] = []

    def curve(address: str, *, bind: bool) -> Any:
        return keyring.curve_for(address, bind=bind) if keyring is not None else None

    def sender(pattern: str, address: str, *, bind: bool = False) -> ZmqSender:
        link_sender = ZmqSender(pattern, address, bind=bind, curve=curve(address, bind=bind))
        senders.append(link_sender)
        return link_sender

    def receiver(pattern: str, address: str, on_frame: Any, *, bind: bool = True, **kw: Any) -> ZmqReceiver:
        link_receiver = ZmqReceiver(pattern, address, on_frame, bind=bind, curve=curve(address, bind=bind), **kw)
        receivers.append(link_receiver)
        return link_receiver

    wiring = Wiring(reactor, topo, step, host=host, pid=os.getpid(), sender=sender, receiver=receiver)
    if step == "tracker":
        built: Any = tracker(wiring)
    elif worker is not None:
        built = ingress_worker(wiring, worker)
        StandardIO(ParentLink(built.on_control, reactor), reactor=reactor)
        signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(built.reload_rules))
    elif step == "orchester":
        built = orchester(wiring)

        def hangup() -> None:
            built.reload_rules()
            if wiring.workers is not None:
                wiring.workers.signal(signal.SIGHUP)

        signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(hangup))
    else:
        built = satellite(wiring)
    stop_hooks = wiring.stop_hooks
    if zap is not None:
        zap.count_into(built.rejected)  # refused peers show in this step's own metrics
        stop_hooks.append(zap.close)

    @defer.inlineCallbacks
    def graceful_stop() -> Any:
        for link_receiver in receivers:
            link_receiver.close()
        for hook in stop_hooks:
            yield hook()
        flushes = [link_sender.flush(DRAIN_SECONDS) for link_sender in senders]
        yield defer.Deferred.fromFuture(asyncio.ensure_future(asyncio.gather(*flushes)))
        for link_sender in senders:
            link_sender.close()

    reactor.addSystemEventTrigger("before", "shutdown", graceful_stop)
    stop_on_sigterm(reactor)
    if os.environ.get("DSAT_SUPERVISED"):
        # Ctrl-C in a terminal reaches the whole process group; under `dsat up`
        # the supervisor alone decides when a step stops (with SIGTERM).
        reactor.callWhenRunning(signal.signal, signal.SIGINT, signal.SIG_IGN)
    # A step whose reactor stops turning (a satellite's code that never returns) is killed and restarted.
    watchdog = Watchdog(reactor, topo.watchdog_of(step), name=step if worker is None else f"{step} worker {worker}")
    reactor.callWhenRunning(watchdog.start)
    watch_clock(reactor)  # a wall clock stepped back would stall every timer (and the watchdog's pets)
    try:
        reactor.run()
    finally:
        watchdog.stop()
    return 0


def up(topology_path: str | Path, *, extra: Any = None, host: str | None = None) -> int:
    """Validate a topology, then run all its processes (those of *host*) until stopped.

    *extra* is a callable given the supervisor before it starts, to add more
    processes (``dsat demo`` adds carbon-cache and graphite-web).  A topology
    with ``[hosts]`` needs *host*: each host runs its own part.
    """
    topo = topology.load(topology_path)
    preflight.check(topo, host=host, machine=True)
    keys.require_curve(topo)
    reactor = install_reactor()
    start_logging()
    watch_clock(reactor)
    topo.run_dir.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(reactor)
    if extra is not None:
        extra(supervisor, topo)
    supervisor.add_topology(topo, host or "")
    reactor.callWhenRunning(supervisor.start)
    reactor.addSystemEventTrigger("before", "shutdown", supervisor.stop)
    stop_on_sigterm(reactor)
    reactor.run()
    return 0

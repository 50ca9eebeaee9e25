r"""The topology's model: frozen dataclasses, built from the TOML file by :mod:`dsat.topology.loading`.

:class:`Topology` holds every step (:class:`Step`), the tables of the tracker,
orchester, carbon egress, ingress, rules and spool, the hosts and, for an
orchester pair, its two :class:`Server`\ s; it answers what the rest of DSAT
asks of it (which steps run on a host, what each binds, where a type is
routed).  The defaults a user can leave out live here, in the fields; the
tracker's retry and circuit-breaker defaults belong to :mod:`dsat.fsm` and
:mod:`dsat.breaker`, which use them too.  Nothing here reads a file.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cmp_to_key
from pathlib import Path
from types import MappingProxyType
from typing import Any

from dsat import breaker, fsm
from dsat.graphite_wire import MAX_LINE
from dsat.plugins import SatelliteSpec
from dsat.spool import DEFAULT_MAX_BYTES, DEFAULT_POLICY, DEFAULT_SYNC

#: Receiving pattern -> the pattern its senders use.
PATTERNS = {"pull": "push", "sub": "pub", "pair": "pair", "rep": "req"}
#: Step names a satellite cannot take.
RESERVED = ("orchester", "carbon", "tracker", "self")
PROTOCOLS = ("pickle", "plaintext")
#: ``[carbon] hashing``: how names are placed on several destinations (carbon's and carbon-c-relay's names).
HASHINGS = ("carbon_ch", "fnv1a_ch", "jump_fnv1a_ch")
#: sun_path is 108 bytes including the terminating NUL.
MAX_IPC_PATH = 107
#: Seconds a step's reactor may go without turning before its watchdog kills it (dsat.watchdog); ``[dsat] watchdog``.
DEFAULT_WATCHDOG = 60.0
#: The shortest watchdog timeout accepted: below it, a busy step's ordinary pauses would kill it.
MIN_WATCHDOG = 1.0
#: Offsets from ``[dsat] port_base`` of the derived tcp ports; receiving satellites follow, in name order.
TCP_PORTS = {"tracker.events": 0, "tracker.states": 1, "orchester.listen": 2, "orchester.heartbeat": 3}
#: The keys whose address each server of an orchester pair binds on its own host.
SERVER_LINKS = ("tracker.events", "tracker.states", "orchester.listen", "orchester.heartbeat")
#: Offset from ``[dsat] port_base`` of the first receiving satellite's derived tcp port.
SATELLITE_PORTS_FROM = 10
_NAME = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Link:
    """A receiving socket: the address it binds and its pattern (pull, sub, pair or rep)."""

    address: str
    pattern: str

    @property
    def sender_pattern(self) -> str:
        """The pattern of the sockets that connect to this one (push, pub, pair or req)."""
        return PATTERNS[self.pattern]


@dataclass(frozen=True)
class Step:
    """One satellite of the topology; ``kind`` and ``type`` come from its registry spec."""

    name: str
    use: str
    kind: str
    type: str | None
    every: float | None
    next: tuple[str, ...]
    options: Mapping[str, Any]
    #: The hosts it runs on (one process on each); empty in a topology without ``[hosts]``.
    hosts: tuple[str, ...]
    listen: Link | None
    codec: str
    #: Its own ``watchdog`` (seconds), or None for the topology's (:meth:`Topology.watchdog_of`).
    watchdog: float | None = None


@dataclass(frozen=True)
class TrackerConf:
    """The tracker's three bound addresses, batch deadline, retries, alerts, circuit breakers (seconds)."""

    events: str
    states: str
    status: str
    timeout: float = 30.0
    metrics_every: float = 10.0
    max_retries: int = fsm.DEFAULT_MAX_RETRIES
    backoff: float = fsm.DEFAULT_BACKOFF
    alert_command: str = ""
    breaker_window: float = breaker.DEFAULT_WINDOW
    breaker_threshold: float = breaker.DEFAULT_THRESHOLD
    breaker_min_failures: int = breaker.DEFAULT_MIN_FAILURES
    breaker_cooldown: float = breaker.DEFAULT_COOLDOWN
    host: str = ""

    @property
    def gives_up_after(self) -> float:
        """Seconds from a batch's first event until the tracker has ended it, at the latest: every attempt's
        deadline (``timeout``, times ``backoff`` for each retry) summed, and one more ``timeout`` of margin."""
        return self.timeout * (sum(self.backoff**attempt for attempt in range(self.max_retries + 1)) + 1)


@dataclass(frozen=True)
class OrchesterConf:
    """The orchester's input link, control channel, routes (type -> steps) and carbon queue bound."""

    listen: Link
    control: str
    routes: Mapping[str, tuple[str, ...]]
    #: Datapoints a carbon destination holds in memory before spooling (or, with no spool, dropping) the oldest.
    max_queue: int = 1_000_000
    host: str = ""
    #: Both hosts of a Binary Star pair (primary first); empty for one orchester.
    hosts: tuple[str, ...] = ()
    #: Seconds between two state heartbeats of a pair's servers, and how many missed make the peer dead.
    heartbeat: float = 1.0
    missed_beats: int = 3


@dataclass(frozen=True)
class CarbonConf:
    """Where the carbon egress sends: (host, port, instance) destinations, protocol, connect timeout,
    how many destinations hold each metric (``replication``, as carbon-relay's REPLICATION_FACTOR) and
    the hash that places them (``hashing``, one of ``HASHINGS``)."""

    destinations: tuple[tuple[str, int, str | None], ...]
    protocol: str = "pickle"
    timeout: float = 10.0
    replication: int = 1
    hashing: str = "carbon_ch"


def ring_identity(hashing: str, host: str, port: int, instance: str | None) -> object:
    """What the *hashing* method's ring tells a destination apart by: two with the same identity clash.

    carbon_ch hashes ``(host, instance)``; fnv1a_ch the instance when there
    is one, else ``host:port`` (carbon-c-relay's ring keys); jump_fnv1a_ch
    orders by the instance when there is one, else by place in the list.
    """
    if hashing == "carbon_ch":
        return (host, instance)
    if hashing == "fnv1a_ch":
        return instance if instance is not None else f"{host}:{port}"
    return instance if instance is not None else (host, port)


def _strtol(text: str) -> int | None:
    """C's ``strtol(text, &end, 10)`` when it reads the whole string (clamped to 64 bits), else None."""
    match = re.fullmatch(r"[ \t\n\v\f\r]*([+-]?[0-9]+)", text)
    if match is None:
        return None
    return max(-(1 << 63), min((1 << 63) - 1, int(match.group(1))))


def jump_compare(left: str | None, right: str | None) -> int:
    """carbon-c-relay 3.7's order of a jump_fnv1a_ch cluster's buckets, for two members' instances.

    Members with an instance come first, by number when both instances are
    base-10 numbers (their difference as a C ``int``), else by their bytes;
    members without one keep their order in the list (0 here).
    """
    if left is None or right is None:
        return (left is None) - (right is None)
    left_number, right_number = _strtol(left), _strtol(right)
    if left_number is not None and right_number is not None:
        difference = (left_number - right_number) & 0xFFFFFFFF  # (int)(long - long): the low 32 bits, signed
        return difference - (1 << 32) if difference >= 1 << 31 else difference
    left_bytes, right_bytes = left.encode(), right.encode()
    return (left_bytes > right_bytes) - (left_bytes < right_bytes)


def placement_problems(
    hashing: str, destinations: Sequence[tuple[str, int, str | None]], replication: int
) -> list[tuple[str, str]]:
    """What is wrong with placing on *destinations* by *hashing* with *replication*: (key, problem) pairs.

    The one check of ``[carbon] hashing``, ``replication`` and the
    destinations' ring identities, for the topology and the egress alike.
    """
    if hashing not in HASHINGS:
        close = difflib.get_close_matches(hashing, HASHINGS, n=1)
        mean = f'did you mean "{close[0]}"? ' if close else ""
        return [("carbon.hashing", f'unknown hashing "{hashing}"; {mean}use one of: {", ".join(HASHINGS)}')]
    problems = []
    identities = [ring_identity(hashing, host, port, instance) for host, port, instance in destinations]
    if len(set(identities)) != len(identities):
        what = {
            "carbon_ch": "a host and instance",
            "fnv1a_ch": "an instance (or, without one, a host and port)",
            "jump_fnv1a_ch": "an instance",
        }[hashing]
        problems.append(
            (
                "carbon.destinations",
                f"two destinations share {what}, so {hashing}'s ring cannot tell them apart;"
                ' name each, e.g. "127.0.0.1:2004:a" and "127.0.0.1:2104:b"',
            )
        )
    elif hashing == "jump_fnv1a_ch":
        instances = sorted({instance for _, _, instance in destinations if instance is not None})
        ordered = sorted(instances, key=cmp_to_key(jump_compare))
        if any(jump_compare(a, b) >= 0 for i, a in enumerate(ordered) for b in ordered[i + 1 :]):
            problems.append(
                (
                    "carbon.destinations",
                    "jump_fnv1a_ch orders its members by instance, and these instances have no one order"
                    " (carbon-c-relay compares two numbers as numbers, anything else as text);"
                    ' make them all numbers, e.g. ":0", ":1", ":2", or all words',
                )
            )
    if not 1 <= replication <= max(1, len(destinations)):
        problems.append(("carbon.replication", f"{replication} must be from 1 to the number of destinations"))
    return problems


@dataclass(frozen=True)
class IngressConf:
    """Where the orchester listens for Graphite and statsd clients: ``(interface, port)`` or None (off)."""

    plaintext: tuple[str, int] | None = None
    #: Graphite plaintext over TLS, with the PEM certificate (chain) and key files it needs.
    plaintext_tls: tuple[str, int] | None = None
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    plaintext_udp: tuple[str, int] | None = None
    pickle: tuple[str, int] | None = None
    statsd: tuple[str, int] | None = None
    #: DogStatsD over a Unix datagram socket at this path too (the Datadog client's ``socket_path``), into the
    #: same aggregator as ``statsd``; None: none.
    statsd_socket: Path | None = None
    statsd_flush: float = 10.0
    statsd_prefix: str = "stats"
    statsd_percentiles: tuple[float, ...] = (90.0,)
    max_line: int = MAX_LINE
    #: Bytes of kernel receive buffer asked for each UDP listener (dsat.udp).
    udp_buffer: int = 8 * 1024 * 1024
    #: Processes serving the Graphite TCP listeners, the orchester's own included (dsat.workers).
    workers: int = 1
    #: Open TCP connections per listener; more are refused (carbon's MAX_RECEIVER_CONNECTIONS).
    max_connections: int = 1024
    #: Seconds a connection may go without a complete line (or pickle frame) before it is closed
    #: (carbon-c-relay: 10 min).
    idle_timeout: float = 600.0
    #: At a bound, a new connection replaces the one idle the longest if it has been idle this many seconds.
    idle_grace: float = 5.0


def valid_percentile(pct: object) -> bool:
    """Whether *pct* is a percentile etsy statsd flushes: a number in ``[-100, 0)`` or ``(0, 100]`` (not a bool).

    ``90`` is over the lowest 90 per cent of a timer's samples, ``-10`` over
    the highest 10 per cent; ``100`` and ``-100`` over all of them.  The one
    rule for ``[ingress] statsd_percentiles`` and :class:`dsat.statsd.StatsdAggregator`.
    """
    return isinstance(pct, int | float) and not isinstance(pct, bool) and 0 < abs(pct) <= 100


@dataclass(frozen=True)
class RulesConf:
    """carbon-compatible rule files (absolute paths or None) and allow/deny regex lists."""

    rewrite: Path | None = None
    aggregation: Path | None = None
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


@dataclass(frozen=True)
class SpoolConf:
    """The disk spool in front of Carbon: file (None = no spool), size bound, overflow policy, replay rate."""

    path: Path | None
    max_bytes: int = DEFAULT_MAX_BYTES
    policy: str = DEFAULT_POLICY
    sync: str = DEFAULT_SYNC
    #: Datapoints a second replayed from the spool, at most, beside live traffic.
    replay_rate: float = 50_000.0


@dataclass(frozen=True)
class Host:
    """A machine of a multi-host topology: its name and the address the other hosts reach it at."""

    name: str
    address: str


@dataclass(frozen=True)
class Server:
    """One server of an orchester pair: its host, role and the addresses its tracker and orchester bind."""

    host: str
    role: str
    events: str
    states: str
    listen: str
    heartbeat: str


@dataclass(frozen=True)
class Topology:
    """A validated topology file; addresses have ``{run_dir}`` expanded."""

    path: Path
    prefix: str
    where: str
    run_dir: Path
    codec: str
    satellites: Mapping[str, Step]
    tracker: TrackerConf
    orchester: OrchesterConf
    carbon: CarbonConf
    spool: SpoolConf
    #: The satellites this topology may use: the built-in ones plus ``[dsat] plugins``.
    registry: Mapping[str, SatelliteSpec]
    ingress: IngressConf = IngressConf()
    rules: RulesConf = RulesConf()
    #: ``[hosts]``: empty for a topology that runs on one machine.
    hosts: Mapping[str, Host] = field(default_factory=lambda: MappingProxyType({}))
    #: ``[dsat] insecure``: derived tcp links go without CURVE.
    insecure: bool = False
    #: ``[dsat] keys``: ``public/HOST.key`` and ``private/HOST.key_secret`` per host.
    keys_dir: Path = Path("keys")
    port_base: int = 7400
    #: Every derived tcp address -> the host that binds it (and whose key a connecting peer checks).
    tcp_binders: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: The two servers of an orchester pair (primary, backup); empty for one orchester.
    servers: tuple[Server, ...] = ()
    #: ``[dsat] watchdog``: seconds a step's reactor may go without turning before it is killed and restarted.
    watchdog: float = DEFAULT_WATCHDOG

    @property
    def multi_host(self) -> bool:
        return bool(self.hosts)

    def server(self, host: str) -> Server:
        """The server of the pair on *host*; KeyError if *host* runs none."""
        for server in self.servers:
            if server.host == host:
                return server
        raise KeyError(f"no server of the orchester pair runs on {host!r}")

    def for_server(self, host: str) -> Topology:
        """This topology as *host*'s tracker and orchester see it: their own bound addresses in front."""
        server = self.server(host)
        return replace(
            self,
            tracker=replace(self.tracker, events=server.events, states=server.states, host=host),
            orchester=replace(self.orchester, listen=replace(self.orchester.listen, address=server.listen), host=host),
        )

    def hosts_of(self, step: str) -> tuple[str, ...]:
        """The hosts *step* (tracker, orchester or a satellite) runs on; ``("",)`` without ``[hosts]``."""
        if step in ("tracker", "orchester") and self.servers:
            return tuple(server.host for server in self.servers)
        if step == "tracker":
            host = self.tracker.host
        elif step == "orchester":
            host = self.orchester.host
        else:
            return self.satellites[step].hosts or ("",)
        return (host,)

    def watchdog_of(self, step: str) -> float:
        """Seconds *step*'s reactor may go without turning before its watchdog kills it (:mod:`dsat.watchdog`).

        A satellite's own ``watchdog``, else ``[dsat] watchdog``; a collector's
        run may legitimately hold its reactor for up to its ``every`` (a longer
        one misses slots, counted by :mod:`dsat.schedule`), so it inherits at
        least twice its ``every`` (its own value must be that long, or load fails).
        """
        sat = self.satellites.get(step)
        if sat is None:
            return self.watchdog
        if sat.watchdog is not None:
            return sat.watchdog
        return max(self.watchdog, 2 * sat.every) if sat.every is not None else self.watchdog

    def steps_on(self, host: str) -> list[str]:
        """The steps that run on *host* (every step without ``[hosts]``)."""
        return [name for name in ("tracker", "orchester", *self.satellites) if host in self.hosts_of(name)]

    def secured(self, address: str) -> bool:
        """Whether *address* is a derived tcp link, so both ends speak CURVE."""
        return address in self.tcp_binders and not self.insecure

    def input_of(self, step: str) -> Link:
        """The receiving link of ``orchester`` or a satellite; KeyError for a collector."""
        if step == "orchester":
            return self.orchester.listen
        listen = self.satellites[step].listen
        if listen is None:
            raise KeyError(f"step {step!r} has no input (it is a collector)")
        return listen

    def routes_for(self, type: str) -> tuple[str, ...]:
        """The steps the orchester sends envelopes of *type* to: exact type, else ``"*"``, else none."""
        routes = self.orchester.routes
        if type in routes:
            return routes[type]
        return routes.get("*", ())

    def binds_on(self, host: str) -> list[tuple[str, str]]:
        """The addresses the steps on *host* bind, as ``(key path, address)``."""
        here = self.steps_on(host)
        if self.servers and "orchester" in here:
            own = self.for_server(host)
            heartbeat = [("orchester.heartbeat", own.server(host).heartbeat)]
            return [(key, address) for key, address in own.binds() + heartbeat if _binder(key) in here]
        return [(key, address) for key, address in self.binds() if _binder(key) in here]

    def binds(self) -> list[tuple[str, str]]:
        """Every address some process binds, as ``(key path, address)``."""
        return [
            ("tracker.events", self.tracker.events),
            ("tracker.states", self.tracker.states),
            ("tracker.status", self.tracker.status),
            ("orchester.listen", self.orchester.listen.address),
            ("orchester.control", self.orchester.control),
            *(
                (f"satellites.{_key(name)}.listen", step.listen.address)
                for name, step in self.satellites.items()
                if step.listen is not None
            ),
        ]


def _binder(key: str) -> str:
    """The step that binds the address at key path *key* (``tracker.events`` -> ``tracker``)."""
    table, name, *_ = key.split(".")
    return name if table == "satellites" else table


def _key(name: str) -> str:
    """A key path component, quoted as TOML would need it."""
    return name if _NAME.fullmatch(name) else json.dumps(name)

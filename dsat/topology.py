"""The topology: one TOML file describing every step, loaded into frozen dataclasses.

Validation runs before anything starts, in three stages; each reports every
problem it finds, and a stage that found problems stops the next: the schema
(keys, types, durations, addresses, known satellites), the graph (every
``next`` and route resolves, no cycles, a source and a sink, no two binds on
one address, unix socket paths short enough), and, when asked, this machine
(``run_dir`` writable, tcp ports free).  A problem reads
``<file>: <key path>: <what is wrong>; <how to fix>``.  The file format is
documented in ``docs/topology.rst``.

A topology with ``[hosts]`` spans many machines: each step runs on one host
(or, for a collector, on several), and every link whose ends are on different
hosts gets a ``tcp://`` address derived here from the binding host's address
and ``[dsat] port_base``; links within one host stay ``ipc://``.  Those tcp
links are secured with CURVE (:mod:`dsat.keys`) unless ``[dsat] insecure``.

``[orchester] host = ["a", "b"]`` makes the orchester (with its tracker) a
Binary Star pair (:mod:`dsat.binarystar`, ``docs/ha.rst``): the first host is
the primary, the second the backup; each runs both steps on its own tcp
addresses (:class:`Server`), and they beat on ``orchester.heartbeat``.
"""

from __future__ import annotations

import difflib
import importlib
import json
import math
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from dsat.binarystar import ROLES
from dsat.envelope import CODECS, DEFAULT_CODEC
from dsat.errors import ConfigError
from dsat.plugins import SatelliteSpec
from dsat.spool import DEFAULT_MAX_BYTES, DEFAULT_POLICY, DEFAULT_SYNC, POLICIES, SYNC_MODES

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

#: Receiving pattern -> the pattern its senders use.
PATTERNS = {"pull": "push", "sub": "pub", "pair": "pair", "rep": "req"}
#: Step names a satellite cannot take.
RESERVED = ("orchester", "carbon", "tracker", "self")
PROTOCOLS = ("pickle", "plaintext")
#: sun_path is 108 bytes including the terminating NUL.
MAX_IPC_PATH = 107
#: Seconds a step's reactor may go without turning before its watchdog kills it (dsat.watchdog); ``[dsat] watchdog``.
DEFAULT_WATCHDOG = 60.0
#: The shortest watchdog timeout accepted: below it, a busy step's ordinary pauses would kill it.
MIN_WATCHDOG = 1.0

_TABLES = ("dsat", "hosts", "groups", "tracker", "orchester", "carbon", "ingress", "rules", "spool", "satellites")
#: Offsets from ``[dsat] port_base`` of the derived tcp ports; receiving satellites follow, in name order.
TCP_PORTS = {"tracker.events": 0, "tracker.states": 1, "orchester.listen": 2, "orchester.heartbeat": 3}
#: The keys whose address each server of an orchester pair binds on its own host.
SERVER_LINKS = ("tracker.events", "tracker.states", "orchester.listen", "orchester.heartbeat")
SATELLITE_PORTS_FROM = 10
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


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
    max_retries: int = 3
    backoff: float = 2.0
    alert_command: str = ""
    breaker_window: float = 30.0
    breaker_threshold: float = 0.5
    breaker_min_failures: int = 5
    breaker_cooldown: float = 30.0
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
    and how many destinations hold each metric (``replication``, as carbon-relay's REPLICATION_FACTOR)."""

    destinations: tuple[tuple[str, int, str | None], ...]
    protocol: str = "pickle"
    timeout: float = 10.0
    replication: int = 1


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
    statsd_flush: float = 10.0
    statsd_prefix: str = "stats"
    statsd_percentiles: tuple[float, ...] = (90.0,)
    max_line: int = 4096
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


# -- helpers -----------------------------------------------------------------


def _tables(problems: _Problems, doc: dict[str, Any], name: str, fix: str) -> list[tuple[str, Any]]:
    """The entries of the top-level table *name* (none if absent); *fix* is the problem when it is no table."""
    table = doc.get(name, {})
    if not isinstance(table, dict):
        problems.add(name, fix)
        return []
    return list(table.items())


def _beside(topology_path: Path, name: str) -> Path:
    """A file the topology names: absolute, or relative to the topology file's folder."""
    file = Path(name)
    return file if file.is_absolute() else topology_path.parent / file


def _binder(key: str) -> str:
    """The step that binds the address at key path *key* (``tracker.events`` -> ``tracker``)."""
    table, name, *_ = key.split(".")
    return name if table == "satellites" else table


_DURATION_HINT = 'write a duration like "250ms", "10s", "5m", "1h" or a number of seconds'


def _duration_seconds(value: Any) -> float:
    """Seconds from a duration value; ValueError says what is wrong with it."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{value!r} is not a duration longer than zero")
    return seconds


def parse_duration(value: Any, *, where: str) -> float:
    """Seconds from ``"250ms"``, ``"10s"``, ``"5m"``, ``"1h"`` or a positive number.

    *where* (a key path) starts the :class:`ConfigError` message for anything else.
    """
    try:
        return _duration_seconds(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}; {_DURATION_HINT}") from None


def _key(name: str) -> str:
    """A key path component, quoted as TOML would need it."""
    return name if _NAME.fullmatch(name) else json.dumps(name)


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f'did you mean "{close[0]}"? ' if close else ""


class _Problems:
    """Collects problems as ``<file>: <key>: <message>``."""

    def __init__(self, path: Path) -> None:
        self.file = path.name
        self.items: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.items.append(f"{self.file}: {key}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            count = len(self.items)
            summary = f"{self.file}: {count} problem{'s' if count > 1 else ''} found"
            raise ConfigError("\n".join([summary, *self.items]), problems=self.items)


_DURATION_TYPES = (str, int, float)

#: table -> key -> (accepted types, an example to show in the fix).
_SCHEMA: dict[str, dict[str, tuple[tuple[type, ...], str]]] = {
    "dsat": {
        "insecure": ((bool,), "insecure = true"),
        "keys": ((str,), 'keys = "keys"'),
        "port_base": ((int,), "port_base = 7400"),
        "prefix": ((str,), 'prefix = "dsat"'),
        "where": ((str,), 'where = "web01"'),
        "run_dir": ((str,), 'run_dir = ".dsat/run"'),
        "codec": ((str,), 'codec = "msgpack"'),
        "plugins": ((list,), 'plugins = ["mycompany.satellites"]'),
        "watchdog": (_DURATION_TYPES, 'watchdog = "60s"'),
    },
    "tracker": {
        "events": ((str,), 'events = "ipc://{run_dir}/tracker-events"'),
        "states": ((str,), 'states = "ipc://{run_dir}/tracker-states"'),
        "status": ((str,), 'status = "ipc://{run_dir}/tracker-status"'),
        "timeout": (_DURATION_TYPES, 'timeout = "30s"'),
        "metrics_every": (_DURATION_TYPES, 'metrics_every = "10s"'),
        "max_retries": ((int,), "max_retries = 3"),
        "backoff": ((int, float), "backoff = 2.0"),
        "alert_command": ((str,), 'alert_command = "/usr/local/bin/page-oncall"'),
        "breaker_window": (_DURATION_TYPES, 'breaker_window = "30s"'),
        "breaker_threshold": ((int, float), "breaker_threshold = 0.5"),
        "breaker_min_failures": ((int,), "breaker_min_failures = 5"),
        "breaker_cooldown": (_DURATION_TYPES, 'breaker_cooldown = "30s"'),
        "host": ((str,), 'host = "hub"'),
    },
    "host": {
        "address": ((str,), 'address = "10.0.0.1"'),
    },
    "orchester": {
        "listen": ((str,), 'listen = "ipc://{run_dir}/orchester"'),
        "pattern": ((str,), 'pattern = "pull"'),
        "control": ((str,), 'control = "ipc://{run_dir}/orchester-control"'),
        "max_queue": ((int,), "max_queue = 1000000"),
        "routes": ((dict,), '[orchester.routes] then "*" = ["carbon"]'),
        "host": ((str, list), 'host = "hub" or, for a Binary Star pair, host = ["hub-a", "hub-b"]'),
        "heartbeat": (_DURATION_TYPES, 'heartbeat = "1s"'),
        "missed_beats": ((int,), "missed_beats = 3"),
    },
    "carbon": {
        "destinations": ((list,), 'destinations = ["127.0.0.1:2004"]'),
        "replication": ((int,), "replication = 1"),
        "protocol": ((str,), 'protocol = "pickle"'),
        "timeout": (_DURATION_TYPES, 'timeout = "10s"'),
    },
    "ingress": {
        "plaintext": ((str,), 'plaintext = "127.0.0.1:2003"'),
        "plaintext_tls": ((str,), 'plaintext_tls = "127.0.0.1:2443"'),
        "tls_certificate": ((str,), 'tls_certificate = "tls/cert.pem"'),
        "tls_key": ((str,), 'tls_key = "tls/key.pem"'),
        "plaintext_udp": ((str,), 'plaintext_udp = "127.0.0.1:2003"'),
        "pickle": ((str,), 'pickle = "127.0.0.1:2004"'),
        "statsd": ((str,), 'statsd = "127.0.0.1:8125"'),
        "statsd_flush": (_DURATION_TYPES, 'statsd_flush = "10s"'),
        "statsd_prefix": ((str,), 'statsd_prefix = "stats"'),
        "statsd_percentiles": ((list,), "statsd_percentiles = [90, 99]"),
        "max_line": ((int,), "max_line = 4096"),
        "udp_buffer": ((int,), "udp_buffer = 8388608"),
        "max_connections": ((int,), "max_connections = 1024"),
        "idle_timeout": (_DURATION_TYPES, 'idle_timeout = "10m"'),
        "idle_grace": (_DURATION_TYPES, 'idle_grace = "5s"'),
        "workers": ((int, str), 'workers = 2 (or "auto": one per CPU)'),
    },
    "rules": {
        "rewrite": ((str,), 'rewrite = "rewrite-rules.conf"'),
        "aggregation": ((str,), 'aggregation = "aggregation-rules.conf"'),
        "allow": ((list,), 'allow = ["^servers\\."]'),
        "deny": ((list,), 'deny = ["\\.tmp\\."]'),
    },
    "spool": {
        "path": ((str,), 'path = "spool/carbon.db"'),
        "max_mb": ((int,), "max_mb = 1024"),
        "policy": ((str,), 'policy = "drop_oldest"'),
        "sync": ((str,), 'sync = "full"'),
        "replay_rate": ((int, float), "replay_rate = 50000"),
    },
    "satellite": {
        "use": ((str,), 'use = "cpu"'),
        "every": (_DURATION_TYPES, 'every = "10s"'),
        "next": ((list,), 'next = ["orchester"]'),
        "options": ((dict,), "options = { percpu = true }"),
        "host": ((str, list), 'host = "web01" or host = ["web01", "web02"] or a [groups] name'),
        "listen": ((str,), 'listen = "ipc://{run_dir}/sat-NAME"'),
        "pattern": ((str,), 'pattern = "pull"'),
        "codec": ((str,), 'codec = "msgpack"'),
        "watchdog": (_DURATION_TYPES, 'watchdog = "5m"'),
    },
}
_TYPE_NAMES = {
    bool: "true or false",
    str: "a string",
    int: "an integer",
    float: "a number",
    list: "a list",
    dict: "a table",
}


def _check_table(problems: _Problems, key: str, table: Any, schema: str) -> dict[str, Any]:
    """Unknown keys and wrong types in one table; returns the well-typed entries."""
    if not isinstance(table, dict):
        problems.add(key, f"must be a table, not {type(table).__name__}; write it as [{key}]")
        return {}
    allowed = _SCHEMA[schema]
    good: dict[str, Any] = {}
    for name, value in table.items():
        if name not in allowed:
            problems.add(
                f"{key}.{_key(name)}",
                f"unknown key; {_suggest(name, list(allowed))}valid keys are: {', '.join(allowed)}",
            )
            continue
        types, example = allowed[name]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            want = 'a duration like "10s" or a number' if types == _DURATION_TYPES else _TYPE_NAMES[types[0]]
            problems.add(
                f"{key}.{name}",
                f"must be {want}, not {type(value).__name__} {value!r:.40}; write e.g. {example}",
            )
            continue
        good[name] = value
    return good


def _address(problems: _Problems, key: str, value: str, run_dir: Path) -> str:
    address = value.replace("{run_dir}", str(run_dir))
    if address.startswith("ipc://"):
        if len(address) == len("ipc://"):
            problems.add(key, "ipc:// address has no path; write ipc:///path/to/socket")
    elif address.startswith("tcp://"):
        host, _, port = address[len("tcp://") :].rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            problems.add(key, f"{value!r} is not a tcp address; write tcp://HOST:PORT with a port from 1 to 65535")
    elif address.startswith("inproc://"):
        problems.add(key, f"{value!r}: inproc:// does not cross processes; use ipc://PATH or tcp://HOST:PORT")
    else:
        problems.add(key, f"{value!r} has no valid scheme; write ipc://PATH or tcp://HOST:PORT")
    return address


def _pattern(problems: _Problems, key: str, value: str) -> str:
    if value not in PATTERNS:
        problems.add(key, f"{value!r} is not a receiving pattern; use one of: {', '.join(PATTERNS)}")
    return value


def _codec(problems: _Problems, key: str, value: str) -> str:
    if value not in CODECS:
        problems.add(key, f'unknown codec "{value}"; {_suggest(value, list(CODECS))}valid: {", ".join(CODECS)}')
    return value


def _duration(problems: _Problems, key: str, value: Any, default: float) -> float:
    if value is None:
        return default
    try:
        return _duration_seconds(value)
    except ValueError as exc:
        problems.add(key, f"{exc}; {_DURATION_HINT}")
        return default


# -- loading -----------------------------------------------------------------


def load(
    path: str | Path,
    registry: Mapping[str, SatelliteSpec] | None = None,
    *,
    check_environment: bool = False,
    host: str | None = None,
) -> Topology:
    """Read and validate a topology file; raises ConfigError listing every problem found.

    With *host* (a topology with ``[hosts]``), the environment checks are
    those of that host: its binds, its key files.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the topology: {exc}") from None
    return loads(text, path=path, registry=registry, check_environment=check_environment, host=host)


def loads(
    text: str,
    *,
    path: Path,
    registry: Mapping[str, SatelliteSpec] | None = None,
    check_environment: bool = False,
    host: str | None = None,
) -> Topology:
    """Validate a topology given as text; *path* names it in messages and anchors a relative ``run_dir``.

    Without a *registry*, the built-in satellites are used, plus those of the
    modules listed in ``[dsat] plugins``.
    """
    path = path.absolute()
    problems = _Problems(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problems.add("(syntax)", f"{exc}; fix the TOML syntax there")
        doc = {}
    problems.raise_if_any()
    if registry is None:
        registry = _registry(
            problems, doc.get("dsat", {}).get("plugins", []) if isinstance(doc.get("dsat"), dict) else []
        )
        problems.raise_if_any()
    topo = _schema(problems, doc, path, registry)
    problems.raise_if_any()
    _graph(problems, topo)
    _rules(problems, topo)
    _tls(problems, topo)
    _workers(problems, topo)
    if host is not None and host not in topo.hosts:
        known = list(topo.hosts)
        problems.add(
            "--host",
            f'"{host}" is not in [hosts]; {_suggest(host, known)}hosts are: {", ".join(known)}'
            if known
            else f'"{host}": this topology has no [hosts] and runs on one machine; drop --host',
        )
    if check_environment and topo.multi_host and host is None:
        problems.add("--host", f"this topology spans hosts; say which one this is: one of {', '.join(topo.hosts)}")
    problems.raise_if_any()
    if check_environment:
        _environment(problems, topo, host)
        problems.raise_if_any()
    return topo


def parse_destination(text: object) -> tuple[str, int, str | None] | None:
    """``"host:port"`` or ``"host:port:instance"`` (``[v6]:port``...) as carbon-relay's DESTINATIONS; None if bad."""
    if not isinstance(text, str):
        return None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]:")
        parts = [host, *rest.split(":")] if sep else []
    else:
        parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].isdigit() or not 0 < int(parts[1]) < 65536:
        return None
    instance = parts[2] if len(parts) == 3 and parts[2] else None
    return parts[0], int(parts[1]), instance


def _registry(problems: _Problems, plugins: Any) -> Mapping[str, SatelliteSpec]:
    """The built-in satellites plus the ``SPECS`` of every module in ``[dsat] plugins``."""
    from dsat.plugins import Registry
    from dsat.satellites import REGISTRY

    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        problems.add("dsat.plugins", 'must be a list of module names, e.g. plugins = ["mycompany.satellites"]')
        return REGISTRY
    specs = list(REGISTRY.values())
    for i, module_name in enumerate(plugins):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            problems.add(f"dsat.plugins[{i}]", f"cannot import {module_name!r} ({exc}); install it or fix the name")
            continue
        extra = getattr(module, "SPECS", None)
        if not isinstance(extra, list | tuple) or not all(isinstance(spec, SatelliteSpec) for spec in extra):
            problems.add(f"dsat.plugins[{i}]", f"{module_name} has no SPECS (a list of dsat.plugins.SatelliteSpec)")
            continue
        specs.extend(extra)
    try:
        return Registry(specs)
    except ValueError as exc:
        problems.add("dsat.plugins", f"{exc}; rename the plugin's satellite")
        return REGISTRY


def _schema(problems: _Problems, doc: dict[str, Any], path: Path, registry: Mapping[str, SatelliteSpec]) -> Topology:
    """The whole document, one table at a time (in the order their problems are reported)."""
    _unknown_tables(problems, doc)
    top = _check_table(problems, "dsat", doc.get("dsat", {}), "dsat")
    run_dir = _run_dir(top, path)
    codec = _codec(problems, "dsat.codec", top.get("codec", DEFAULT_CODEC))
    prefix = _prefix(problems, top)
    hosts, groups = _hosts_tables(problems, doc)
    place = _Placer(problems, hosts, groups)
    tr = _check_table(problems, "tracker", doc.get("tracker", {}), "tracker")
    tracker = _tracker(problems, tr, run_dir)
    orc = _check_table(problems, "orchester", doc.get("orchester", {}), "orchester")
    orchester_hosts = _orchester_hosts(problems, orc, place, next(iter(hosts), ""))
    orchester_host = orchester_hosts[0] if orchester_hosts else ""
    tracker = replace(tracker, host=_tracker_host(problems, tr, place, orchester_hosts))
    orchester = _orchester(problems, orc, run_dir, orchester_hosts)
    carbon = _carbon(problems, doc.get("carbon", {}))
    ingress = _ingress(problems, doc.get("ingress", {}), path)
    rules = _rules_table(problems, doc.get("rules", {}), path)
    spool = _spool(problems, doc.get("spool", {}), path)
    satellites = _satellites(problems, doc, registry, run_dir, codec, place, orchester_host)
    topo = Topology(
        path=path,
        prefix=prefix,
        # DSAT_WHERE lets one topology file serve many hosts (the compose stack sets it).
        where=os.environ.get("DSAT_WHERE") or top.get("where") or socket.gethostname(),
        run_dir=run_dir,
        codec=codec,
        satellites=MappingProxyType(satellites),
        tracker=tracker,
        orchester=orchester,
        carbon=carbon,
        spool=spool,
        registry=registry,
        ingress=ingress,
        rules=rules,
        hosts=MappingProxyType(hosts),
        insecure=top.get("insecure", Topology.insecure),
        keys_dir=Path(os.path.normpath(_beside(path, top.get("keys", str(Topology.keys_dir))))),
        port_base=_port_base(problems, top, len(satellites)),
        watchdog=_watchdog(problems, "dsat.watchdog", top.get("watchdog"), Topology.watchdog),
    )
    return _derive_links(problems, topo, doc) if hosts and not problems.items else topo


_Conf = TypeVar("_Conf", bound="DataclassInstance")


def _build(problems: _Problems, table: str, entries: Mapping[str, Any], conf: type[_Conf], **given: Any) -> _Conf:
    """*conf* made from the checked *entries* of *table*, and *given* (what the table's builder computed).

    Every key of *table* that is a field of *conf* with a default goes in
    as written, a duration as seconds and a number as a float (by the key's
    types in ``_SCHEMA``, in the order of the fields); an absent key keeps
    the dataclass default.  So a
    new key is one field of *conf* with its default and one line of
    ``_SCHEMA``.  *given* (addresses, hosts, lists) takes precedence.
    """
    out: dict[str, Any] = {}
    for f in fields(conf):
        if f.name not in entries or f.default is MISSING:
            continue
        value, types = entries[f.name], _SCHEMA[table][f.name][0]
        if types == _DURATION_TYPES:
            out[f.name] = _duration(problems, f"{table}.{f.name}", value, f.default)
        elif float in types:
            out[f.name] = float(value)
        else:
            out[f.name] = value
    return conf(**(out | given))


def _unknown_tables(problems: _Problems, doc: Mapping[str, Any]) -> None:
    for name in doc:
        if name not in _TABLES:
            problems.add(
                _key(name),
                f"unknown table; {_suggest(name, list(_TABLES))}valid tables are: {', '.join(_TABLES)}",
            )


def _run_dir(top: Mapping[str, Any], path: Path) -> Path:
    """``[dsat] run_dir``, relative to the topology file's folder, normalised."""
    run_dir = Path(top.get("run_dir", ".dsat/run"))
    if not run_dir.is_absolute():
        run_dir = path.parent / run_dir
    return Path(os.path.normpath(run_dir))


def _prefix(problems: _Problems, top: Mapping[str, Any]) -> str:
    prefix: str = top.get("prefix", "dsat")
    if not _NAME.fullmatch(prefix):
        problems.add("dsat.prefix", f"{prefix!r} is not one path component; use letters, digits, '_' and '-'")
    return prefix


def _watchdog(problems: _Problems, key: str, value: Any, default: float) -> float:
    """A watchdog timeout (:mod:`dsat.watchdog`): a duration of at least :data:`MIN_WATCHDOG`."""
    seconds = _duration(problems, key, value, default)
    if seconds < MIN_WATCHDOG:
        problems.add(
            key,
            f"{value!r} is too short: a busy step's reactor may pause that long and be killed for it;"
            f' write at least "{MIN_WATCHDOG:g}s", e.g. watchdog = "{DEFAULT_WATCHDOG:g}s"',
        )
        return default
    return seconds


def _port_base(problems: _Problems, top: Mapping[str, Any], satellites: int) -> int:
    port_base: int = top.get("port_base", Topology.port_base)
    if not 0 < port_base <= 65535 - SATELLITE_PORTS_FROM - satellites:
        problems.add("dsat.port_base", f"{port_base}: the derived ports must stay within 1-65535; lower it")
    return port_base


class _Placer:
    """:func:`_placement` against one topology's ``[hosts]`` and ``[groups]``."""

    def __init__(self, problems: _Problems, hosts: Mapping[str, Host], groups: Mapping[str, tuple[str, ...]]) -> None:
        self.problems, self.hosts, self.groups = problems, hosts, groups

    def __call__(self, key: str, value: str | list[str] | None, default: str) -> tuple[str, ...]:
        return _placement(self.problems, key, value, self.hosts, self.groups, default)


def _tracker(problems: _Problems, tr: Mapping[str, Any], run_dir: Path) -> TrackerConf:
    """``[tracker]`` (its ``host`` aside: :func:`_tracker_host`)."""
    tracker = _build(
        problems,
        "tracker",
        tr,
        TrackerConf,
        events=_address(problems, "tracker.events", tr.get("events", "ipc://{run_dir}/tracker-events"), run_dir),
        states=_address(problems, "tracker.states", tr.get("states", "ipc://{run_dir}/tracker-states"), run_dir),
        status=_address(problems, "tracker.status", tr.get("status", "ipc://{run_dir}/tracker-status"), run_dir),
        host="",
    )
    if tracker.max_retries < 0:
        problems.add("tracker.max_retries", f"{tracker.max_retries} must be 0 or more")
    if tracker.backoff < 1:
        problems.add("tracker.backoff", f"{tracker.backoff:g} must be 1 or more (each retry waits longer)")
    if not 0 <= tracker.breaker_threshold <= 1:
        problems.add("tracker.breaker_threshold", f"{tracker.breaker_threshold:g} is a share of failures: 0 to 1")
    if tracker.breaker_min_failures < 1:
        problems.add("tracker.breaker_min_failures", f"{tracker.breaker_min_failures} must be at least 1")
    return tracker


def _orchester_hosts(problems: _Problems, orc: Mapping[str, Any], place: _Placer, default: str) -> tuple[str, ...]:
    """The host(s) of ``[orchester] host``: one, or a Binary Star pair (primary first); none without [hosts]."""
    hosts = place("orchester.host", orc.get("host"), default)
    if len(hosts) > 2:
        problems.add("orchester.host", 'names more than two hosts; a pair is a primary and a backup, e.g. ["a", "b"]')
    return hosts


def _tracker_host(problems: _Problems, tr: Mapping[str, Any], place: _Placer, orchester_hosts: tuple[str, ...]) -> str:
    """``[tracker] host``: beside the orchester unless said; with an orchester pair it may not be said."""
    if len(orchester_hosts) == 2 and "host" in tr:
        problems.add("tracker.host", "with an orchester pair a tracker runs beside each orchester; remove the key")
    (host,) = place("tracker.host", tr.get("host"), orchester_hosts[0] if orchester_hosts else "")[:1] or ("",)
    return host


def _orchester(problems: _Problems, orc: Mapping[str, Any], run_dir: Path, hosts: tuple[str, ...]) -> OrchesterConf:
    """``[orchester]`` on *hosts* (from :func:`_orchester_hosts`)."""
    missed_beats = orc.get("missed_beats", OrchesterConf.missed_beats)
    if missed_beats < 1:
        problems.add("orchester.missed_beats", f"{missed_beats} must be at least 1")
    routes = _routes(problems, orc.get("routes", {"*": ["carbon"]}))
    max_queue = orc.get("max_queue", OrchesterConf.max_queue)
    if max_queue < 1:
        problems.add("orchester.max_queue", f"{max_queue} holds nothing; set it to at least 1")
    return _build(
        problems,
        "orchester",
        orc,
        OrchesterConf,
        listen=Link(
            _address(problems, "orchester.listen", orc.get("listen", "ipc://{run_dir}/orchester"), run_dir),
            _pattern(problems, "orchester.pattern", orc.get("pattern", "pull")),
        ),
        control=_address(
            problems, "orchester.control", orc.get("control", "ipc://{run_dir}/orchester-control"), run_dir
        ),
        routes=MappingProxyType(routes),
        host=hosts[0] if hosts else "",
        hosts=hosts if len(hosts) == 2 else (),
    )


def _routes(problems: _Problems, raw: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """``[orchester.routes]``: type -> the steps it goes to."""
    if not raw:
        problems.add("orchester.routes", 'no route: the orchester would drop everything; add "*" = ["carbon"]')
    routes: dict[str, tuple[str, ...]] = {}
    for type_name, targets in raw.items():
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            problems.add(
                f"orchester.routes.{_key(type_name)}",
                'must be a non-empty list of step names; e.g. ["carbon"]',
            )
            continue
        routes[type_name] = tuple(targets)
    return routes


def _carbon(problems: _Problems, raw: Any) -> CarbonConf:
    """``[carbon]``: its destinations (carbon-relay's DESTINATIONS), replication, protocol, timeout."""
    car = _check_table(problems, "carbon", raw, "carbon")
    destinations: list[tuple[str, int, str | None]] = []
    mistyped = isinstance(raw, dict) and "destinations" in raw and "destinations" not in car
    if not car.get("destinations") and not mistyped:
        problems.add("carbon.destinations", 'at least one is needed; write destinations = ["127.0.0.1:2004"]')
    for i, dest in enumerate(car.get("destinations", [])):
        parsed = parse_destination(dest)
        if parsed is None:
            problems.add(
                f"carbon.destinations[{i}]",
                f'{dest!r} is not "host:port" or "host:port:instance"; write e.g. "127.0.0.1:2004" (port 1-65535)',
            )
            continue
        destinations.append(parsed)
    ring_nodes = [(host, instance) for host, _, instance in destinations]
    if len(set(ring_nodes)) != len(ring_nodes):
        problems.add(
            "carbon.destinations",
            "two destinations share a host and instance, so carbon's consistent-hash ring cannot tell them apart;"
            ' name each, e.g. "127.0.0.1:2004:a" and "127.0.0.1:2104:b"',
        )
    replication = car.get("replication", CarbonConf.replication)
    if not 1 <= replication <= max(1, len(destinations)):
        problems.add("carbon.replication", f"{replication} must be from 1 to the number of destinations")
    protocol = car.get("protocol", CarbonConf.protocol)
    if protocol not in PROTOCOLS:
        problems.add("carbon.protocol", f'unknown protocol "{protocol}"; use one of: {", ".join(PROTOCOLS)}')
    return _build(problems, "carbon", car, CarbonConf, destinations=tuple(destinations))


#: The ``[ingress]`` keys that open a listener, each ``"interface:port"``.
_LISTENERS = ("plaintext", "plaintext_tls", "plaintext_udp", "pickle", "statsd")


def _ingress(problems: _Problems, raw: Any, path: Path) -> IngressConf:
    """``[ingress]``: the Graphite and statsd listeners, TLS files (beside the topology), statsd and line options."""
    ing = _check_table(problems, "ingress", raw, "ingress")
    listeners: dict[str, tuple[str, int] | None] = {}
    for key in _LISTENERS:
        listeners[key] = None
        if ing.get(key):
            host, _, port = ing[key].rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                problems.add(f"ingress.{key}", f'{ing[key]!r} is not "interface:port"; write e.g. "127.0.0.1:2003"')
            else:
                listeners[key] = (host.strip("[]"), int(port))
    percentiles = ing.get("statsd_percentiles", IngressConf.statsd_percentiles)
    from dsat.statsd import valid_percentile  # here: dsat.statsd imports this module

    if not all(valid_percentile(p) for p in percentiles):
        problems.add("ingress.statsd_percentiles", f"{percentiles!r}: each must be in [-100, 0) or (0, 100]")
        percentiles = IngressConf.statsd_percentiles
    tls_files: dict[str, Path | None] = {}
    for key in ("tls_certificate", "tls_key"):
        tls_files[key] = _beside(path, ing[key]) if ing.get(key) else None
        if not ing.get(key) and listeners["plaintext_tls"]:
            problems.add(f"ingress.{key}", f'plaintext_tls needs it: the PEM file, e.g. {key} = "tls/{key[4:]}.pem"')
    if ing.get("max_connections", 1) < 1:
        problems.add("ingress.max_connections", f"{ing['max_connections']} holds nothing; set it to at least 1")
    conf = _build(
        problems,
        "ingress",
        ing,
        IngressConf,
        **listeners,
        **tls_files,
        statsd_percentiles=tuple(float(p) for p in percentiles),
        workers=_worker_count(problems, ing.get("workers", IngressConf.workers)),
    )
    for key in ("idle_timeout", "idle_grace"):
        if not getattr(conf, key) > 0:
            problems.add(f"ingress.{key}", f'{getattr(conf, key):g}s must be more than 0, e.g. {key} = "10m"')
    if conf.idle_grace > conf.idle_timeout:
        problems.add("ingress.idle_grace", f"{conf.idle_grace:g}s is longer than idle_timeout ({conf.idle_timeout:g}s)")
    return conf


def _rules_table(problems: _Problems, raw: Any, path: Path) -> RulesConf:
    """``[rules]``: the rule files (beside the topology) and the allow/deny regular expressions."""
    rul = _check_table(problems, "rules", raw, "rules")
    rule_files: dict[str, Path | None] = {}
    for key in ("rewrite", "aggregation"):
        rule_files[key] = _beside(path, rul[key]) if rul.get(key) else None
    patterns: dict[str, tuple[str, ...]] = {}
    for key in ("allow", "deny"):
        values = rul.get(key, [])
        if not all(isinstance(v, str) for v in values):
            problems.add(f"rules.{key}", "must be a list of regular expressions (strings)")
            values = []
        for j, value in enumerate(values):
            try:
                re.compile(value)
            except re.error as exc:
                problems.add(f"rules.{key}[{j}]", f"{value!r} is not a regular expression: {exc}")
        patterns[key] = tuple(values)
    return RulesConf(rule_files["rewrite"], rule_files["aggregation"], patterns["allow"], patterns["deny"])


_MB = 1024 * 1024


def _spool(problems: _Problems, raw: Any, path: Path) -> SpoolConf:
    """``[spool]``: its file (beside the topology; ``path = ""`` for none), size bound, policy, sync, replay rate."""
    sp = _check_table(problems, "spool", raw, "spool")
    written = sp.get("path", "spool/carbon.db")
    spool_path = Path(os.path.normpath(_beside(path, written))) if written else None
    max_mb = sp.get("max_mb", SpoolConf.max_bytes // _MB)
    if max_mb < 1:
        problems.add("spool.max_mb", f"{max_mb} must be at least 1 (megabytes)")
    for key, valid in (("policy", POLICIES), ("sync", tuple(SYNC_MODES))):
        if key in sp and sp[key] not in valid:
            problems.add(f"spool.{key}", f'unknown {key} "{sp[key]}"; use one of: {", ".join(valid)}')
    conf = _build(problems, "spool", sp, SpoolConf, path=spool_path, max_bytes=max_mb * _MB)
    if not conf.replay_rate > 0:
        problems.add("spool.replay_rate", f"{conf.replay_rate:g} must be more than 0 (datapoints a second)")
    return conf


def _satellites(
    problems: _Problems,
    doc: dict[str, Any],
    registry: Mapping[str, SatelliteSpec],
    run_dir: Path,
    codec: str,
    place: _Placer,
    default_host: str,
) -> dict[str, Step]:
    """``[satellites.NAME]``, each a :class:`Step` (those with problems left out)."""
    satellites: dict[str, Step] = {}
    for name, raw in _tables(problems, doc, "satellites", "must be tables, one per satellite; write [satellites.NAME]"):
        step = _satellite(problems, name, raw, registry, run_dir, codec, place, default_host)
        if step is not None:
            satellites[name] = step
    return satellites


def _hosts_tables(problems: _Problems, doc: dict[str, Any]) -> tuple[dict[str, Host], dict[str, tuple[str, ...]]]:
    """``[hosts.NAME]`` (each with its address) and ``[groups]`` (a name for a list of hosts)."""
    hosts: dict[str, Host] = {}
    for name, raw in _tables(
        problems, doc, "hosts", 'must be tables, one per host; write [hosts.NAME] address = "10.0.0.1"'
    ):
        key = f"hosts.{_key(name)}"
        if not _NAME.fullmatch(name):
            problems.add(key, "a host name holds only letters, digits, '_' and '-'; rename the host")
            continue
        entry = _check_table(problems, key, raw, "host")
        address = entry.get("address", "").strip("[]")
        if not address or any(c in address for c in "/ \t@"):
            if isinstance(raw, dict) and ("address" in entry or "address" not in raw):
                problems.add(f"{key}.address", 'needed: the address other hosts reach it at, e.g. "10.0.0.1"')
            continue
        hosts[name] = Host(name, address)
    groups: dict[str, tuple[str, ...]] = {}
    fix = 'must be a table of host lists; write [groups] then web = ["web01", "web02"]'
    for name, members in _tables(problems, doc, "groups", fix):
        key = f"groups.{_key(name)}"
        if name in hosts:
            problems.add(key, f'"{name}" is already a host name; give the group another name')
        elif not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            problems.add(key, 'must be a non-empty list of host names, e.g. ["web01", "web02"]')
        elif unknown := [m for m in members if m not in hosts]:
            problems.add(key, f"unknown host {unknown[0]!r}; hosts are: {', '.join(hosts) or '(none)'}")
        else:
            groups[name] = tuple(dict.fromkeys(members))
    return hosts, groups


def _placement(
    problems: _Problems,
    key: str,
    value: str | list[str] | None,
    hosts: Mapping[str, Host],
    groups: Mapping[str, tuple[str, ...]],
    default: str,
) -> tuple[str, ...]:
    """The hosts a ``host`` value names (a host, a group or a list of either); *default* when absent."""
    if value is None:
        return (default,) if hosts else ()
    if not hosts:
        problems.add(key, '[hosts] names no host; add [hosts.NAME] address = "10.0.0.1", or remove the key')
        return ()
    names = [value] if isinstance(value, str) else value
    placed: list[str] = []
    for name in names:
        if not isinstance(name, str):
            problems.add(key, f"{name!r} is not a host name")
        elif name in hosts:
            placed.append(name)
        elif name in groups:
            placed.extend(groups[name])
        else:
            known = [*hosts, *groups]
            problems.add(key, f'unknown host "{name}"; {_suggest(name, known)}hosts and groups are: {", ".join(known)}')
    if not placed and not problems.items:
        problems.add(key, "names no host; name at least one")
    return tuple(dict.fromkeys(placed))


def _tcp(host: Host, port: int) -> str:
    return f"tcp://[{host.address}]:{port}" if ":" in host.address else f"tcp://{host.address}:{port}"


def _derive_links(problems: _Problems, topo: Topology, doc: dict[str, Any]) -> Topology:
    """Give every link whose ends are on different hosts a tcp address on the binding host.

    Such a link's address is derived (``[dsat] port_base`` plus a fixed offset);
    one written by hand is refused: ipc does not cross hosts, and plain tcp
    needs ``[dsat] insecure = true``.  A link whose peers all share its host
    keeps its ipc address, as in a one-host topology.
    """
    sats = topo.satellites
    pair = topo.orchester.hosts
    servers = set(pair) or {topo.orchester.host}
    every_step = {h for name in ("tracker", *sats) for h in topo.hosts_of(name)} | servers
    subscribers = {h for name in sats for h in topo.hosts_of(name)} | servers
    senders_to: dict[str, set[str]] = {"orchester": {topo.tracker.host}}
    for step in sats.values():
        for target in step.next:
            senders_to.setdefault(target, set()).update(step.hosts)
    receivers = sorted(name for name, step in sats.items() if step.listen is not None)
    # (key path, binding host, peer hosts, port offset, how the table wrote it)
    server_links = [
        ("tracker.events", topo.tracker.host, every_step, TCP_PORTS["tracker.events"], ("tracker", "events")),
        ("tracker.states", topo.tracker.host, subscribers, TCP_PORTS["tracker.states"], ("tracker", "states")),
        (
            "orchester.listen",
            topo.orchester.host,
            senders_to["orchester"],
            TCP_PORTS["orchester.listen"],
            ("orchester", "listen"),
        ),
    ]
    links = [
        *([] if pair else server_links),
        *(
            (
                f"satellites.{name}.listen",
                sats[name].hosts[0],
                {*servers, *senders_to.get(name, ())},
                SATELLITE_PORTS_FROM + i,
                ("satellites", name, "listen"),
            )
            for i, name in enumerate(receivers)
        ),
    ]
    addresses: dict[str, str] = {}
    binders: dict[str, str] = {}
    for key, binder, peers, offset, raw_key in links:
        written = _lookup(doc, raw_key)
        if peers <= {binder}:
            continue
        if written is None:
            addresses[key] = _tcp(topo.hosts[binder], topo.port_base + offset)
        elif not str(written).startswith("tcp://"):
            others = ", ".join(sorted(peers - {binder}))
            problems.add(key, f"{written!r} cannot be reached from {others}; remove it and DSAT derives a tcp address")
            continue
        elif not topo.insecure:
            problems.add(
                key,
                f"{written} is plain tcp written by hand; in a topology with [hosts] remove it (DSAT derives"
                " the tcp links between hosts and secures them with CURVE), or set [dsat] insecure = true",
            )
            continue
        else:
            addresses[key] = _address(problems, key, str(written), topo.run_dir)
        binders[addresses[key]] = binder
    if not pair:
        return _with_addresses(topo, addresses, binders)
    for key in SERVER_LINKS[:3]:  # orchester.heartbeat is never written: [orchester] heartbeat is the interval
        if _lookup(doc, tuple(key.split("."))) is not None:
            problems.add(key, "with an orchester pair DSAT derives each server's tcp address; remove the key")
    pair_servers = []
    for host, role in zip(pair, ROLES, strict=True):
        own = {key: _tcp(topo.hosts[host], topo.port_base + TCP_PORTS[key]) for key in SERVER_LINKS}
        binders.update((address, host) for address in own.values())
        pair_servers.append(
            Server(
                host,
                role,
                own["tracker.events"],
                own["tracker.states"],
                own["orchester.listen"],
                own["orchester.heartbeat"],
            )
        )
        if role == "primary":
            addresses.update(own)
    return replace(_with_addresses(topo, addresses, binders), servers=tuple(pair_servers))


def _lookup(doc: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    value: Any = doc
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _with_addresses(topo: Topology, addresses: Mapping[str, str], binders: dict[str, str]) -> Topology:
    """*topo* with the bound addresses of *addresses* (key path -> address) replaced."""
    tracker = replace(
        topo.tracker,
        events=addresses.get("tracker.events", topo.tracker.events),
        states=addresses.get("tracker.states", topo.tracker.states),
    )
    orchester = replace(
        topo.orchester,
        listen=replace(topo.orchester.listen, address=addresses.get("orchester.listen", topo.orchester.listen.address)),
    )
    satellites = {}
    for name, step in topo.satellites.items():
        address = addresses.get(f"satellites.{name}.listen")
        if address is not None and step.listen is not None:
            step = replace(step, listen=replace(step.listen, address=address))
        satellites[name] = step
    return replace(
        topo,
        tracker=tracker,
        orchester=orchester,
        satellites=MappingProxyType(satellites),
        tcp_binders=MappingProxyType(binders),
    )


def _satellite(
    problems: _Problems,
    name: str,
    raw: Any,
    registry: Mapping[str, SatelliteSpec],
    run_dir: Path,
    default_codec: str,
    placed: _Placer,
    default_host: str,
) -> Step | None:
    key = f"satellites.{_key(name)}"
    if name in RESERVED:
        problems.add(key, f'"{name}" is a reserved step name ({", ".join(RESERVED)}); rename the satellite')
        return None
    if not _NAME.fullmatch(name):
        problems.add(key, "a step name holds only letters, digits, '_' and '-'; rename the satellite")
        return None
    sat = _check_table(problems, key, raw, "satellite")
    use = sat.get("use")
    if use is None:
        if isinstance(raw, dict) and "use" not in raw:
            problems.add(f"{key}.use", f'missing; say which satellite runs here, e.g. use = "{name}"')
        return None
    spec = registry.get(use)
    if spec is None:
        valid = sorted(registry)
        problems.add(f"{key}.use", f'unknown satellite "{use}"; {_suggest(use, valid)}valid: {", ".join(valid)}')
        return None
    every = None
    if spec.kind == "collector":
        if "every" not in raw:
            problems.add(f"{key}.every", f'missing; collector "{use}" needs a schedule, e.g. every = "10s"')
        elif "every" in sat:
            every = _duration(problems, f"{key}.every", sat["every"], 10.0)
    elif "every" in sat:
        problems.add(f"{key}.every", f'a {spec.kind} runs on each batch it receives; remove "every"')
    watchdog = None
    if "watchdog" in sat:
        watchdog = _watchdog(problems, f"{key}.watchdog", sat["watchdog"], DEFAULT_WATCHDOG)
        if every is not None and watchdog < 2 * every:
            problems.add(
                f"{key}.watchdog",
                f"{sat['watchdog']!r} is shorter than twice every ({every:g}s): a run may take up to its"
                f' interval and its process would be killed for it; write watchdog = "{2 * every:g}s" or more',
            )
    nexts: tuple[str, ...] = ()
    if spec.kind == "sink":
        if "next" in sat:
            problems.add(f"{key}.next", 'a sink sends nothing on; remove "next"')
    else:
        raw_next = sat.get("next", ["orchester"])
        if not raw_next or not all(isinstance(n, str) for n in raw_next):
            problems.add(f"{key}.next", 'must be a non-empty list of step names; e.g. next = ["orchester"]')
        else:
            nexts = tuple(raw_next)
    listen = None
    if spec.kind == "collector":
        for k in ("listen", "pattern"):
            if k in sat:
                problems.add(f"{key}.{k}", f'a collector receives nothing; remove "{k}"')
    else:
        listen = Link(
            _address(problems, f"{key}.listen", sat.get("listen", f"ipc://{{run_dir}}/sat-{name}"), run_dir),
            _pattern(problems, f"{key}.pattern", sat.get("pattern", "pull")),
        )
    hosts = placed(f"{key}.host", sat.get("host"), default_host)
    if spec.kind != "collector" and len(hosts) > 1:
        problems.add(f"{key}.host", f"a {spec.kind} runs on one host (only collectors run on many); name one")
    return Step(
        name=name,
        use=use,
        kind=spec.kind,
        type=spec.type,
        every=every,
        next=nexts,
        options=MappingProxyType(dict(sat.get("options", {}))),
        hosts=hosts,
        listen=listen,
        codec=_codec(problems, f"{key}.codec", sat.get("codec", default_codec)),
        watchdog=watchdog,
    )


def _graph(problems: _Problems, topo: Topology) -> None:
    sats = topo.satellites
    names = [*sats, "orchester"]
    receivers = [n for n, s in sats.items() if s.kind != "collector"]
    edges: dict[str, list[str]] = {name: [] for name in names}
    for name, step in sats.items():
        for i, target in enumerate(step.next):
            key = f"satellites.{name}.next[{i}]"
            if target == "orchester" or target in receivers:
                edges[name].append(target)
            elif target in sats:
                problems.add(
                    key,
                    f'"{target}" is a collector and receives nothing; '
                    f"send to one of: {', '.join([*receivers, 'orchester'])}",
                )
            else:
                problems.add(key, f'unknown step "{target}"; {_suggest(target, names)}Steps are: {", ".join(names)}')
    for type_name, targets in topo.orchester.routes.items():
        for i, target in enumerate(targets):
            if target == "carbon":
                continue
            if target in receivers:
                edges["orchester"].append(target)
            else:
                routable = [*receivers, "carbon"]
                problems.add(
                    f"orchester.routes.{_key(type_name)}[{i}]",
                    f'"{target}" is not a transform, a sink or carbon; {_suggest(target, routable)}'
                    f"use one of: {', '.join(routable)}",
                )
    cycle = _find_cycle(edges)
    if cycle:
        problems.add(
            "orchester.routes" if cycle[0] == "orchester" else f"satellites.{cycle[0]}.next",
            f"cycle {' -> '.join(cycle)}: a batch would loop forever; break the cycle",
        )
    ingress = topo.ingress
    listens = any((ingress.plaintext, ingress.plaintext_tls, ingress.plaintext_udp, ingress.pickle, ingress.statsd))
    if not listens and not any(s.kind == "collector" for s in sats.values()):
        problems.add(
            "satellites",
            'no collector and no [ingress] listener, nothing produces data; add one, e.g. [satellites.cpu] use = "cpu"',
        )
    if sats and not any("orchester" in s.next or s.kind == "sink" for s in sats.values()):
        problems.add("satellites", 'no sink, nothing ends a batch; send a step to "orchester" or add a sink satellite')
    bound: dict[str, str] = {}
    for key, address in topo.binds():
        if address in bound:
            problems.add(key, f"{address} is already bound by {bound[address]}; give each a different address")
        else:
            bound[address] = key
        path = address[len("ipc://") :]
        if address.startswith("ipc://") and len(path.encode()) > MAX_IPC_PATH:
            problems.add(
                key,
                f"the unix socket path {path!r} is {len(path.encode())} bytes, over the OS limit of"
                f" {MAX_IPC_PATH}; use a shorter [dsat] run_dir or address",
            )


def _find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """The first cycle found by depth-first search, as a path ending where it starts."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in edges[node]:
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in edges:
        if node not in state and (found := visit(node)):
            return found
    return None


def _rules(problems: _Problems, topo: Topology) -> None:
    """The rule files must exist and parse (every problem with its file and line)."""
    from dsat.rules import load_rules

    conf = topo.rules
    for key, file in (("rules.rewrite", conf.rewrite), ("rules.aggregation", conf.aggregation)):
        if file is not None and not file.is_file():
            problems.add(key, f"{file} is not a readable file; write the rules there or fix the path")
            return
    if conf.rewrite or conf.aggregation:
        try:
            load_rules(conf.rewrite, conf.aggregation)
        except ConfigError as exc:
            for problem in exc.problems:
                problems.add("rules", f"{problem}; fix the rule file")


def _tls(problems: _Problems, topo: Topology) -> None:
    """The TLS listener's certificate and key must load, and belong together."""
    conf = topo.ingress
    if conf.plaintext_tls and conf.tls_certificate and conf.tls_key:
        from dsat.tls import server_options

        try:
            server_options(conf.tls_certificate, conf.tls_key)
        except ConfigError as exc:
            problems.add("ingress.plaintext_tls", str(exc))


def _worker_count(problems: _Problems, value: int | str) -> int:
    """``[ingress] workers``: a positive number of processes, or "auto" (one per CPU)."""
    if value == "auto":
        return os.cpu_count() or 1
    if isinstance(value, str) or value < 1:
        problems.add("ingress.workers", f'{value!r} must be a number of processes, at least 1, or "auto" (one per CPU)')
        return 1
    return value


def _workers(problems: _Problems, topo: Topology) -> None:
    """More than one ingress worker: not with a pair, nor with aggregation rules (docs/performance.rst)."""
    if topo.ingress.workers == 1:
        return
    if topo.orchester.hosts:
        problems.add(
            "ingress.workers",
            f"{topo.ingress.workers}: an orchester pair has one ingress process per server; set workers = 1",
        )
    if topo.rules.aggregation is not None:
        problems.add(
            "ingress.workers",
            f"{topo.ingress.workers}: with aggregation rules each worker would write partial sums under the same"
            " names; set workers = 1 or drop rules.aggregation",
        )


def _environment(problems: _Problems, topo: Topology, host: str | None) -> None:
    folders = [("dsat.run_dir", topo.run_dir)]
    if topo.spool.path is not None:
        folders.append(("spool.path", topo.spool.path.parent))
    for key, folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            problems.add(key, f"{folder} is not a writable folder ({exc.strerror}); pick another")
    if host is not None:
        from dsat.keys import problems_for

        for problem in problems_for(topo, host):
            problems.add("dsat.keys", problem)
    for key, address in topo.binds() if host is None else topo.binds_on(host):
        if not address.startswith("tcp://"):
            continue
        host, _, port = address[len("tcp://") :].rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # ZeroMQ binds with SO_REUSEADDR: only a live socket on the port makes its bind fail.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("" if host == "*" else host, int(port)))
            except OSError as exc:
                problems.add(key, f"cannot bind {address} ({exc.strerror}); stop what uses it or pick another port")
    if host is not None and "orchester" not in topo.steps_on(host):
        return
    ingress = topo.ingress
    for key, listener, kind in (
        ("ingress.plaintext", ingress.plaintext, socket.SOCK_STREAM),
        ("ingress.plaintext_tls", ingress.plaintext_tls, socket.SOCK_STREAM),
        ("ingress.plaintext_udp", ingress.plaintext_udp, socket.SOCK_DGRAM),
        ("ingress.pickle", ingress.pickle, socket.SOCK_STREAM),
        ("ingress.statsd", ingress.statsd, socket.SOCK_DGRAM),
    ):
        if listener is None:
            continue
        interface, number = listener
        with socket.socket(socket.AF_INET6 if ":" in interface else socket.AF_INET, kind) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted listens
            try:
                sock.bind((interface, number))
            except OSError as exc:
                problems.add(
                    key, f"cannot listen on {interface}:{number} ({exc.strerror}); stop what uses it or pick another"
                )

"""The topology: one TOML file describing every step, loaded into frozen dataclasses.

Validation runs before anything starts, in three stages; each reports every
problem it finds, and a stage that found problems stops the next: the schema
(keys, types, durations, addresses, known satellites), the graph (every
``next`` and route resolves, no cycles, a source and a sink, no two binds on
one address, unix socket paths short enough), and, when asked, this machine
(``run_dir`` writable, tcp ports free).  A problem reads
``<file>: <key path>: <what is wrong>; <how to fix>``.  The file format is
documented in ``docs/topology.rst``.
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
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from dsat.envelope import CODECS
from dsat.errors import ConfigError
from dsat.plugins import SatelliteSpec

#: Receiving pattern -> the pattern its senders use.
PATTERNS = {"pull": "push", "sub": "pub", "pair": "pair", "rep": "req"}
#: Step names a satellite cannot take.
RESERVED = ("orchester", "carbon", "tracker", "self")
PROTOCOLS = ("pickle", "plaintext")
#: sun_path is 108 bytes including the terminating NUL.
MAX_IPC_PATH = 107

_TABLES = ("dsat", "tracker", "orchester", "carbon", "ingress", "rules", "spool", "satellites")
SPOOL_POLICIES = ("drop_oldest", "block")
SPOOL_SYNC = ("full", "normal")
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
    host: str
    listen: Link | None
    codec: str


@dataclass(frozen=True)
class TrackerConf:
    """The tracker's three bound addresses, batch deadline, retries, alerts, circuit breakers (seconds)."""

    events: str
    states: str
    status: str
    timeout: float
    metrics_every: float
    max_retries: int = 3
    backoff: float = 2.0
    alert_command: str = ""
    breaker_window: float = 30.0
    breaker_threshold: float = 0.5
    breaker_min_failures: int = 5
    breaker_cooldown: float = 30.0


@dataclass(frozen=True)
class OrchesterConf:
    """The orchester's input link, control channel, routes (type -> steps) and carbon queue bound."""

    listen: Link
    control: str
    routes: Mapping[str, tuple[str, ...]]
    max_queue: int


@dataclass(frozen=True)
class CarbonConf:
    """Where the carbon egress sends: (host, port, instance) destinations, protocol, connect timeout,
    and how many destinations hold each metric (``replication``, as carbon-relay's REPLICATION_FACTOR)."""

    destinations: tuple[tuple[str, int, str | None], ...]
    protocol: str
    timeout: float
    replication: int = 1


@dataclass(frozen=True)
class IngressConf:
    """Where the orchester listens for Graphite and statsd clients: ``(interface, port)`` or None (off)."""

    plaintext: tuple[str, int] | None = None
    plaintext_udp: tuple[str, int] | None = None
    pickle: tuple[str, int] | None = None
    statsd: tuple[str, int] | None = None
    statsd_flush: float = 10.0
    statsd_prefix: str = "stats"
    statsd_percentiles: tuple[float, ...] = (90.0,)
    max_line: int = 4096
    #: Bytes of kernel receive buffer asked for each UDP listener (dsat.udp).
    udp_buffer: int = 8 * 1024 * 1024


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
    max_bytes: int
    policy: str
    sync: str
    replay_rate: float


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
        "prefix": ((str,), 'prefix = "dsat"'),
        "where": ((str,), 'where = "web01"'),
        "run_dir": ((str,), 'run_dir = ".dsat/run"'),
        "codec": ((str,), 'codec = "msgpack"'),
        "plugins": ((list,), 'plugins = ["mycompany.satellites"]'),
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
    },
    "orchester": {
        "listen": ((str,), 'listen = "ipc://{run_dir}/orchester"'),
        "pattern": ((str,), 'pattern = "pull"'),
        "control": ((str,), 'control = "ipc://{run_dir}/orchester-control"'),
        "max_queue": ((int,), "max_queue = 1000000"),
        "routes": ((dict,), '[orchester.routes] then "*" = ["carbon"]'),
    },
    "carbon": {
        "destinations": ((list,), 'destinations = ["127.0.0.1:2004"]'),
        "replication": ((int,), "replication = 1"),
        "protocol": ((str,), 'protocol = "pickle"'),
        "timeout": (_DURATION_TYPES, 'timeout = "10s"'),
    },
    "ingress": {
        "plaintext": ((str,), 'plaintext = "127.0.0.1:2003"'),
        "plaintext_udp": ((str,), 'plaintext_udp = "127.0.0.1:2003"'),
        "pickle": ((str,), 'pickle = "127.0.0.1:2004"'),
        "statsd": ((str,), 'statsd = "127.0.0.1:8125"'),
        "statsd_flush": (_DURATION_TYPES, 'statsd_flush = "10s"'),
        "statsd_prefix": ((str,), 'statsd_prefix = "stats"'),
        "statsd_percentiles": ((list,), "statsd_percentiles = [90, 99]"),
        "max_line": ((int,), "max_line = 4096"),
        "udp_buffer": ((int,), "udp_buffer = 8388608"),
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
        "host": ((str,), 'host = "localhost"'),
        "listen": ((str,), 'listen = "ipc://{run_dir}/sat-NAME"'),
        "pattern": ((str,), 'pattern = "pull"'),
        "codec": ((str,), 'codec = "msgpack"'),
    },
}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "a table"}


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
        if isinstance(value, bool) or not isinstance(value, types):
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
    path: str | Path, registry: Mapping[str, SatelliteSpec] | None = None, *, check_environment: bool = False
) -> Topology:
    """Read and validate a topology file; raises ConfigError listing every problem found."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the topology: {exc}") from None
    return loads(text, path=path, registry=registry, check_environment=check_environment)


def loads(
    text: str,
    *,
    path: Path,
    registry: Mapping[str, SatelliteSpec] | None = None,
    check_environment: bool = False,
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
    problems.raise_if_any()
    if check_environment:
        _environment(problems, topo)
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
    from satellites import REGISTRY

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
    for name in doc:
        if name not in _TABLES:
            problems.add(
                _key(name),
                f"unknown table; {_suggest(name, list(_TABLES))}valid tables are: {', '.join(_TABLES)}",
            )
    top = _check_table(problems, "dsat", doc.get("dsat", {}), "dsat")
    run_dir = Path(top.get("run_dir", ".dsat/run"))
    if not run_dir.is_absolute():
        run_dir = path.parent / run_dir
    run_dir = Path(os.path.normpath(run_dir))
    codec = _codec(problems, "dsat.codec", top.get("codec", "msgpack"))
    prefix = top.get("prefix", "dsat")
    if not _NAME.fullmatch(prefix):
        problems.add("dsat.prefix", f"{prefix!r} is not one path component; use letters, digits, '_' and '-'")

    def addr(key: str, value: str) -> str:
        return _address(problems, key, value, run_dir)

    tr = _check_table(problems, "tracker", doc.get("tracker", {}), "tracker")
    tracker = TrackerConf(
        events=addr("tracker.events", tr.get("events", "ipc://{run_dir}/tracker-events")),
        states=addr("tracker.states", tr.get("states", "ipc://{run_dir}/tracker-states")),
        status=addr("tracker.status", tr.get("status", "ipc://{run_dir}/tracker-status")),
        timeout=_duration(problems, "tracker.timeout", tr.get("timeout"), 30.0),
        metrics_every=_duration(problems, "tracker.metrics_every", tr.get("metrics_every"), 10.0),
        max_retries=tr.get("max_retries", 3),
        backoff=float(tr.get("backoff", 2.0)),
        alert_command=tr.get("alert_command", ""),
        breaker_window=_duration(problems, "tracker.breaker_window", tr.get("breaker_window"), 30.0),
        breaker_threshold=float(tr.get("breaker_threshold", 0.5)),
        breaker_min_failures=tr.get("breaker_min_failures", 5),
        breaker_cooldown=_duration(problems, "tracker.breaker_cooldown", tr.get("breaker_cooldown"), 30.0),
    )
    if tracker.max_retries < 0:
        problems.add("tracker.max_retries", f"{tracker.max_retries} must be 0 or more")
    if tracker.backoff < 1:
        problems.add("tracker.backoff", f"{tracker.backoff:g} must be 1 or more (each retry waits longer)")
    if not 0 <= tracker.breaker_threshold <= 1:
        problems.add("tracker.breaker_threshold", f"{tracker.breaker_threshold:g} is a share of failures: 0 to 1")
    if tracker.breaker_min_failures < 1:
        problems.add("tracker.breaker_min_failures", f"{tracker.breaker_min_failures} must be at least 1")

    orc = _check_table(problems, "orchester", doc.get("orchester", {}), "orchester")
    raw_routes = orc.get("routes", {"*": ["carbon"]})
    if not raw_routes:
        problems.add("orchester.routes", 'no route: the orchester would drop everything; add "*" = ["carbon"]')
    routes: dict[str, tuple[str, ...]] = {}
    for type_name, targets in raw_routes.items():
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            problems.add(
                f"orchester.routes.{_key(type_name)}",
                'must be a non-empty list of step names; e.g. ["carbon"]',
            )
            continue
        routes[type_name] = tuple(targets)
    max_queue = orc.get("max_queue", 1_000_000)
    if max_queue < 1:
        problems.add("orchester.max_queue", f"{max_queue} holds nothing; set it to at least 1")
    orchester = OrchesterConf(
        listen=Link(
            addr("orchester.listen", orc.get("listen", "ipc://{run_dir}/orchester")),
            _pattern(problems, "orchester.pattern", orc.get("pattern", "pull")),
        ),
        control=addr("orchester.control", orc.get("control", "ipc://{run_dir}/orchester-control")),
        routes=MappingProxyType(routes),
        max_queue=max_queue,
    )

    raw_carbon = doc.get("carbon", {})
    car = _check_table(problems, "carbon", raw_carbon, "carbon")
    destinations: list[tuple[str, int, str | None]] = []
    mistyped = isinstance(raw_carbon, dict) and "destinations" in raw_carbon and "destinations" not in car
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
    replication = car.get("replication", 1)
    if not 1 <= replication <= max(1, len(destinations)):
        problems.add("carbon.replication", f"{replication} must be from 1 to the number of destinations")
    protocol = car.get("protocol", "pickle")
    if protocol not in PROTOCOLS:
        problems.add("carbon.protocol", f'unknown protocol "{protocol}"; use one of: {", ".join(PROTOCOLS)}')
    carbon = CarbonConf(
        tuple(destinations), protocol, _duration(problems, "carbon.timeout", car.get("timeout"), 10.0), replication
    )

    ing = _check_table(problems, "ingress", doc.get("ingress", {}), "ingress")
    listeners: dict[str, tuple[str, int] | None] = {}
    for key in ("plaintext", "plaintext_udp", "pickle", "statsd"):
        listeners[key] = None
        if ing.get(key):
            host, _, port = ing[key].rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                problems.add(f"ingress.{key}", f'{ing[key]!r} is not "interface:port"; write e.g. "127.0.0.1:2003"')
            else:
                listeners[key] = (host.strip("[]"), int(port))
    percentiles = ing.get("statsd_percentiles", [90])
    if not all(isinstance(p, int | float) and not isinstance(p, bool) and 0 < abs(p) < 100 for p in percentiles):
        problems.add("ingress.statsd_percentiles", f"{percentiles!r}: each must be a number between 0 and 100")
        percentiles = [90]
    ingress = IngressConf(
        **listeners,
        statsd_flush=_duration(problems, "ingress.statsd_flush", ing.get("statsd_flush"), 10.0),
        statsd_prefix=ing.get("statsd_prefix", "stats"),
        statsd_percentiles=tuple(float(p) for p in percentiles),
        max_line=ing.get("max_line", 4096),
        udp_buffer=ing.get("udp_buffer", IngressConf.udp_buffer),
    )

    rul = _check_table(problems, "rules", doc.get("rules", {}), "rules")
    rule_files: dict[str, Path | None] = {}
    for key in ("rewrite", "aggregation"):
        rule_files[key] = None
        if rul.get(key):
            file = Path(rul[key])
            rule_files[key] = file if file.is_absolute() else path.parent / file
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
    rules = RulesConf(rule_files["rewrite"], rule_files["aggregation"], patterns["allow"], patterns["deny"])

    sp = _check_table(problems, "spool", doc.get("spool", {}), "spool")
    spool_path: Path | None = None
    if sp.get("path", "spool/carbon.db"):
        spool_path = Path(sp.get("path", "spool/carbon.db"))
        spool_path = Path(os.path.normpath(spool_path if spool_path.is_absolute() else path.parent / spool_path))
    max_mb = sp.get("max_mb", 1024)
    if max_mb < 1:
        problems.add("spool.max_mb", f"{max_mb} must be at least 1 (megabytes)")
    for key, valid in (("policy", SPOOL_POLICIES), ("sync", SPOOL_SYNC)):
        if sp.get(key, valid[0]) not in valid:
            problems.add(f"spool.{key}", f'unknown {key} "{sp[key]}"; use one of: {", ".join(valid)}')
    replay_rate = float(sp.get("replay_rate", 50_000))
    if not replay_rate > 0:
        problems.add("spool.replay_rate", f"{replay_rate:g} must be more than 0 (datapoints a second)")
    spool = SpoolConf(
        spool_path, max_mb * 1024 * 1024, sp.get("policy", "drop_oldest"), sp.get("sync", "full"), replay_rate
    )

    satellites: dict[str, Step] = {}
    raw_sats = doc.get("satellites", {})
    if not isinstance(raw_sats, dict):
        problems.add("satellites", "must be tables, one per satellite; write [satellites.NAME]")
        raw_sats = {}
    for name, raw in raw_sats.items():
        step = _satellite(problems, name, raw, registry, run_dir, codec)
        if step is not None:
            satellites[name] = step
    return Topology(
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
    )


def _satellite(
    problems: _Problems,
    name: str,
    raw: Any,
    registry: Mapping[str, SatelliteSpec],
    run_dir: Path,
    default_codec: str,
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
    return Step(
        name=name,
        use=use,
        kind=spec.kind,
        type=spec.type,
        every=every,
        next=nexts,
        options=MappingProxyType(dict(sat.get("options", {}))),
        host=sat.get("host", ""),
        listen=listen,
        codec=_codec(problems, f"{key}.codec", sat.get("codec", default_codec)),
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
    listens = any((ingress.plaintext, ingress.plaintext_udp, ingress.pickle, ingress.statsd))
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


def _environment(problems: _Problems, topo: Topology) -> None:
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
    for key, address in topo.binds():
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
    ingress = topo.ingress
    for key, listener, kind in (
        ("ingress.plaintext", ingress.plaintext, socket.SOCK_STREAM),
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

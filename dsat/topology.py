"""The topology: one TOML file describing every step, loaded into frozen dataclasses.

Validation runs before anything starts, in three stages, each reporting every
problem it finds: the schema (keys, types, durations, addresses, known
satellites), the graph (every ``next`` and route resolves, no cycles, a
source and a sink, no two binds on one address, unix socket paths short
enough), and, when asked, this machine (``run_dir`` writable, tcp ports
free).  A problem reads ``<file>: <key path>: <what is wrong>; <how to fix>``.
The file format is documented in ``docs/topology.rst``.
"""

from __future__ import annotations

import difflib
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
RESERVED = ("orchester", "carbon", "tracker", "self")
PROTOCOLS = ("pickle", "plaintext")
#: sun_path is 108 bytes including the terminating NUL.
MAX_IPC_PATH = 107

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Link:
    """A receiving socket: its address and pattern."""

    address: str
    pattern: str

    @property
    def sender_pattern(self) -> str:
        return PATTERNS[self.pattern]


@dataclass(frozen=True)
class Step:
    """One satellite of the topology."""

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
    events: str
    states: str
    status: str
    timeout: float
    metrics_every: float


@dataclass(frozen=True)
class OrchesterConf:
    listen: Link
    control: str
    routes: Mapping[str, tuple[str, ...]]
    max_queue: int


@dataclass(frozen=True)
class CarbonConf:
    destinations: tuple[tuple[str, int], ...]
    protocol: str
    timeout: float


@dataclass(frozen=True)
class Topology:
    path: Path
    prefix: str
    where: str
    run_dir: Path
    codec: str
    satellites: Mapping[str, Step]
    tracker: TrackerConf
    orchester: OrchesterConf
    carbon: CarbonConf

    def input_of(self, step: str) -> Link:
        """The receiving link of ``orchester`` or a satellite."""
        if step == "orchester":
            return self.orchester.listen
        listen = self.satellites[step].listen
        if listen is None:
            raise KeyError(f"step {step!r} has no input (it is a collector)")
        return listen

    def routes_for(self, type: str) -> tuple[str, ...]:
        """The steps the orchester sends envelopes of *type* to."""
        routes = self.orchester.routes
        return routes.get(type) or routes.get("*") or ()


# -- helpers -----------------------------------------------------------------


def parse_duration(value: Any, *, where: str) -> float:
    """Seconds from ``"250ms"``, ``"10s"``, ``"5m"``, ``"1h"`` or a positive number."""
    hint = 'write a duration like "250ms", "10s", "5m" or "1h"'
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not a duration; {hint}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ConfigError(f"{where}: {value!r} is not a duration; {hint}")
    if not seconds > 0:
        raise ConfigError(f"{where}: {value!r} must be longer than zero; {hint}")
    return seconds


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
            raise ConfigError("\n".join([summary, *(f"  {p}" for p in self.items)]), problems=self.items)


_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "dsat": {"prefix": str, "where": str, "run_dir": str, "codec": str},
    "tracker": {
        "events": str,
        "states": str,
        "status": str,
        "timeout": (str, int, float),
        "metrics_every": (str, int, float),
    },
    "orchester": {"listen": str, "pattern": str, "control": str, "max_queue": int, "routes": dict},
    "carbon": {"destinations": list, "protocol": str, "timeout": (str, int, float)},
    "satellite": {
        "use": str,
        "every": (str, int, float),
        "next": list,
        "options": dict,
        "host": str,
        "listen": str,
        "pattern": str,
        "codec": str,
    },
}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "a table"}


def _check_table(problems: _Problems, key: str, table: Any, schema: str) -> dict[str, Any]:
    """Unknown keys and wrong types in one table; returns the well-typed entries."""
    if not isinstance(table, dict):
        problems.add(key, f"must be a table, not {type(table).__name__}; write [{key}]")
        return {}
    allowed = _SCHEMA[schema]
    good: dict[str, Any] = {}
    for name, value in table.items():
        if name not in allowed:
            problems.add(
                f"{key}.{name}",
                f"unknown key; {_suggest(name, list(allowed))}valid keys are: {', '.join(allowed)}",
            )
            continue
        expected = allowed[name]
        types = expected if isinstance(expected, tuple) else (expected,)
        if isinstance(value, bool) or not isinstance(value, types):
            want = " or ".join(_TYPE_NAMES[t] for t in types)
            problems.add(f"{key}.{name}", f"must be {want}, not {type(value).__name__} {value!r:.40}")
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
            problems.add(key, f"{value!r} is not tcp://host:port with a port from 1 to 65535")
    elif address.startswith("inproc://"):
        problems.add(key, f"{value!r}: inproc:// does not cross processes; use ipc:// or tcp://")
    else:
        problems.add(key, f"{value!r} has no valid scheme; write ipc://PATH or tcp://HOST:PORT")
    return address


def _pattern(problems: _Problems, key: str, value: str) -> str:
    if value not in PATTERNS:
        problems.add(key, f"{value!r} is not a receiving pattern; use one of {', '.join(PATTERNS)}")
        return "pull"
    return value


def _codec(problems: _Problems, key: str, value: str) -> str:
    if value not in CODECS:
        problems.add(key, f"unknown codec {value!r}; valid codecs are: {', '.join(CODECS)}")
        return "msgpack"
    return value


def _duration(problems: _Problems, key: str, value: Any, default: float) -> float:
    if value is None:
        return default
    try:
        return parse_duration(value, where=key)
    except ConfigError as exc:
        problems.add(key, str(exc).split(": ", 1)[1])
        return default


# -- loading -----------------------------------------------------------------


def load(
    path: str | Path, registry: Mapping[str, SatelliteSpec] | None = None, *, check_environment: bool = False
) -> Topology:
    """Read and validate a topology file; raises ConfigError listing every problem found."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the topology: {exc.strerror}") from None
    return loads(text, path=path, registry=registry, check_environment=check_environment)


def loads(
    text: str,
    *,
    path: Path,
    registry: Mapping[str, SatelliteSpec] | None = None,
    check_environment: bool = False,
) -> Topology:
    """Validate a topology given as text (*path* names it in messages and anchors ``run_dir``)."""
    if registry is None:
        from satellites import REGISTRY

        registry = REGISTRY
    path = path.absolute()
    problems = _Problems(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problems.add("(syntax)", f"{exc}; fix the TOML syntax there")
        problems.raise_if_any()
        raise AssertionError("unreachable") from None

    topo = _schema(problems, doc, path, registry)
    problems.raise_if_any()
    assert topo is not None
    _graph(problems, topo)
    problems.raise_if_any()
    if check_environment:
        _environment(problems, topo)
        problems.raise_if_any()
    return topo


def _schema(
    problems: _Problems, doc: dict[str, Any], path: Path, registry: Mapping[str, SatelliteSpec]
) -> Topology | None:
    for name in doc:
        if name not in ("dsat", "tracker", "orchester", "carbon", "satellites"):
            valid = ["dsat", "tracker", "orchester", "carbon", "satellites"]
            problems.add(name, f"unknown table; {_suggest(name, valid)}valid tables are: {', '.join(valid)}")
    top = _check_table(problems, "dsat", doc.get("dsat", {}), "dsat")
    run_dir = Path(top.get("run_dir", ".dsat/run"))
    if not run_dir.is_absolute():
        run_dir = path.parent / run_dir
    run_dir = Path(os.path.normpath(run_dir))
    codec = _codec(problems, "dsat.codec", top.get("codec", "msgpack"))
    where = top.get("where") or socket.gethostname()
    prefix = top.get("prefix", "dsat")
    if not prefix or "." in prefix:
        problems.add("dsat.prefix", f"{prefix!r} must be one non-empty path component (no dots)")

    def addr(key: str, value: str) -> str:
        return _address(problems, key, value, run_dir)

    tr = _check_table(problems, "tracker", doc.get("tracker", {}), "tracker")
    tracker = TrackerConf(
        events=addr("tracker.events", tr.get("events", "ipc://{run_dir}/tracker-events")),
        states=addr("tracker.states", tr.get("states", "ipc://{run_dir}/tracker-states")),
        status=addr("tracker.status", tr.get("status", "ipc://{run_dir}/tracker-status")),
        timeout=_duration(problems, "tracker.timeout", tr.get("timeout"), 30.0),
        metrics_every=_duration(problems, "tracker.metrics_every", tr.get("metrics_every"), 10.0),
    )

    orc = _check_table(problems, "orchester", doc.get("orchester", {}), "orchester")
    routes: dict[str, tuple[str, ...]] = {}
    for type_name, targets in orc.get("routes", {"*": ["carbon"]}).items():
        key = f"orchester.routes.{type_name}"
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            problems.add(key, 'must be a non-empty list of step names, e.g. ["carbon"]')
            continue
        routes[type_name] = tuple(targets)
    max_queue = orc.get("max_queue", 1_000_000)
    if max_queue < 1:
        problems.add("orchester.max_queue", f"{max_queue} must be at least 1")
    orchester = OrchesterConf(
        listen=Link(
            addr("orchester.listen", orc.get("listen", "ipc://{run_dir}/orchester")),
            _pattern(problems, "orchester.pattern", orc.get("pattern", "pull")),
        ),
        control=addr("orchester.control", orc.get("control", "ipc://{run_dir}/orchester-control")),
        routes=MappingProxyType(routes),
        max_queue=max_queue,
    )

    car = _check_table(problems, "carbon", doc.get("carbon", {}), "carbon")
    destinations: list[tuple[str, int]] = []
    raw_dest = car.get("destinations")
    if not raw_dest:
        problems.add("carbon.destinations", 'at least one is needed; write destinations = ["127.0.0.1:2004"]')
    for i, dest in enumerate(raw_dest or []):
        host, _, port = str(dest).rpartition(":")
        if not isinstance(dest, str) or not host or not port.isdigit() or not 0 < int(port) < 65536:
            problems.add(f"carbon.destinations[{i}]", f"{dest!r} is not \"host:port\" (port 1-65535)")
            continue
        destinations.append((host.strip("[]"), int(port)))
    protocol = car.get("protocol", "pickle")
    if protocol not in PROTOCOLS:
        problems.add("carbon.protocol", f"{protocol!r} is not one of {', '.join(PROTOCOLS)}")
    carbon = CarbonConf(tuple(destinations), protocol, _duration(problems, "carbon.timeout", car.get("timeout"), 10.0))

    satellites: dict[str, Step] = {}
    raw_sats = doc.get("satellites", {})
    if not isinstance(raw_sats, dict):
        problems.add("satellites", "must be tables, one per satellite: [satellites.NAME]")
        raw_sats = {}
    for name, raw in raw_sats.items():
        step = _satellite(problems, name, raw, registry, run_dir, codec)
        if step is not None:
            satellites[name] = step
    return Topology(
        path=path,
        prefix=prefix,
        where=where,
        run_dir=run_dir,
        codec=codec,
        satellites=MappingProxyType(satellites),
        tracker=tracker,
        orchester=orchester,
        carbon=carbon,
    )


def _satellite(
    problems: _Problems,
    name: str,
    raw: Any,
    registry: Mapping[str, SatelliteSpec],
    run_dir: Path,
    default_codec: str,
) -> Step | None:
    key = f"satellites.{name}"
    if name in RESERVED:
        problems.add(key, f"{name!r} is a reserved step name ({', '.join(RESERVED)}); rename the satellite")
        return None
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        problems.add(key, "a step name may only hold letters, digits, '_' and '-'; rename it")
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
        if "every" not in sat:
            problems.add(f"{key}.every", f'missing; a collector needs a schedule, e.g. every = "10s" ({use})')
        else:
            every = _duration(problems, f"{key}.every", sat["every"], 10.0)
    elif "every" in sat:
        problems.add(f"{key}.every", f"a {spec.kind} runs on each batch it receives; remove `every`")
    if spec.kind == "sink":
        if "next" in sat:
            problems.add(f"{key}.next", "a sink sends nothing on; remove `next`")
        nexts: tuple[str, ...] = ()
    else:
        raw_next = sat.get("next", ["orchester"])
        if not raw_next or not all(isinstance(n, str) for n in raw_next):
            problems.add(f"{key}.next", 'must be a non-empty list of step names, e.g. ["orchester"]')
            raw_next = ["orchester"]
        nexts = tuple(raw_next)
    listen = None
    if spec.kind == "collector":
        for k in ("listen", "pattern"):
            if k in sat:
                problems.add(f"{key}.{k}", "a collector receives nothing; remove it")
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
    steps = ", ".join([*sats, "orchester"])
    edges: dict[str, list[str]] = {name: [] for name in [*sats, "orchester"]}
    for name, step in sats.items():
        for i, target in enumerate(step.next):
            key = f"satellites.{name}.next[{i}]"
            if target == "orchester" or target in sats and sats[target].kind != "collector":
                edges[name].append(target)
            elif target in sats:
                problems.add(key, f'"{target}" is a collector and receives nothing; send to a transform or sink')
            else:
                problems.add(key, f'unknown step "{target}"; {_suggest(target, [*sats, "orchester"])}Steps are: {steps}')
    for type_name, targets in topo.orchester.routes.items():
        for i, target in enumerate(targets):
            key = f"orchester.routes.{type_name}[{i}]"
            if target == "carbon":
                continue
            if target in sats and sats[target].kind != "collector":
                edges["orchester"].append(target)
            else:
                choices = [*(n for n, s in sats.items() if s.kind != "collector"), "carbon"]
                problems.add(
                    key, f'"{target}" is not a transform, a sink or carbon; {_suggest(target, choices)}'
                    f"use one of: {', '.join(choices)}"
                )
    cycle = _find_cycle(edges)
    if cycle:
        problems.add(
            f"satellites.{cycle[0]}.next" if cycle[0] != "orchester" else "orchester.routes",
            f"cycle {' -> '.join(cycle)}; a batch would loop forever, break the cycle",
        )
    if not any(s.kind == "collector" for s in sats.values()):
        problems.add("satellites", "no collector: nothing produces data; add a satellite with `every`")
    has_sink = any(s.kind == "sink" for s in sats.values()) or any(
        "carbon" in t for t in topo.orchester.routes.values()
    )
    if not has_sink:
        problems.add("orchester.routes", 'nothing ends a batch: route a type to "carbon" or add a sink satellite')
    binds: dict[str, str] = {}
    for key, address in [
        ("tracker.events", topo.tracker.events),
        ("tracker.states", topo.tracker.states),
        ("tracker.status", topo.tracker.status),
        ("orchester.listen", topo.orchester.listen.address),
        ("orchester.control", topo.orchester.control),
        *((f"satellites.{n}.listen", s.listen.address) for n, s in sats.items() if s.listen is not None),
    ]:
        if address in binds:
            problems.add(key, f"{address} is already bound by {binds[address]}; give each a different address")
        else:
            binds[address] = key
        if address.startswith("ipc://") and len(address[len("ipc://") :].encode()) > MAX_IPC_PATH:
            problems.add(
                key,
                f"the unix socket path {address[6:]!r} is over the OS limit of {MAX_IPC_PATH} bytes;"
                " use a shorter [dsat] run_dir",
            )


def _find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in edges:
        if node not in state and (found := visit(node)):
            return found
    return None


def _environment(problems: _Problems, topo: Topology) -> None:
    try:
        topo.run_dir.mkdir(parents=True, exist_ok=True)
        probe = topo.run_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        problems.add("dsat.run_dir", f"{topo.run_dir} is not a writable folder ({exc.strerror}); pick another")
    binds = [
        ("tracker.events", topo.tracker.events),
        ("tracker.states", topo.tracker.states),
        ("tracker.status", topo.tracker.status),
        ("orchester.listen", topo.orchester.listen.address),
        ("orchester.control", topo.orchester.control),
        *((f"satellites.{n}.listen", s.listen.address) for n, s in topo.satellites.items() if s.listen),
    ]
    for key, address in binds:
        if not address.startswith("tcp://"):
            continue
        host, _, port = address[len("tcp://") :].rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("" if host == "*" else host, int(port)))
            except OSError as exc:
                problems.add(key, f"cannot bind {address}: {exc.strerror}; stop what uses it or pick another port")

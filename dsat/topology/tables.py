"""The topology's tables, one builder each: ``[dsat]``'s values, ``[hosts]`` and ``[groups]``,
``[tracker]``, ``[orchester]``, ``[carbon]``, ``[ingress]``, ``[rules]``, ``[spool]`` and
each ``[satellites.NAME]``.

Each takes the ``_Problems`` (:mod:`dsat.topology.schema`) it adds to and the
raw table, checks it with the schema's value checks, and returns its part of
the model (a table with problems still gives a value, so every problem of
the file is found in one pass).  What a step's ``use`` names is looked up in
the registry given (:mod:`dsat.plugins`).  Nothing here reads a file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from dsat.plugins import SatelliteSpec
from dsat.spool import POLICIES, SYNC_MODES
from dsat.topology.model import (
    _NAME,
    DEFAULT_WATCHDOG,
    MAX_IPC_PATH,
    PROTOCOLS,
    RESERVED,
    SATELLITE_PORTS_FROM,
    CarbonConf,
    Host,
    IngressConf,
    Link,
    OrchesterConf,
    RulesConf,
    SpoolConf,
    Step,
    Topology,
    TrackerConf,
    _key,
    placement_problems,
    valid_percentile,
)
from dsat.topology.schema import (
    _address,
    _beside,
    _build,
    _check_table,
    _codec,
    _duration,
    _pattern,
    _Problems,
    _suggest,
    _tables,
    _watchdog,
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


def _port_base(problems: _Problems, top: Mapping[str, Any], satellites: int) -> int:
    port_base: int = top.get("port_base", Topology.port_base)
    if not 0 < port_base <= 65535 - SATELLITE_PORTS_FROM - satellites:
        problems.add("dsat.port_base", f"{port_base}: the derived ports must stay within 1-65535; lower it")
    return port_base


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
    """``[carbon]``: its destinations (carbon-relay's DESTINATIONS), replication, hashing, protocol, timeout."""
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
                f'{dest!r} is not "host:port", "host:port:instance" or "host:port=instance";'
                ' write e.g. "127.0.0.1:2004" (port 1-65535)',
            )
            continue
        destinations.append(parsed)
    replication = car.get("replication", CarbonConf.replication)
    hashing = car.get("hashing", CarbonConf.hashing)
    for key, problem in placement_problems(hashing, destinations, replication):
        problems.add(key, problem)
    protocol = car.get("protocol", CarbonConf.protocol)
    if protocol not in PROTOCOLS:
        problems.add("carbon.protocol", f'unknown protocol "{protocol}"; use one of: {", ".join(PROTOCOLS)}')
    return _build(problems, "carbon", car, CarbonConf, destinations=tuple(destinations))


def parse_destination(text: object) -> tuple[str, int, str | None] | None:
    """``"host:port"`` or ``"host:port:instance"`` (``[v6]:port``...) as carbon-relay's DESTINATIONS; None if bad.

    carbon-c-relay's way, ``"host:port=instance"``, is the same destination.
    """
    if not isinstance(text, str):
        return None
    if "=" in text:
        where, _, named = text.partition("=")
        parsed = parse_destination(where)
        if parsed is None or parsed[2] is not None or not named or ":" in named:
            return None
        return parsed[0], parsed[1], named
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]:")
        parts = [host, *rest.split(":")] if sep else []
    else:
        parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].isdigit() or not 0 < int(parts[1]) < 65536:
        return None
    instance = parts[2] if len(parts) == 3 and parts[2] else None
    return parts[0], int(parts[1]), instance


#: The ``[ingress]`` keys that open a listener, each ``"interface:port"``.
_LISTENERS = ("plaintext", "plaintext_tls", "plaintext_udp", "pickle", "statsd")


def _worker_count(problems: _Problems, value: int | str) -> int:
    """``[ingress] workers``: a positive number of processes, or "auto" (one per CPU)."""
    if value == "auto":
        return os.cpu_count() or 1
    if isinstance(value, str) or value < 1:
        problems.add("ingress.workers", f'{value!r} must be a number of processes, at least 1, or "auto" (one per CPU)')
        return 1
    return value


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
    if not all(valid_percentile(p) for p in percentiles):
        problems.add("ingress.statsd_percentiles", f"{percentiles!r}: each must be in [-100, 0) or (0, 100]")
        percentiles = IngressConf.statsd_percentiles
    tls_files: dict[str, Path | None] = {}
    for key in ("tls_certificate", "tls_key"):
        tls_files[key] = _beside(path, ing[key]) if ing.get(key) else None
        if not ing.get(key) and listeners["plaintext_tls"]:
            problems.add(f"ingress.{key}", f'plaintext_tls needs it: the PEM file, e.g. {key} = "tls/{key[4:]}.pem"')
    statsd_socket = _beside(path, ing["statsd_socket"]) if ing.get("statsd_socket") else None
    if statsd_socket is not None and not listeners["statsd"]:
        problems.add(
            "ingress.statsd_socket",
            'needs statsd, the address whose aggregator it feeds and flushes: e.g. statsd = "127.0.0.1:8125"',
        )
    if statsd_socket is not None and len(str(statsd_socket).encode()) > MAX_IPC_PATH:
        problems.add("ingress.statsd_socket", f"{statsd_socket} is longer than a Unix socket path may be; shorten it")
    if ing.get("max_connections", 1) < 1:
        problems.add("ingress.max_connections", f"{ing['max_connections']} holds nothing; set it to at least 1")
    conf = _build(
        problems,
        "ingress",
        ing,
        IngressConf,
        **listeners,
        **tls_files,
        statsd_socket=statsd_socket,
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

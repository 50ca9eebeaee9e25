"""Loading a topology file: the schema, then the graph; each stage reports every problem it finds.

A stage that found problems stops the next: the schema (keys, types,
durations, addresses, known satellites: :mod:`dsat.topology.tables`), then,
for a topology with ``[hosts]``, the links between hosts
(:mod:`dsat.topology.links`), then the graph (every ``next`` and route
resolves, no cycles, a source and a sink, no two binds on one address, unix
socket paths short enough, ingress workers that can share the work).  A
problem reads ``<file>: <key path>: <what is wrong>; <how to fix>``.

Loading reads the topology file and nothing else on this machine: the rule
and TLS files, the key files, the run folder and the ports are the
:mod:`dsat.topology.preflight`'s, which runs where a step or the stack
starts or is validated.  It does import the modules of ``[dsat] plugins``: a
satellite's kind (collector, transform or sink) comes from its registry spec
and decides which keys it takes and where it sits in the graph.
"""

from __future__ import annotations

import importlib
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from dsat.envelope import DEFAULT_CODEC
from dsat.errors import ConfigError
from dsat.plugins import Registry, SatelliteSpec
from dsat.satellites import REGISTRY
from dsat.topology.links import _derive_links
from dsat.topology.model import MAX_IPC_PATH, Topology, _key
from dsat.topology.schema import _beside, _check_table, _codec, _Problems, _suggest, _unknown_tables, _watchdog
from dsat.topology.tables import (
    _carbon,
    _hosts_tables,
    _ingress,
    _orchester,
    _orchester_hosts,
    _Placer,
    _port_base,
    _prefix,
    _rules_table,
    _run_dir,
    _satellites,
    _spool,
    _tracker,
    _tracker_host,
)


def load(path: str | Path, registry: Mapping[str, SatelliteSpec] | None = None) -> Topology:
    """Read and validate a topology file; raises ConfigError listing every problem found.

    What it needs of this machine is :func:`dsat.topology.preflight.check`'s.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the topology: {exc}") from None
    return loads(text, path=path, registry=registry)


def loads(
    text: str,
    *,
    path: Path,
    registry: Mapping[str, SatelliteSpec] | None = None,
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
    _workers(problems, topo)
    problems.raise_if_any()
    return topo


def _registry(problems: _Problems, plugins: Any) -> Mapping[str, SatelliteSpec]:
    """The built-in satellites plus the ``SPECS`` of every module in ``[dsat] plugins``."""
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

"""The links between hosts: every link whose ends are on different hosts gets a ``tcp://`` address.

A topology with ``[hosts]`` spans many machines: each step runs on one host
(or, for a collector, on several), and every link whose ends are on different
hosts gets a ``tcp://`` address derived here from the binding host's address
and ``[dsat] port_base`` (:data:`~dsat.topology.model.TCP_PORTS`; receiving
satellites from :data:`~dsat.topology.model.SATELLITE_PORTS_FROM` on, in name
order); links within one host stay ``ipc://``.  Those tcp links are secured
with CURVE (:mod:`dsat.keys`) unless ``[dsat] insecure``.  An orchester pair's
two servers each get their own addresses (:class:`~dsat.topology.model.Server`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from dsat.binarystar import ROLES
from dsat.topology.model import SATELLITE_PORTS_FROM, SERVER_LINKS, TCP_PORTS, Host, Server, Topology
from dsat.topology.schema import _address, _Problems


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


def _tcp(host: Host, port: int) -> str:
    return f"tcp://[{host.address}]:{port}" if ":" in host.address else f"tcp://{host.address}:{port}"


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

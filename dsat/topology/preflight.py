"""The preflight: what a topology needs of this machine, checked before a step or the stack starts.

:func:`check` runs where DSAT is about to run (``dsat up``, ``dsat run``,
``dsat validate``, ``dsat bench``), after :func:`dsat.topology.load`, which
reads nothing but the topology file.  It reports every problem it finds, in
the topology's form (``<file>: <key path>: <what is wrong>; <how to fix>``),
in two stages: the files the topology names (the rule files parse, the TLS
certificate and key load and belong together) and the ``--host`` asked for;
then, with *machine*, this machine itself (``run_dir`` and the spool's
folder writable, this host's CURVE key files, every tcp port and ingress
listener free: statsd's port on UDP and on TCP, and no two listeners on
one port).
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from dsat.errors import ConfigError
from dsat.keys import problems_for
from dsat.rules import load_rules
from dsat.tls import server_options
from dsat.topology.model import Topology
from dsat.topology.schema import _Problems, _suggest
from dsat.udp import unix_socket_in_use

#: Interfaces that take a port on every address: a listener there shares its port with one on any other.
_ANY_INTERFACE = frozenset(("0.0.0.0", "::", ""))


def check(topo: Topology, *, host: str | None = None, machine: bool = False) -> None:
    """What *topo* needs before it runs: its rule and TLS files, the *host* asked for and, with *machine*, this machine.

    *host* (``--host``) must be one of ``[hosts]``; with *machine*, a
    topology with ``[hosts]`` needs it, and the checks are that host's: its
    binds, its key files.  Raises :class:`~dsat.errors.ConfigError` listing
    every problem found.
    """
    problems = _Problems(topo.path)
    _rules(problems, topo)
    _tls(problems, topo)
    if host is not None and host not in topo.hosts:
        known = list(topo.hosts)
        problems.add(
            "--host",
            f'"{host}" is not in [hosts]; {_suggest(host, known)}hosts are: {", ".join(known)}'
            if known
            else f'"{host}": this topology has no [hosts] and runs on one machine; drop --host',
        )
    if machine and topo.multi_host and host is None:
        problems.add("--host", f"this topology spans hosts; say which one this is: one of {', '.join(topo.hosts)}")
    problems.raise_if_any()
    if machine:
        _environment(problems, topo, host)
        problems.raise_if_any()


def _rules(problems: _Problems, topo: Topology) -> None:
    """The rule files must exist and parse (every problem with its file and line)."""
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
        try:
            server_options(conf.tls_certificate, conf.tls_key)
        except ConfigError as exc:
            problems.add("ingress.plaintext_tls", str(exc))


def _environment(problems: _Problems, topo: Topology, host: str | None) -> None:
    """This machine: the folders writable, *host*'s key files, the tcp binds and ingress listeners free."""
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
        for problem in problems_for(topo, host):
            problems.add("dsat.keys", problem)
    for key, address in topo.binds() if host is None else topo.binds_on(host):
        if not address.startswith("tcp://"):
            continue
        interface, _, port = address[len("tcp://") :].rpartition(":")
        interface = interface.strip("[]")
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # ZeroMQ binds with SO_REUSEADDR: only a live socket on the port makes its bind fail.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("" if interface == "*" else interface, int(port)))
            except OSError as exc:
                problems.add(key, f"cannot bind {address} ({exc.strerror}); stop what uses it or pick another port")
    if host is not None and "orchester" not in topo.steps_on(host):
        return
    ingress = topo.ingress
    taken: dict[tuple[int, int], list[tuple[str, str]]] = {}  # (socket kind, port) -> [(key, interface)]
    for key, listener, kind in (
        ("ingress.plaintext", ingress.plaintext, socket.SOCK_STREAM),
        ("ingress.plaintext_tls", ingress.plaintext_tls, socket.SOCK_STREAM),
        ("ingress.plaintext_udp", ingress.plaintext_udp, socket.SOCK_DGRAM),
        ("ingress.pickle", ingress.pickle, socket.SOCK_STREAM),
        ("ingress.statsd", ingress.statsd, socket.SOCK_DGRAM),
        ("ingress.statsd", ingress.statsd, socket.SOCK_STREAM),  # statsd listens on TCP too, on the same port
    ):
        if listener is None:
            continue
        interface, number = listener
        protocol = "TCP" if kind == socket.SOCK_STREAM else "UDP"
        sharing = [
            other
            for other, where in taken.get((kind, number), [])
            if where == interface or {where, interface} & _ANY_INTERFACE
        ]
        taken.setdefault((kind, number), []).append((key, interface))
        if sharing:
            problems.add(
                key, f"{interface}:{number} is also {sharing[0]}'s {protocol} port; give each listener its own port"
            )
            continue
        with socket.socket(socket.AF_INET6 if ":" in interface else socket.AF_INET, kind) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted listens
            try:
                sock.bind((interface, number))
            except OSError as exc:
                problems.add(
                    key,
                    f"cannot listen on {interface}:{number} ({protocol}: {exc.strerror}); "
                    "stop what uses it or pick another",
                )
    _statsd_socket(problems, ingress.statsd_socket)


def _statsd_socket(problems: _Problems, path: Path | None) -> None:
    """DogStatsD's Unix socket: its folder can take it, and no file or receiving process holds its path."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        problems.add("ingress.statsd_socket", f"cannot make {path.parent} ({exc.strerror}); pick another path")
        return
    if not os.access(path.parent, os.W_OK):
        problems.add("ingress.statsd_socket", f"{path.parent} is not writable by this user; pick another path")
    elif path.exists() and not stat.S_ISSOCK(path.stat().st_mode):
        problems.add("ingress.statsd_socket", f"{path} is a file, not a socket; remove it or pick another path")
    elif path.exists() and unix_socket_in_use(str(path)):
        problems.add("ingress.statsd_socket", f"{path}: a process receives on it; stop it or pick another path")

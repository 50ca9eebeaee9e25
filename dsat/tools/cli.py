"""The ``dsat`` command: validate, up, run, status, keys, route, test-rules, bench, graph, demo.

Every sub-command that reads a topology validates it first; a
:class:`~dsat.errors.ConfigError` is printed with every problem it found and
the command exits with status 2.  Other DSAT errors exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from dsat import __version__, compiled
from dsat.errors import ConfigError, DsatError
from dsat.topology import parse_duration


def duration(text: str) -> float:
    """Seconds from a command-line duration: the topology's ``250ms``, ``10s``, ``2m``, ``1h``, or plain seconds.

    The argparse ``type`` of every option that takes a duration; what
    :func:`~dsat.topology.parse_duration` refuses becomes an argparse error
    (usage, the option, what is wrong and the accepted forms, exit status 2).
    """
    value: str | float
    try:
        value = float(text)
    except ValueError:
        value = text
    try:
        return parse_duration(value, where=repr(text))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{text!r}: ")) from None


def cmd_validate(args: argparse.Namespace) -> int:
    from dsat import keys, topology
    from dsat.topology import preflight

    topo = topology.load(args.topology)
    # this machine: a one-host topology's, or with [hosts] the part of the host --host names
    machine = args.environment and (args.host is not None or not topo.multi_host)
    preflight.check(topo, host=args.host, machine=machine)
    if topo.multi_host and topo.insecure:
        plain = ", ".join(sorted(topo.tcp_binders)) or "none yet"
        print(
            f"{args.topology}: warning: [dsat] insecure = true: the links between hosts are plain tcp that anyone"
            f" on the network can read and write to ({plain}); remove it to secure them with CURVE",
            file=sys.stderr,
        )
    if args.host is not None:
        keys.require_curve(topo)
        steps = ", ".join(topo.steps_on(args.host)) or "none"
        print(f"{args.topology}: OK for host {args.host} (steps: {steps}) and the whole graph")
        return 0
    steps = ", ".join(["tracker", "orchester", *topo.satellites])
    print(f"{args.topology}: OK ({len(topo.satellites)} satellites: {steps})")
    if topo.multi_host and args.environment:
        print(f"{args.topology}: this machine not checked: say which host it is with --host NAME")
    return 0


def runtime() -> Any:
    """:mod:`dsat.process`, imported once DSAT's reactor is installed (:mod:`dsat.reactor` says why first)."""
    from dsat.reactor import install

    if "twisted.internet.reactor" not in sys.modules:  # else process.up and run refuse it, after the topology's checks
        install()
    from dsat import process

    return process


def cmd_up(args: argparse.Namespace) -> int:
    return int(runtime().up(args.topology, host=args.host))


def cmd_run(args: argparse.Namespace) -> int:
    return int(runtime().run(args.topology, args.step, args.host or "", args.worker))


def cmd_keys(args: argparse.Namespace) -> int:
    from dsat import keys, topology

    topo = topology.load(args.topology)
    if not topo.multi_host:
        raise ConfigError(f"{topo.path}: no [hosts], so no link leaves this machine and no key is needed")
    made = keys.create(topo, replace=args.replace)
    for host in topo.hosts:
        state = "new key pair" if host in made else "kept"
        print(f"{host}: {state}: {keys.public_path(topo.keys_dir, host)}, {keys.secret_path(topo.keys_dir, host)}")
    print(
        f"copy {topo.keys_dir}/public/ to every host, and private/HOST.key_secret to HOST only (mode 0600)",
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from dsat import supervisor, topology
    from dsat.tools import status

    topo = topology.load(args.topology)
    snap = status.fetch(topo.tracker.status, timeout=args.timeout)
    snap["restarts"] = supervisor.read_restarts(topo.run_dir)
    print(json.dumps(snap, indent=2) if args.json else status.format_status(snap))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    process = runtime()
    from dsat import supervisor, topology
    from dsat.tools.stack import LocalStack

    state_dir = Path(args.state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    if args.topology:
        topo_path = Path(args.topology)
    else:
        topo_path = state_dir / "demo.toml"
        with resources.as_file(resources.files("dsat").joinpath("demo.toml")) as packaged:
            shutil.copyfile(packaged, topo_path)
    topo = topology.load(topo_path)
    host, port, _instance = topo.carbon.destinations[0]
    stack = LocalStack(state_dir, pickle_port=port, http_port=args.http_port, interface=host)
    print(f"dsat demo: state (Whisper files, graphite-web database, logs) in {state_dir}", flush=True)
    stack.prepare_carbon()

    def add_stack(sup: supervisor.Supervisor, topo: topology.Topology) -> None:
        stack.add_to(sup)
        announce_when_listening(sup.reactor, stack, topo)

    return process.up(topo_path, extra=add_stack)


def announce_when_listening(reactor: Any, stack: Any, topo: Any) -> None:
    """Print graphite-web's URL once it accepts connections."""
    import socket

    from dsat.schedule import Repeat

    def poll() -> None:
        try:
            socket.create_connection((stack.interface, stack.http_port), timeout=0.2).close()
        except OSError:
            return
        loop.stop()
        print(
            f"\ndsat demo is up: graphite-web at {stack.url}\n"
            f"  the demo dashboard (host and DSAT's own metrics): {stack.url}dashboard/dsat\n"
            f"  metrics arrive under {topo.prefix}.{topo.where}.<satellite>.* within 30 s;"
            f" Whisper files in {stack.whisper_dir}\n"
            f"  dsat status {topo.path}   shows the tracker's counts; Ctrl-C stops everything.\n",
            flush=True,
        )

    loop = Repeat(reactor, 0.5, poll, name="demo: wait for graphite-web")
    reactor.callWhenRunning(loop.start)


def cmd_route(args: argparse.Namespace) -> int:
    from dsat import topology
    from dsat.tools import route

    topo = topology.load(args.topology)
    config = route.send(topo, route.command(args.action, args.args), timeout=args.timeout)
    print(f"routes: {config.get('routes')}\ncarbon destinations: {config.get('destinations')}")
    return 0


def cmd_test_rules(args: argparse.Namespace) -> int:
    from dsat.tools import explain

    return explain.run([Path(f) for f in args.rules], sys.stdin, sys.stdout, args.topology)


def cmd_bench(args: argparse.Namespace) -> int:
    from dsat.tools import bench

    try:
        return bench.main(args)
    except KeyboardInterrupt:
        print("\ndsat bench: interrupted; every process and file it started is gone", file=sys.stderr)
        return 130


def cmd_graph(args: argparse.Namespace) -> int:
    from dsat import topology
    from dsat.tools import graph

    data = graph.render(graph.to_dot(topology.load(args.topology)), args.format)
    if args.output:
        Path(args.output).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsat", description="DSAT: a metrics pipeline for Graphite.")
    parser.add_argument("--version", action="version", version=f"dsat {__version__}, hot path: {compiled.describe()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a topology without starting anything")
    p.add_argument("topology")
    p.add_argument(
        "--no-environment",
        dest="environment",
        action="store_false",
        help="skip the checks of this machine (ports free, run_dir writable, keys present)",
    )
    p.add_argument("--host", help="check this host's part (a name in [hosts]) on this machine, and the whole graph")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("up", help="run every process of a topology, supervised, until Ctrl-C")
    p.add_argument("topology")
    p.add_argument("--host", help="run the steps of this host only (a name in [hosts]; needed when there are hosts)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("run", help="run one step of a topology in this process (dsat up does this)")
    p.add_argument("topology")
    p.add_argument("step", help="tracker, orchester or a satellite name")
    p.add_argument("--host", help="the host this process runs on (a name in [hosts])")
    p.add_argument("--worker", type=int, help="orchester: run its ingress worker N ([ingress] workers starts them)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("keys", help="make the CURVE key pair of every host of a topology that has none")
    p.add_argument("topology")
    p.add_argument(
        "--replace", action="append", default=[], metavar="HOST", help="make a new key pair for HOST (key rotation)"
    )
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("status", help="show the running tracker's counts per step")
    p.add_argument("topology")
    p.add_argument("--json", action="store_true", help="print the raw snapshot as JSON")
    p.add_argument("--timeout", type=duration, default=3.0, help="how long to wait for the tracker (default 3s)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("route", help="change the running orchester's routing (no restart)")
    p.add_argument("topology")
    p.add_argument("action", choices=["set", "add", "drain", "remove"])
    p.add_argument(
        "args", nargs="+", help="set: TYPE STEP...; add/drain/remove: HOST:PORT[:INSTANCE] or HOST:PORT=INSTANCE"
    )
    p.add_argument("--timeout", type=duration, default=10.0, help="how long to wait for the orchester (default 10s)")
    p.set_defaults(func=cmd_route)

    p = sub.add_parser("test-rules", help="show what rule files do to metric names read on stdin")
    p.add_argument("rules", nargs="*", help="rewrite-rules.conf and/or aggregation-rules.conf files")
    p.add_argument("--topology", help="take rules, filters and carbon destinations from this topology")
    p.set_defaults(func=cmd_test_rules)

    p = sub.add_parser("bench", help="run a topology under synthetic load and measure what reaches Carbon")
    p.add_argument("topology")
    p.add_argument("--rate", default="10000", help="datapoints a second, or max to find the highest sustained")
    p.add_argument("--duration", type=duration, default=5.0, help="load per run: 30s, 2m or seconds (default 5s)")
    p.add_argument("--names", type=int, default=1000, help="distinct metric names in the load (default 1000)")
    p.add_argument(
        "--payload",
        choices=["ingress", "collectors"],
        default="ingress",
        help="through the Graphite plaintext ingress, or bench collectors in place of the topology's (default ingress)",
    )
    p.add_argument(
        "--carbon", choices=["sink", "real"], default="sink", help="a counting sink, or a real carbon-cache behind it"
    )
    p.add_argument("--compare", metavar="OTHER_TOPOLOGY", help="run this one too on the same load; print the ratios")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON to FILE (- for standard output)")
    p.add_argument("--max-p99", type=float, default=1000.0, help="--rate max: the p99 latency bound, ms (default 1000)")
    p.add_argument("--max-loss", type=float, default=0.0, help="--rate max: the share of loss allowed (default 0)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("graph", help="draw a topology: steps, hosts, links, routes, carbon destinations")
    p.add_argument("topology")
    p.add_argument("--format", choices=["dot", "svg", "png"], default="dot", help="svg and png need Graphviz's dot")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("demo", help="run the demo topology with a local carbon-cache and graphite-web")
    p.add_argument("--topology", help="a topology to run instead of the packaged demo")
    p.add_argument("--state-dir", default=".dsat/demo", help="where configuration, Whisper files and logs go")
    p.add_argument("--http-port", type=int, default=8080, help="graphite-web's port (default 8080)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except DsatError as exc:
        print(f"dsat: {exc}", file=sys.stderr)
        return 1

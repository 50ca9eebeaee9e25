"""DSAT against carbon-c-relay (and carbon-relay): production-like plaintext workloads, one rewrite rule, side by side.

Each relay runs in its own process(es), listens for Graphite plaintext on
127.0.0.1, rewrites ``servers.hostNNNNN.cpu.*`` into ``servers.hostNNNNN.processor.*``
and forwards plaintext to one or several counting sinks (several: placed with
``carbon_ch``), all served by one separate process that counts the lines it
receives and how many carry the rewritten name.  A client process writes the
pre-generated workload as fast as the relay takes it, over one connection in
large writes or over many connections in writes of about 20 lines (as many
collectd or Diamond clients do).  The workload has ``--names`` distinct metric
names, each seen ``--rounds`` times, a round of every name after another, as a
relay in front of a real Graphite sees them.  A relay's rate is the datapoints
delivered divided by the time from the first byte sent until the sink counted
the last one; the relay's CPU time and peak memory (RSS) are recorded too.

``--sweep`` runs the table of ``docs/performance.rst``: 1,600, 100,000 and
1,000,000 names x 1 and 100 connections x 1 and 4 destinations, DSAT beside
carbon-c-relay in each cell, and prints the ratio per cell.  The figures go to
``bench/results/relay.json`` (one cell) or ``bench/results/relay-sweep.json``.
It exits non-zero when a relay did not deliver every datapoint.

    .venv/bin/python bench/relay.py --sweep
    .venv/bin/python bench/relay.py [--names 100000] [--connections 100] [--destinations 4] [--repeat 3] [--verify]

DSAT runs with ``[ingress] workers`` = ``--workers``, one per CPU by default
(``docs/performance.rst``): that many processes share its listener.

Two variants of the workload, alone or together, also with ``--sweep``:
``--protocol pickle`` sends the same datapoints in carbon's pickle protocol, as
carbon clients frame it (:func:`dsat.graphite_wire.encode_pickle`: frames of 500
datapoints over one connection, one frame a write of 20 over many), to DSAT's
``[ingress] pickle`` listener and carbon-relay's PICKLE_RECEIVER_PORT;
carbon-c-relay has none, so it is left out of the default relays and refused by
name.  ``--tagged`` gives every name Graphite 1.1 tags, ``...STATE;dc=dcK;env=prod``,
half of them out of carbon's sorted order (``;env=prod;dc=dcK``), so that DSAT
canonicalises them as carbon does; carbon-c-relay forwards them as sent, so
``--verify`` compares canonical forms.  The relays still forward plaintext and
the sinks count the same way.  The figures go to a file of their own:
``bench/results/relay-pickle.json``, ``relay-tagged.json``, ``relay-tagged-sweep.json``...

    .venv/bin/python bench/relay.py --protocol pickle --relays dsat,carbon-relay
    .venv/bin/python bench/relay.py --tagged --sweep
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import multiprocessing
import os
import platform
import random
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from dsat.graphite_wire import encode_pickle
from dsat.naming import tagged_path
from dsat.tools.bench import stop_group
from dsat.tools.stack import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results" / "relay.json"

#: The rewrite every relay applies (POSIX ERE and Python ``re`` alike: carbon-c-relay's libc regex has no ``\d``).
PATTERN = r"^servers\.(host[0-9]+)\.cpu\."
REPLACEMENT = r"servers.\1.processor."
REWRITTEN = b".processor."
ORIGINAL = b".cpu."
CORES = 8
STATES = ("user", "system", "iowait", "idle")
#: Lines per write on each of many connections (collectd's write_graphite sends about 1,400 bytes at a time).
LINES_PER_WRITE = 20
#: What the client speaks (``--protocol``), and the relays that listen for pickle.
PROTOCOLS = ("plaintext", "pickle")
PICKLE_RELAYS = ("dsat", "carbon-relay")
#: Data centres of the tagged names (``--tagged``): ``;dc=dcK`` with K the host number modulo this.
DATA_CENTRES = 3

#: carbon-c-relay settings tried, as (workers, batch size, queue size).  Its default queue (25,000) makes it
#: stall the client about a second at a time (36,000 datapoints/s here), so every setting has a large one.
C_RELAY_SETTINGS = ((1, 2500, 5_000_000), (1, 10_000, 5_000_000), (2, 10_000, 1_000_000), (2, 10_000, 5_000_000))
#: The one setting the sweep runs (the fastest of the four in single-cell runs on two cores).
C_RELAY_SWEEP = ((2, 10_000, 5_000_000),)
#: The relays' queues hold the whole workload, so none has to drop or stall (carbon-relay drops when full).
QUEUE = 10_000_000
#: DSAT's rate divided by each peer's, at least.
GOALS = {"dsat/carbon-c-relay": 1.0, "dsat/carbon-relay": 3.0}
#: A run gives up when the sink counted nothing new for this long.
IDLE_SECONDS = 30
#: The sweep's cells: distinct names (and rounds of them), connections, carbon destinations.
SWEEP_NAMES = ((1_600, 250), (100_000, 4), (1_000_000, 2))
SWEEP_CONNECTIONS = (1, 100)
SWEEP_DESTINATIONS = (1, 4)

#: Slots of the sink's shared counters.
LINES, REWRITTEN_LINES, ORIGINAL_LINES, LAST_AT, TARGET, DONE_AT = range(6)
Counters = ctypes.Array[ctypes.c_double]
Points = list[tuple[bytes, float, int]]


@dataclass(frozen=True)
class Cell:
    """One workload: *names* distinct metric names, each sent *rounds* times, over *connections* to *destinations*.

    The client speaks *protocol*; *tagged* names carry Graphite tags.
    """

    names: int
    rounds: int
    connections: int
    destinations: int
    protocol: str = "plaintext"
    tagged: bool = False

    @property
    def lines(self) -> int:
        return self.names * self.rounds

    def __str__(self) -> str:
        shape = f"{self.names:,} names x {self.rounds}, {self.connections} conn, {self.destinations} dest"
        return f"{shape}, {self.protocol}{', tagged' if self.tagged else ''}"


def metric_names(count: int, tagged: bool = False) -> list[str]:
    """*count* distinct names ``servers.hostNNNNN.cpu.coreN.STATE``: as many hosts as it takes, 8 cores, 4 states.

    *tagged*: each with the tags ``dc`` and ``env``, every other one in the reverse of carbon's sorted order.
    """
    per_host = CORES * len(STATES)
    names = [
        f"servers.host{i // per_host:05d}.cpu.core{i % per_host // len(STATES)}.{STATES[i % len(STATES)]}"
        for i in range(count)
    ]
    if not tagged:
        return names
    out = []
    for i, name in enumerate(names):
        dc, env = f"dc=dc{i // per_host % DATA_CENTRES}", "env=prod"
        out.append(f"{name};{dc};{env}" if i % 2 else f"{name};{env};{dc}")
    return out


def workload(cell: Cell, seed: int = 42) -> bytes:
    """The cell's plaintext lines: a round of every name (in one shuffled order) every 10 s, values in 0-100."""
    rng = random.Random(seed)
    names = metric_names(cell.names, cell.tagged)
    rng.shuffle(names)
    start = (int(time.time()) // 10 - cell.rounds) * 10
    out = []
    for r in range(cell.rounds):
        stamp = start + 10 * r
        out.extend(f"{name} {rng.uniform(0, 100):.2f} {stamp}\n" for name in names)
    return "".join(out).encode()


def datapoints(data: bytes) -> Points:
    """The (path, value, timestamp) of every line, sorted: relays may write ``1.40`` as ``1.4``.

    A tagged path is taken in its canonical form: DSAT sorts the tags as carbon does, carbon-c-relay keeps their order.
    """
    points = []
    for line in data.splitlines():
        path, value, timestamp = line.split()
        if b";" in path:
            path = tagged_path(path.decode()).encode()
        points.append((path, float(value), int(timestamp)))
    points.sort()
    return points


def pickle_frames(lines: bytes) -> bytes:
    """The datapoints of plaintext *lines* as a carbon client sends them in pickle: frames of 500 at most."""
    return encode_pickle(
        [(path.decode(), int(ts), float(value)) for path, value, ts in map(bytes.split, lines.splitlines())]
    )


def rewritten(payload: bytes) -> bytes:
    return re.sub(rb"(?m)" + PATTERN.encode(), REPLACEMENT.encode(), payload)


def sink(listeners: list[socket.socket], counts: Counters, copy: str | None) -> None:
    """Count the complete lines received on every connection to every listener, and those with the rewritten name.

    *copy* keeps what arrived.  One process serves every destination: a relay's rate is what all its destinations
    received together.
    """
    out = open(copy, "wb") if copy else None  # noqa: SIM115 (lives as long as this process)
    selector = selectors.DefaultSelector()
    for listener in listeners:
        selector.register(listener, selectors.EVENT_READ, "listener")
    tails: dict[socket.socket, bytes] = {}
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if key.data == "listener":
                conn, _ = sock.accept()
                selector.register(conn, selectors.EVENT_READ)
                tails[conn] = b""
                continue
            chunk = sock.recv(1 << 20)
            if not chunk:
                selector.unregister(sock)
                sock.close()
                del tails[sock]
                continue
            data = tails[sock] + chunk
            cut = data.rfind(b"\n") + 1
            tails[sock] = data[cut:]
            complete = data[:cut]
            if out:
                out.write(complete)
                out.flush()
            counts[LINES] += complete.count(b"\n")
            counts[REWRITTEN_LINES] += complete.count(REWRITTEN)
            counts[ORIGINAL_LINES] += complete.count(ORIGINAL)
            counts[LAST_AT] = time.monotonic()
            if counts[REWRITTEN_LINES] >= counts[TARGET] and not counts[DONE_AT]:
                counts[DONE_AT] = counts[LAST_AT]


def client(port: int, writes: list[list[bytes]], go: Any) -> None:
    """Open one connection per list of *writes*, then, once *go* is set, send each list on its connection.

    One thread per connection, each ``sendall`` one write: many connections of small writes, or one of large ones.
    """
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in writes]

    def send(sock: socket.socket, pieces: list[bytes]) -> None:
        with sock:
            for piece in pieces:
                sock.sendall(piece)

    threads = [threading.Thread(target=send, args=pair, daemon=True) for pair in zip(socks, writes, strict=True)]
    go.wait()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def writes_for(payload: bytes, connections: int, protocol: str = "plaintext") -> list[list[bytes]]:
    """*payload* cut at line ends into one share per connection; with many connections, writes of ~20 lines each.

    In pickle, each write holds the same datapoints: one write of 500-datapoint frames over one connection, one frame
    a write over many.
    """
    shares = split(payload, connections)
    if connections == 1:
        out = [[shares[0]]]
    else:
        out = []
        for share in shares:
            lines = share.splitlines(keepends=True)
            out.append([b"".join(lines[i : i + LINES_PER_WRITE]) for i in range(0, len(lines), LINES_PER_WRITE)])
    if protocol == "pickle":
        out = [[pickle_frames(piece) for piece in pieces] for pieces in out]
    return out


def split(payload: bytes, parts: int) -> list[bytes]:
    """*payload* in *parts* pieces cut at line ends."""
    pieces, start = [], 0
    for i in range(1, parts + 1):
        end = len(payload) if i == parts else payload.index(b"\n", len(payload) * i // parts) + 1
        pieces.append(payload[start:end])
        start = end
    return pieces


# -- the relays ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Relay:
    """One relay to run: its name, its settings, and how to write its configuration and get its command line."""

    name: str
    settings: str
    command: Callable[[Path, int, list[int]], list[str]]  # (directory, listen port, sink ports) -> argv
    #: Processes that listen on the port (DSAT: its ingress workers); the clock starts when all do.
    listeners: int = 1


def dsat_command(
    base: Path, port: int, sink_ports: list[int], *, workers: int = 1, protocol: str = "plaintext"
) -> list[str]:
    (base / "rewrite-rules.conf").write_text(f"[pre]\n{PATTERN} = {REPLACEMENT}\n")
    destinations = ", ".join(f'"127.0.0.1:{p}:{i}"' for i, p in enumerate(sink_ports))
    (base / "topology.toml").write_text(
        f"""
[dsat]
where = "bench"
run_dir = "run"
[tracker]
metrics_every = "1h"
[ingress]
{protocol} = "127.0.0.1:{port}"
workers = {workers}
[rules]
rewrite = "rewrite-rules.conf"
[carbon]
destinations = [{destinations}]
protocol = "plaintext"
[spool]
path = ""
[orchester]
max_queue = {QUEUE}
"""
    )
    return [str(BIN / "dsat"), "up", str(base / "topology.toml")]


#: carbon-relay (carbon 1.1.10) runs the pipeline ``relay`` alone and never reads rewrite-rules.conf; this
#: starts it with carbon's own ``rewrite:pre`` processor ahead (as carbon-aggregator has it), same work as the others.
CARBON_RELAY_WITH_REWRITE = """
import sys
from carbon.util import run_twistd_plugin
from twisted.plugins.carbon_relay_plugin import CarbonRelayServiceMaker

def relay_with_rewrite(self, config):
    from carbon import service
    from carbon.conf import settings
    settings["rewrite-rules"] = settings.CONF_DIR + "/" + settings.REWRITE_RULES
    root = service.createBaseService(config, settings)
    service.setupPipeline(["rewrite:pre", "relay"], root, settings)
    service.setupReceivers(root, settings)
    return root

CarbonRelayServiceMaker.makeService = relay_with_rewrite
sys.argv[0] = sys.argv.pop(1)
run_twistd_plugin(sys.argv[0])
"""


def carbon_relay_command(base: Path, port: int, sink_ports: list[int], *, protocol: str = "plaintext") -> list[str]:
    conf = base / "conf"
    conf.mkdir()
    (conf / "rewrite-rules.conf").write_text(f"[pre]\n{PATTERN} = {REPLACEMENT}\n")
    (conf / "storage-schemas.conf").write_text("[default]\npattern = .*\nretentions = 10s:1d\n")
    destinations = ", ".join(f"127.0.0.1:{p}:{i}" for i, p in enumerate(sink_ports))
    line_port, pickle_port = (port, free_port()) if protocol == "plaintext" else (free_port(), port)
    (conf / "relay-rules.conf").write_text(f"[default]\ndefault = true\ndestinations = {destinations}\n")
    (conf / "carbon.conf").write_text(
        f"""
[relay]
STORAGE_DIR = {base / "storage"}
LINE_RECEIVER_INTERFACE = 127.0.0.1
LINE_RECEIVER_PORT = {line_port}
PICKLE_RECEIVER_INTERFACE = 127.0.0.1
PICKLE_RECEIVER_PORT = {pickle_port}
RELAY_METHOD = {"rules" if len(sink_ports) == 1 else "consistent-hashing"}
DESTINATIONS = {destinations}
DESTINATION_PROTOCOL = line
MAX_QUEUE_SIZE = {QUEUE}
CARBON_METRIC_INTERVAL = 0
LOG_LISTENER_CONN_SUCCESS = False
"""
    )
    script = str(BIN / "carbon-relay.py")
    options = [f"--config={conf / 'carbon.conf'}", f"--logdir={base / 'log'}", "--nodaemon", "start"]
    return [sys.executable, "-c", CARBON_RELAY_WITH_REWRITE, script, *options]


def c_relay_command(base: Path, port: int, sink_ports: list[int], *, workers: int, batch: int, queue: int) -> list[str]:
    # one destination: forward; several: carbon_ch with the instance names DSAT gives them (same placement)
    if len(sink_ports) == 1:
        cluster = f"cluster sink forward 127.0.0.1:{sink_ports[0]};"
    else:
        cluster = "cluster sink carbon_ch " + " ".join(f"127.0.0.1:{p}={i}" for i, p in enumerate(sink_ports)) + ";"
    (base / "relay.conf").write_text(
        f"""
listen type linemode 127.0.0.1:{port} proto tcp;
{cluster}
rewrite {PATTERN} into {REPLACEMENT};
match * send to sink stop;
"""
    )
    # -s: submission mode, no statistics of its own in the stream; -L 15: stall the client rather than drop.
    conf = str(base / "relay.conf")
    return ["carbon-c-relay", "-f", conf, "-s", "-L", "15", "-w", str(workers), "-b", str(batch), "-q", str(queue)]


def relays(
    names: list[str],
    c_relay_settings: tuple[tuple[int, int, int], ...] = C_RELAY_SETTINGS,
    *,
    dsat_workers: int = 1,
    protocol: str = "plaintext",
) -> list[Relay]:
    """The relays *names* to run, each listening for *protocol*; SystemExit for one unknown or without that listener."""
    chosen = []
    for name in names:
        if name == "dsat":
            command = functools.partial(dsat_command, workers=dsat_workers, protocol=protocol)
            chosen.append(Relay("dsat", f"workers={dsat_workers} max_queue={QUEUE}", command, dsat_workers))
        elif name == "carbon-relay":
            command = functools.partial(carbon_relay_command, protocol=protocol)
            chosen.append(Relay("carbon-relay", f"MAX_QUEUE_SIZE={QUEUE}", command))
        elif name == "carbon-c-relay":
            if protocol == "pickle":
                choices = ", ".join(PICKLE_RELAYS)
                raise SystemExit(
                    f"carbon-c-relay has no pickle listener: with --protocol pickle, choose among {choices}"
                )
            for workers, batch, queue in c_relay_settings:
                command = functools.partial(c_relay_command, workers=workers, batch=batch, queue=queue)
                chosen.append(Relay("carbon-c-relay", f"-w {workers} -b {batch} -q {queue}", command))
        else:
            raise SystemExit(f"unknown relay {name!r}: choose among dsat, carbon-relay, carbon-c-relay")
    return chosen


def ensure_c_relay() -> None:
    """Install Debian's carbon-c-relay when it is missing."""
    if shutil.which("carbon-c-relay"):
        return
    print("installing carbon-c-relay (apt-get)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, stdout=subprocess.DEVNULL, env=env)
    subprocess.run(["apt-get", "install", "-y", "carbon-c-relay"], check=True, stdout=subprocess.DEVNULL, env=env)


def c_relay_version() -> str:
    out = subprocess.run(["carbon-c-relay", "-v"], capture_output=True, text=True).stdout
    return out.split("\n", 1)[0]


# -- one run ---------------------------------------------------------------------------------------------------


def wait_listening(port: int, proc: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the relay exited ({proc.returncode}) before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds:.0f} s")


def wait_listeners(pid: int, port: int, count: int, seconds: float) -> None:
    """Wait until *count* processes of *pid*'s tree listen on *port* (DSAT's workers start after the orchester)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        listening = 0
        try:
            top = psutil.Process(pid)
            for proc in [top, *top.children(recursive=True)]:
                sockets = proc.net_connections(kind="tcp")
                listening += any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in sockets)
        except psutil.NoSuchProcess:
            pass
        if listening >= count:
            return
        time.sleep(0.1)
    raise SystemExit(f"{count} processes did not listen on port {port} within {seconds:.0f} s")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time used so far by *pid* and its descendants: the whole relay."""
    top = psutil.Process(pid)
    total = 0.0
    for proc in [top, *top.children(recursive=True)]:
        times = proc.cpu_times()
        total += times.user + times.system + times.children_user + times.children_system
    return total


@dataclass
class Run:
    relay: str
    settings: str
    names: int
    connections: int
    destinations: int
    lines: int
    delivered: int  # lines with the rewritten name counted at the sinks
    not_rewritten: int  # lines that still had the original name
    other_lines: int  # anything else the sinks received
    seconds: float
    datapoints_per_s: int
    cpu_seconds: float  # used by the relay's processes during the run
    peak_rss_mb: float  # the largest resident set of the relay's processes added up, sampled every 0.1 s
    peak_process_rss_mb: float  # the largest of one of them (DSAT: the orchester)
    complete: bool
    verified: bool | None = None  # with --verify: the sinks received exactly the rewritten workload


def rss_mb(pid: int) -> tuple[float, float]:
    """Resident memory of *pid* and its descendants added up, and of the largest of them, in MB."""
    try:
        top = psutil.Process(pid)
        sizes = [proc.memory_info().rss / 1e6 for proc in [top, *top.children(recursive=True)]]
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    return sum(sizes), max(sizes)


def measure(
    relay: Relay, cell: Cell, writes: list[list[bytes]], args: argparse.Namespace, expected: Points | None
) -> Run:
    """Start the sinks and *relay*, send *writes*, wait until the sinks counted every line (or gave up)."""
    ctx = multiprocessing.get_context("fork")
    counts: Counters = ctx.Array("d", 6, lock=False)
    counts[TARGET] = cell.lines
    with tempfile.TemporaryDirectory(prefix="dsat-relay-bench-") as tmp:
        base = Path(tmp)
        copy = base / "received" if expected is not None else None
        listeners = [socket.create_server(("127.0.0.1", 0), backlog=128) for _ in range(cell.destinations)]
        for listener in listeners:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sink_ports = [listener.getsockname()[1] for listener in listeners]
        sink_proc = ctx.Process(target=sink, args=(listeners, counts, copy and str(copy)), daemon=True)
        sink_proc.start()
        for listener in listeners:
            listener.close()
        port = free_port()
        argv = relay.command(base, port, sink_ports)
        with (base / "relay.log").open("wb") as log:
            proc = subprocess.Popen(argv, cwd=base, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        profiler = Profiler(args.profile) if args.profile and relay.name == "dsat" else None
        go = ctx.Event()
        client_proc = None
        try:
            try:
                wait_listening(port, proc, 60)
            except RuntimeError as exc:
                raise SystemExit(
                    f"{relay.name}: {exc}\n{(base / 'relay.log').read_text(errors='replace')[-3000:]}"
                ) from exc
            if relay.listeners > 1:
                wait_listeners(proc.pid, port, relay.listeners, 60)
            if profiler:
                profiler.start(proc.pid)
            client_proc = ctx.Process(target=client, args=(port, writes, go), daemon=True)
            client_proc.start()
            time.sleep(0.5)  # the client's connections are open before the clock starts
            cpu_at_start = cpu_seconds(proc.pid)
            peak = peak_one = 0.0
            started = time.monotonic()
            go.set()
            progress, progress_at = 0.0, started
            while not counts[DONE_AT] and time.monotonic() < started + args.timeout:
                time.sleep(0.1)
                total, largest = rss_mb(proc.pid)
                peak, peak_one = max(peak, total), max(peak_one, largest)
                if counts[LINES] != progress:
                    progress, progress_at = counts[LINES], time.monotonic()
                elif time.monotonic() - progress_at > IDLE_SECONDS:
                    break
            complete = bool(counts[DONE_AT])
            ended = counts[DONE_AT] if complete else counts[LAST_AT] or time.monotonic()
            cpu = cpu_seconds(proc.pid) - cpu_at_start
        finally:
            if profiler:
                profiler.stop()
            if client_proc is not None:
                client_proc.terminate()
                client_proc.join()
            stop_group(proc, 15)
            sink_proc.terminate()
            sink_proc.join()
        if not complete:
            print((base / "relay.log").read_text(errors="replace")[-3000:], file=sys.stderr)
        verified = datapoints(copy.read_bytes()) == expected if copy is not None else None
    seconds = max(ended - started, 1e-6)
    delivered = int(counts[REWRITTEN_LINES])
    return Run(
        relay=relay.name,
        settings=relay.settings,
        names=cell.names,
        connections=cell.connections,
        destinations=cell.destinations,
        lines=cell.lines,
        delivered=delivered,
        not_rewritten=int(counts[ORIGINAL_LINES]),
        other_lines=int(counts[LINES] - counts[REWRITTEN_LINES] - counts[ORIGINAL_LINES]),
        seconds=round(seconds, 3),
        datapoints_per_s=round(delivered / seconds),
        cpu_seconds=round(cpu, 2),
        peak_rss_mb=round(peak, 1),
        peak_process_rss_mb=round(peak_one, 1),
        complete=complete,
        verified=verified,
    )


#: py-spy output formats by file suffix.
PROFILE_FORMATS = {".svg": "flamegraph", ".txt": "raw", ".json": "speedscope"}


class Profiler:
    """``py-spy record`` of each ingress process under ``dsat up`` (the orchester and its workers), once they listen.

    The orchester's profile goes to *path*, worker I's to *path* with ``.wI``
    before its suffix.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, up_pid: int) -> None:
        for child in psutil.Process(up_pid).children(recursive=True):
            argv = child.cmdline()
            if argv[-1:] == ["orchester"]:
                self._record(child.pid, self.path)
            elif argv[-3:-1] == ["orchester", "--worker"]:
                self._record(child.pid, self.path.with_suffix(f".w{argv[-1]}{self.path.suffix}"))
        if not self.procs:
            raise SystemExit("no orchester process under dsat up")
        time.sleep(1)  # py-spy attaches

    def _record(self, pid: int, path: Path) -> None:
        argv = [str(BIN / "py-spy"), "record", "--pid", str(pid), "--output", str(path), "--rate", "250"]
        argv += ["--format", PROFILE_FORMATS.get(path.suffix, "flamegraph")]
        self.procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            proc.wait(60)


# -- the report ------------------------------------------------------------------------------------------------


def best(runs: list[Run], name: str) -> Run | None:
    """The fastest run of *name* that delivered everything (else the one that delivered most)."""
    mine = [run for run in runs if run.relay == name]
    if not mine:
        return None
    return max(mine, key=lambda run: (run.complete, run.datapoints_per_s if run.complete else run.delivered))


def row(run: Run) -> str:
    state = "" if run.complete else f"  INCOMPLETE: {run.delivered:,} of {run.lines:,}"
    if run.not_rewritten or run.other_lines:
        state += f"  {run.not_rewritten:,} not rewritten, {run.other_lines:,} other lines"
    if run.verified is not None:
        state += "  verified" if run.verified else "  NOT VERIFIED: the sinks did not get the rewritten workload"
    return (
        f"{run.relay:<15} {run.settings:<26} {run.names:>9,} {run.connections:>5} {run.destinations:>4} "
        f"{run.seconds:>8.2f} {run.datapoints_per_s:>12,} {run.delivered:>10,} {run.cpu_seconds:>7.1f} "
        f"{run.peak_rss_mb:>7.0f} {run.peak_process_rss_mb:>7.0f}{state}"
    )


HEADER = (
    f"{'relay':<15} {'settings':<26} {'names':>9} {'conn':>5} {'dest':>4} {'seconds':>8} {'datapoints/s':>12} "
    f"{'delivered':>10} {'CPU s':>7} {'RSS MB':>7} {'largest':>7}"
)


def ratios(tops: dict[str, Run | None]) -> dict[str, float]:
    """DSAT's rate over each peer's, where both delivered everything."""
    out = {}
    dsat = tops.get("dsat")
    for peer in ("carbon-c-relay", "carbon-relay"):
        other = tops.get(peer)
        if dsat is not None and other is not None and dsat.complete and other.complete:
            out[f"dsat/{peer}"] = round(dsat.datapoints_per_s / other.datapoints_per_s, 2)
    return out


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "carbon": "1.1.10",
        "carbon-c-relay": c_relay_version() if shutil.which("carbon-c-relay") else None,
    }


def cell_report(cell: Cell, runs: list[Run]) -> dict:
    tops = {name: best(runs, name) for name in ("dsat", "carbon-c-relay", "carbon-relay")}
    return {
        "cell": asdict(cell),
        "best": {name: asdict(run) for name, run in tops.items() if run is not None},
        "ratios": ratios(tops),
    }


def print_table(cells: list[dict], workers: int, protocol: str, tagged: bool) -> None:
    """One line per cell: the best rate of each relay, and DSAT's ratio to carbon-c-relay."""
    names = "tagged" if tagged else "untagged"
    print(f"\nDSAT with [ingress] workers = {workers}; the client sends {protocol}, {names} names")
    print(
        f"{'names':>9} {'conn':>5} {'dest':>4} {'DSAT dp/s':>11} {'c-relay dp/s':>13} {'ratio':>6} "
        f"{'orchester RSS MB':>17}"
    )
    for entry in cells:
        cell, top = entry["cell"], entry["best"]
        dsat, c_relay = top.get("dsat"), top.get("carbon-c-relay")
        ratio = entry["ratios"].get("dsat/carbon-c-relay")
        print(
            f"{cell['names']:>9,} {cell['connections']:>5} {cell['destinations']:>4} "
            f"{dsat['datapoints_per_s'] if dsat else 0:>11,} {c_relay['datapoints_per_s'] if c_relay else 0:>13,} "
            f"{f'{ratio:.2f}x' if ratio is not None else '-':>6} {dsat['peak_process_rss_mb'] if dsat else 0:>17.0f}"
        )


def run_cells(cells: list[Cell], chosen: list[Relay], args: argparse.Namespace) -> list[dict]:
    out = []
    for cell in cells:
        payload = workload(cell)
        writes = writes_for(payload, cell.connections, cell.protocol)
        expected = datapoints(rewritten(payload)) if args.verify else None
        size = sum(map(len, (piece for pieces in writes for piece in pieces)))
        print(f"\n{cell}: {cell.lines:,} datapoints, {size / 1e6:.1f} MB", flush=True)
        print(HEADER, flush=True)
        runs = []
        for relay in chosen:
            for _ in range(args.repeat):
                runs.append(measure(relay, cell, writes, args, expected))
                print(row(runs[-1]), flush=True)
        del payload, writes, expected
        entry = cell_report(cell, runs)
        entry["runs"] = [asdict(run) for run in runs]
        out.append(entry)
    return out


def relay_names(args: argparse.Namespace) -> list[str]:
    """The relays asked for with ``--relays``, else the default ones that listen for ``--protocol`` (with a note)."""
    if args.relays:
        return args.relays.split(",")
    names = ["dsat", "carbon-c-relay"] if args.sweep else ["dsat", "carbon-c-relay", "carbon-relay"]
    if args.protocol == "pickle":
        print("carbon-c-relay has no pickle listener: not run", flush=True)
        names = [name for name in names if name in PICKLE_RELAYS]
    return names


def results_path(args: argparse.Namespace) -> Path:
    """``bench/results/relay[-pickle][-tagged][-sweep].json``: each variant of the workload keeps its own figures."""
    parts = ["relay"]
    if args.protocol != "plaintext":
        parts.append(args.protocol)
    if args.tagged:
        parts.append("tagged")
    if args.sweep:
        parts.append("sweep")
    return RESULTS.with_name("-".join(parts) + ".json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="run the whole table of docs/performance.rst")
    parser.add_argument("--names", type=int, default=100_000, help="distinct metric names (100,000)")
    parser.add_argument("--rounds", type=int, default=0, help="times each name is sent (default: >= 400,000 lines)")
    parser.add_argument("--connections", type=int, default=1, help="client TCP connections (1)")
    parser.add_argument("--destinations", type=int, default=1, help="carbon destinations, placed by carbon_ch (1)")
    parser.add_argument(
        "--repeat", type=int, default=0, help="runs per relay and setting, the best counts (3; sweep 1)"
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds one run may take (300)")
    parser.add_argument(
        "--relays", default="", help="comma-separated (dsat,carbon-c-relay,carbon-relay; sweep: no carbon-relay)"
    )
    parser.add_argument("--verify", action="store_true", help="also compare every datapoint the sinks received")
    parser.add_argument(
        "--protocol", choices=PROTOCOLS, default="plaintext", help="what the client sends the relays (plaintext)"
    )
    parser.add_argument(
        "--tagged", action="store_true", help="tagged names, name;dc=dcK;env=prod, half with the tags unsorted"
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="py-spy record the orchester (FILE.svg flame graph, FILE.txt stacks) and each worker I (FILE.wI.svg)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="DSAT's [ingress] workers, processes serving the listener (default: one per CPU)",
    )
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (1 if args.sweep else 3)
    chosen = relays(
        relay_names(args),
        C_RELAY_SWEEP if args.sweep else C_RELAY_SETTINGS,
        dsat_workers=args.workers,
        protocol=args.protocol,
    )
    if args.profile and not (BIN / "py-spy").exists():
        raise SystemExit(f"--profile needs py-spy: {BIN / 'pip'} install py-spy")
    if any(relay.name == "carbon-c-relay" for relay in chosen):
        ensure_c_relay()
    if args.sweep:
        cells = [
            Cell(names, rounds, connections, destinations, args.protocol, args.tagged)
            for destinations in SWEEP_DESTINATIONS
            for connections in SWEEP_CONNECTIONS
            for names, rounds in SWEEP_NAMES
        ]
    else:
        rounds = args.rounds or max(2, -(-400_000 // args.names))
        cells = [Cell(args.names, rounds, args.connections, args.destinations, args.protocol, args.tagged)]
    started = time.monotonic()
    results = run_cells(cells, chosen, args)
    print_table(results, args.workers, args.protocol, args.tagged)

    for name, goal in GOALS.items():
        got = [entry["ratios"][name] for entry in results if name in entry["ratios"]]
        if got:
            print(
                f"{name}: {min(got):.2f}x at worst (goal: at least {goal}x, {'met' if min(got) >= goal else 'MISSED'})"
            )
    result = {
        "command": " ".join(["bench/relay.py", *(argv if argv is not None else sys.argv[1:])]),
        "repeat": args.repeat,
        "dsat_workers": args.workers,
        "seconds": round(time.monotonic() - started),
        "machine": machine(),
        "goals": GOALS,
        "cells": results,
    }
    if not args.no_save:
        path = results_path(args)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {path.relative_to(ROOT)}")

    ok = all(run["complete"] and run["verified"] is not False for entry in results for run in entry["best"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

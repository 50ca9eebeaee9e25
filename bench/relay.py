"""DSAT against carbon-relay and carbon-c-relay: one plaintext workload, one rewrite rule, side by side.

Each relay runs in its own process(es), listens for Graphite plaintext on
127.0.0.1, rewrites ``servers.hostNNN.cpu.*`` into ``servers.hostNNN.processor.*``
and forwards plaintext to a counting sink: a separate process that counts the
lines it receives and how many carry the rewritten name.  A client writes the
pre-generated workload as fast as the relay takes it; a relay's rate is the
datapoints delivered divided by the time from the first byte sent until the
sink counted the last one.  carbon-c-relay runs with a few worker/batch/queue
settings, every relay runs ``--repeat`` times, and the best run of each counts.
The figures go to ``bench/results/relay.json``; ``docs/performance.rst`` explains them.

    .venv/bin/python bench/relay.py [--lines 1000000] [--repeat 3] [--verify]
"""

from __future__ import annotations

import argparse
import contextlib
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

import psutil

from dsat.stack import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results" / "relay.json"

HOSTS = 50
CORES = 8
STATES = ("user", "system", "iowait", "idle")
#: The rewrite every relay applies (POSIX ERE and Python ``re`` alike: carbon-c-relay's libc regex has no ``\d``).
PATTERN = r"^servers\.(host[0-9]+)\.cpu\."
REPLACEMENT = r"servers.\1.processor."
REWRITTEN = b".processor."
ORIGINAL = b".cpu."

#: carbon-c-relay settings tried, as (workers, batch size, queue size).  Its default queue (25,000) makes it
#: stall the client about a second at a time (36,000 datapoints/s here), so every setting has a large one.
C_RELAY_SETTINGS = ((1, 2500, 5_000_000), (1, 10_000, 5_000_000), (2, 10_000, 1_000_000), (2, 10_000, 5_000_000))
#: The relays' queues hold the whole workload, so none has to drop or stall (carbon-relay drops when full).
QUEUE = 10_000_000
#: DSAT's rate divided by each peer's, at least.
GOALS = {"dsat/carbon-c-relay": 1.0, "dsat/carbon-relay": 3.0}
#: A run gives up when the sink counted nothing new for this long.
IDLE_SECONDS = 30

#: Slots of the sink's shared counters.
LINES, REWRITTEN_LINES, ORIGINAL_LINES, LAST_AT, TARGET, DONE_AT = range(6)
Counters = ctypes.Array[ctypes.c_double]
Points = list[tuple[bytes, float, int]]


def workload(lines: int, seed: int = 42) -> bytes:
    """*lines* plaintext datapoints: 50 hosts x 8 cores x 4 CPU states, a round every 10 s, values in 0-100."""
    rng = random.Random(seed)
    names = [f"servers.host{h:03d}.cpu.core{c}.{s}" for h in range(HOSTS) for c in range(CORES) for s in STATES]
    rounds = lines // len(names) + 1
    start = (int(time.time()) // 10 - rounds) * 10
    out = [
        f"{names[i % len(names)]} {rng.uniform(0, 100):.2f} {start + 10 * (i // len(names))}\n" for i in range(lines)
    ]
    return "".join(out).encode()


def datapoints(data: bytes) -> Points:
    """The (path, value, timestamp) of every line, sorted: relays may write ``1.40`` as ``1.4``."""
    points = []
    for line in data.splitlines():
        path, value, timestamp = line.split()
        points.append((path, float(value), int(timestamp)))
    points.sort()
    return points


def rewritten(payload: bytes) -> bytes:
    return re.sub(rb"(?m)" + PATTERN.encode(), REPLACEMENT.encode(), payload)


def sink(listener: socket.socket, counts: Counters, copy: str | None) -> None:
    """Count the complete lines received on every connection, and those with the rewritten name; *copy* keeps them."""
    out = open(copy, "wb") if copy else None  # noqa: SIM115 (lives as long as this process)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    tails: dict[socket.socket, bytes] = {}
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                conn, _ = listener.accept()
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


# -- the relays ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Relay:
    """One relay to run: its name, its settings, and how to write its configuration and get its command line."""

    name: str
    settings: str
    command: Callable[[Path, int, int], list[str]]  # (directory, listen port, sink port) -> argv


def dsat_command(base: Path, port: int, sink_port: int) -> list[str]:
    (base / "rewrite-rules.conf").write_text(f"[pre]\n{PATTERN} = {REPLACEMENT}\n")
    (base / "topology.toml").write_text(
        f"""
[dsat]
where = "bench"
run_dir = "run"
[tracker]
metrics_every = "1h"
[ingress]
plaintext = "127.0.0.1:{port}"
[rules]
rewrite = "rewrite-rules.conf"
[carbon]
destinations = ["127.0.0.1:{sink_port}"]
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


def carbon_relay_command(base: Path, port: int, sink_port: int) -> list[str]:
    conf = base / "conf"
    conf.mkdir()
    (conf / "rewrite-rules.conf").write_text(f"[pre]\n{PATTERN} = {REPLACEMENT}\n")
    (conf / "storage-schemas.conf").write_text("[default]\npattern = .*\nretentions = 10s:1d\n")
    (conf / "relay-rules.conf").write_text(f"[default]\ndefault = true\ndestinations = 127.0.0.1:{sink_port}\n")
    (conf / "carbon.conf").write_text(
        f"""
[relay]
STORAGE_DIR = {base / "storage"}
LINE_RECEIVER_INTERFACE = 127.0.0.1
LINE_RECEIVER_PORT = {port}
PICKLE_RECEIVER_INTERFACE = 127.0.0.1
PICKLE_RECEIVER_PORT = {free_port()}
RELAY_METHOD = rules
DESTINATIONS = 127.0.0.1:{sink_port}
DESTINATION_PROTOCOL = line
MAX_QUEUE_SIZE = {QUEUE}
CARBON_METRIC_INTERVAL = 0
LOG_LISTENER_CONN_SUCCESS = False
"""
    )
    script = str(BIN / "carbon-relay.py")
    options = [f"--config={conf / 'carbon.conf'}", f"--logdir={base / 'log'}", "--nodaemon", "start"]
    return [sys.executable, "-c", CARBON_RELAY_WITH_REWRITE, script, *options]


def c_relay_command(base: Path, port: int, sink_port: int, *, workers: int, batch: int, queue: int) -> list[str]:
    (base / "relay.conf").write_text(
        f"""
listen type linemode 127.0.0.1:{port} proto tcp;
cluster sink forward 127.0.0.1:{sink_port};
rewrite {PATTERN} into {REPLACEMENT};
match * send to sink stop;
"""
    )
    # -s: submission mode, no statistics of its own in the stream; -L 15: stall the client rather than drop.
    conf = str(base / "relay.conf")
    return ["carbon-c-relay", "-f", conf, "-s", "-L", "15", "-w", str(workers), "-b", str(batch), "-q", str(queue)]


def relays(names: list[str]) -> list[Relay]:
    chosen = []
    for name in names:
        if name == "dsat":
            chosen.append(Relay("dsat", f"max_queue={QUEUE}", dsat_command))
        elif name == "carbon-relay":
            chosen.append(Relay("carbon-relay", f"MAX_QUEUE_SIZE={QUEUE}", carbon_relay_command))
        elif name == "carbon-c-relay":
            for workers, batch, queue in C_RELAY_SETTINGS:
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


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the relay, then SIGKILL its process group (it has its own session) in case something lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time used so far by *pid* and its descendants: the whole relay."""
    top = psutil.Process(pid)
    total = 0.0
    for proc in [top, *top.children(recursive=True)]:
        times = proc.cpu_times()
        total += times.user + times.system + times.children_user + times.children_system
    return total


def split(payload: bytes, parts: int) -> list[bytes]:
    """*payload* in *parts* pieces cut at line ends."""
    pieces, start = [], 0
    for i in range(1, parts + 1):
        end = len(payload) if i == parts else payload.index(b"\n", len(payload) * i // parts) + 1
        pieces.append(payload[start:end])
        start = end
    return pieces


def send(sock: socket.socket, piece: bytes) -> None:
    with sock:
        sock.sendall(piece)


@dataclass
class Run:
    relay: str
    settings: str
    lines: int
    delivered: int  # lines with the rewritten name counted at the sink
    not_rewritten: int  # lines that still had the original name
    other_lines: int  # anything else the sink received
    seconds: float
    datapoints_per_s: int
    cpu_seconds: float  # used by the relay's processes during the run
    complete: bool
    verified: bool | None = None  # with --verify: the sink received exactly the rewritten workload


def measure(relay: Relay, payload: bytes, lines: int, args: argparse.Namespace, expected: Points | None) -> Run:
    """Start a sink and *relay*, send *payload*, wait until the sink counted every line (or gave up)."""
    ctx = multiprocessing.get_context("fork")
    counts: Counters = ctx.Array("d", 6, lock=False)
    counts[TARGET] = lines
    with tempfile.TemporaryDirectory(prefix="dsat-relay-bench-") as tmp:
        base = Path(tmp)
        copy = base / "received" if expected is not None else None
        listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sink_port = listener.getsockname()[1]
        sink_proc = ctx.Process(target=sink, args=(listener, counts, copy and str(copy)), daemon=True)
        sink_proc.start()
        listener.close()
        port = free_port()
        argv = relay.command(base, port, sink_port)
        with (base / "relay.log").open("wb") as log:
            proc = subprocess.Popen(argv, cwd=base, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        profiler = Profiler(args.profile) if args.profile and relay.name == "dsat" else None
        try:
            try:
                wait_listening(port, proc, 60)
            except RuntimeError as exc:
                raise SystemExit(
                    f"{relay.name}: {exc}\n{(base / 'relay.log').read_text(errors='replace')[-3000:]}"
                ) from exc
            if profiler:
                profiler.start(proc.pid)
            socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(args.connections)]
            pieces = split(payload, args.connections)
            cpu_at_start = cpu_seconds(proc.pid)
            senders = [
                threading.Thread(target=send, args=pair, daemon=True) for pair in zip(socks, pieces, strict=True)
            ]
            started = time.monotonic()
            for thread in senders:
                thread.start()
            progress, progress_at = 0.0, started
            while not counts[DONE_AT] and time.monotonic() < started + args.timeout:
                time.sleep(0.02)
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
            stop(proc)
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
        lines=lines,
        delivered=delivered,
        not_rewritten=int(counts[ORIGINAL_LINES]),
        other_lines=int(counts[LINES] - counts[REWRITTEN_LINES] - counts[ORIGINAL_LINES]),
        seconds=round(seconds, 3),
        datapoints_per_s=round(delivered / seconds),
        cpu_seconds=round(cpu, 2),
        complete=complete,
        verified=verified,
    )


#: py-spy output formats by file suffix.
PROFILE_FORMATS = {".svg": "flamegraph", ".txt": "raw", ".json": "speedscope"}


class Profiler:
    """``py-spy record`` of the orchester under ``dsat up``, from the moment its ingress listens."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, up_pid: int) -> None:
        for child in psutil.Process(up_pid).children(recursive=True):
            if child.cmdline()[-1:] == ["orchester"]:
                argv = [str(BIN / "py-spy"), "record", "--pid", str(child.pid), "--output", self.path, "--rate", "250"]
                argv += ["--format", PROFILE_FORMATS.get(Path(self.path).suffix, "flamegraph")]
                self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)  # py-spy attaches
                return
        raise SystemExit("no orchester process under dsat up")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(60)


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
        state += "  verified" if run.verified else "  NOT VERIFIED: the sink did not get the rewritten workload"
    return (
        f"{run.relay:<15} {run.settings:<30} {run.seconds:>8.2f} {run.datapoints_per_s:>13,} "
        f"{run.delivered:>11,} {run.cpu_seconds:>8.1f}{state}"
    )


HEADER = f"{'relay':<15} {'settings':<30} {'seconds':>8} {'datapoints/s':>13} {'delivered':>11} {'CPU s':>8}"


def report(runs: list[Run], args: argparse.Namespace) -> dict:
    tops = {name: best(runs, name) for name in ("dsat", "carbon-c-relay", "carbon-relay")}
    print(f"\nbest of each\n{HEADER}")
    for run in tops.values():
        if run is not None:
            print(row(run))
    ratios = {}
    dsat = tops["dsat"]
    for peer in ("carbon-c-relay", "carbon-relay"):
        other = tops[peer]
        if dsat is not None and other is not None and dsat.complete and other.complete:
            ratios[f"dsat/{peer}"] = round(dsat.datapoints_per_s / other.datapoints_per_s, 2)
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.2f}x (goal: at least {GOALS[name]}x, {'met' if ratio >= GOALS[name] else 'MISSED'})")
    return {
        "command": " ".join(["bench/relay.py", *sys.argv[1:]]),
        "lines": args.lines,
        "connections": args.connections,
        "repeat": args.repeat,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "carbon": "1.1.10",
            "carbon-c-relay": c_relay_version() if shutil.which("carbon-c-relay") else None,
        },
        "best": {name: asdict(run) for name, run in tops.items() if run is not None},
        "ratios": ratios,
        "goals": GOALS,
        "runs": [asdict(run) for run in runs],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="datapoints in the workload (1,000,000)")
    parser.add_argument("--connections", type=int, default=1, help="client TCP connections (1)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per relay and setting, the best counts (3)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one run may take (300)")
    parser.add_argument("--relays", default="dsat,carbon-c-relay,carbon-relay", help="comma-separated (all three)")
    parser.add_argument("--verify", action="store_true", help="also compare every datapoint the sink received")
    parser.add_argument(
        "--profile", metavar="FILE", help="py-spy record DSAT's orchester: FILE.svg flame graph, FILE.txt stacks"
    )
    parser.add_argument("--no-save", action="store_true", help=f"do not write {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    chosen = relays(args.relays.split(","))
    if args.profile and not (BIN / "py-spy").exists():
        raise SystemExit(f"--profile needs py-spy: {BIN / 'pip'} install py-spy")
    if any(relay.name == "carbon-c-relay" for relay in chosen):
        ensure_c_relay()
    payload = workload(args.lines)
    expected = datapoints(rewritten(payload)) if args.verify else None
    print(f"workload: {args.lines:,} lines, {len(payload) / 1e6:.1f} MB, {args.connections} connection(s)")
    print(HEADER, flush=True)
    runs = []
    for relay in chosen:
        for _ in range(args.repeat):
            runs.append(measure(relay, payload, args.lines, args, expected))
            print(row(runs[-1]), flush=True)
    result = report(runs, args)
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {RESULTS.relative_to(ROOT)}")
    ok = all(run["complete"] and run["verified"] is not False for run in result["best"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""DSAT against carbon-relay and carbon-c-relay: one plaintext workload, one rewrite rule, side by side.

Each relay runs in its own process(es), listens for Graphite plaintext on
127.0.0.1, rewrites ``servers.hostNNN.cpu.*`` to ``servers.hostNNN.processor.*``
and forwards plaintext to a counting sink (a separate process that counts
newlines and checks every line was rewritten).  A client writes the
pre-generated workload as fast as the relay takes it; the rate is the
datapoints delivered divided by the time from the first byte sent to the
sink counting the last one.  carbon-c-relay runs with a few queue/batch/worker
settings and the best counts.  Figures go to ``bench/results/relay.json``.

    .venv/bin/python bench/relay.py [--lines 1000000] [--connections 1] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
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
from multiprocessing.sharedctypes import SynchronizedArray
from pathlib import Path

from dsat.stack import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results" / "relay.json"

HOSTS = 50
CORES = 8
STATES = ("user", "system", "iowait", "idle")
#: The rewrite every relay applies (POSIX ERE and Python ``re`` alike: carbon-c-relay has no ``\d``).
PATTERN = r"^servers\.(host[0-9]+)\.cpu\."
REPLACEMENT = r"servers.\1.processor."
REWRITTEN = b".processor."
ORIGINAL = b".cpu."

#: carbon-c-relay settings tried, as (workers, batch size, queue size); the best run counts.
C_RELAY_SETTINGS = ((2, 2500, 25000), (1, 2500, 25000), (2, 10000, 1000000), (1, 10000, 1000000))

#: The sink's shared counters.
LINES, REWRITTEN_LINES, ORIGINAL_LINES, LAST_AT, TARGET, DONE_AT = range(6)


def workload(lines: int, seed: int = 42) -> bytes:
    """*lines* plaintext datapoints: 50 hosts x 8 cores x 4 CPU states, a round every 10 s, values in 0-100."""
    rng = random.Random(seed)
    names = [f"servers.host{h:03d}.cpu.core{c}.{s}" for h in range(HOSTS) for c in range(CORES) for s in STATES]
    rounds = lines // len(names) + 1
    start = (int(time.time()) // 10 - rounds) * 10
    out = [f"{names[i % len(names)]} {rng.uniform(0, 100):.2f} {start + 10 * (i // len(names))}\n" for i in range(lines)]
    return "".join(out).encode()


def sink(listener: socket.socket, counts: SynchronizedArray[float]) -> None:
    """Count the complete lines received on every connection, and how many carry the rewritten prefix."""
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    tails: dict[socket.socket, bytes] = {}
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                conn, _ = listener.accept()
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
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
            counts[LINES] += complete.count(b"\n")
            counts[REWRITTEN_LINES] += complete.count(REWRITTEN)
            counts[ORIGINAL_LINES] += complete.count(ORIGINAL)
            counts[LAST_AT] = time.monotonic()
            if counts[REWRITTEN_LINES] >= counts[TARGET] and not counts[DONE_AT]:
                counts[DONE_AT] = counts[LAST_AT]


@dataclass
class Relay:
    """How to start one relay: its name, its settings, and a function writing its config and returning its argv."""

    name: str
    settings: str
    command: Callable[[Path, int, int], list[str]]


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
max_queue = 10000000
"""
    )
    return [str(BIN / "dsat"), "up", str(base / "topology.toml")]


#: carbon-relay (``carbon`` 1.1.10) runs the pipeline ``relay`` alone; this runs it with carbon's own
#: ``rewrite:pre`` processor first, the pipeline carbon-aggregator uses, so it does the same work as the others.
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


def carbon_relay_command(base: Path, port: int, sink_port: int, *, max_queue: int = 100_000) -> list[str]:
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
MAX_QUEUE_SIZE = {max_queue}
USE_FLOW_CONTROL = True
CARBON_METRIC_INTERVAL = 0
LOG_LISTENER_CONN_SUCCESS = False
"""
    )
    return [
        sys.executable,
        "-c",
        CARBON_RELAY_WITH_REWRITE,
        str(BIN / "carbon-relay.py"),
        f"--config={conf / 'carbon.conf'}",
        f"--logdir={base / 'log'}",
        "--nodaemon",
        "start",
    ]


def c_relay_command(base: Path, port: int, sink_port: int, *, workers: int, batch: int, queue: int) -> list[str]:
    (base / "relay.conf").write_text(
        f"""
listen type linemode 127.0.0.1:{port} proto tcp;
cluster sink forward 127.0.0.1:{sink_port};
rewrite {PATTERN} into {REPLACEMENT};
match * send to sink stop;
"""
    )
    # -s: submission mode, no statistics of its own in the stream; -L 15: stall clients as long as it can.
    return ["carbon-c-relay", "-f", str(base / "relay.conf"), "-s", "-L", "15"] + [
        f"-w{workers}",
        f"-b{batch}",
        f"-q{queue}",
    ]


def relays(which: set[str]) -> list[Relay]:
    found = []
    if "dsat" in which:
        found.append(Relay("dsat", "asyncio reactor, one orchester", dsat_command))
    if "carbon-relay" in which:
        found.append(Relay("carbon-relay", "MAX_QUEUE_SIZE=100000, flow control", carbon_relay_command))
    if "carbon-c-relay" in which:
        for workers, batch, queue in C_RELAY_SETTINGS:
            found.append(
                Relay(
                    "carbon-c-relay",
                    f"-w{workers} -b{batch} -q{queue}",
                    lambda base, port, sink_port, w=workers, b=batch, q=queue: c_relay_command(
                        base, port, sink_port, workers=w, batch=b, queue=q
                    ),
                )
            )
    return found


def ensure_c_relay() -> None:
    """Install Debian's carbon-c-relay when it is missing."""
    if shutil.which("carbon-c-relay"):
        return
    print("installing carbon-c-relay (apt-get)", flush=True)
    subprocess.run(["apt-get", "update"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "carbon-c-relay"],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


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
    """SIGTERM the relay, then SIGKILL its process group (started in its own session) if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def split(payload: bytes, parts: int) -> list[bytes]:
    """*payload* in *parts* pieces cut at line ends."""
    pieces, start = [], 0
    for i in range(1, parts + 1):
        end = len(payload) if i == parts else payload.index(b"\n", len(payload) * i // parts) + 1
        pieces.append(payload[start:end])
        start = end
    return pieces


@dataclass
class Run:
    relay: str
    settings: str
    lines: int
    delivered: int
    not_rewritten: int
    other_lines: int
    seconds: float
    datapoints_per_s: float
    complete: bool
    pid: int


def measure(relay: Relay, payload: bytes, lines: int, connections: int, timeout: float, on_start: Callable[[int], None]) -> Run:
    """Start a sink and *relay*, send *payload*, wait until the sink counted every line (or gave up)."""
    ctx = multiprocessing.get_context("fork")
    counts = ctx.Array("d", 6, lock=False)
    counts[TARGET] = lines
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    sink_port = listener.getsockname()[1]
    sink_proc = ctx.Process(target=sink, args=(listener, counts), daemon=True)
    sink_proc.start()
    listener.close()
    with tempfile.TemporaryDirectory(prefix="dsat-relay-bench-") as tmp:
        base = Path(tmp)
        port = free_port()
        argv = relay.command(base, port, sink_port)
        log = (base / "relay.log").open("wb")
        proc = subprocess.Popen(argv, cwd=base, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            try:
                wait_listening(port, proc, 60)
            except RuntimeError as exc:
                log.flush()
                raise SystemExit(f"{relay.name}: {exc}\n{(base / 'relay.log').read_text(errors='replace')[-3000:]}") from exc
            on_start(proc.pid)
            socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
            senders = [threading.Thread(target=send, args=(s, piece)) for s, piece in zip(socks, split(payload, connections))]
            started = time.monotonic()
            for thread in senders:
                thread.start()
            deadline = started + timeout
            progress, progress_at = 0.0, started
            while not counts[DONE_AT] and time.monotonic() < deadline:
                time.sleep(0.02)
                if counts[LINES] != progress:
                    progress, progress_at = counts[LINES], time.monotonic()
                elif time.monotonic() - progress_at > 30:
                    break  # nothing arrived for 30 s: the rest is lost
            for thread in senders:
                thread.join(timeout=5)
            done = bool(counts[DONE_AT])
            ended = counts[DONE_AT] if done else counts[LAST_AT] or time.monotonic()
        finally:
            stop(proc)
            log.close()
            sink_proc.terminate()
            sink_proc.join()
        if not done:
            sys.stderr.write((base / "relay.log").read_text(errors="replace")[-3000:])
    seconds = max(ended - started, 1e-9)
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
        complete=done,
        pid=proc.pid,
    )


def send(sock: socket.socket, piece: bytes) -> None:
    with sock:
        sock.sendall(piece)


def best(runs: list[Run], name: str) -> Run | None:
    """The fastest run of *name* that delivered everything (else the one that delivered most)."""
    mine = [r for r in runs if r.relay == name]
    if not mine:
        return None
    return max(mine, key=lambda r: (r.complete, r.datapoints_per_s if r.complete else r.delivered))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="datapoints in the workload (default 1,000,000)")
    parser.add_argument("--connections", type=int, default=1, help="client TCP connections (default 1)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per relay and setting; the best counts")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one run may take (default 300)")
    parser.add_argument(
        "--relays", default="carbon-c-relay,carbon-relay,dsat", help="which relays, comma-separated (default all)"
    )
    parser.add_argument("--profile", metavar="SVG", help="py-spy record DSAT's orchester during its run into SVG")
    parser.add_argument("--no-save", action="store_true", help=f"do not write {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    which = set(args.relays.split(","))
    if "carbon-c-relay" in which:
        ensure_c_relay()
    payload = workload(args.lines)
    print(f"workload: {args.lines:,} lines, {len(payload) / 1e6:.1f} MB, {args.connections} connection(s)", flush=True)
    runs: list[Run] = []
    for relay in relays(which):
        for _ in range(args.repeat):
            profiler = Profiler(args.profile) if args.profile and relay.name == "dsat" else None
            run = measure(
                relay, payload, args.lines, args.connections, args.timeout, profiler.start if profiler else lambda pid: None
            )
            if profiler:
                profiler.stop()
            runs.append(run)
            state = "" if run.complete else f"  INCOMPLETE ({run.delivered:,} of {run.lines:,})"
            print(
                f"  {run.relay:<15} {run.settings:<38} {run.seconds:7.2f} s {run.datapoints_per_s:>10,} /s{state}",
                flush=True,
            )
    report(runs, args)
    return 0


class Profiler:
    """``py-spy record`` of the orchester process under ``dsat up`` (pid found once the ingress listens)."""

    def __init__(self, svg: str) -> None:
        self.svg = svg
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, up_pid: int) -> None:
        import psutil

        for child in psutil.Process(up_pid).children(recursive=True):
            if child.cmdline()[-1:] == ["orchester"]:
                self.proc = subprocess.Popen(
                    [str(BIN / "py-spy"), "record", "-p", str(child.pid), "-o", self.svg, "-r", "200"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(1)  # py-spy attaches
                return
        raise SystemExit("no orchester process under dsat up")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(30)


def report(runs: list[Run], args: argparse.Namespace) -> None:
    tops = {name: best(runs, name) for name in ("dsat", "carbon-c-relay", "carbon-relay")}
    print()
    print(f"{'relay':<15} {'settings':<38} {'seconds':>8} {'datapoints/s':>13} {'delivered':>11} {'rewritten':>9}")
    for run in tops.values():
        if run is None:
            continue
        rewritten = "all" if run.not_rewritten == 0 else f"{run.not_rewritten:,} not"
        print(
            f"{run.relay:<15} {run.settings:<38} {run.seconds:>8.2f} {run.datapoints_per_s:>13,} "
            f"{run.delivered:>11,} {rewritten:>9}"
        )
    ratios = {}
    mine = tops["dsat"]
    for peer in ("carbon-c-relay", "carbon-relay"):
        other = tops[peer]
        if mine is not None and other is not None and mine.complete and other.complete:
            ratios[f"dsat/{peer}"] = round(mine.datapoints_per_s / other.datapoints_per_s, 2)
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.2f}x")
    if args.no_save:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "lines": args.lines,
        "connections": args.connections,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "carbon-c-relay": c_relay_version(),
        },
        "best": {name: asdict(run) for name, run in tops.items() if run is not None},
        "ratios": ratios,
        "runs": [asdict(run) for run in runs],
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS.relative_to(ROOT)}")


def c_relay_version() -> str | None:
    if not shutil.which("carbon-c-relay"):
        return None
    out = subprocess.run(["carbon-c-relay", "-v"], capture_output=True, text=True).stdout
    return out.split("\n", 1)[0]


if __name__ == "__main__":
    sys.exit(main())

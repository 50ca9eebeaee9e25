"""What the tests share: every helper more than one test module uses lives here, never in a test module.

Fixtures are in ``conftest.py`` and build on these.  In order: waiting and
paths; topology texts loaded in memory; carbon's wire in memory; real
processes (``dsat`` commands, a real carbon-cache); the scenarios of the
reliability and fault tests (their figures go to ``test-artifacts/reliability.json``
for ``docs/reliability.rst``); the demo stack of the end-to-end tests; hosts
as Linux network namespaces (root only).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil
import pytest
import whisper
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from dsat.carbon import Destination, _CarbonProtocol
from dsat.errors import ConfigError
from dsat.plugins import Registry, SatelliteSpec
from dsat.tools.stack import LocalStack, free_port
from dsat.topology import Topology, loads, preflight

ROOT = Path(__file__).resolve().parent.parent


# -- waiting -------------------------------------------------------------------


def wait_for(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    interval: float = 0.2,
    detail: Callable[[], object] | None = None,
) -> object:
    """Poll *predicate* until it returns something truthy; fail the test with *what* after *timeout*.

    *detail*, when given, is called on failure and its result shown (e.g. what is still missing).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            shown = f": {detail()}" if detail is not None else ""
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}{shown}")
        time.sleep(interval)


def settled(read: Callable[[], Any], timeout: float, what: str) -> Any:
    """What *read* returns once two reads a second apart agree and hold something (carbon-cache done writing)."""
    previous: list[Any] = [read()]

    def stable() -> Any:
        time.sleep(1)
        now = read()
        same = now == previous[0]
        previous[0] = now
        return now if same and any(now) else None

    return wait_for(stable, timeout, what, interval=0)


def install_missing_programs(packages: Mapping[str, str]) -> None:
    """Install with apt-get the Debian package of each program (``{program: package}``) not on the PATH."""
    apt_install(sorted({pkg for prog, pkg in packages.items() if shutil.which(prog) is None}))


def apt_install(packages: list[str]) -> None:
    """Install the Debian *packages* with apt-get (none: nothing to do); the test fails, saying why, if it cannot.

    ``a|b`` installs the first of *a*, *b* the archive holds, for a package renamed between releases.
    """
    if not packages:
        return
    if os.geteuid() != 0:
        pytest.fail(f"this test needs {', '.join(packages)} and is not root to install them with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    update = ["apt-get", "update", "-q"]
    done = subprocess.run(update, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"cannot install {packages}: {' '.join(update)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    names = [_in_archive(choice.split("|")) for choice in packages]
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *names]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"cannot install {names}: {' '.join(install)} exited {done.returncode}:\n{done.stderr[-3000:]}")


def _in_archive(names: list[str]) -> str:
    """The first of *names* apt knows a version of to install (the last one when none: apt-get then says why)."""
    for name in names[:-1]:
        shown = subprocess.run(["apt-cache", "policy", name], capture_output=True, text=True, timeout=60)
        if "Candidate:" in shown.stdout and "Candidate: (none)" not in shown.stdout:
            return name
    return names[-1]


# -- topologies, loaded in memory ----------------------------------------------

#: A collector ``c``, a transform ``t`` and a sink ``s`` that do nothing: topologies in tests use these.
REGISTRY = Registry(
    [
        SatelliteSpec(name="c", kind="collector", factory=lambda o: lambda: [], type="gauge"),
        SatelliteSpec(name="t", kind="transform", factory=lambda o: lambda batch: batch),
        SatelliteSpec(name="s", kind="sink", factory=lambda o: lambda batch: None),
    ]
)

#: Where the topologies of :func:`load` say they were read from (nothing is read or written there).
PATH = Path("/tmp/dsat-topo/demo.toml")

#: The smallest valid topology: a collector into a transform into the orchester, on to carbon.
BASE = """
[carbon]
destinations = ["127.0.0.1:2004"]

[satellites.cpu]
use = "c"
every = "10s"
next = ["rate"]

[satellites.rate]
use = "t"
"""

#: Three hosts: the hub (orchester, tracker), a collector on both web hosts, a transform on web02.
MULTI = """
[dsat]
port_base = 7400

[hosts.hub]
address = "10.0.0.1"

[hosts.web01]
address = "10.0.0.11"

[hosts.web02]
address = "fd00::12"

[groups]
web = ["web01", "web02"]

[carbon]
destinations = ["127.0.0.1:2004"]

[satellites.cpu]
use = "c"
every = "10s"
host = "web"
next = ["rate"]

[satellites.rate]
use = "t"
host = "web02"
"""

#: :data:`MULTI` with an orchester pair: hub the primary, hub2 the backup.
PAIR = MULTI.replace(
    '[hosts.hub]\naddress = "10.0.0.1"', '[hosts.hub]\naddress = "10.0.0.1"\n\n[hosts.hub2]\naddress = "10.0.0.2"'
)
PAIR += '\n[orchester]\nhost = ["hub", "hub2"]\nheartbeat = "250ms"\nmissed_beats = 4\n'


def load(text: str, files: bool = False, machine: bool = False) -> Topology:
    """*text* loaded as a topology at :data:`PATH` with :data:`REGISTRY`'s satellites.

    With *files* the preflight checks the files it names (rules, TLS), with *machine* this machine too.
    """
    topo = loads(text, path=PATH, registry=REGISTRY)
    if files or machine:
        preflight.check(topo, machine=machine)
    return topo


def problems(text: str, files: bool = False, machine: bool = False) -> list[str]:
    """The problems loading *text* (and the preflight asked for) reports (the test fails if it loads)."""
    with pytest.raises(ConfigError) as info:
        load(text, files, machine)
    return info.value.problems


def only_problem(text: str, files: bool = False, machine: bool = False) -> str:
    """The one problem loading *text* (and the preflight asked for) reports."""
    found = problems(text, files, machine)
    assert len(found) == 1, found
    return found[0]


# -- carbon's wire, in memory --------------------------------------------------


def unpickle_messages(data: bytes) -> list[list[Any]]:
    """Split a byte stream into carbon pickle messages and load each with carbon's own safe unpickler."""
    from carbon.util import SafeUnpickler

    out = []
    while data:
        (size,) = struct.unpack("!L", data[:4])
        out.append(SafeUnpickler.loads(data[4 : 4 + size]))
        data = data[4 + size :]
    return out


def connect(dest: Destination, transport: StringTransport | None = None) -> _CarbonProtocol:
    """A connection to *dest* made through its own factory and the real protocol, on an in-memory transport."""
    proto = dest.factory.buildProtocol(IPv4Address("TCP", dest.host, dest.port))
    assert isinstance(proto, _CarbonProtocol)
    proto.makeConnection(transport if transport is not None else StringTransport())
    return proto


def sent_bytes(proto: _CarbonProtocol) -> bytes:
    """What the connection wrote to carbon-cache."""
    assert isinstance(proto.transport, StringTransport)
    return proto.transport.value()


# -- real processes ------------------------------------------------------------


class Processes:
    """Starts ``dsat`` commands as real processes and makes sure none outlives the test."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def dsat(self, *args: str, name: str = "dsat") -> subprocess.Popen[bytes]:
        log = self.log_dir / f"{name}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "dsat", *args],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.started.append((proc, log))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
        """SIGTERM, then wait; returns the exit status."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout)

    def cleanup(self) -> list[str]:
        """Kill whatever is left (and say so); returns what had to be killed."""
        leftovers = []
        for proc, _log in self.started:
            try:
                family = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                family = []
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
                leftovers.append(f"pid {proc.pid}")
            for child in family:
                if child.is_running():
                    leftovers.append(f"child {child.pid} {' '.join(child.cmdline()[:6])}")
                    child.kill()
        return leftovers

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        for p, log in self.started:
            if p is proc:
                return log.read_text(errors="replace")
        return ""


SCHEMAS = """
[test]
pattern = ^dsat\\.testhost\\.
retentions = 1s:30m

[default]
pattern = .*
retentions = 10s:1h
"""


class Carbon:
    """A real carbon-cache (1 s Whisper resolution for the test tree) that a test stops and starts."""

    def __init__(self, base: Path) -> None:
        self.stack = LocalStack(base / "carbon", pickle_port=free_port())
        self.stack.prepare_carbon(SCHEMAS)
        self.log = base / "carbon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self.stack.pickle_port

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.stack.carbon_command(), stdout=self.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for(lambda: listening(self.port), 30, "carbon-cache to listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.proc = None

    def runs(self, step: str, metrics: int) -> list[set[int]]:
        """For each metric m0..m<N-1> of *step*, the run numbers stored in its Whisper file."""
        out = []
        for i in range(metrics):
            path = self.stack.whisper_dir / "dsat" / "testhost" / step / f"m{i}.wsp"
            if not path.exists():
                out.append(set())
                continue
            try:
                _, values = whisper.fetch(str(path), 0)
            except whisper.CorruptWhisperFile:  # being created by carbon-cache right now
                values = []
            out.append({int(v) for v in values if v is not None})
        return out

    def values(self, path: str) -> list[float]:
        """The stored values of the metric *path*."""
        return whisper_values(self.stack.whisper_dir, path)


def whisper_values(whisper_dir: Path, path: str) -> list[float]:
    """The stored (non-null) values of the metric *path* under *whisper_dir*; none before its file exists."""
    wsp = whisper_dir / (path.replace(".", "/") + ".wsp")
    if not wsp.exists():
        return []
    try:
        _, points = whisper.fetch(str(wsp), 0)
    except whisper.CorruptWhisperFile:  # being created by carbon-cache right now
        return []
    return [v for v in points if v is not None]


# -- reliability and fault scenarios -------------------------------------------

FIGURES = ROOT / "test-artifacts" / "reliability.json"


def record(scenario: str, **figures: Any) -> None:
    FIGURES.parent.mkdir(exist_ok=True)
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data[scenario] = figures
    FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True))


def topology(base: Path, carbon: Carbon, satellites: str, **tracker: Any) -> Path:
    tracker_conf = {"timeout": '"5s"', "metrics_every": '"1h"', "max_retries": "10", "backoff": "1.0", **tracker}
    text = f"""
[dsat]
where = "testhost"
run_dir = "run"
plugins = ["tests.chaos"]

[tracker]
{chr(10).join(f"{k} = {v}" for k, v in tracker_conf.items())}

[carbon]
destinations = ["127.0.0.1:{carbon.port}"]

[spool]
path = "spool/carbon.db"
replay_rate = 200000

{satellites}
"""
    path = base / "t.toml"
    path.write_text(text)
    return path


def synthetic(step: str, metrics: int) -> str:
    """A ``[satellites]`` table: the synthetic collector *step*, *metrics* datapoints a second."""
    return f'[satellites.{step}]\nuse = "synthetic"\nevery = "1s"\noptions = {{ metrics = {metrics} }}'


def running(
    short_tmp: Path, carbon: Carbon, processes: Processes, step: str, metrics: int, first_runs: int
) -> subprocess.Popen[bytes]:
    """carbon-cache and ``dsat up`` of a synthetic *step*, once its first runs are in Whisper."""
    topo = topology(short_tmp, carbon, synthetic(step, metrics))
    carbon.start()
    up = processes.dsat("up", str(topo), name="up")
    wait_for(lambda: len(carbon.runs(step, 1)[0]) >= first_runs, 60, "the first runs in Whisper")
    return up


def settled_runs(carbon: Carbon, step: str, metrics: int, timeout: float = 90) -> list[set[int]]:
    """The runs in Whisper once carbon-cache has written everything: two reads a second apart agree."""
    return settled(lambda: carbon.runs(step, metrics), timeout, f"carbon-cache to finish writing {step}")  # type: ignore[no-any-return]


def latest_run(carbon: Carbon, step: str) -> int:
    """The highest run number stored for the step's first metric (0 before any)."""
    runs = carbon.runs(step, 1)[0]
    return max(runs) if runs else 0


def wait_for_more_runs(carbon: Carbon, step: str, more: int, timeout: float = 60) -> None:
    """Wait until *more* runs past the latest stored now have reached Whisper (live traffic goes on)."""
    target = latest_run(carbon, step) + more
    wait_for(lambda: latest_run(carbon, step) >= target, timeout, f"{more} more runs of {step} in Whisper")


def assert_every_run_stored(runs: list[set[int]]) -> int:
    """Every metric holds every run from 1 to the highest seen; returns that highest run."""
    last = max(max(r) for r in runs if r)
    missing = {i: sorted(set(range(1, last + 1)) - r)[:10] for i, r in enumerate(runs) if len(r) != last}
    assert not missing, f"runs missing in Whisper (metric: first missing runs): {dict(list(missing.items())[:5])}"
    return last


def _spool_total(base: Path, expression: str) -> int:
    """*expression* over the rows of the spool at ``base/spool/carbon.db`` (0 before it has its table)."""
    db = base / "spool" / "carbon.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        # The file exists a moment before the orchester has created its table.
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'batches'").fetchone() is None:
            return 0
        return int(conn.execute(f"SELECT {expression} FROM batches").fetchone()[0])


def spool_rows(base: Path) -> int:
    """Batches in the spool's file now."""
    return _spool_total(base, "COUNT(*)")


def spooled_points(base: Path) -> int:
    """Datapoints in the spool's file now."""
    return _spool_total(base, "COALESCE(SUM(points), 0)")


def step_pid(up: subprocess.Popen[bytes], step: str) -> int | None:
    for child in psutil.Process(up.pid).children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if len(cmd) > 2 and cmd[-3] == "run" and cmd[-1] == step:
            return child.pid
    return None


def orchester_up(processes: Processes, topo: Path, port: int) -> tuple[subprocess.Popen[bytes], psutil.Process]:
    """``dsat up`` of *topo*, once its orchester listens on *port*; and the orchester's process."""
    up = processes.dsat("up", str(topo), name="up")
    wait_for(lambda: listening(port), 30, f"the orchester's port {port}")
    pid = step_pid(up, "orchester")
    assert pid is not None
    return up, psutil.Process(pid)


def kill_orchester(up: subprocess.Popen[bytes], port: int) -> None:
    """``kill -9`` of the orchester; returns once the supervisor's new one listens on *port*."""
    pid = step_pid(up, "orchester")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: step_pid(up, "orchester") not in (None, pid), 60, "the supervisor to restart the orchester")
    wait_for(lambda: listening(port), 60, "the restarted orchester's port")


def status(topo: Path) -> dict[str, Any] | None:
    out = subprocess.run(
        [sys.executable, "-m", "dsat", "status", "--json", str(topo)], capture_output=True, text=True, timeout=20
    )
    return json.loads(out.stdout) if out.returncode == 0 else None


def ingress_topology(base: Path, carbon_port: int, tables: str) -> Path:
    """A topology with no satellites, only the orchester's ingress, sending to Carbon on *carbon_port*."""
    path = base / "t.toml"
    header = f'[dsat]\nwhere = "testhost"\nrun_dir = "run"\n[carbon]\ndestinations = ["127.0.0.1:{carbon_port}"]\n'
    path.write_text(header + tables)
    return path


class CarbonStandIn:
    """A stand-in for carbon-cache's pickle receiver: every datapoint read is handed to *on_point*."""

    def __init__(self, port: int, on_point: Callable[[str, float, float], None]) -> None:
        self.port = port
        self.on_point = on_point
        self._server: Any = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            t = threading.Thread(target=self._read, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _read(self, conn: Any) -> None:
        buf = b""
        on_point = self.on_point
        with conn, contextlib.suppress(ConnectionResetError):  # the sender gave the connection up
            while chunk := conn.recv(1 << 20):
                buf += chunk
                while len(buf) >= 4 and len(buf) >= 4 + (size := struct.unpack("!L", buf[:4])[0]):
                    for path, (ts, value) in pickle.loads(buf[4 : 4 + size]):
                        on_point(path, ts, value)
                    buf = buf[4 + size :]

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()


class CountingCarbon(CarbonStandIn):
    """Marks which datapoint of which client arrived.

    Client ``c`` sends the values 0..N-1 on paths ``bp.c<c>.m<k>``; ``seen[c][n]`` is set when value n
    of client c is read, so the count of distinct datapoints delivered is exact (a resent one counts once).
    """

    def __init__(self, port: int, clients: int, per_client: int) -> None:
        super().__init__(port, self._mark)
        self.seen = [bytearray(per_client) for _ in range(clients)]
        self.received = 0

    def _mark(self, path: str, ts: float, value: float) -> None:
        parts = path.split(".")
        if parts[0] == "bp":
            self.seen[int(parts[1][1:])][int(value)] = 1
            self.received += 1

    def delivered(self) -> int:
        return sum(sum(s) for s in self.seen)

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()


def recv_queued(port: int) -> int:
    """Bytes waiting unread in the receive queues of the connections to *port* (``ss``'s Recv-Q)."""
    out = subprocess.run(
        ["ss", "-tnH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    return sum(int(line.split()[0]) for line in out.splitlines() if line.strip())


def free_udp_port() -> int:
    """A loopback port free on UDP and on TCP both (statsd listens on both, on one port)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


# -- the demo stack (end to end) -----------------------------------------------


def demo_topology(directory: Path, pickle_port: int) -> Path:
    """The packaged demo topology with fast intervals, this test's carbon port and free ingress ports."""
    text = (ROOT / "dsat" / "demo.toml").read_text()
    text = text.replace('"127.0.0.1:2104"', f'"127.0.0.1:{pickle_port}"')
    for key in ("plaintext", "plaintext_udp", "pickle", "statsd"):
        text = re.sub(rf'^{key} = "127.0.0.1:\d+"', f'{key} = "127.0.0.1:{free_port()}"', text, flags=re.M)
    text = re.sub(r'every = "\d+s"', 'every = "1s"', text)
    text = text.replace('metrics_every = "10s"', 'metrics_every = "1s"')
    path = directory / "demo.toml"
    path.write_text(text)
    return path


def render(url: str, target: str) -> list[dict[str, Any]]:
    """graphite-web's /render JSON for *target* over the last 10 minutes."""
    query = urllib.parse.urlencode({"target": target, "format": "json", "from": "-10min"})
    with urllib.request.urlopen(f"{url}render?{query}", timeout=10) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def stop_cleanly(proc: subprocess.Popen[bytes], procs: Processes) -> None:
    """SIGTERM to `dsat demo` stops every process it started, cleanly, with nothing left running.

    Run by the ``demo`` fixture as it ends, after every test of the module (a failure shows as a
    teardown error), so no test has to stop the shared stack and run last.
    """
    if proc.poll() is not None:
        pytest.fail(f"dsat demo exited early ({proc.returncode}): {procs.log_of(proc)[-3000:]}")
    children = psutil.Process(proc.pid).children(recursive=True)
    names = " ".join(" ".join(c.cmdline()) for c in children)
    assert "carbon-cache" in names and "dsat.tools.graphite_web" in names and " run " in names
    status = procs.stop(proc, timeout=30)
    assert status == 0, procs.log_of(proc)[-3000:]
    _gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, [c.pid for c in alive]


# -- hosts as network namespaces (root) ----------------------------------------

#: Whisper schemas of the multi-host tests: every dsat.* series at 1 s.
NETNS_SCHEMAS = """
[dsat]
pattern = ^dsat\\.
retentions = 1s:30m

[default]
pattern = .*
retentions = 10s:1h
"""


def ip(*args: str) -> None:
    """Run one ``ip`` command; fail the test with its error output."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.fail(f"ip {' '.join(args)}: {done.stderr.strip()} (these tests need root and ip netns)")


class Network:
    """Namespaces joined on a bridge: one per host (``{host: address}``), each with its veth and address."""

    def __init__(self, base: Path, addresses: dict[str, str], tag: str = "") -> None:
        self.addresses = addresses
        self.tag = f"dsat{os.getpid()}{tag}"
        self.veth = f"v{os.getpid()}{tag}"
        self.bridge = f"{self.tag}br"
        self.namespaces: list[str] = []
        self.veths: dict[str, str] = {}
        self.base = base
        self.procs: list[subprocess.Popen[bytes]] = []

    def ns(self, host: str) -> str:
        return f"{self.tag}{host}"

    def create(self) -> None:
        ip("netns", "add", self.bridge)
        self.namespaces.append(self.bridge)
        ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge, "link", "set", "br0", "up")
        for i, (host, address) in enumerate(self.addresses.items()):
            ns = self.ns(host)
            ip("netns", "add", ns)
            self.namespaces.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            inside, outside = f"{self.veth}h{i}", f"{self.veth}b{i}"
            ip("link", "add", inside, "netns", ns, "type", "veth", "peer", "name", outside, "netns", self.bridge)
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", inside)
            ip("-n", ns, "link", "set", inside, "up")
            ip("-n", self.bridge, "link", "set", outside, "master", "br0")
            ip("-n", self.bridge, "link", "set", outside, "up")
            self.veths[host] = outside

    def cut(self, host: str, up: bool) -> None:
        """Take *host*'s link to the bridge down (or up again)."""
        ip("-n", self.bridge, "link", "set", self.veths[host], "up" if up else "down")

    def start(self, host: str, args: list[str], log: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(host), *args],
            stdout=(self.base / f"{log}.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.procs.append(proc)
        return proc

    def python(self, host: str, code: str, timeout: float = 60) -> str:
        """Run a Python snippet inside *host*'s namespace; returns its stdout."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.ns(host), sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def destroy(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def make_keys(topology_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``dsat keys`` of *topology_file* (the key pairs of its hosts, beside it)."""
    return subprocess.run(
        [sys.executable, "-m", "dsat", "keys", str(topology_file), *args], capture_output=True, text=True, timeout=60
    )


def host_copy(base: Path, source: Path, host: str) -> Path:
    """What `docs/deploy.rst` says to copy to *host*: the topology, every public key, its own secret key."""
    folder = base / host
    (folder / "keys" / "private").mkdir(parents=True)
    shutil.copy(source / "topology.toml", folder / "topology.toml")
    shutil.copytree(source / "keys" / "public", folder / "keys" / "public")
    secret = source / "keys" / "private" / f"{host}.key_secret"
    if secret.exists():
        shutil.copy2(secret, folder / "keys" / "private" / secret.name)
    (folder / "keys" / "private").chmod(0o700)
    return folder / "topology.toml"


class Cluster:
    """A topology running on hosts of a :class:`Network`, its carbon-cache (and graphite-web) on one of them."""

    def __init__(self, net: Network, stack: LocalStack, topologies: dict[str, Path]) -> None:
        self.net = net
        self.stack = stack
        self.topologies = topologies
        self.ups: dict[str, subprocess.Popen[bytes]] = {}

    def wsp(self, *parts: str) -> Path:
        return self.stack.whisper_dir.joinpath(*parts[:-1], f"{parts[-1]}.wsp")

    def values(self, *parts: str) -> list[float]:
        """The stored values of the metric whose path components are *parts*."""
        return whisper_values(self.stack.whisper_dir, ".".join(parts))

    def runs(self, step: str, metrics: int, host: str = "web01") -> list[list[int]]:
        """For each metric m0..m<N-1> of *step* on *host*, the run numbers stored in Whisper (one per slot)."""
        return [[int(v) for v in self.values("dsat", host, step, f"m{i}")] for i in range(metrics)]

    def render(self, target: str) -> list[dict[str, object]]:
        """graphite-web's /render JSON for *target*, fetched inside the hub's namespace."""
        url = f"{self.stack.url}render?target={target}&from=-10min&format=json"
        out = self.net.python(
            "hub", f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=20).read().decode())"
        )
        return json.loads(out)  # type: ignore[no-any-return]

"""Ingress workers (``[ingress] workers``): the setting, the shared listeners, the supervision, and real processes.

The pieces are checked without processes (a fake process reactor and its
clock); then a real orchester with two workers receives datapoints on many
connections, delivers every one exactly once, has served connections in both
processes, and its worker ends when the orchester is killed.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from itertools import count
from pathlib import Path
from typing import Any

import psutil
import pytest
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from dsat import process, topology
from dsat.envelope import Envelope, encode
from dsat.errors import ConfigError
from dsat.tools.stack import free_port
from dsat.workers import ParentLink, Workers, listen_tcp, reuseport_socket, worker_command, worker_spool
from tests.harness import BASE, PAIR, REGISTRY, CarbonStandIn, Processes, load, only_problem, wait_for

# -- the setting -------------------------------------------------------------------------------------


def test_workers_default_to_one_and_auto_is_one_per_cpu() -> None:
    """No setting: one process; a number is taken as it is; "auto" is os.cpu_count()."""
    assert load(BASE).ingress.workers == 1
    assert load(BASE + "[ingress]\nworkers = 3\n").ingress.workers == 3
    assert load(BASE + '[ingress]\nworkers = "auto"\n').ingress.workers == (os.cpu_count() or 1)


@pytest.mark.parametrize("value", ["0", "-2", '"many"'])
def test_a_worker_count_that_is_not_a_positive_number_is_refused(value: str) -> None:
    problem = only_problem(BASE + f"[ingress]\nworkers = {value}\n")
    assert problem.startswith("demo.toml: ingress.workers: ")
    assert 'must be a number of processes, at least 1, or "auto"' in problem


def test_workers_are_refused_with_a_pair_and_with_aggregation_rules(tmp_path: Path) -> None:
    """A pair's servers each have one ingress process; aggregation in two processes would write partial sums."""
    problem = only_problem(PAIR + "[ingress]\nworkers = 2\n")
    assert "ingress.workers: 2: an orchester pair has one ingress process per server; set workers = 1" in problem
    (tmp_path / "aggregation-rules.conf").write_text("sum.<x> (60) = sum <x>.*\n")
    text = BASE + '[ingress]\nworkers = 2\n[rules]\naggregation = "aggregation-rules.conf"\n'
    with pytest.raises(ConfigError) as info:
        topology.loads(text, path=tmp_path / "t.toml", registry=REGISTRY)
    assert info.value.problems == [
        "t.toml: ingress.workers: 2: with aggregation rules each worker would write partial sums"
        " under the same names; set workers = 1 or drop rules.aggregation"
    ]
    again = topology.loads(text.replace("workers = 2", "workers = 1"), path=tmp_path / "t.toml", registry=REGISTRY)
    assert again.ingress.workers == 1


# -- the shared listeners ----------------------------------------------------------------------------


def test_reuseport_sockets_share_a_port_and_the_kernel_spreads_connections_over_them() -> None:
    """Two SO_REUSEPORT listeners bind one port (a plain bind cannot) and both get connections."""
    first = reuseport_socket(("127.0.0.1", 0))
    port = first.getsockname()[1]
    second = reuseport_socket(("127.0.0.1", port))
    plain = socket.socket()
    clients = []
    try:
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        accepted = Counter[int]()
        for which, listener in enumerate((first, second)):
            while True:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    break
                conn.close()
                accepted[which] += 1
        assert accepted.total() == 40
        assert accepted[0] > 0 and accepted[1] > 0, accepted  # all 40 on one: a chance of 2 in 2**40
    finally:
        for sock in (first, second, plain, *clients):
            sock.close()


def test_listen_tcp_adopts_a_reuseport_socket_only_when_the_port_is_shared() -> None:
    reactor = MemoryReactorClock()
    port = free_port()
    listen_tcp(reactor, ("127.0.0.1", port), factory := object(), reuse_port=False)
    assert reactor.tcpServers == [(port, factory, 50, "127.0.0.1")] and reactor.adoptedPorts == []
    listen_tcp(reactor, ("127.0.0.1", port), factory, reuse_port=True)
    ((_fd, family, adopted),) = reactor.adoptedPorts
    assert (family, adopted) == (socket.AF_INET, factory)


# -- the builders: the orchester with workers, and a worker ------------------------------------------

SHARED = """
[dsat]
where = "testhost"
run_dir = "run"
[ingress]
plaintext = "127.0.0.1:{plain}"
pickle = "127.0.0.1:{pickle}"
plaintext_udp = "127.0.0.1:{udp}"
workers = 3
[carbon]
destinations = ["127.0.0.1:{carbon}"]
[spool]
path = "spool/carbon.db"
"""


class Links:
    """Link factories that keep what a builder opens (see tests/test_process.py)."""

    def __init__(self) -> None:
        self.received: dict[tuple[str, str], Any] = {}

    def sender(self, pattern: str, address: str, *, bind: bool = False) -> Any:
        from dsat.testing import FakeSender

        return FakeSender()

    def receiver(self, pattern: str, address: str, on_frame: Any, *, bind: bool = True, **kw: Any) -> Any:
        from dsat.testing import FakeProducer

        self.received[(pattern, address)] = on_frame
        return FakeProducer()


def shared_topology(tmp_path: Path) -> topology.Topology:
    ports = {key: free_port() for key in ("plain", "pickle", "udp", "carbon")}
    return topology.loads(SHARED.format(**ports), path=tmp_path / "t.toml")


def test_the_orchester_with_workers_shares_its_tcp_listeners_and_forwards_control(tmp_path: Path) -> None:
    """workers = 3: TCP listeners adopted from SO_REUSEPORT sockets, two workers started with the reactor,
    and each control frame applied here and forwarded to them."""
    topo = shared_topology(tmp_path)
    links, reactor = Links(), MemoryReactorClock()
    wiring = process.Wiring(reactor, topo, "orchester", host="", pid=1, sender=links.sender, receiver=links.receiver)
    orch = process.orchester(wiring)
    assert len(reactor.adoptedPorts) == 2 and reactor.tcpServers == []  # plaintext and pickle, shared
    assert wiring.listeners is not None and len(wiring.listeners.udp_ports) == 1  # UDP stays here
    workers = wiring.workers
    assert workers is not None and workers.names == ["orchester.w1", "orchester.w2"]
    orch.heartbeat()  # the workers are not started (no reactor run): the heartbeat says so, for `dsat status`
    beat = orch.reporter.sender.envelopes()[-1].meta  # type: ignore[attr-defined]
    assert beat["workers"] == "1 of 3 processes running; down: orchester.w1, orchester.w2"
    workers.supervisor.monitor.protocols["orchester.w1"] = object()  # type: ignore[assignment]  # w1 running
    assert workers.describe() == "2 of 3 processes running; down: orchester.w2"
    workers.supervisor.restarts.counts["orchester.w2"] = Counter(hung=1, exited=2)
    assert (
        workers.describe() == "2 of 3 processes running; down: orchester.w2; restarted: orchester.w2 exited 2, hung 1"
    )
    workers.supervisor.restarts.counts.clear()
    del workers.supervisor.monitor.protocols["orchester.w1"]
    assert (workers.start, (), {}) in reactor.whenRunningHooks
    forwarded: list[bytes] = []
    workers.send = forwarded.append  # type: ignore[method-assign]
    change = {"action": "route", "type": "gauge", "targets": "carbon"}
    frame = encode(Envelope(channel="control", type="route", step="dsat-route", meta=change))
    links.received[("sub", topo.orchester.control)](frame)
    assert forwarded == [frame] and orch.routes["gauge"] == ("carbon",)
    links.received[("sub", topo.orchester.control)](b"x" * (ParentLink.MAX_LENGTH + 1))
    assert forwarded == [frame]  # rejected here, not forwarded: the workers' link stays up
    wiring.listeners.close()


def start_orchester_logged(tmp_path: Path, topo: topology.Topology) -> tuple[Any, list[dict[str, Any]]]:
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    links, reactor = Links(), MemoryReactorClock()
    wiring = process.Wiring(reactor, topo, "orchester", host="", pid=1, sender=links.sender, receiver=links.receiver)
    try:
        orch = process.orchester(wiring)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert wiring.listeners is not None
    wiring.listeners.close()
    return orch, events


def test_the_orchester_takes_what_the_spools_of_workers_that_no_longer_run_hold(tmp_path: Path) -> None:
    """workers lowered from 5 to 3: carbon.w3.db and carbon.w4.db are emptied into the orchester's spool and
    removed, so what they held is replayed; carbon.w1.db (a worker that still runs) is left to its worker."""
    from dsat.spool import Spool

    topo = shared_topology(tmp_path)
    dest = topo.carbon.destinations[0]
    name = f"{dest[0]}:{dest[1]}"
    for index, points in ((1, 4), (3, 9), (4, 6)):
        spool = Spool(tmp_path / "spool" / f"carbon.w{index}.db")
        spool.put(name, f"m{index} 1 1700000000\n".encode(), points)
        spool.close()
    orch, events = start_orchester_logged(tmp_path, topo)
    spool = orch.egress.spool
    assert spool is not None and spool.pending(name) == 15
    assert orch.egress.destinations[0].spool_pending == 15  # counted before the destination was made
    assert not (tmp_path / "spool" / "carbon.w3.db").exists() and not (tmp_path / "spool" / "carbon.w4.db").exists()
    assert Spool(tmp_path / "spool" / "carbon.w1.db").pending() == 4
    took = sorted((e["path"], e["points"]) for e in events if "took {points}" in e.get("log_format", ""))
    assert took == [(str(tmp_path / "spool" / f"carbon.w{i}.db"), n) for i, n in ((3, 9), (4, 6))]
    assert not [e for e in events if "spool_stranded" in e.get("log_format", "")]


def test_a_stranded_spool_the_orchester_cannot_take_is_left_with_an_alert(tmp_path: Path) -> None:
    """The orchester's spool full under policy block: the worker's spool stays, ALERT spool_stranded says so."""
    from dsat.spool import Spool

    topo = shared_topology(tmp_path)
    topo = dataclasses.replace(topo, spool=dataclasses.replace(topo.spool, max_bytes=1000, policy="block"))
    own = Spool(tmp_path / "spool" / "carbon.db", max_bytes=1000, policy="block")
    own.put("127.0.0.1:2004", b"x" * 990, 1)
    own.close()
    stranded = Spool(tmp_path / "spool" / "carbon.w3.db")
    stranded.put("127.0.0.1:2004", b"y" * 20, 9)
    stranded.close()
    _orch, events = start_orchester_logged(tmp_path, topo)
    (alert,) = [e for e in events if "spool_stranded" in e.get("log_format", "")]
    assert (alert["path"], alert["points"]) == (str(tmp_path / "spool" / "carbon.w3.db"), 9)
    assert Spool(tmp_path / "spool" / "carbon.w3.db").pending() == 9


def test_a_worker_listens_on_tcp_only_with_its_own_spool_and_metric_names(tmp_path: Path) -> None:
    """Worker 2: plaintext and pickle shared, no UDP, no link at all, spool carbon.w2.db, self.orchester.w2.*."""
    topo = shared_topology(tmp_path)
    links, reactor = Links(), MemoryReactorClock()
    wiring = process.Wiring(reactor, topo, "orchester", host="", pid=7, sender=links.sender, receiver=links.receiver)
    worker = process.ingress_worker(wiring, 2)
    assert wiring.listeners is not None and wiring.listeners.udp_ports == []
    assert len(reactor.adoptedPorts) == 2 and links.received == {}
    assert worker.egress.spool is not None and worker.egress.spool.path == tmp_path / "spool" / "carbon.w2.db"
    assert worker_spool(None, 2) is None
    names = {path for path, _ts, _value in worker.own_metrics()}
    assert "dsat.testhost.self.orchester.w2.points_in" in names
    assert not any(".self.orchester.points_in" in name for name in names)


def test_spools_of_workers_that_no_longer_run_are_found_with_what_they_hold(tmp_path: Path) -> None:
    """workers lowered from 4 to 2: carbon.w2.db and carbon.w3.db are stranded if they hold datapoints."""
    from dsat.spool import Spool
    from dsat.workers import stranded_spools

    main = tmp_path / "spool" / "carbon.db"
    for index, points in ((1, 5), (2, 7), (3, 0), (12, 1)):
        spool = Spool(worker_spool(main, index) or main)
        if points:
            spool.put("127.0.0.1:2004", b"x" * 10, points)
        spool.close()
    (tmp_path / "spool" / "carbon.wx.db").write_bytes(b"")  # not a worker's
    assert stranded_spools(main, 2) == [
        (tmp_path / "spool" / "carbon.w12.db", 1),
        (tmp_path / "spool" / "carbon.w2.db", 7),
    ]
    assert stranded_spools(main, 13) == [] and stranded_spools(None, 1) == []


# -- supervision -------------------------------------------------------------------------------------


class FakeProcess:
    """A process transport: what was written to its standard input and the signals it got."""

    pids = count(1000)

    def __init__(self, proto: Any) -> None:
        self.proto = proto
        self.pid = next(self.pids)
        self.written: list[bytes] = []
        self.signals: list[int | str] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def signalProcess(self, signum: int | str) -> None:  # noqa: N802 (Twisted API)
        self.signals.append(signum)

    def end(self) -> None:
        self.proto.processEnded(Failure(ProcessTerminated(exitCode=1)))


class ProcessReactor(Clock):
    """A clock that also 'spawns' processes: it keeps their command lines and transports."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[list[str], FakeProcess]] = []

    def spawnProcess(self, proto: Any, executable: str, args: list[str], **kw: Any) -> FakeProcess:  # noqa: N802
        transport = FakeProcess(proto)
        self.spawned.append((list(args), transport))
        proto.makeConnection(transport)
        return transport


def test_workers_are_started_with_their_index_restarted_with_back_off_and_not_after_stop(tmp_path: Path) -> None:
    reactor = ProcessReactor()
    workers = Workers(reactor, tmp_path / "t.toml", 3, host="hub")
    workers.start()
    assert [args for args, _ in reactor.spawned] == [
        worker_command(tmp_path / "t.toml", 1, "hub"),
        worker_command(tmp_path / "t.toml", 2, "hub"),
    ]
    assert reactor.spawned[1][0][1:] == ["-m", "dsat", "run", str(tmp_path / "t.toml"), "orchester"] + [
        "--host",
        "hub",
        "--worker",
        "2",
    ]
    # worker 1 dies young, again and again: each restart waits twice as long
    waits = []
    for _ in range(3):
        spawned = len(reactor.spawned)
        reactor.spawned[-2 if spawned == 2 else -1][1].end()
        started_at = reactor.seconds()
        while len(reactor.spawned) == spawned:
            reactor.advance(0.25)
        waits.append(reactor.seconds() - started_at)
        assert reactor.spawned[-1][0][-1] == "1"
    assert waits == [1.0, 2.0, 4.0]
    # one that had lived long is restarted at once
    reactor.advance(60)
    reactor.spawned[-1][1].end()
    reactor.advance(0)
    assert len(reactor.spawned) == 6
    # frames and signals reach the running ones; after stop nothing restarts
    workers.send(b"frame")
    workers.signal(signal.SIGHUP)
    running = [reactor.spawned[1][1], reactor.spawned[-1][1]]
    assert [t.written for t in running] == [[b"\x00\x00\x00\x05frame"]] * 2
    assert [t.signals for t in running] == [[signal.SIGHUP]] * 2
    stopped = workers.stop()
    assert [t.signals[-1] for t in running] == ["TERM", "TERM"]
    for transport in running:
        transport.end()
    reactor.advance(60)
    assert len(reactor.spawned) == 6
    assert stopped.called


def test_the_parent_link_reads_forwarded_frames_and_stops_the_worker_at_its_end() -> None:
    """What Workers.send writes, ParentLink reads back frame by frame; its end stops the reactor (once)."""
    frames: list[bytes] = []

    class Reactor:
        stops = 0

        def stop(self) -> None:
            from twisted.internet.error import ReactorNotRunning

            self.stops += 1
            if self.stops > 1:
                raise ReactorNotRunning()

    reactor = Reactor()
    link = ParentLink(frames.append, reactor)
    sent = FakeProcess(None)
    workers = Workers.__new__(Workers)
    workers._running = lambda: [sent]  # type: ignore[method-assign]
    workers.send(b"first")
    workers.send(b"")
    workers.send(b"x" * 300)
    data = b"".join(sent.written)
    link.makeConnection(FakeProcess(None))  # type: ignore[arg-type]
    for i in range(0, len(data), 7):  # in pieces, as a pipe may deliver them
        link.dataReceived(data[i : i + 7])
    assert frames == [b"first", b"", b"x" * 300]
    link.connectionLost()
    link.connectionLost()  # the reactor was stopping already: no error
    assert reactor.stops == 2


# -- real processes ----------------------------------------------------------------------------------


@pytest.mark.integration  # runs dsat run
def test_run_refuses_a_worker_index_the_topology_does_not_have(tmp_path: Path) -> None:
    """`dsat run T orchester --worker 2` with workers = 2 (worker 1 only) exits 2 and says which exist."""
    topo = tmp_path / "t.toml"
    topo.write_text(SHARED.format(plain=free_port(), pickle=free_port(), udp=free_port(), carbon=free_port()))
    topo.write_text(topo.read_text().replace("workers = 3", "workers = 2"))
    out = subprocess.run(
        [sys.executable, "-m", "dsat", "run", str(topo), "orchester", "--worker", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "--worker 2: the orchester's ingress workers are 1 to 1 ([ingress] workers)" in out.stderr


def family_of(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def worker_pids(pid: int) -> list[int]:
    """The running workers under *pid* (a killed one may be a zombie a moment: not counted)."""
    pids = []
    for proc in family_of(pid):
        try:
            if "--worker" in proc.cmdline():
                pids.append(proc.pid)
        except psutil.Error:
            pass
    return pids


@pytest.mark.integration
def test_an_orchester_with_two_workers_delivers_every_datapoint_once_from_both_processes(
    short_tmp: Path, processes: Processes
) -> None:
    points: Counter[str] = Counter()
    served: Counter[str] = Counter()
    values: dict[str, list[float]] = {}

    def on_point(path: str, ts: float, value: float) -> None:
        if path.startswith("wk."):
            points[path] += 1
        elif path.startswith("seq."):
            values.setdefault(path, []).append(value)
        elif path.endswith((".points_in", ".shard.sent", ".shard.received")):
            served[path] += int(value)

    carbon_port, plain = free_port(), free_port()
    carbon = CarbonStandIn(carbon_port, on_point)
    carbon.start()
    topo = short_tmp / "t.toml"
    topo.write_text(
        f'[dsat]\nwhere = "testhost"\nrun_dir = "run"\n[tracker]\nmetrics_every = "1s"\n'
        f'[ingress]\nplaintext = "127.0.0.1:{plain}"\nworkers = 2\n'
        f'[carbon]\ndestinations = ["127.0.0.1:{carbon_port}"]\n'
    )
    (short_tmp / "run").mkdir()
    orch = processes.dsat("run", str(topo), "orchester", name="orchester")
    main, w1 = "dsat.testhost.self.orchester.points_in", "dsat.testhost.self.orchester.w1.points_in"
    # each process writes its own metrics once its egress runs, after its listener is open
    wait_for(lambda: main in served and w1 in served, 30, "own metrics of the orchester and its worker")
    (worker,) = worker_pids(orch.pid)

    connections, per_connection = 60, 40
    now = int(time.time())
    for c in range(connections):
        with socket.create_connection(("127.0.0.1", plain)) as client:
            client.sendall(b"".join(b"wk.c%d.m%d %d %d\n" % (c, k, k, now) for k in range(per_connection)))
    expected = {f"wk.c{c}.m{k}" for c in range(connections) for k in range(per_connection)}
    total = len(expected)
    wait_for(lambda: served[main] + served[w1] == total, 30, "both processes' points_in to add up to what was sent")
    assert set(points) == expected and set(points.values()) == {1}, "each datapoint arrives exactly once"
    assert served[main] > 0 and served[w1] > 0, served  # 60 connections all to one process: 2 in 2**60

    # one connection: the lines of the names the other process owns go to it (dsat.shards)
    before = {name: served[name] for name in (main, w1)}
    with socket.create_connection(("127.0.0.1", plain)) as client:
        client.sendall(b"".join(b"one.m%d %d %d\n" % (k, k, now) for k in range(2000)))
    wait_for(lambda: served[main] + served[w1] == total + 2000, 30, "the one connection's datapoints")
    assert served[main] > before[main] and served[w1] > before[w1], (before, served)
    sent = served["dsat.testhost.self.orchester.shard.sent"] + served["dsat.testhost.self.orchester.w1.shard.sent"]
    taken = sum(n for name, n in served.items() if name.endswith(".shard.received"))
    assert sent == taken > 0, served
    # a name's datapoints sent on one connection reach Carbon in their order, whichever process owns it
    rounds = 8
    with socket.create_connection(("127.0.0.1", plain)) as client:
        for value in range(rounds):
            client.sendall(b"".join(b"seq.m%d %d %d\n" % (k, value, now + value) for k in range(300)))
    wait_for(lambda: sum(map(len, values.values())) == 300 * rounds, 30, "every datapoint of the ordered rounds")
    assert all(got == [float(v) for v in range(rounds)] for got in values.values()), values

    # a worker that dies is started again
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: (pids := worker_pids(orch.pid)) and pids[0] != worker and pids, 30, "a new worker")
    (worker,) = worker_pids(orch.pid)
    # the orchester killed: its worker sees its standard input end and stops (no orphan)
    os.kill(orch.pid, signal.SIGKILL)
    orch.wait(10)
    wait_for(lambda: gone(worker), 20, "the worker to end after its orchester")
    carbon.stop()

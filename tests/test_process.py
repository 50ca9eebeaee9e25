"""One step as one process: its builders with fake links, and real processes started by `dsat up`.

The builders of :mod:`dsat.process` are checked with fake link factories and
Twisted's memory reactor (what each step listens on and sends to).  Then, on
real ZeroMQ sockets, no Graphite:

A real collector sends through the real orchester to a capturing sink that
writes plaintext lines to a file; garbage frames thrown at the orchester's
socket are rejected while the pipeline keeps going.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import zmq
from twisted.internet.testing import MemoryReactorClock

from dsat import process, topology
from dsat.breaker import BREAKER_TOPIC
from dsat.testing import FakeProducer, FakeSender
from dsat.tools.stack import free_port
from tests.harness import Processes, wait_for

TOPOLOGY = """
[dsat]
prefix = "dsat"
where = "testhost"
run_dir = "run"

[tracker]
timeout = "5s"
metrics_every = "1s"

[orchester.routes]
"*" = ["capture"]

[carbon]
destinations = ["127.0.0.1:{carbon_port}"]

[satellites.load]
use = "load"
every = "250ms"

[satellites.memory]
use = "memory"
every = "250ms"
codec = "json"

[satellites.capture]
use = "capture"
options = {{ path = "{capture}" }}
"""


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.integration
def test_collector_to_orchester_to_capturing_sink(short_tmp: Path, processes: Processes) -> None:
    """Batches travel collector -> orchester -> sink over real sockets, both codecs, and end well."""
    capture = short_tmp / "captured.txt"
    topo = short_tmp / "t.toml"
    topo.write_text(TOPOLOGY.format(carbon_port=free_port(), capture=capture))
    up = processes.dsat("up", str(topo), name="up")

    wait_for(lambda: any(".load.load1 " in line for line in lines(capture)), 30, "load datapoints at the sink")
    wait_for(lambda: any(".memory.virtual.used " in line for line in lines(capture)), 30, "memory datapoints")
    for line in lines(capture):
        path, value, ts = line.split(" ")
        assert path.startswith("dsat.testhost."), line
        assert math.isfinite(float(value)) and 1_500_000_000 < float(ts) < 2**32, line

    # Garbage at the orchester's input: counted and dropped, the pipeline keeps going.
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(f"ipc://{short_tmp}/run/orchester")
    for frame in (b"", b"DS", b"DS\x01\x01\xc1garbage", b"\x00" * 100, b"DS\x02\x01\x80", b"x" * 70000):
        push.send(frame)
    push.close()
    before = len(lines(capture))
    wait_for(lambda: len(lines(capture)) > before + 20, 20, "more datapoints after the garbage")

    def status() -> dict | None:
        out = subprocess.run(
            [sys.executable, "-m", "dsat", "status", "--json", str(topo)],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return json.loads(out.stdout) if out.returncode == 0 else None

    snap = wait_for(
        lambda: (s := status()) and s["steps"].get("capture", {}).get("batches_ended", 0) > 5 and s,
        30,
        "happy ends at the sink in dsat status",
    )
    assert snap["tasks"]["happy_end"] > 5
    assert snap["tasks"]["error"] == 0
    assert processes.stop(up) == 0, processes.log_of(up)[-3000:]
    log = processes.log_of(up)
    # each garbage frame above, rejected with its own reason
    for reason in ("truncated", "undecodable", "bad_magic", "bad_version"):
        assert f"orchester: rejected ({reason})" in log, reason


@pytest.mark.integration
def test_up_refuses_an_invalid_topology(short_tmp: Path) -> None:
    """`dsat up` validates first: a topology with an unknown `next` does not start, exit status 2."""
    topo = short_tmp / "bad.toml"
    topo.write_text(
        TOPOLOGY.format(carbon_port=free_port(), capture=short_tmp / "c.txt").replace(
            'every = "250ms"\ncodec', 'every = "250ms"\nnext = ["nowhere"]\ncodec'
        )
    )
    out = subprocess.run([sys.executable, "-m", "dsat", "up", str(topo)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "satellites.memory.next[0]" in out.stderr and "nowhere" in out.stderr


# -- the step builders, without processes or sockets -------------------------------------------------

WIRED = """
[dsat]
where = "testhost"
run_dir = "run"
[ingress]
plaintext = "127.0.0.1:{plain}"
pickle = "127.0.0.1:{pickle}"
max_connections = 300
idle_timeout = "2m"
[orchester.routes]
"*" = ["carbon"]
"capture" = ["capture"]
[carbon]
destinations = ["127.0.0.1:{carbon}"]
[spool]
path = ""
[satellites.gen]
use = "synthetic"
every = "1s"
[satellites.capture]
use = "capture"
options = {{ path = "captured.txt" }}
"""


class Links:
    """Sender and receiver factories that record every link a builder opens."""

    def __init__(self) -> None:
        self.sent: dict[tuple[str, str, bool], FakeSender] = {}
        self.received: dict[tuple[str, str, bool], tuple[Any, dict[str, Any]]] = {}

    def sender(self, pattern: str, address: str, *, bind: bool = False) -> FakeSender:
        link = self.sent[(pattern, address, bind)] = FakeSender()
        return link

    def receiver(self, pattern: str, address: str, on_frame: Any, *, bind: bool = True, **kw: Any) -> FakeProducer:
        self.received[(pattern, address, bind)] = (on_frame, kw)
        return FakeProducer()


def wired(tmp_path: Path, step: str) -> tuple[Any, Links, MemoryReactorClock, topology.Topology, tuple[int, int, int]]:
    ports = (free_port(), free_port(), free_port())
    plain, pickle, carbon = ports
    topo = topology.loads(WIRED.format(plain=plain, pickle=pickle, carbon=carbon), path=tmp_path / "t.toml")
    links, reactor = Links(), MemoryReactorClock()
    wiring = process.Wiring(reactor, topo, step, host="", pid=4242, sender=links.sender, receiver=links.receiver)
    built = {"orchester": process.orchester, "tracker": process.tracker}.get(step, process.satellite)(wiring)
    return built, links, reactor, topo, ports


def test_the_orchester_step_listens_and_wires_as_its_topology_says(tmp_path: Path) -> None:
    """Built with fakes: Graphite listeners on its ports, its input, the tracker's states, control, Carbon."""
    orch, links, reactor, topo, (plain, pickle, carbon) = wired(tmp_path, "orchester")
    listening = sorted((port, interface) for port, _factory, _backlog, interface in reactor.tcpServers)
    assert listening == sorted([(plain, "127.0.0.1"), (pickle, "127.0.0.1")])
    limits = {(f.max_connections, f.idle_timeout, f.idle_grace) for _, f, _, _ in reactor.tcpServers}
    assert limits == {(300, 120.0, topology.IngressConf.idle_grace)}  # [ingress] limits reach both listeners
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("127.0.0.1", carbon)]
    link = topo.orchester.listen
    assert links.received.keys() == {
        (link.pattern, link.address, True),
        ("sub", topo.tracker.states, False),
        ("sub", topo.orchester.control, True),
    }
    assert links.received[(link.pattern, link.address, True)][0] == orch.on_frame
    assert links.received[("sub", topo.tracker.states, False)][1] == {"topics": (BREAKER_TOPIC,)}
    capture = topo.input_of("capture")
    assert links.sent.keys() == {("push", topo.tracker.events, False), (capture.sender_pattern, capture.address, False)}
    assert orch.senders == {"capture": links.sent[(capture.sender_pattern, capture.address, False)]}
    # started: its first heartbeat is on the events link, from this process
    (beat,) = links.sent[("push", topo.tracker.events, False)].envelopes()
    assert (beat.step, beat.pid) == ("orchester", 4242)


def test_the_tracker_and_a_satellite_step_wire_their_links(tmp_path: Path) -> None:
    """The tracker binds its events, states and status; a sink listens on its input and follows the states."""
    _svc, links, _reactor, topo, _ports = wired(tmp_path, "tracker")
    assert links.received.keys() == {("pull", topo.tracker.events, True), ("rep", topo.tracker.status, True)}
    assert links.sent.keys() == {("pub", topo.tracker.states, True), ("push", topo.orchester.listen.address, False)}
    _runtime, links, _reactor, topo, _ports = wired(tmp_path, "capture")
    listen = topo.satellites["capture"].listen
    assert listen is not None
    assert links.received.keys() == {(listen.pattern, listen.address, True), ("sub", topo.tracker.states, False)}
    assert links.sent.keys() == {("push", topo.tracker.events, False)}

"""Integration on real ZeroMQ sockets: step processes started by `dsat up`, no Graphite.

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

import pytest
import zmq

from dsat.stack import free_port
from tests.conftest import Processes, wait_for

pytestmark = pytest.mark.integration

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

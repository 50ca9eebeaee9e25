"""`dsat route`: routing changes at run time, on the control channel, without a restart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from dsat import route
from dsat.carbon import CarbonEgress
from dsat.errors import ConfigError
from dsat.stack import free_port
from tests.conftest import Processes, wait_for


def test_commands_and_how_they_show_in_force() -> None:
    """set/add/drain become control changes; the orchester's reported configuration says when they hold."""
    change = route.command("set", ["gauge", "archive", "carbon"])
    assert change == {"action": "route", "type": "gauge", "targets": "archive,carbon"}
    assert route.in_force(change, {"routes": '{"gauge": ["archive", "carbon"], "*": ["carbon"]}'})
    assert not route.in_force(change, {"routes": '{"*": ["carbon"]}'})
    drain = route.command("drain", ["127.0.0.1:2104:b"])
    assert route.in_force(drain, {"destinations": "127.0.0.1:2004"})
    assert not route.in_force(drain, {"destinations": "127.0.0.1:2004,127.0.0.1:2104"})
    with pytest.raises(ConfigError, match="usage"):
        route.command("set", ["gauge"])


def test_egress_adds_and_drains_destinations() -> None:
    """Adding a destination brings it into the ring; draining takes it out of new placements only."""
    egress = CarbonEgress(MemoryReactorClock(), [("127.0.0.1", 2004, "a")])
    assert egress.place("x") == (0,)
    assert egress.add_destination("127.0.0.1:2104:b")
    assert not egress.add_destination("127.0.0.1:2104:b")
    assert {egress.place(f"m{i}")[0] for i in range(200)} == {0, 1}
    assert egress.drain_destination("127.0.0.1:2004")
    assert {egress.place(f"m{i}")[0] for i in range(200)} == {1}
    assert egress.placing == ["127.0.0.1:2104"]
    with pytest.raises(ConfigError, match="replication"):
        egress.drain_destination("127.0.0.1:2104")
    with pytest.raises(ConfigError, match="not a carbon destination"):
        egress.drain_destination("10.9.9.9:1")


@pytest.mark.integration
def test_route_a_type_to_a_sink_while_running(short_tmp: Path, processes: Processes) -> None:
    """`dsat route T set gauge archive` sends gauges to the archive sink from then on, with no restart."""
    capture = short_tmp / "archive.txt"
    topo = short_tmp / "t.toml"
    topo.write_text(
        f"""
[dsat]
where = "testhost"
run_dir = "run"
[carbon]
destinations = ["127.0.0.1:{free_port()}"]
[spool]
path = ""
[satellites.gen]
use = "synthetic"
every = "250ms"
options = {{ metrics = 3 }}
[satellites.archive]
use = "capture"
options = {{ path = "{capture}" }}
"""
    )
    up = processes.dsat("up", str(topo), name="up")
    wait_for(lambda: topo.parent.joinpath("run", "orchester").exists(), 30, "the orchester")
    assert not capture.exists()
    out = subprocess.run(
        [sys.executable, "-m", "dsat", "route", str(topo), "set", "gauge", "archive"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert '"gauge": ["archive"]' in out.stdout
    wait_for(lambda: capture.exists() and "dsat.testhost.gen.m0" in capture.read_text(), 20, "gauges at the sink")
    bad = subprocess.run(
        [sys.executable, "-m", "dsat", "route", str(topo), "set", "gauge", "nowhere"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "unknown targets" in bad.stderr
    assert processes.stop(up) == 0

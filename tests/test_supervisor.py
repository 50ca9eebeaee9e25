"""`dsat up` as a supervisor, on real processes: start order, restart after a crash, nothing left on stop."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from dsat.stack import free_port
from dsat.supervisor import step_names
from tests.conftest import Processes, wait_for

TOPOLOGY = """
[dsat]
where = "testhost"
run_dir = "run"

[carbon]
destinations = ["127.0.0.1:{carbon_port}"]

[orchester.routes]
"*" = ["sink"]

[satellites.load]
use = "load"
every = "1s"

[satellites.sink]
use = "capture"
options = {{ path = "{capture}" }}
"""


def test_step_names_start_sinks_before_collectors() -> None:
    """Processes start tracker, orchester, sinks, transforms, then collectors, so nothing sends into a void."""
    from tests.test_topology import load

    topo = load(
        '[carbon]\ndestinations = ["127.0.0.1:2004"]\n[satellites.c]\nuse = "c"\nevery = "1s"\nnext = ["t"]\n'
        '[satellites.t]\nuse = "t"\n[satellites.s]\nuse = "s"\n'
    )
    assert step_names(topo) == ["tracker", "orchester", "s", "t", "c"]


def test_step_names_on_a_host_are_that_hosts_steps_only() -> None:
    """With [hosts], a host runs its own steps: the hub tracker and orchester, a web host its collector."""
    from tests.test_topology import MULTI, load

    topo = load(MULTI)
    assert step_names(topo, "hub") == ["tracker", "orchester"]
    assert step_names(topo, "web02") == ["rate", "cpu"]
    assert step_names(topo, "web01") == ["cpu"]


def children_by_step(pid: int) -> dict[str, psutil.Process]:
    out = {}
    for child in psutil.Process(pid).children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "run" in cmd:
            out[cmd[-1]] = child
    return out


@pytest.mark.integration
def test_a_crashed_satellite_is_restarted_and_stop_leaves_nothing(short_tmp: Path, processes: Processes) -> None:
    """kill -9 of a satellite: the supervisor starts it again; SIGTERM to `dsat up` stops every child."""
    topo = short_tmp / "t.toml"
    capture = short_tmp / "c.txt"
    topo.write_text(TOPOLOGY.format(carbon_port=free_port(), capture=capture))
    up = processes.dsat("up", str(topo), name="up")
    steps = wait_for(
        lambda: (c := children_by_step(up.pid)) and {"tracker", "orchester", "load", "sink"} <= set(c) and c,
        30,
        "all four steps running",
    )
    old = steps["load"]
    os.kill(old.pid, signal.SIGKILL)
    new = wait_for(
        lambda: (c := children_by_step(up.pid).get("load")) and c.pid != old.pid and c,
        30,
        "the load satellite to be restarted",
    )
    assert new.is_running()
    before = capture.stat().st_size if capture.exists() else 0
    wait_for(lambda: capture.exists() and capture.stat().st_size > before, 20, "data from the restarted satellite")
    everyone = list(children_by_step(up.pid).values())
    assert processes.stop(up) == 0, processes.log_of(up)[-3000:]
    _gone, alive = psutil.wait_procs(everyone, timeout=5)
    assert not alive
    assert "load" in processes.log_of(up)

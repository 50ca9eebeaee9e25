"""`dsat up` as a supervisor, on real processes: start order, restart after a crash, nothing left on stop."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure

from dsat.supervisor import Restarts, exit_cause, step_names
from dsat.tools.stack import free_port
from tests.harness import MULTI, Processes, load, wait_for

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
    topo = load(
        '[carbon]\ndestinations = ["127.0.0.1:2004"]\n[satellites.c]\nuse = "c"\nevery = "1s"\nnext = ["t"]\n'
        '[satellites.t]\nuse = "t"\n[satellites.s]\nuse = "s"\n'
    )
    assert step_names(topo) == ["tracker", "orchester", "s", "t", "c"]


def test_step_names_on_a_host_are_that_hosts_steps_only() -> None:
    """With [hosts], a host runs its own steps: the hub tracker and orchester, a web host its collector."""
    topo = load(MULTI)
    assert step_names(topo, "hub") == ["tracker", "orchester"]
    assert step_names(topo, "web02") == ["rate", "cpu"]
    assert step_names(topo, "web01") == ["cpu"]


@pytest.mark.parametrize(
    ("ended", "cause", "said"),
    [
        (ProcessTerminated(signal=signal.SIGALRM), "hung", "hung: its watchdog killed it"),
        (ProcessTerminated(signal=signal.SIGKILL), "killed", "killed by SIGKILL"),
        (ProcessTerminated(signal=signal.SIGSEGV), "killed", "killed by SIGSEGV"),
        (ProcessTerminated(exitCode=3), "exited", "exited with status 3"),
        (ProcessDone(0), "exited", "exited with status 0"),
    ],
)
def test_the_cause_of_an_exit_tells_a_hung_step_from_a_killed_or_exited_one(
    ended: Exception, cause: str, said: str
) -> None:
    """SIGALRM is the watchdog's (hung); another signal is killed; an exit status is exited."""
    got, what = exit_cause(Failure(ended))
    assert got == cause and what.startswith(said)


def test_restarts_are_counted_per_step_and_cause_and_written(tmp_path: Path) -> None:
    """Each restart counts under its step and cause; the counts are in restarts.json after each one."""
    restarts = Restarts()
    restarts.keep(tmp_path / "restarts.json", {"hang": 3.0})
    for step, ended in [
        ("hang", ProcessTerminated(signal=signal.SIGALRM)),
        ("hang", ProcessTerminated(signal=signal.SIGALRM)),
        ("hang", ProcessTerminated(exitCode=1)),
        ("tracker", ProcessTerminated(signal=signal.SIGKILL)),
    ]:
        restarts.record(step, Failure(ended))
    expected = {"hang": {"hung": 2, "exited": 1}, "tracker": {"killed": 1}}
    assert restarts.counts == expected
    assert json.loads((tmp_path / "restarts.json").read_text()) == expected


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


def up_with_four_steps(short_tmp: Path, processes: Processes) -> tuple[Any, dict[str, psutil.Process], Path]:
    """`dsat up` of TOPOLOGY, once its four steps run: the process, its steps by name, the sink's capture file."""
    topo = short_tmp / "t.toml"
    capture = short_tmp / "c.txt"
    topo.write_text(TOPOLOGY.format(carbon_port=free_port(), capture=capture))
    up = processes.dsat("up", str(topo), name="up")
    steps = wait_for(
        lambda: (c := children_by_step(up.pid)) and {"tracker", "orchester", "load", "sink"} <= set(c) and c,
        30,
        "all four steps running",
    )
    assert isinstance(steps, dict)
    return up, steps, capture


@pytest.mark.integration
def test_a_crashed_satellite_is_restarted_and_stop_leaves_nothing(short_tmp: Path, processes: Processes) -> None:
    """kill -9 of a satellite: the supervisor counts it and starts it again; SIGTERM to `dsat up` stops every child."""
    up, steps, capture = up_with_four_steps(short_tmp, processes)
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
    log = processes.log_of(up)
    assert "load killed by SIGKILL; it is restarted (restarts of load: killed 1)" in log
    assert json.loads((short_tmp / "run" / "restarts.json").read_text()) == {"load": {"killed": 1}}


@pytest.mark.integration
def test_a_sigterm_to_the_whole_process_group_stops_every_step_without_a_traceback(
    short_tmp: Path, processes: Processes
) -> None:
    """SIGTERM to `dsat up`'s process group (systemd's control group, kill -- -PGID): the steps hear it as well
    as the supervisor's own SIGTERM; `dsat up` exits 0, no traceback in any log, nothing left running.
    (Whether a step hears both depends on timing; test_reactor shows a second SIGTERM handled.)"""
    up, steps, capture = up_with_four_steps(short_tmp, processes)
    wait_for(lambda: capture.exists() and capture.stat().st_size > 0, 30, "data at the sink")
    os.killpg(up.pid, signal.SIGTERM)  # start_new_session: its own group, its steps in it
    assert up.wait(60) == 0
    _gone, alive = psutil.wait_procs(list(steps.values()), timeout=5)
    assert not alive
    log = processes.log_of(up)
    assert "Traceback" not in log and "ReactorNotRunning" not in log, log[-3000:]


def test_read_restarts_gives_what_dsat_up_wrote_and_nothing_for_a_missing_or_broken_file(tmp_path: Path) -> None:
    from dsat.supervisor import read_restarts, restarts_path

    assert read_restarts(tmp_path) == {}
    restarts_path(tmp_path).write_text('{"hang": {"hung": 2}}')
    assert read_restarts(tmp_path) == {"hang": {"hung": 2}}
    restarts_path(tmp_path).write_text("{not json")
    assert read_restarts(tmp_path) == {}

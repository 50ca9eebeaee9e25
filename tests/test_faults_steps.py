"""The steps' faults, on real processes: a satellite that hangs, raises or returns garbage; the orchester
stopped; the tracker killed.

Each scenario runs ``dsat up`` with a real carbon-cache and a ``synthetic``
collector, ``good``, whose every datapoint carries its run number, beside the
faulty step: the Whisper files say exactly which runs arrived, so "the others
are unaffected" is checked as every run of ``good`` stored, from the first to
the last.  The misbehaving satellites are ``tests.chaos``'s.  The figures go to
``test-artifacts/reliability.json`` for ``docs/reliability.rst``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.chaos import GARBAGE, MADE_SAFE
from tests.harness import (
    Carbon,
    Processes,
    assert_every_run_stored,
    latest_run,
    record,
    running,
    settled_runs,
    status,
    step_pid,
    synthetic,
    topology,
    wait_for,
    wait_for_more_runs,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

#: Datapoints a run of the good collector (one run a second).
METRICS = 200


def chaos_collector(step: str, mode: str, **options: str) -> str:
    """A ``[satellites]`` table: a ``chaos_collector`` *step* in *mode*, once a second."""
    opts = ", ".join([f'mode = "{mode}"', *(f'{k} = "{v}"' for k, v in options.items())])
    return f'\n[satellites.{step}]\nuse = "chaos_collector"\nevery = "1s"\noptions = {{ {opts} }}\n'


def restarts(base: Path) -> dict[str, Any]:
    """What the supervisor counted (run/restarts.json): restarts per step and cause; {} before any."""
    path = base / "run" / "restarts.json"
    return json.loads(path.read_text()) if path.exists() else {}


def counters(topo: Path, step: str) -> dict[str, int]:
    """The counters of *step*'s last heartbeat, as ``dsat status`` shows them ({} before one arrives)."""
    snap = status(topo)
    beat = snap["heartbeats"].get(step) if snap else None
    return dict(beat["counters"]) if beat else {}


def whisper_files(carbon: Carbon) -> set[str]:
    """Every Whisper file under carbon-cache's storage, relative to its Whisper directory."""
    return {str(p.relative_to(carbon.stack.whisper_dir)) for p in carbon.stack.whisper_dir.rglob("*.wsp")}


def test_a_satellite_that_hangs_is_killed_by_its_watchdog_restarted_and_counted(
    short_tmp: Path, carbon: Carbon, processes: Processes
) -> None:
    """A collector whose run never returns: its watchdog (3 s) kills it with its traceback in the log, the
    supervisor counts it as hung and restarts it, the restarted step works, and every run of the others is stored."""
    hang_file = short_tmp / "hanging"
    table = chaos_collector("hang", "hang", hang_file=str(hang_file)).replace(
        'every = "1s"', 'every = "1s"\nwatchdog = "3s"'
    )
    topo = topology(short_tmp, carbon, synthetic("good", METRICS) + table)
    carbon.start()
    up = processes.dsat("up", str(topo), name="up")
    wait_for(hang_file.exists, 60, "the hang to begin")
    hung_at = hang_file.stat().st_mtime
    hung_pid = step_pid(up, "hang")
    wait_for(
        lambda: restarts(short_tmp).get("hang") == {"hung": 1},
        60,
        "the hang to be counted",
        detail=lambda: restarts(short_tmp),
    )
    detected_after = (short_tmp / "run" / "restarts.json").stat().st_mtime - hung_at
    wait_for(lambda: (pid := step_pid(up, "hang")) and pid != hung_pid, 30, "the hung step to be restarted")
    ok = carbon.stack.whisper_dir / "dsat" / "testhost" / "hang" / "ok.wsp"
    wait_for(ok.exists, 60, "the restarted step's runs in Whisper")
    working_after = ok.stat().st_mtime - hung_at
    wait_for_more_runs(carbon, "good", 3)
    assert processes.stop(up) == 0, processes.log_of(up)[-3000:]

    log = processes.log_of(up)
    assert "hang hung: its watchdog killed it" in log
    assert "after its reactor did not turn for 3s" in log
    assert "tests/chaos.py" in log and "in collect" in log  # every thread's traceback, where it hung
    assert restarts(short_tmp) == {"hang": {"hung": 1}}  # no other step restarted
    runs = settled_runs(carbon, "good", METRICS)
    last = assert_every_run_stored(runs)
    assert detected_after >= 3
    record(
        "satellite_hangs",
        watchdog_seconds=3,
        killed_after_seconds=round(detected_after, 1),
        working_again_after_seconds=round(working_after, 1),
        hangs_counted=restarts(short_tmp)["hang"]["hung"],
        other_datapoints_sent=last * METRICS,
        other_datapoints_stored=sum(len(r) for r in runs),
    )


def test_a_satellite_that_raises_on_every_call_is_counted_and_keeps_running(
    short_tmp: Path, carbon: Carbon, processes: Processes
) -> None:
    """A collector that raises on every run: each run counted as rejected (collect_failed) in its heartbeat, shown
    by `dsat status`; its process keeps running, never restarted; every run of the others is stored."""
    topo = topology(short_tmp, carbon, synthetic("good", METRICS) + chaos_collector("raiser", "raise"))
    carbon.start()
    up = processes.dsat("up", str(topo), name="up")
    pid = wait_for(lambda: step_pid(up, "raiser"), 60, "the raising step to run")
    wait_for(lambda: counters(topo, "raiser").get("rejected", 0) >= 5, 60, "five failed runs in dsat status")
    wait_for_more_runs(carbon, "good", 2)
    failed = counters(topo, "raiser")["rejected"]
    assert step_pid(up, "raiser") == pid
    assert processes.stop(up) == 0, processes.log_of(up)[-3000:]

    log = processes.log_of(up)
    assert "step raiser: rejected (collect_failed): chaos: this collector fails on purpose" in log
    assert restarts(short_tmp) == {}
    assert not any(path.startswith("dsat/testhost/raiser") for path in whisper_files(carbon))
    runs = settled_runs(carbon, "good", METRICS)
    last = assert_every_run_stored(runs)
    record(
        "satellite_raises",
        failed_runs_counted=failed,
        restarts=0,
        other_datapoints_sent=last * METRICS,
        other_datapoints_stored=sum(len(r) for r in runs),
    )


def test_a_satellite_that_returns_garbage_has_it_refused_with_reasons_and_counted(
    short_tmp: Path, carbon: Carbon, processes: Processes
) -> None:
    """A collector returning wrong types, NaN, huge strings and paths with `..` or `/`: each bad item refused with
    its reason and counted, its good datapoint stored, no file outside its Whisper folder, the others unaffected."""
    topo = topology(short_tmp, carbon, synthetic("good", METRICS) + chaos_collector("garbage", "garbage"))
    carbon.start()
    up = processes.dsat("up", str(topo), name="up")
    wait_for(lambda: counters(topo, "garbage").get("rejected", 0) >= 3 * len(GARBAGE), 60, "three runs refused")
    refused = counters(topo, "garbage")["rejected"]
    safe = {
        f"dsat/testhost/garbage/{name}.wsp" for name in ("ok", "_etc_dsat-evil", "sub_dir", "back_slash", "nul_byte")
    }
    assert len(safe) == len(MADE_SAFE) + 1
    wait_for(lambda: safe <= whisper_files(carbon), 60, "the good and the made-safe datapoints in Whisper")
    wait_for_more_runs(carbon, "good", 2)
    assert processes.stop(up) == 0, processes.log_of(up)[-3000:]

    assert refused % len(GARBAGE) == 0  # a heartbeat goes between two runs: every item of each run refused
    log = processes.log_of(up)
    for reason in ("nan", "bad_value", "bad_name", "bad_timestamp", "bad_datapoint"):
        assert f"step garbage: rejected ({reason})" in log, reason
    assert len(log) < 1_000_000  # a megabyte name or value, on every run, is logged cut short
    files = whisper_files(carbon)
    assert files == safe | {f"dsat/testhost/good/m{i}.wsp" for i in range(METRICS)}
    outside = [p for p in short_tmp.rglob("*dsat-evil*") if carbon.stack.whisper_dir not in p.parents]
    assert outside == [] and not list(Path("/tmp").glob("dsat-evil*")) and not list(Path("/etc").glob("dsat-evil*"))
    runs = settled_runs(carbon, "good", METRICS)
    last = assert_every_run_stored(runs)
    record(
        "satellite_returns_garbage",
        items_refused=refused,
        items_refused_per_run=len(GARBAGE),
        names_made_safe_per_run=len(MADE_SAFE),
        files_outside_whisper=0,
        other_datapoints_sent=last * METRICS,
        other_datapoints_stored=sum(len(r) for r in runs),
    )


def test_the_orchester_stopped_for_30_seconds_under_load_loses_nothing(
    short_tmp: Path, carbon: Carbon, processes: Processes
) -> None:
    """SIGSTOP of the orchester for 30 s under 1,000 datapoints/s, then SIGCONT: the batches wait in the links and
    are sent again on the tracker's timeouts (duplicates land once), and every run is stored; nothing restarts."""
    metrics = 1000
    up = running(short_tmp, carbon, processes, "load", metrics, first_runs=3)
    topo = short_tmp / "t.toml"
    orchester = step_pid(up, "orchester")
    assert orchester is not None
    os.kill(orchester, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        # the tracker, still running, times the batches out (5 s) and the collector sends them again
        wait_for(lambda: (s := status(topo)) and s["tasks"]["retry"] >= 3, 30, "retries while the orchester is stopped")
        wait_for(lambda: time.monotonic() - stopped_at >= 30, 40, "30 s of the orchester stopped", interval=1)
        during = status(topo)
    finally:
        os.kill(orchester, signal.SIGCONT)
    continued_at = time.monotonic()
    wait_for_more_runs(carbon, "load", 3, timeout=120)
    caught_up = time.monotonic() - continued_at
    after = status(topo)
    assert step_pid(up, "orchester") == orchester
    assert processes.stop(up) == 0, processes.log_of(up)[-3000:]

    assert restarts(short_tmp) == {}
    runs = settled_runs(carbon, "load", metrics)
    last = assert_every_run_stored(runs)
    assert during is not None and after is not None
    assert after["tasks"]["failure"] == 0
    record(
        "orchester_sigstop_30s",
        stopped_seconds=30,
        datapoints_per_second=metrics,
        retries_while_stopped=during["tasks"]["retry"],
        seconds_to_new_runs_after_sigcont=round(caught_up, 1),
        datapoints_sent=last * metrics,
        datapoints_stored=sum(len(r) for r in runs),
    )


def test_the_tracker_killed_under_load_is_restarted_and_nothing_is_lost(
    short_tmp: Path, carbon: Carbon, processes: Processes
) -> None:
    """kill -9 of the tracker under 1,000 datapoints/s: the collector keeps its schedule and its batches keep
    flowing to the orchester and Carbon (data never goes through the tracker); its events and heartbeats wait in
    its link; the supervisor restarts the tracker, which hears every step again, and every run is stored."""
    metrics = 1000
    up = running(short_tmp, carbon, processes, "load", metrics, first_runs=3)
    topo = short_tmp / "t.toml"
    tracker = step_pid(up, "tracker")
    assert tracker is not None
    os.kill(tracker, signal.SIGKILL)
    killed_at = time.monotonic()
    killed_at_run = latest_run(carbon, "load")
    wait_for(lambda: (pid := step_pid(up, "tracker")) and pid != tracker, 30, "the tracker to be restarted")
    back = wait_for(
        lambda: (s := status(topo)) and {"load", "orchester"} <= set(s["heartbeats"]) and s,
        60,
        "the restarted tracker to hear the collector and the orchester",
    )
    back_after = time.monotonic() - killed_at
    wait_for_more_runs(carbon, "load", 5)
    after = status(topo)
    runs_since_kill = latest_run(carbon, "load") - killed_at_run
    assert processes.stop(up) == 0, processes.log_of(up)[-3000:]

    assert restarts(short_tmp) == {"tracker": {"killed": 1}}
    assert "tracker killed by SIGKILL; it is restarted" in processes.log_of(up)
    runs = settled_runs(carbon, "load", metrics)
    last = assert_every_run_stored(runs)
    assert isinstance(back, dict) and after is not None
    assert after["tasks"]["failure"] == 0
    load = after["heartbeats"]["load"]["counters"]
    assert load.get("link_dropped", 0) == 0 and load.get("window_evicted", 0) == 0  # nothing dropped meanwhile
    record(
        "tracker_kill_9",
        datapoints_per_second=metrics,
        seconds_until_the_new_tracker_hears_every_step=round(back_after, 1),
        batches_retried_after=after["tasks"]["retry"],
        runs_stored_since_the_kill=runs_since_kill,
        collector_batches_the_new_tracker_heard=after["steps"]["load"]["batches_sent"],
        collector_window_evicted=load.get("window_evicted", 0),
        collector_events_dropped=load.get("link_dropped", 0),
        datapoints_sent=last * metrics,
        datapoints_stored=sum(len(r) for r in runs),
    )

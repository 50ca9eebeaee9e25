"""``dsat up``: start, supervise and stop every process of a topology.

Each step (tracker, orchester, every satellite) runs as its own process,
``python -m dsat run TOPOLOGY STEP``, under Twisted's
:class:`~twisted.runner.procmon.ProcessMonitor`: a process that dies is
restarted, with a delay that doubles while it keeps dying young.  Their output
is logged line by line under the step's name.  Every restart is counted per
step and cause (:class:`Restarts`): *hung* (killed by its watchdog,
:mod:`dsat.watchdog`, after its tracebacks), *killed* by another signal, or
*exited* with a status; each is logged with its count, and the counts are
kept in ``{run_dir}/restarts.json`` for an operator and a test to read.

Stopping (Ctrl-C, SIGTERM) goes downstream in stages: the collectors first,
then the transforms, the sinks, the orchester, the tracker, and last any
extra process (carbon-cache, graphite-web).  Each stage gets SIGTERM and is
waited for (killed after ``KILL_AFTER`` seconds) before the next, so what a
stopping step hands on still finds its next step running, and the orchester
can put it in the spool.  Nothing is left running.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.runner.procmon import ProcessMonitor

from dsat.watchdog import SIGNAL as WATCHDOG_SIGNAL

#: Seconds a child has to stop after SIGTERM before it is killed.
KILL_AFTER = 10
#: The restart delay doubles from MIN to MAX while a process keeps dying young.
MIN_RESTART_DELAY = 1
MAX_RESTART_DELAY = 30


def step_command(topology_path: Path, step: str, host: str = "") -> list[str]:
    return [sys.executable, "-m", "dsat", "run", str(topology_path), step, *(["--host", host] if host else [])]


def step_names(topology: Any, host: str = "") -> list[str]:
    """The processes of a topology on *host* (all without ``[hosts]``), in start order (sinks first)."""
    kinds = {"sink": 0, "transform": 1, "collector": 2}
    sats = sorted(topology.satellites.values(), key=lambda s: (kinds[s.kind], s.name))
    here = topology.steps_on(host)
    return [name for name in ["tracker", "orchester", *(s.name for s in sats)] if name in here]


#: The causes a process can end with, as :func:`exit_cause` names them.
CAUSES = ("hung", "killed", "exited")


def exit_cause(reason: Failure | None) -> tuple[str, str]:
    """How a process ended, as ``(cause, what)``: cause is one of :data:`CAUSES`, what a phrase for the log."""
    value = reason.value if reason is not None else None
    if isinstance(value, ProcessTerminated) and value.signal is not None:
        if value.signal == WATCHDOG_SIGNAL:
            return "hung", "hung: its watchdog killed it (its threads' tracebacks are above)"
        try:
            name = signal.Signals(value.signal).name
        except ValueError:
            name = f"signal {value.signal}"
        return "killed", f"killed by {name}"
    if isinstance(value, ProcessDone | ProcessTerminated):
        return "exited", f"exited with status {value.exitCode}"
    return "exited", f"ended: {reason.getErrorMessage() if reason is not None else 'no reason given'}"


def restarts_path(run_dir: Path) -> Path:
    """Where ``dsat up`` keeps the restart counts of its steps (read by ``dsat status``)."""
    return run_dir / "restarts.json"


def read_restarts(run_dir: Path) -> dict[str, dict[str, int]]:
    """The restart counts ``dsat up`` on this host wrote (``{step: {cause: count}}``); empty if none."""
    try:
        data = json.loads(restarts_path(run_dir).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class Restarts:
    """The restarts of each step, counted by cause, logged, and written to *path* (JSON) if given."""

    log = Logger()

    def __init__(self) -> None:
        self.path: Path | None = None
        #: The watchdog timeout of each step, to say in the log how long a hung step was stuck.
        self.timeouts: dict[str, float] = {}
        self.counts: dict[str, Counter[str]] = {}

    def keep(self, path: Path, timeouts: Mapping[str, float]) -> None:
        """Write the counts to *path* from now on; *timeouts* are the steps' watchdog timeouts."""
        self.path = path
        self.timeouts.update(timeouts)

    def record(self, name: str, reason: Failure | None) -> str:
        """Count that process *name* ended and is to be restarted; returns its cause."""
        cause, what = exit_cause(reason)
        counts = self.counts.setdefault(name, Counter())
        counts[cause] += 1
        if cause == "hung" and name in self.timeouts:
            what += f" after its reactor did not turn for {self.timeouts[name]:g}s"
        self.log.warn(
            "{name} {what}; it is restarted (restarts of {name}: {counts})",
            name=name,
            what=what,
            counts=", ".join(f"{c} {counts[c]}" for c in CAUSES if counts[c]),
        )
        self._write()
        return cause

    def _write(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps({name: dict(counts) for name, counts in self.counts.items()}, sort_keys=True))
            tmp.replace(self.path)
        except OSError as exc:
            self.log.warn("cannot write the restart counts to {path}: {exc}", path=self.path, exc=exc)


class _Monitor(ProcessMonitor):
    """A ProcessMonitor that tells *on_exit* how each process ended, while it restarts them.

    ``_monitoredProcessExited`` is the one place ProcessMonitor hears of an
    exit with its reason (Twisted 22.8 and later); it is extended, not changed.
    """

    def __init__(self, reactor: Any, on_exit: Callable[[str, Failure | None], object]) -> None:
        super().__init__(reactor=reactor)
        self.on_exit = on_exit

    def _monitoredProcessExited(self, name: str, reason: Failure | None = None) -> None:
        if self.running:
            self.on_exit(name, reason)
        super()._monitoredProcessExited(name, reason)


class Supervisor:
    """A ProcessMonitor whose stop waits until every child is gone, counting restarts by cause (:class:`Restarts`)."""

    def __init__(self, reactor: Any, *, env: dict[str, str] | None = None) -> None:
        self.reactor = reactor
        self.env = dict(os.environ if env is None else env)
        self.restarts = Restarts()
        self.monitor = _Monitor(reactor, lambda name, reason: self.restarts.record(name, reason))
        self.monitor.killTime = KILL_AFTER
        self.monitor.minRestartDelay = MIN_RESTART_DELAY
        self.monitor.maxRestartDelay = MAX_RESTART_DELAY
        #: Names in the order they stop: one list per stage.
        self.stages: list[list[str]] = []
        self._extras: list[str] = []

    def add(self, name: str, args: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        """Supervise one more process; it stops after the topology's steps."""
        self.monitor.addProcess(name, list(args), env={**self.env, **(env or {})}, cwd=cwd)
        self._extras.append(name)

    def add_topology(self, topology: Any, host: str = "") -> None:
        """Supervise the steps of *topology* that run on *host* (every step without ``[hosts]``)."""
        env = {"DSAT_SUPERVISED": "1", "PYTHONUNBUFFERED": "1"}
        names = step_names(topology, host)
        self.restarts.keep(restarts_path(topology.run_dir), {step: topology.watchdog_of(step) for step in names})
        for step in names:
            self.monitor.addProcess(step, step_command(topology.path, step, host), env={**self.env, **env})
        kinds = {name: sat.kind for name, sat in topology.satellites.items() if name in names}
        self.stages = [
            [name for name, kind in kinds.items() if kind == stage] for stage in ("collector", "transform", "sink")
        ] + [[name] for name in ("orchester", "tracker") if name in names]

    def start(self) -> None:
        self.monitor.startService()

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Stop every child, stage by stage downstream; fires when none is left."""
        monitor = self.monitor
        monitor.running = False  # no restarts from now on
        for delayed in monitor.restart.values():
            if delayed.active():
                delayed.cancel()
        for stage in [*self.stages, self._extras]:
            alive = [name for name in stage if name in monitor.protocols]
            for name in alive:
                monitor.stopProcess(name)
            deadline = self.reactor.seconds() + KILL_AFTER + 2
            while any(name in monitor.protocols for name in alive) and self.reactor.seconds() < deadline:
                yield task.deferLater(self.reactor, 0.05, lambda: None)

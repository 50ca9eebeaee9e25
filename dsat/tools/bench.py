"""``dsat bench``: run a user's topology under synthetic load and measure what reaches Carbon.

The topology runs as it is, with ``dsat up`` (real processes, the same code),
from a copy written in a temporary folder with four changes, each printed in
the report: ``run_dir`` and the spool move into that folder (nothing of a
running instance is touched), every ``[carbon]`` destination points at the
counting sink of :mod:`dsat.tools.bench_sink` (same instance names, so carbon's ring
places metrics as it would), DSAT's own metrics come every second, and the
load source is added: a Graphite plaintext ingress when the topology has none
(``--payload ingress``) or ``bench_<type>`` collectors in place of its own
collectors, keeping their names, types and ``next`` (``--payload collectors``).
The copy is validated with the checks of this machine first, so a port that is
taken stops the bench before anything starts.

A run is one or more *phases* on the running topology (``--rate max`` probes
several): each sends ``rate`` datapoints a second for ``duration`` seconds, then
waits until the sink has everything (or nothing new came for ``SETTLE``
seconds), and reads the sink's tally, the tracker's snapshot (``dsat status``)
and each process's CPU time and peak RSS.  Everything it started (processes,
files) is removed at the end, on Ctrl-C too.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import psutil
import tomli_w

from dsat import topology
from dsat.errors import BenchError, ConfigError, DsatError
from dsat.tools import bench_load, status
from dsat.tools.bench_load import Phase
from dsat.tools.stack import free_port
from dsat.topology import preflight

#: Seconds without a new datapoint at the sink after which a phase's missing datapoints count as lost.
SETTLE = 3.0
#: Seconds the topology has to start (every step's heartbeat at the tracker, the ingress listening).
START_TIMEOUT = 60.0
#: How often the progress line is refreshed.
PROGRESS_EVERY = 0.25
#: ``--rate max``: the first rate tried, the number of probes at most, and the bisection steps after doubling.
MAX_START = 1000
MAX_PROBES = 12
BISECT_STEPS = 3
#: ``--rate max``: a probe fails when the load generator fell behind by more than this share.
OFFERED_SHARE = 0.95


@dataclass(frozen=True)
class Options:
    """What one ``dsat bench`` invocation measures."""

    rate: float | None  # None: find the highest rate sustained (--rate max)
    duration: float = 5.0
    names: int = 1000
    payload: str = "ingress"
    carbon: str = "sink"
    max_p99_ms: float = 1000.0
    max_loss: float = 0.0


# -- the topology copy ----------------------------------------------------------------------------------------


@dataclass
class Plan:
    """The topology copy the bench runs, and how its load gets in."""

    path: Path
    topology: topology.Topology
    sink_ports: list[int]
    changes: list[str]
    ingress: tuple[str, int] | None = None  # the plaintext ingress the load is sent to
    collectors: list[str] = field(default_factory=list)  # the bench collectors' step names
    phase_file: Path | None = None


def derive(source: Path, work: Path, options: Options) -> Plan:
    """Write the bench's copy of *source* into *work* and validate it with this machine's checks."""
    original = topology.load(source)
    preflight.check(original, machine=True)
    doc = tomllib.loads(source.read_text(encoding="utf-8"))
    changes = [f"run_dir and spool in {work}"]
    top = doc.setdefault("dsat", {})
    top["run_dir"] = str(work / "run")
    spool = doc.setdefault("spool", {})
    if spool.get("path", "x"):
        spool["path"] = str(work / "spool" / "carbon.db")
    rules = doc.get("rules", {})
    for key in ("rewrite", "aggregation"):
        if rules.get(key):
            rules[key] = str(source.absolute().parent / rules[key])
    sink_ports = [free_port() for _ in original.carbon.destinations]
    doc.setdefault("carbon", {})["destinations"] = [
        f"127.0.0.1:{port}" + (f":{instance}" if instance else "")
        for port, (_h, _p, instance) in zip(sink_ports, original.carbon.destinations, strict=True)
    ]
    behind = " (a carbon-cache behind it)" if options.carbon == "real" else ""
    changes.append(f"carbon destinations -> the bench's counting sink{behind} on ports {sink_ports}")
    doc.setdefault("tracker", {})["metrics_every"] = "1s"
    changes.append("DSAT's own metrics every 1s")
    plan = Plan(work / "bench.toml", original, sink_ports, changes)
    if options.payload == "ingress":
        if original.ingress.plaintext is None:
            port = free_port()
            doc.setdefault("ingress", {})["plaintext"] = f"127.0.0.1:{port}"
            changes.append(f"added a Graphite plaintext ingress on 127.0.0.1:{port}")
        plan.ingress = topology.loads(tomli_w.dumps(doc), path=plan.path).ingress.plaintext
    else:
        collectors = [s for s in original.satellites.values() if s.kind == "collector"]
        if not collectors:
            raise BenchError(f"{source}: no collector to replace; use --payload ingress")
        plan.phase_file = work / "phase.json"
        top["plugins"] = [*top.get("plugins", []), "dsat.tools.bench_load"]
        every_cap = options.duration / 10
        for step in collectors:
            sat = doc["satellites"][step.name]
            kind = f"bench_{step.type}"
            if kind not in {spec.name for spec in bench_load.SPECS}:
                changes.append(f"{step.name}: type {step.type!r} has no bench collector; it sends gauges")
                kind = "bench_gauge"
            sat["use"] = kind
            sat["options"] = {"phase": str(plan.phase_file), "step": step.name, "share": 1 / len(collectors)}
            if step.every is not None and step.every > every_cap:
                sat["every"] = every_cap
                changes.append(f"{step.name}: every {step.every:g}s -> {every_cap:g}s (ten runs a phase at least)")
            plan.collectors.append(step.name)
        changes.append(f"collectors {', '.join(plan.collectors)} replaced by bench collectors of the same type")
    plan.path.write_text(tomli_w.dumps(doc))
    plan.topology = topology.load(plan.path)
    preflight.check(plan.topology, machine=True)
    return plan


# -- the processes --------------------------------------------------------------------------------------------


class Running:
    """The sink, ``dsat up`` of the copy, and (with ``--carbon real``) a carbon-cache; :meth:`close` ends all."""

    def __init__(self, plan: Plan, work: Path, options: Options) -> None:
        self.plan = plan
        self.work = work
        self.up: subprocess.Popen[bytes] | None = None
        self.carbon: subprocess.Popen[bytes] | None = None
        self.sink: Any = None
        self.control: Any = None
        upstreams = self._start_carbon(options) if options.carbon == "real" else None
        listeners = []
        for port in plan.sink_ports:
            listener = socket.create_server(("127.0.0.1", port), backlog=64)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            listeners.append(listener)
        from dsat.tools.bench_sink import serve

        ctx = multiprocessing.get_context("fork")
        self.control, theirs = ctx.Pipe()
        protocol = plan.topology.carbon.protocol
        self.sink = ctx.Process(target=serve, args=(listeners, protocol, theirs, upstreams), daemon=True)
        self.sink.start()
        theirs.close()
        for listener in listeners:
            listener.close()
        self.log = work / "dsat-up.log"
        with self.log.open("wb") as log:
            self.up = subprocess.Popen(
                [sys.executable, "-m", "dsat", "up", str(plan.path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def _start_carbon(self, options: Options) -> list[tuple[str, int]]:
        """One carbon-cache behind the sink: every destination's bytes are forwarded to it."""
        from dsat.tools.stack import LocalStack

        stack = LocalStack(self.work / "carbon", pickle_port=free_port())
        stack.prepare_carbon()
        port = stack.pickle_port if self.plan.topology.carbon.protocol == "pickle" else stack.line_port
        with (self.work / "carbon-cache.log").open("wb") as log:
            self.carbon = subprocess.Popen(
                stack.carbon_command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "GRAPHITE_NO_PREFIX": "True"},
            )
        wait_until(lambda: _listening("127.0.0.1", port), 30, "carbon-cache to listen", self.work / "carbon-cache.log")
        self.plan.changes.append(f"a carbon-cache behind the sink (Whisper files in {stack.whisper_dir})")
        return [("127.0.0.1", port)] * len(self.plan.sink_ports)

    def wait_ready(self) -> None:
        topo = self.plan.topology
        steps = {"orchester", *topo.satellites}

        def ready() -> bool:
            if self.up is not None and self.up.poll() is not None:
                raise BenchError(f"dsat up exited ({self.up.returncode}); see {self.log}:\n{self.log_tail()}")
            try:
                snap = status.fetch(topo.tracker.status, timeout=1.0)
            except DsatError:
                return False
            if not steps <= set(snap.get("heartbeats", {})):
                return False
            return self.plan.ingress is None or _listening(*self.plan.ingress)

        wait_until(ready, START_TIMEOUT, "every step to start", self.log)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def tally(self) -> dict[str, Any]:
        self.control.send(("report",))
        result: dict[str, Any] = self.control.recv()
        return result

    def processes(self) -> dict[str, psutil.Process]:
        """Every step's process by step name, and ``dsat up`` itself as ``supervisor``."""
        if self.up is None:
            return {}
        found: dict[str, psutil.Process] = {}
        with contextlib.suppress(psutil.NoSuchProcess):
            top = psutil.Process(self.up.pid)
            found["supervisor"] = top
            for child in top.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    cmd = child.cmdline()
                    if cmd[1:4] == ["-m", "dsat", "run"]:
                        found[cmd[-1]] = child
        if self.carbon is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                found["carbon-cache"] = psutil.Process(self.carbon.pid)
        return found

    def close(self) -> None:
        """SIGTERM ``dsat up`` (it stops its steps downstream), then kill whatever is left of every group."""
        for proc in (self.up, self.carbon):
            if proc is not None:
                stop_group(proc, 30)
        if self.control is not None:
            with contextlib.suppress(OSError):
                self.control.send(("stop",))  # the forked sink holds both ends of the pipe: no EOF reaches it
            self.control.close()
        if self.sink is not None:
            self.sink.join(5)
            if self.sink.is_alive():
                self.sink.kill()
                self.sink.join()


def stop_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM *proc*, wait up to *timeout* s, then SIGKILL its process group (it has a session of its own)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def wait_until(predicate: Callable[[], object], seconds: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        check_interrupted()
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise BenchError(f"gave up after {seconds:g}s waiting for {what}; see {log}:\n{tail}")
        time.sleep(0.1)


# -- the load -------------------------------------------------------------------------------------------------


class IngressLoad(threading.Thread):
    """Writes a phase's datapoints as Graphite plaintext to the ingress, paced tick by tick."""

    def __init__(self, address: tuple[str, int], phase: Phase) -> None:
        super().__init__(daemon=True, name="dsat-bench-load")
        self.address = address
        self.phase = phase
        self.sent = 0
        self.error: OSError | None = None

    def run(self) -> None:
        phase = self.phase
        try:
            with socket.create_connection(self.address, timeout=30) as sock:
                while True:
                    now = time.monotonic()
                    if now < phase.t0:
                        time.sleep(phase.t0 - now)
                        continue
                    count = phase.due(now) - self.sent
                    if count > 0:
                        sock.sendall(bench_load.lines(phase, self.sent, count))
                        self.sent += count
                    if now >= phase.end:
                        return
                    time.sleep(max(0.0, bench_load.TICK - (time.monotonic() - now)))
        except OSError as exc:
            self.error = exc


# -- one phase ------------------------------------------------------------------------------------------------


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def peak_rss(proc: psutil.Process) -> int:
    """The process's peak resident set (VmHWM on Linux), else its resident set now, in bytes."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return int(proc.memory_info().rss)


def _tracker_counts(snap: dict[str, Any]) -> dict[str, Any]:
    return {"tasks": dict(snap.get("tasks", {})), "steps": {k: dict(v) for k, v in snap.get("steps", {}).items()}}


def _difference(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """Counts gained between two tracker snapshots (in_flight is a level: the later value)."""
    tasks = {k: v - before["tasks"].get(k, 0) if k != "in_flight" else v for k, v in after["tasks"].items()}
    steps = {}
    for step, counters in after["steps"].items():
        was = before["steps"].get(step, {})
        steps[step] = {k: v - was.get(k, 0) for k, v in counters.items()}
    return {"tasks": tasks, "steps": steps}


#: Set by Ctrl-C (SIGINT) during ``dsat bench``.  Python raises KeyboardInterrupt wherever the main
#: thread is, and inside a finaliser (``__del__``, a weakref callback) it is only printed and lost; the
#: bench's waits check this too, so a Ctrl-C always stops the bench.
_INTERRUPTED = threading.Event()


def _on_sigint(signum: int, frame: Any) -> None:
    _INTERRUPTED.set()
    raise KeyboardInterrupt


def check_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl-C came during this bench (even if its first raise was lost)."""
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt


class Progress:
    """A live line on a terminal (rewritten in place), a plain line a second otherwise."""

    def __init__(self, out: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.tty = out.isatty()
        self.clock = clock
        self._last: float | None = None

    def show(self, text: str) -> None:
        now = self.clock()
        if self.tty:
            self.out.write("\r\x1b[K" + text)
            self.out.flush()
        elif self._last is None or now - self._last >= 1.0:
            self.out.write(text + "\n")
            self.out.flush()
            self._last = now

    def done(self) -> None:
        if self.tty:
            self.out.write("\r\x1b[K")
            self.out.flush()


def run_phase(running: Running, phase_id: int, rate: float, options: Options, progress: Progress) -> dict[str, Any]:
    """Send one phase of load, wait for it to settle, and measure it."""
    plan = running.plan
    procs = running.processes()
    cpu_before = {name: cpu_seconds(p) for name, p in procs.items()}
    before = _tracker_counts(status.fetch(plan.topology.tracker.status))
    phase = Phase.start(phase_id, rate, names_needed(plan, rate, options.names), options.duration)
    running.control.send(("phase", phase))
    load: IngressLoad | None = None
    if plan.ingress is not None:
        load = IngressLoad(plan.ingress, phase)
        load.start()
    else:
        assert plan.phase_file is not None
        phase.write(plan.phase_file)

    def sent() -> int:
        if load is not None:
            return load.sent
        total = 0
        assert plan.phase_file is not None
        for step in plan.collectors:
            with contextlib.suppress(OSError, ValueError):
                total += int(plan.phase_file.with_name(f"{plan.phase_file.name}.{phase.id}.{step}.sent").read_text())
        return total

    # A collector's last batch of the phase comes at its first run after the end.
    tail = (
        2 * bench_load.TICK
        if load is not None
        else max(plan.topology.satellites[n].every or 0 for n in plan.collectors)
    )
    label = f"{plan.topology.path.name} @ {rate:,.0f}/s"
    last_count, last_change = -1, time.monotonic()
    while True:
        time.sleep(PROGRESS_EVERY)
        check_interrupted()
        now = time.monotonic()
        tally = running.tally()
        count = tally["received"]
        if count != last_count:
            last_count, last_change = count, now
        elapsed = min(max(0.0, now - phase.t0), options.duration)
        progress.show(
            f"{label}: {elapsed:4.1f}/{options.duration:g}s  sent {sent():,}  delivered {tally['delivered']:,}"
        )
        if running.up is not None and running.up.poll() is not None:
            raise BenchError(f"dsat up exited ({running.up.returncode}) during the load:\n{running.log_tail()}")
        if now < phase.end + tail + PROGRESS_EVERY or (load is not None and load.is_alive()):
            continue
        if tally["delivered"] >= sent() or now - last_change > SETTLE:
            break
    progress.done()
    if load is not None and load.error is not None:
        raise BenchError(f"the load could not be sent to the ingress {plan.ingress}: {load.error}")
    total_sent = sent()
    tally = running.tally()
    tracker = _difference(_tracker_counts(status.fetch(plan.topology.tracker.status)), before)
    processes = {}
    for name, proc in running.processes().items():
        with contextlib.suppress(psutil.Error):
            processes[name] = {
                "cpu_seconds": round(cpu_seconds(proc) - cpu_before.get(name, 0.0), 3),
                "peak_rss_mb": round(peak_rss(proc) / 2**20, 1),
            }
    last = tally["last_arrival"]
    seconds = max(last - phase.t0, options.duration) if last else options.duration
    delivered = tally["delivered"]
    return {
        "rate": rate,
        "names": phase.names,
        "sent": total_sent,
        "delivered": delivered,
        "lost": total_sent - delivered,
        "duplicates": tally["duplicates"],
        "throughput": round(delivered / seconds, 1),
        "offered_rate": round(total_sent / options.duration, 1),
        "latency_ms": tally["latency_ms"],
        "tracker": tracker,
        "orchester": tally["own"],
        "other_datapoints": tally["other"],
        "stray": tally["stray"],
        "processes": processes,
    }


def names_needed(plan: Plan, rate: float, names: int) -> int:
    """At least *names*, and enough that no two datapoints of one tick (ingress) or one batch share a name."""
    if plan.ingress is not None:
        per_slot = rate * bench_load.TICK
    else:
        every = max(plan.topology.satellites[name].every or 0.0 for name in plan.collectors)
        per_slot = rate * every / len(plan.collectors)
    return max(names, math.ceil(per_slot))


def passes(result: dict[str, Any], options: Options) -> bool:
    """A ``--rate max`` probe holds when it lost no more than allowed, kept p99 under the bound and kept pace."""
    p99 = result["latency_ms"]["p99"]
    return (
        result["lost"] <= options.max_loss * result["sent"]
        and p99 is not None
        and p99 <= options.max_p99_ms
        and result["offered_rate"] >= OFFERED_SHARE * result["rate"]
    )


def find_max_rate(probe: Callable[[float], dict[str, Any]], holds: Callable[[dict[str, Any]], bool]) -> Iterator[Any]:
    """Double the rate from :data:`MAX_START` until a probe fails, then bisect; yields every probe's result.

    The last thing yielded is ``("best", result)``: the highest rate that held (None if none did).
    """
    good: dict[str, Any] | None = None
    low, high = 0.0, None
    rate = float(MAX_START)
    bisections = 0
    for _ in range(MAX_PROBES):
        result = probe(rate)
        yield result
        if holds(result):
            good, low = result, rate
        else:
            high = rate
        if high is None:
            rate *= 2
            continue
        if bisections == BISECT_STEPS:
            break
        bisections += 1
        rate = float(round((low + high) / 2))
    yield ("best", good)


def bench(source: Path, options: Options, progress: Progress) -> dict[str, Any]:
    """Run *source* under the load *options* describe; the report as a dict (see :func:`format_report`)."""
    work = Path(tempfile.mkdtemp(prefix="dsat-bench-"))
    running: Running | None = None
    try:
        plan = derive(source, work, options)
        running = Running(plan, work, options)
        running.wait_ready()
        report: dict[str, Any] = {
            "topology": str(source),
            "payload": options.payload,
            "carbon": options.carbon,
            "protocol": plan.topology.carbon.protocol,
            "duration": options.duration,
            "changes": plan.changes,
        }
        if options.rate is not None:
            report.update(run_phase(running, 1, options.rate, options, progress))
            return report
        probes: list[dict[str, Any]] = []
        ids = iter(range(1, MAX_PROBES + 1))
        best: dict[str, Any] | None = None
        probe = lambda r: run_phase(running, next(ids), r, options, progress)  # noqa: E731
        for item in find_max_rate(probe, lambda result: passes(result, options)):
            if isinstance(item, tuple):
                best = item[1]
            else:
                probes.append(item)
                progress.out.write(f"  probe {item['rate']:,.0f}/s: {'held' if passes(item, options) else 'failed'}\n")
        report["max_rate"] = {
            "rate": best["rate"] if best else None,
            "max_p99_ms": options.max_p99_ms,
            "max_loss": options.max_loss,
            "probes": [{k: p[k] for k in ("rate", "sent", "lost", "latency_ms", "offered_rate")} for p in probes],
        }
        report.update(best or probes[-1])
        return report
    finally:
        if running is not None:
            running.close()
        shutil.rmtree(work, ignore_errors=True)


# -- the report -----------------------------------------------------------------------------------------------

#: The figures ``--compare`` sets side by side: (label, how to read it from a report).
COMPARED: tuple[tuple[str, Callable[[dict[str, Any]], float | None]], ...] = (
    ("throughput /s", lambda r: r["throughput"]),
    ("latency p50 ms", lambda r: r["latency_ms"]["p50"]),
    ("latency p95 ms", lambda r: r["latency_ms"]["p95"]),
    ("latency p99 ms", lambda r: r["latency_ms"]["p99"]),
    ("latency max ms", lambda r: r["latency_ms"]["max"]),
    ("lost", lambda r: r["lost"]),
    ("CPU s (all)", lambda r: round(sum(p["cpu_seconds"] for p in r["processes"].values()), 3)),
    ("peak RSS MB (all)", lambda r: round(sum(p["peak_rss_mb"] for p in r["processes"].values()), 1)),
)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)) for r in rows]


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 or float(value).is_integer() else f"{value:,.2f}"


def format_report(report: dict[str, Any]) -> str:
    """A report as text: the totals, latency, tracker counts per step, and CPU/RSS per process."""
    lat = report["latency_ms"]
    lines = [
        f"{report['topology']}: {report['payload']} load, {report['names']:,} names, carbon {report['carbon']}"
        f" ({report['protocol']}), {report['duration']:g}s at {report['rate']:,.0f}/s",
        *(f"  bench copy: {change}" for change in report["changes"]),
        f"sent {report['sent']:,} = delivered {report['delivered']:,} + lost {report['lost']:,}"
        f"  (duplicates {_num(report['duplicates'])}, offered {report['offered_rate']:,.0f}/s)",
        f"throughput {report['throughput']:,.0f} datapoints/s delivered",
        "latency ms (entering DSAT -> Carbon socket): "
        + ", ".join(f"{k} {_num(lat[k])}" for k in ("p50", "p95", "p99", "max")),
        "tracker: " + ", ".join(f"{k} {v:,}" for k, v in sorted(report["tracker"]["tasks"].items())),
        "orchester: " + ", ".join(f"{k} {v:,.0f}" for k, v in report["orchester"].items()),
        "",
    ]
    step_keys = ("points_received", "points_sent", "batches_failed", "batches_timed_out", "batches_retried")
    rows = [["step", "points in", "points out", "failed", "timed out", "retried"]]
    for step, counters in sorted(report["tracker"]["steps"].items()):
        rows.append([step, *(f"{counters.get(k, 0):,}" for k in step_keys)])
    lines += _table(rows) + [""]
    rows = [["process", "CPU s", "peak RSS MB"]]
    for name, proc in sorted(report["processes"].items()):
        rows.append([name, f"{proc['cpu_seconds']:.2f}", f"{proc['peak_rss_mb']:.1f}"])
    lines += _table(rows)
    if "max_rate" in report:
        best = report["max_rate"]
        held = f"{best['rate']:,.0f}/s" if best["rate"] else "none of the rates tried"
        lines += [
            "",
            f"highest rate sustained (loss <= {best['max_loss']:g}, p99 <= {best['max_p99_ms']:g} ms): {held}",
        ]
    return "\n".join(lines)


def compare(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Each compared figure of both runs, and second / first."""
    out = {}
    for label, read in COMPARED:
        a, b = read(first), read(second)
        out[label] = {"first": a, "second": b, "ratio": round(b / a, 3) if a and b is not None else None}
    return out


def format_compare(first: dict[str, Any], second: dict[str, Any], ratios: dict[str, Any]) -> str:
    rows = [["", Path(first["topology"]).name, Path(second["topology"]).name, "ratio"]]
    for label, figures in ratios.items():
        ratio = figures["ratio"]
        rows.append([label, _num(figures["first"]), _num(figures["second"]), "-" if ratio is None else f"{ratio:.2f}x"])
    return "\n".join(_table(rows))


def main(args: Any, out: TextIO = sys.stdout) -> int:
    """``dsat bench``: one report (or two and their ratios with ``--compare``); JSON to ``--json`` too."""
    if args.rate == "max":
        rate = None
    else:
        try:
            rate = float(args.rate)
        except ValueError:
            raise ConfigError(f"--rate {args.rate!r}: write datapoints a second (e.g. 10000) or max") from None
        if not rate > 0:
            raise ConfigError(f"--rate {args.rate}: must be more than 0")
    if args.names < 1:
        raise ConfigError(f"--names {args.names}: must be at least 1")
    options = Options(rate, args.duration, args.names, args.payload, args.carbon, args.max_p99, args.max_loss)
    if threading.current_thread() is not threading.main_thread():
        return _main(args, options, out)
    _INTERRUPTED.clear()
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        return _main(args, options, out)
    finally:
        signal.signal(signal.SIGINT, previous)


def _main(args: Any, options: Options, out: TextIO) -> int:
    progress = Progress(sys.stderr)
    sources = [Path(args.topology)] + ([Path(args.compare)] if args.compare else [])
    for source in sources:  # both are checked before either runs
        preflight.check(topology.load(source), machine=True)
    reports = []
    for source in sources:
        reports.append(bench(source, options, progress))
        out.write(format_report(reports[-1]) + "\n\n")
    result: dict[str, Any] = reports[0]
    if args.compare:
        ratios = compare(reports[0], reports[1])
        out.write(format_compare(reports[0], reports[1], ratios) + "\n")
        result = {"runs": reports, "compare": ratios}
    if args.json:
        text = json.dumps(result, indent=2) + "\n"
        if args.json == "-":
            out.write(text)
        else:
            Path(args.json).write_text(text)
    return 0

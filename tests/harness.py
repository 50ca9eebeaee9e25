"""What the real-process tests share: topologies of real DSAT steps, Carbon stand-ins, probes of a running stack.

The scenarios of ``test_reliability``, ``test_faults`` and the multi-host and
worker tests import from here (never from another test module); the figures
they record go to ``test-artifacts/reliability.json`` for ``docs/reliability.rst``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import ROOT, Carbon, Processes, settled, wait_for

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
    import os
    import signal

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
        import threading

        self.port = port
        self.on_point = on_point
        self._server: Any = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        import socket
        import threading

        self._server = socket.create_server(("127.0.0.1", self.port))
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)

    def _accept(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            t = threading.Thread(target=self._read, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _read(self, conn: Any) -> None:
        import pickle
        import struct

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
        ["ss", "-tnH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    return sum(int(line.split()[0]) for line in out.splitlines() if line.strip())


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True

"""Shared fixtures: real DSAT processes started from topologies written per test."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil
import pytest
import whisper

from dsat.tools.stack import LocalStack, free_port

ROOT = Path(__file__).resolve().parent.parent


def install_missing_programs(packages: Mapping[str, str]) -> None:
    """Install with apt-get the Debian package of each program (``{program: package}``) not on the PATH."""
    missing = sorted({pkg for prog, pkg in packages.items() if shutil.which(prog) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        pytest.fail(f"this test needs {', '.join(missing)} and is not root to install them with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"cannot install {missing}: {' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-3000:]}")


def wait_for(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    interval: float = 0.2,
    detail: Callable[[], object] | None = None,
) -> object:
    """Poll *predicate* until it returns something truthy; fail the test with *what* after *timeout*.

    *detail*, when given, is called on failure and its result shown (e.g. what is still missing).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            shown = f": {detail()}" if detail is not None else ""
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}{shown}")
        time.sleep(interval)


def settled(read: Callable[[], Any], timeout: float, what: str) -> Any:
    """What *read* returns once two reads a second apart agree and hold something (carbon-cache done writing)."""
    previous: list[Any] = [read()]

    def stable() -> Any:
        time.sleep(1)
        now = read()
        same = now == previous[0]
        previous[0] = now
        return now if same and any(now) else None

    return wait_for(stable, timeout, what, interval=0)


class Processes:
    """Starts ``dsat`` commands as real processes and makes sure none outlives the test."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def dsat(self, *args: str, name: str = "dsat") -> subprocess.Popen[bytes]:
        log = self.log_dir / f"{name}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "dsat", *args],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.started.append((proc, log))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
        """SIGTERM, then wait; returns the exit status."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout)

    def cleanup(self) -> list[str]:
        """Kill whatever is left (and say so); returns what had to be killed."""
        leftovers = []
        for proc, _log in self.started:
            try:
                family = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                family = []
            if proc.poll() is None:
                proc.kill()
                leftovers.append(f"pid {proc.pid}")
            for child in family:
                if child.is_running():
                    leftovers.append(f"child {child.pid} {' '.join(child.cmdline()[:6])}")
                    child.kill()
        return leftovers

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        for p, log in self.started:
            if p is proc:
                return log.read_text(errors="replace")
        return ""


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.cleanup()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary folder with a short path: unix socket paths are limited to 107 bytes."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dsat-") as name:
        yield Path(name)


SCHEMAS = """
[test]
pattern = ^dsat\\.testhost\\.
retentions = 1s:30m

[default]
pattern = .*
retentions = 10s:1h
"""


class Carbon:
    """A real carbon-cache (1 s Whisper resolution for the test tree) that a test stops and starts."""

    def __init__(self, base: Path) -> None:
        self.stack = LocalStack(base / "carbon", pickle_port=free_port())
        self.stack.prepare_carbon(SCHEMAS)
        self.log = base / "carbon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self.stack.pickle_port

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.stack.carbon_command(), stdout=self.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for(self.listening, 30, "carbon-cache to listen")

    def listening(self) -> bool:
        import socket

        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.proc = None

    def runs(self, step: str, metrics: int) -> list[set[int]]:
        """For each metric m0..m<N-1> of *step*, the run numbers stored in its Whisper file."""
        out = []
        for i in range(metrics):
            path = self.stack.whisper_dir / "dsat" / "testhost" / step / f"m{i}.wsp"
            if not path.exists():
                out.append(set())
                continue
            try:
                _, values = whisper.fetch(str(path), 0)
            except whisper.CorruptWhisperFile:  # being created by carbon-cache right now
                values = []
            out.append({int(v) for v in values if v is not None})
        return out


@pytest.fixture
def carbon(short_tmp: Path) -> Any:
    server = Carbon(short_tmp)
    yield server
    server.stop()

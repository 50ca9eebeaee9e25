"""Fixtures, and the line between unit tests and the slow ones.

A test that starts a process (``dsat``, carbon-cache, openssl, any child),
needs root, network namespaces or podman, or runs for more than about a
second carries a marker: ``integration`` (real processes and sockets),
``e2e`` (the whole Graphite stack), ``compose`` (podman), ``faults`` (with
integration: the fault matrix).  Every other test is given the ``unit``
marker here, and ``make unit`` (``pytest -m unit``) runs those: no root, no
network namespace, no container, in under a minute.  A unit test that starts
a process, binds an address other than loopback, or runs over
:data:`UNIT_SECONDS` fails, saying which marker it needs.

The helpers the fixtures build on, and that test modules import, are in
:mod:`tests.harness`.
"""

from __future__ import annotations

import _posixsubprocess
import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from dsat import naming
from dsat.tools.stack import free_port
from tests.harness import Carbon, Processes, demo_topology, stop_cleanly, wait_for

#: The markers of the slow tests; a test with none of them is a unit test.
SLOW_MARKERS = ("integration", "e2e", "compose", "faults")
#: The longest a unit test may run (about a second is the rule; this leaves room for a busy machine).
UNIT_SECONDS = 5.0


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``unit`` every test that carries none of :data:`SLOW_MARKERS` (before ``-m`` selects)."""
    for item in items:
        if not any(item.get_closest_marker(name) for name in SLOW_MARKERS):
            item.add_marker(pytest.mark.unit)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A unit test that passed in more than :data:`UNIT_SECONDS` fails: it belongs with the slow ones."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.passed and item.get_closest_marker("unit") and call.duration > UNIT_SECONDS:
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} is a unit test but ran {call.duration:.1f} s (over {UNIT_SECONDS:g} s): make it faster "
            "or mark it integration (tests/conftest.py)"
        )


def _loopback(host: object) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(str(host).strip("[]")).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def _unit_tests_stay_in_this_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """In a unit test, starting a process or binding an address other than loopback fails the test.

    The call still goes through (a test that catches its error sees the real one); the test fails at its end.
    """
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    found: list[str] = []

    def starts(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            shown = args[0] if args and isinstance(args[0], list | tuple) else args[:1]
            found.append(f"started a process ({name} {' '.join(map(os.fsdecode, shown))[:200]})")
            return real(*args, **kwargs)

        return wrapper

    for name in ("fork", "posix_spawn", "posix_spawnp"):
        monkeypatch.setattr(os, name, starts(f"os.{name}", getattr(os, name)))
    monkeypatch.setattr(_posixsubprocess, "fork_exec", starts("fork_exec", _posixsubprocess.fork_exec))
    monkeypatch.setattr(subprocess, "_fork_exec", starts("subprocess", _posixsubprocess.fork_exec))  # its own name

    real_bind = socket.socket.bind

    def bind(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            found.append(f"bound {address!r}, not a loopback address")
        real_bind(sock, address)

    monkeypatch.setattr(socket.socket, "bind", bind)
    real_zmq_bind = zmq.Socket.bind

    def zmq_bind(sock: zmq.Socket[Any], address: str) -> Any:
        if address.startswith("tcp://") and not _loopback(address[6:].rsplit(":", 1)[0]):
            found.append(f"bound {address}, not a loopback address")
        return real_zmq_bind(sock, address)

    monkeypatch.setattr(zmq.Socket, "bind", zmq_bind)
    yield
    if found:
        pytest.fail(
            f"{request.node.nodeid} is a unit test but it {found[0]}"
            + (f" (and {len(found) - 1} more)" if len(found) > 1 else "")
            + ": keep it in this process on loopback, or mark it integration (tests/conftest.py)",
            pytrace=False,
        )


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.cleanup()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary folder with a short path: unix socket paths are limited to 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="dsat-") as name:
        yield Path(name)


@pytest.fixture
def carbon(short_tmp: Path) -> Iterator[Carbon]:
    server = Carbon(short_tmp)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One running demo stack (``dsat demo``) shared by the tests of a module; stopped cleanly at its end."""
    base = Path(tempfile.mkdtemp(prefix="dsat-e2e-"))
    procs = Processes(tmp_path_factory.mktemp("logs"))
    topo = demo_topology(base, free_port())
    http_port = free_port()
    proc = procs.dsat(
        "demo", "--topology", str(topo), "--state-dir", str(base / "state"), "--http-port", str(http_port), name="demo"
    )
    try:
        wait_for(
            lambda: proc.poll() is not None or "dsat demo is up" in procs.log_of(proc),
            90,
            "the demo to announce graphite-web",
        )
        assert proc.poll() is None, procs.log_of(proc)
        yield {
            "proc": proc,
            "procs": procs,
            "url": f"http://127.0.0.1:{http_port}/",
            "where": naming.component(socket.gethostname()),
            "whisper": base / "state" / "whisper",
            "topology": topo,
            "base": base,
        }
    finally:
        try:
            stop_cleanly(proc, procs)
        finally:
            leftovers = procs.cleanup()
            shutil.rmtree(base, ignore_errors=True)
        assert not leftovers, f"processes left running: {leftovers}"

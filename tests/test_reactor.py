"""dsat.reactor: the asyncio reactor installed once, and SIGTERM that stops the reactor once."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.error import ReactorNotRunning
from twisted.logger import globalLogPublisher

from dsat.reactor import stop_on_sigterm


class StoppingReactor:
    """What stop_on_sigterm uses of a reactor: callWhenRunning, callFromThread (run at once here) and stop,
    which raises as Twisted's does once the reactor is stopping."""

    def __init__(self) -> None:
        self.when_running: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        self.stops = 0

    def callWhenRunning(self, fn: Callable[..., object], *args: Any) -> None:  # noqa: N802 (Twisted API)
        self.when_running.append((fn, args))

    def callFromThread(self, fn: Callable[[], object]) -> None:  # noqa: N802
        fn()

    def stop(self) -> None:
        self.stops += 1
        if self.stops > 1:
            raise ReactorNotRunning("Can't stop reactor that isn't running.")

    def run(self) -> None:
        for fn, args in self.when_running:
            fn(*args)


def test_a_second_sigterm_while_stopping_is_logged_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once running, SIGTERM's handler is DSAT's: the first stops the reactor, the second (a process group
    signalled, then the supervisor's own) is logged as already stopping; nothing is raised or logged critical."""
    handlers: dict[int, Callable[[int, object], None]] = {}
    monkeypatch.setattr(signal, "signal", lambda number, handler: handlers.__setitem__(number, handler))
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        reactor = StoppingReactor()
        stop_on_sigterm(reactor)
        assert handlers == {}  # installed when the reactor runs, after Twisted's own
        reactor.run()
        handlers[signal.SIGTERM](signal.SIGTERM, None)
        handlers[signal.SIGTERM](signal.SIGTERM, None)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert reactor.stops == 2
    said = [e["log_format"] for e in events if e.get("log_namespace") == "dsat.reactor"]
    assert said == [
        "Received SIGTERM, shutting down.",
        "Received SIGTERM, shutting down.",
        "SIGTERM again: already stopping",
    ]
    assert not [e for e in events if e.get("log_level") is not None and e["log_level"].name == "critical"]


@pytest.mark.integration
def test_the_asyncio_reactor_is_installed_first_or_refused_with_the_reason() -> None:
    """In a fresh Python: install() then the runtime gives the asyncio reactor; the runtime first (Twisted's
    process monitor installs its default reactor at import) makes install() refuse, naming the cause."""
    first = "from dsat.reactor import install; r = install(); import dsat.process; print(type(r).__name__)"
    done = subprocess.run([sys.executable, "-c", first], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "AsyncioSelectorReactor", done.stderr
    late = "import dsat.process; from dsat.reactor import install; install()"
    done = subprocess.run([sys.executable, "-c", late], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "was installed before dsat.reactor.install()" in done.stderr

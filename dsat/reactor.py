"""The one reactor of a DSAT process: Twisted's asyncio reactor, so ``zmq.asyncio`` and Twisted share one loop.

It must be installed before anything imports ``twisted.internet.reactor``,
which installs Twisted's default reactor instead: Twisted's process monitor
(``twisted.runner.procmon``, under :mod:`dsat.supervisor`) does so when it
is imported.  So the command line installs it first, before it imports the
runtime (``dsat run``, ``dsat up``, ``dsat demo``), and :func:`install`
refuses, with the reason, a process where another reactor came first.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

log = Logger()


def install() -> Any:
    """Install the asyncio reactor (idempotent) and return it; raise if another reactor was installed first."""
    from twisted.internet import asyncioreactor

    if "twisted.internet.reactor" not in sys.modules:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)  # zmq.asyncio and ensure_future find the reactor's loop
        asyncioreactor.install(loop)
    from twisted.internet import reactor

    if not isinstance(reactor, asyncioreactor.AsyncioSelectorReactor):
        raise RuntimeError(
            f"{type(reactor).__name__} was installed before dsat.reactor.install(): something imported"
            " twisted.internet.reactor first; install DSAT's reactor before importing the runtime"
        )
    return reactor


def stop_on_sigterm(reactor: Any) -> None:
    """Once running, SIGTERM stops *reactor*, and a SIGTERM more while it stops is logged, not a traceback.

    A process group signalled as a whole (systemd's control group, ``kill --
    -PGID``, ``timeout``) gives each step one SIGTERM, and ``dsat up`` gives it
    another: Twisted's own handler stops the reactor twice, and the second
    raises ``ReactorNotRunning`` as a critical error in the step's log.
    """

    def stop() -> None:
        try:
            reactor.stop()
        except ReactorNotRunning:
            log.info("SIGTERM again: already stopping")

    def on_sigterm(_number: int, _frame: object) -> None:
        log.info("Received SIGTERM, shutting down.")
        reactor.callFromThread(stop)

    reactor.callWhenRunning(signal.signal, signal.SIGTERM, on_sigterm)

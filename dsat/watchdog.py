"""The watchdog of a step's process: killed, with every thread's traceback in its log, when its reactor stops turning.

A satellite's function that never returns blocks its process's reactor:
heartbeats stop, batches wait, and no exception ever says so.  No code can
tell an infinite loop from slow work (the halting problem), so a timeout is
the only tool: every step process (:func:`dsat.process.run`) runs a
:class:`Watchdog` that a reactor timer (:class:`dsat.schedule.Repeat`) pets
every tenth of its *timeout*.  Each pet sets the kernel's real-time interval
timer (``setitimer(ITIMER_REAL)``) to *timeout* plus that tenth; when the
reactor has not turned for that long, the kernel sends ``SIGALRM``, whose
handler (stdlib :mod:`faulthandler`, in C: it needs neither the GIL nor the
reactor, so a loop that holds the GIL, a regular expression backtracking for
ever or a blocking C call are all caught) writes the traceback of every
thread to standard error, then lets the default action kill the process.

Killed by ``SIGALRM`` (:data:`SIGNAL`) and nothing else, a hung step is told
apart from one that exited or was killed: :mod:`dsat.supervisor` counts it as
hung, logs it, and starts the step again.  The timeout of each step is
:meth:`dsat.topology.Topology.watchdog_of`.  The timer runs on the monotonic
clock: a wall-clock step does not set it off, but a process stopped
(``SIGSTOP``) for longer than its timeout is killed when it continues, as
any process whose reactor did not turn for that long.
"""

from __future__ import annotations

import faulthandler
import math
import signal
import sys
from collections.abc import Callable
from typing import TextIO

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dsat.schedule import Repeat

#: The signal that kills a hung step: the supervisor reads it as "hung".
SIGNAL = signal.SIGALRM
#: Pets per timeout: the reactor must stay stuck between timeout and timeout * (1 + 1/PETS) to be killed.
PETS = 10


def install(file: TextIO | None = None) -> None:
    """Have :data:`SIGNAL` write every thread's traceback to *file* (standard error), then kill the process."""
    faulthandler.register(SIGNAL, file=file or sys.stderr, all_threads=True, chain=True)


def alarm(seconds: float) -> None:
    """Send :data:`SIGNAL` to this process in *seconds* (0: never), in place of the alarm set before."""
    signal.setitimer(signal.ITIMER_REAL, seconds)


class Watchdog:
    """Kills its process (tracebacks first) when *clock*'s reactor does not turn for *timeout* seconds.

    *install* and *alarm* are the process-wide side: :func:`install` and
    :func:`alarm` by default, a recorder in a test.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        timeout: float,
        *,
        name: str,
        install: Callable[[], object] = install,
        alarm: Callable[[float], object] = alarm,
    ) -> None:
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"{name}: the watchdog's timeout must be a positive number of seconds, not {timeout!r}")
        self.name = name
        self.timeout = timeout
        self._install = install
        self._alarm = alarm
        self.pets = Repeat(clock, timeout / PETS, self.pet, name=f"{name}: watchdog", now=True)

    @property
    def running(self) -> bool:
        return self.pets.running

    def start(self) -> None:
        """Arm the watchdog; from now on the reactor must turn at least once every *timeout* seconds."""
        self._install()
        self.pets.start()
        self.log.info(
            "{name}: watchdog armed: this process is killed (SIGALRM, tracebacks to its log) if its reactor"
            " does not turn for {timeout:g}s",
            name=self.name,
            timeout=self.timeout,
        )

    def pet(self) -> None:
        """The reactor turned: the alarm goes *timeout* (and one pet) from now."""
        self._alarm(self.timeout * (1 + 1 / PETS))

    def stop(self) -> None:
        """Disarm: the process may stop turning its reactor (it is exiting)."""
        self.pets.stop()
        self._alarm(0)

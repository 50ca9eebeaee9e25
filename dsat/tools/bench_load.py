"""The load ``dsat bench`` puts through a topology, and how it reads the load back at the Carbon socket.

Every synthetic datapoint is named ``…dsatbench.n<J>`` (J from 0 to the number of
distinct names) and carries as its timestamp ``base + tick``, the number of
:data:`TICK` periods between the start of the load (``t0``, on the monotonic
clock every process of this machine shares) and the moment it entered DSAT.  The
counting sink (:mod:`dsat.tools.bench_sink`) turns a timestamp back into that moment,
so the latency it measures runs from the datapoint entering DSAT to its arrival
at the Carbon socket, through every step, rule and encoding in between, and
needs nothing from the pipeline but to keep timestamps (Carbon's plaintext
keeps whole seconds: a tick is one).  ``base`` lies far enough in the past that
a real carbon-cache stores every tick of the run.

Two sources use this: :func:`lines` for load driven through the orchester's
Graphite plaintext ingress, and the ``bench_<type>`` collectors of :data:`SPECS`,
which ``dsat bench --payload collectors`` puts in place of the topology's own
collectors (the topology lists this module in ``[dsat] plugins``).  A collector
waits for the phase file the bench writes (``options.phase``), emits its share of
the rate while the phase lasts, and writes how many datapoints it emitted next
to it (``<phase>.<step>.sent``), so the bench knows what entered DSAT.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dsat.plugins import SatelliteSpec

#: One tick of the load clock, in seconds; a datapoint's timestamp counts ticks.
TICK = 0.001
#: The path component that marks a datapoint as the bench's own.
MARK = "dsatbench"
#: Seconds after a phase's end in which a collector's last batch still counts as this phase's.
GRACE = 10.0
#: A bench datapoint in Carbon plaintext: (name index, timestamp).
PLAINTEXT_POINT = re.compile(rb"(?:^|\.)" + MARK.encode() + rb"\.n(\d+) \S+ (\d+)\n", re.M)
#: A bench metric name: its name index.
NAME_INDEX = re.compile(r"(?:^|\.)" + MARK + r"\.n(\d+)$")


@dataclass(frozen=True)
class Phase:
    """One stretch of load: *rate* datapoints a second over *names* names from ``t0`` (monotonic) to ``end``."""

    id: int
    rate: float
    names: int
    t0: float
    end: float
    base: int

    @property
    def ticks(self) -> int:
        """The ticks a datapoint of this phase may carry: its duration, and :data:`GRACE` for late batches."""
        return int((self.end - self.t0 + GRACE) / TICK) + 1

    def timestamp(self, now: float) -> int:
        return self.base + int((now - self.t0) / TICK)

    def entered(self, timestamp: float) -> float:
        """The monotonic time a datapoint with *timestamp* entered DSAT (the middle of its tick)."""
        return self.t0 + (int(timestamp) - self.base + 0.5) * TICK

    def due(self, now: float) -> int:
        """How many datapoints should have been sent by *now*."""
        return int(self.rate * (min(now, self.end) - self.t0))

    @classmethod
    def start(cls, id: int, rate: float, names: int, duration: float, delay: float = 0.2) -> Phase:
        t0 = time.monotonic() + delay
        ticks = int((duration + GRACE) / TICK) + 1
        # Whisper refuses the future: the last tick's timestamp is a minute before the phase starts.
        base = int(time.time()) - ticks - 60
        return cls(id, float(rate), names, t0, t0 + duration, base)

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> Phase | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def lines(phase: Phase, first: int, count: int) -> bytes:
    """Graphite plaintext for datapoints *first* .. *first + count - 1* of *phase*.

    Datapoint *k* is due at ``t0 + k / rate`` and its timestamp says so: when the
    pipeline holds the sender back, the time it waited counts in the latency
    (no "coordinated omission").  *names* covers a tick's datapoints, so no two
    share a (name, timestamp) slot.
    """
    names, base, per_tick = phase.names, phase.base, phase.rate * TICK
    return "".join(
        [f"{MARK}.n{k % names} {k} {base + int(k / per_tick)}\n" for k in range(first, first + count)]
    ).encode()


def bench_collector(options: Mapping[str, Any]) -> Callable[[], list[tuple[str, float, float]]]:
    """A collector emitting its share (``options.share``) of the current phase's load (``options.phase``)."""
    phase_file = Path(str(options["phase"]))
    step = str(options["step"])
    share = float(options.get("share", 1.0))
    state = {"phase": -1, "sent": 0}

    def collect() -> list[tuple[str, float, float]]:
        phase = Phase.read(phase_file)
        now = time.monotonic()
        if phase is None or now < phase.t0:
            return []
        if phase.id != state["phase"]:
            state.update(phase=phase.id, sent=0)
        first = state["sent"]
        count = max(0, int(phase.due(now) * share) - first)
        if not count:
            return []
        # A late run's batch may hold more datapoints than there are names: the earlier ones of it
        # take earlier ticks, one per round of names, so no two share a (name, timestamp) slot.
        ts, last, names = phase.timestamp(now), first + count - 1, phase.names
        points = [(f"{MARK}.n{k % names}", float(k), float(ts - (last - k) // names)) for k in range(first, last + 1)]
        state["sent"] = first + count
        sent_file = phase_file.with_name(f"{phase_file.name}.{phase.id}.{step}.sent")
        tmp = sent_file.with_suffix(".tmp")
        tmp.write_text(str(state["sent"]))
        os.replace(tmp, sent_file)
        return points

    return collect


def _specs() -> list[SatelliteSpec]:
    from dsat.satellites import REGISTRY

    types = sorted({spec.type for spec in REGISTRY.values() if spec.kind == "collector" and spec.type})
    return [
        SatelliteSpec(f"bench_{t}", "collector", bench_collector, type=t, doc=bench_collector.__doc__ or "")
        for t in types
    ]


#: One bench collector per envelope type of the built-in collectors, so a replaced collector keeps its type.
SPECS = _specs()

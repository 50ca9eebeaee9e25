"""How many tracker events per second the batch FSM handles (dsat.fsm.BatchTracker).

Feeds 100,000 batches that go cpu -> rate -> orchester, five events each
(SEND, ACK, SEND, ACK, HAPPY_END), into one BatchTracker on a fake clock, and
prints events and batches per second, best of three.  The tracker handles
one event per hop per batch, never per datapoint, so batches per second is
the figure to hold against a pipeline's batch rate.

    .venv/bin/python bench/tracker_fsm.py [--batches N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from twisted.internet.task import Clock

from dsat.fsm import BatchTracker


@dataclass(frozen=True)
class Event:
    event: str
    step: str
    task_id: str
    emitter: str = "cpu"
    type: str = "host"
    seq: int = 1
    meta: Mapping[str, object] = field(default_factory=dict)


def journey(task_id: str) -> list[Event]:
    return [
        Event("SEND", "cpu", task_id, meta={"legs": 1, "to": "rate", "points": 50}),
        Event("ACK", "rate", task_id, meta={"points": 50}),
        Event("SEND", "rate", task_id, meta={"legs": 1, "to": "orchester", "points": 50}),
        Event("ACK", "orchester", task_id, meta={"points": 50}),
        Event("HAPPY_END", "orchester", task_id),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=100_000)
    args = parser.parse_args()
    events = [event for i in range(args.batches) for event in journey(f"t{i}")]
    best = 0.0
    for _ in range(3):
        fsm = BatchTracker(Clock(), timeout=30)
        started = time.perf_counter()
        for event in events:
            fsm.handle(event)
        elapsed = time.perf_counter() - started
        assert fsm.snapshot()["tasks"]["happy_end"] == args.batches
        best = max(best, len(events) / elapsed)
    print(f"{best:,.0f} events/s, {best / 5:,.0f} batches/s (best of 3, {args.batches:,} batches of 5 events)")


if __name__ == "__main__":
    main()

"""How a step tells the tracker what happened to each batch.

Every hop reports ``ACK`` (received), ``SEND`` (sent on: ``legs``, the
number of envelopes, and ``to``, the step each one goes to), ``HAPPY_END``
(a leg ended well: written to Carbon, consumed by a sink, or dropped on
purpose by a transform) and ``ERROR``.  Events are envelopes on
the ``event`` channel with no points; they travel on a PUSH link to the
tracker's PULL socket.  Heartbeats travel the same way on the ``control``
channel, so the tracker knows a step is alive even when it has no batch.

A retried batch carries its attempt number in ``meta["attempt"]``; every
event about it repeats that number, so the tracker can tell the events of the
current attempt from late ones.

The other way, the tracker publishes on its PUB socket: every batch state
change under the topic ``<emitter>\0`` (an emitter subscribes to its own
name and learns which of its batches ended, must be sent again, or failed),
and every circuit-breaker change under ``breaker\0`` (:data:`dsat.breaker.BREAKER_TOPIC`).  The body after the
topic is a msgpack map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from dsat.envelope import Envelope, encode
from dsat.transport import Sender

#: Seconds between two heartbeats of a step to the tracker.
HEARTBEAT_EVERY = 5.0


def topic_for(emitter: str) -> bytes:
    """The PUB topic of an emitter's batch state changes."""
    return emitter.encode() + b"\0"


def published(topic: bytes, body: dict[str, Any]) -> bytes:
    return topic + msgpack.packb(body)


def parse_published(frame: bytes) -> tuple[bytes, dict[str, Any]]:
    """Split a frame from the tracker's PUB socket into (topic, body)."""
    topic, sep, body = frame.partition(b"\0")
    if not sep:
        raise ValueError("no topic in the frame")
    try:
        value = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types for bad input; all mean the same here
        raise ValueError(f"the body does not decode: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("the body is not a map")
    return topic + sep, value


class Reporter:
    """Sends one step's tracker events and heartbeats."""

    def __init__(self, sender: Sender, *, step: str, where: str, pid: int) -> None:
        self.sender = sender
        self.step = step
        self.where = where
        self.pid = pid

    def _emit(self, env: Envelope, event: str, **meta: str | int | float) -> None:
        if not env.task_id:
            return
        if "attempt" in env.meta:
            meta["attempt"] = env.meta["attempt"]
        self.sender.send(encode(env.event_for(event, step=self.step, where=self.where, pid=self.pid, **meta)))

    def ack(self, env: Envelope) -> None:
        self._emit(env, "ACK", points=len(env.points))

    def sent(self, env: Envelope, to: Sequence[str], points: int | None = None) -> None:
        """*env* went on as one leg to each step of *to* (a step twice for two envelopes to it)."""
        points = len(env.points) if points is None else points
        self._emit(env, "SEND", legs=len(to), to=",".join(to), points=points)

    def ended(self, env: Envelope, **meta: str | int | float) -> None:
        self._emit(env, "HAPPY_END", **meta)

    def error(self, env: Envelope, reason: str) -> None:
        self._emit(env, "ERROR", reason=reason)

    def heartbeat(self, **counters: int | str) -> None:
        """I am alive; *counters* (totals since start) and settings (strings) travel along."""
        self.sender.send(
            encode(
                Envelope(
                    channel="control", type="heartbeat", step=self.step, where=self.where, pid=self.pid, meta=counters
                )
            )
        )

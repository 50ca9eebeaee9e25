"""How a step tells the tracker what happened to each batch.

Every hop reports ``ACK`` (received), ``SEND`` (sent on, with the number of
legs), ``HAPPY_END`` (a leg ended well: written to Carbon, consumed by a sink,
or dropped on purpose by a transform) and ``ERROR``.  Events are envelopes on
the ``event`` channel with no points; they travel on a PUSH link to the
tracker's PULL socket.  Heartbeats travel the same way on the ``control``
channel, so the tracker knows a step is alive even when it has no batch.
"""

from __future__ import annotations

from dsat.envelope import Envelope, encode
from dsat.transport import Sender


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
        self.sender.send(encode(env.event_for(event, step=self.step, where=self.where, pid=self.pid, **meta)))

    def ack(self, env: Envelope) -> None:
        self._emit(env, "ACK", points=len(env.points))

    def sent(self, env: Envelope, legs: int, points: int | None = None) -> None:
        self._emit(env, "SEND", legs=legs, points=len(env.points) if points is None else points)

    def ended(self, env: Envelope, **meta: str | int | float) -> None:
        self._emit(env, "HAPPY_END", **meta)

    def error(self, env: Envelope, reason: str) -> None:
        self._emit(env, "ERROR", reason=reason)

    def heartbeat(self) -> None:
        self.sender.send(
            encode(Envelope(channel="control", type="heartbeat", step=self.step, where=self.where, pid=self.pid))
        )

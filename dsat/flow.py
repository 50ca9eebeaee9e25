"""Flow control: the orchester's inputs, paused together while the carbon egress cannot take more.

Every input that can wait is a Twisted push producer
(:class:`~twisted.internet.interfaces.IPushProducer`): each Graphite TCP
client's connection (pausing it stops reading its socket, so the client's
send buffer fills and its writes block, as carbon-cache's flow control does)
and the ZeroMQ input link (frames wait in ZeroMQ, then in the satellites'
bounded queues).  The carbon egress pauses them all when a destination under
the spool's ``block`` policy reaches its high watermark, and resumes them at
its low watermark, from the writes that free the room: no timer polls.
UDP datagrams cannot wait: what the egress cannot hold of them is dropped and
counted (``dropped``).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.logger import Logger


class PushProducer(Protocol):
    """What :class:`~twisted.internet.interfaces.IPushProducer` asks, as a type mypy checks."""

    def pauseProducing(self) -> None: ...  # noqa: N802 (Twisted API)

    def resumeProducing(self) -> None: ...  # noqa: N802

    def stopProducing(self) -> None: ...  # noqa: N802


class PausesTransport:
    """What a Twisted protocol mixes in to be a push producer that pauses by no longer reading its transport."""

    transport: Any

    def pauseProducing(self) -> None:  # noqa: N802 (Twisted API)
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        self.transport.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802
        self.transport.stopProducing()


class Producers:
    """The push producers feeding the egress: registered by each input, paused and resumed together."""

    log = Logger()

    def __init__(self) -> None:
        self._producers: set[PushProducer] = set()
        self.paused = False
        #: Times the inputs were paused since start.
        self.pauses = 0

    def __len__(self) -> int:
        return len(self._producers)

    def register(self, producer: PushProducer) -> None:
        """Follow one more input; it starts paused if the others are."""
        self._producers.add(producer)
        if self.paused:
            producer.pauseProducing()

    def unregister(self, producer: PushProducer) -> None:
        self._producers.discard(producer)

    def pause(self) -> None:
        if self.paused:
            return
        self.paused = True
        self.pauses += 1
        for producer in list(self._producers):
            producer.pauseProducing()
        self.log.warn("carbon cannot take more (spool full, policy block): {n} inputs paused", n=len(self))

    def resume(self) -> None:
        if not self.paused:
            return
        self.paused = False
        self.log.info("carbon takes data again: {n} inputs resumed", n=len(self))
        for producer in list(self._producers):
            if self.paused:  # what a resumed input had buffered filled the egress again
                return
            producer.resumeProducing()

"""ZeroMQ links behind a tiny interface: ``send``, ``close``, and a receive callback.

Everything else in DSAT talks to a :class:`Sender` or hands a callback to a
:class:`ZmqReceiver`, so the logic is tested in memory (:mod:`dsat.testing`)
and only a few tests need real sockets.  The real links use ``zmq.asyncio``
on Twisted's asyncio reactor (installed once per process, by
:func:`dsat.reactor.install`): both are maintained upstream, unlike
the old txZMQ bridge.

Every sending link has a bounded queue of whole frames (one frame is one
envelope, i.e. one batch).  When it is full the oldest frame is dropped and
counted; ZeroMQ's own high-water mark bounds what sits in the socket.

A link between hosts carries CURVE keys (:class:`dsat.keys.Curve`): the
binding side is the CURVE server and asks the process's :class:`ZapHandler`
about every peer; a peer whose key is not in the allow list, or that speaks
no CURVE, never completes its handshake, so it can neither send nor receive
one message.  Each refusal is counted by reason and logged with the peer's
address (a peer without CURVE is seen by the socket monitor, which knows the
link but not the peer).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import zmq
import zmq.asyncio
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zmq.utils.monitor import parse_monitor_message
from zope.interface import implementer

from dsat.counters import Rejections, should_log

if TYPE_CHECKING:
    from dsat.keys import AllowList, Curve

#: Receiving pattern -> ZeroMQ socket type, and sending pattern -> socket type.
RECEIVE_TYPES = {"pull": zmq.PULL, "sub": zmq.SUB, "pair": zmq.PAIR, "rep": zmq.REP}
SEND_TYPES = {"push": zmq.PUSH, "pub": zmq.PUB, "pair": zmq.PAIR, "req": zmq.REQ}

#: Frames a sending link holds before it drops the oldest.
DEFAULT_MAX_QUEUE = 10_000
#: ZeroMQ high-water mark (messages) on every socket.
DEFAULT_HWM = 1_000
#: Milliseconds a closing sender's socket keeps trying to deliver queued frames.
LINGER_MS = 2_000
#: ZeroMQ's errors for a socket or context closed under a loop: the loop ends, quietly.
CLOSED = (zmq.ETERM, zmq.ENOTSOCK)


class Sender(Protocol):
    """Where a step puts frames for one link."""

    @property
    def dropped(self) -> int:
        """Frames dropped because the link's queue was full."""
        ...

    def send(self, frame: bytes) -> None: ...

    def pending(self) -> int: ...

    async def flush(self, timeout: float) -> bool: ...

    def close(self) -> None: ...


_context: zmq.asyncio.Context | None = None


def context() -> zmq.asyncio.Context:
    """The process's one ZeroMQ context."""
    global _context
    if _context is None:
        _context = zmq.asyncio.Context()
    return _context


def _socket(
    kind: int, address: str, *, bind: bool, topics: Sequence[bytes] = (b"",), curve: Curve | None = None
) -> zmq.asyncio.Socket:
    if curve is not None and bind and _zap is None:
        raise RuntimeError("a CURVE server socket needs the ZapHandler started first (transport.start_zap)")
    sock = context().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, DEFAULT_HWM)
    sock.setsockopt(zmq.RCVHWM, DEFAULT_HWM)
    if address.startswith("tcp://["):
        sock.setsockopt(zmq.IPV6, 1)  # ZeroMQ binds and connects IPv6 addresses only when asked
    if curve is not None:
        _secure(sock, curve, address, bind=bind)
    if kind == zmq.SUB:
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
    if bind:
        sock.bind(address)
    else:
        sock.connect(address)
    return sock


def _secure(sock: zmq.asyncio.Socket, curve: Curve, address: str, *, bind: bool) -> None:
    from dsat.keys import ZAP_DOMAIN

    sock.curve_publickey = curve.public
    sock.curve_secretkey = curve.secret
    if bind:
        assert _zap is not None  # checked by _socket before the socket exists
        sock.curve_server = True
        sock.zap_domain = ZAP_DOMAIN
        _zap.watch(sock, address)
    else:
        sock.curve_serverkey = curve.server


class ZapHandler:
    """The process's ZAP handler (RFC 27): admits CURVE peers whose key the allow list holds.

    It answers on ``inproc://zeromq.zap.01`` from the reactor's own loop (one
    ``await`` per handshake, never a blocking call), and watches each CURVE
    server socket's monitor for handshakes that fail before ZAP is asked (a
    peer without CURVE, or with the wrong server key).  Refusals are
    counted by reason (``unknown_key``, ``no_curve``, ``handshake_failed``)
    into the step's :class:`~dsat.counters.Rejections` once the step exists
    (:meth:`count_into`), so they show in DSAT's own metrics.
    """

    log = Logger()

    #: Monitor events of a handshake refused before ZAP is asked (ZAP's refusals are counted by ``zap_reply``).
    HANDSHAKE_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL

    def __init__(self, allow: AllowList) -> None:
        from dsat.counters import Rejections

        self.allow = allow
        self.rejections = Rejections("links")
        self._sock = context().socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind("inproc://zeromq.zap.01")
        self._tasks = [asyncio.ensure_future(self._serve())]
        self._monitors: list[zmq.asyncio.Socket] = []

    def count_into(self, rejections: Rejections) -> None:
        """Count from now on into *rejections* (the step's), adding what was counted so far."""
        rejections.update(self.rejections)
        self.rejections = rejections

    async def _serve(self) -> None:
        from dsat.keys import zap_reply

        sock = self._sock
        while True:
            try:
                request = await sock.recv_multipart()
                await sock.send_multipart(zap_reply(self.allow, request, self.rejections))
            except zmq.ZMQError as exc:
                if exc.errno in CLOSED:
                    return
                self.log.failure("ZAP: a request failed; the handler goes on")
            except Exception:
                self.log.failure("ZAP: a request failed; the handler goes on")

    def watch(self, sock: zmq.asyncio.Socket, address: str) -> None:
        """Count the handshakes that fail on *sock* (bound at *address*) before ZAP is asked."""
        monitor = sock.get_monitor_socket(self.HANDSHAKE_EVENTS)
        self._monitors.append(monitor)
        self._tasks.append(asyncio.ensure_future(self._watch(monitor, address)))

    async def _watch(self, monitor: zmq.asyncio.Socket, address: str) -> None:
        while True:
            event = parse_monitor_message(await monitor.recv_multipart())
            if event["event"] == zmq.EVENT_MONITOR_STOPPED:
                return
            self.rejections.reject(
                "handshake_failed",
                f"a peer of {address} failed the CURVE handshake (no CURVE, or another server key;"
                f" libzmq error {event['value']})",
            )

    def close(self) -> None:
        global _zap
        for task in self._tasks:
            task.cancel()
        for monitor in self._monitors:
            monitor.close(linger=0)
        self._sock.close(linger=0)
        _zap = None


_zap: ZapHandler | None = None


def start_zap(allow: AllowList) -> ZapHandler:
    """Start the process's ZAP handler; it must run before any CURVE server socket binds."""
    global _zap
    if _zap is None:
        _zap = ZapHandler(allow)
    return _zap


class ZmqSender:
    """A sending link: a bounded frame queue pumped into one ZeroMQ socket.

    ``send`` never blocks the reactor.  A REQ link waits for the peer's reply
    to each frame before sending the next (lock-step, as REQ/REP demands).
    """

    log = Logger()

    def __init__(
        self,
        pattern: str,
        address: str,
        *,
        bind: bool = False,
        max_queue: int = DEFAULT_MAX_QUEUE,
        curve: Curve | None = None,
    ) -> None:
        self.address = address
        self.pattern = pattern
        self._req = pattern == "req"
        self._sock = _socket(SEND_TYPES[pattern], address, bind=bind, curve=curve)
        self._queue: deque[bytes] = deque()
        self._max_queue = max_queue
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.dropped = 0
        #: Frames ZeroMQ refused (an error from its send), counted in ``dropped`` too.
        self.failed = 0
        self.sent = 0
        self._pump = asyncio.ensure_future(self._run())

    def send(self, frame: bytes) -> None:
        if len(self._queue) >= self._max_queue:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(frame)
        self._idle.clear()
        self._wake.set()

    def pending(self) -> int:
        return len(self._queue)

    async def _run(self) -> None:
        """Hand each queued frame to ZeroMQ; a frame ZeroMQ refuses is counted as dropped, and the pump goes on.

        Its batch then times out and its emitter sends it again.  Before,
        the first error ended the pump: the link went silent, unsaid.
        """
        queue = self._queue
        while True:
            await self._wake.wait()
            self._wake.clear()
            while queue:
                frame = queue.popleft()
                try:
                    await self._sock.send(frame, copy=False)
                    if self._req:
                        await self._sock.recv()
                except zmq.ZMQError as exc:
                    if exc.errno in CLOSED:
                        return
                    self.dropped += 1
                    self.failed += 1
                    if should_log(self.failed):
                        self.log.failure(
                            "link to {address}: ZeroMQ refused a frame ({failed} so far); it is dropped and counted",
                            address=self.address,
                            failed=self.failed,
                        )
                    continue
                self.sent += 1
            self._idle.set()

    async def flush(self, timeout: float) -> bool:
        """Wait until every queued frame is handed to ZeroMQ; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Stop the pump; ZeroMQ keeps trying to deliver what it holds for LINGER_MS."""
        self._pump.cancel()
        self._sock.close(linger=LINGER_MS)


class PairSender:
    """A link to both servers of an orchester pair: each frame goes to the server ``current()`` names.

    The satellite's :class:`dsat.binarystar.ServerChoice` decides which; the
    link to the other server stays connected, so moving costs no handshake.
    """

    def __init__(self, senders: Mapping[str, Sender], current: Callable[[], str]) -> None:
        self.senders = senders
        self.current = current

    @property
    def dropped(self) -> int:
        return sum(sender.dropped for sender in self.senders.values())

    def send(self, frame: bytes) -> None:
        self.senders[self.current()].send(frame)

    def pending(self) -> int:
        return sum(sender.pending() for sender in self.senders.values())

    async def flush(self, timeout: float) -> bool:
        done = await asyncio.gather(*(sender.flush(timeout) for sender in self.senders.values()))
        return all(done)

    def close(self) -> None:
        for sender in self.senders.values():
            sender.close()


@implementer(IPushProducer)
class ZmqReceiver:
    """A receiving link: calls ``on_frame(frame)`` for every message.

    A REP link answers each frame with the bytes ``on_frame`` returns (or an
    empty frame); a SUB link receives only the *topics* (frame prefixes) asked.
    An exception from ``on_frame`` is logged with the link's address and the
    loop goes on: one bad frame never stops a step.
    """

    log = Logger()

    def __init__(
        self,
        pattern: str,
        address: str,
        on_frame: Callable[[bytes], bytes | None],
        *,
        bind: bool = True,
        topics: Sequence[bytes] = (b"",),
        curve: Curve | None = None,
    ) -> None:
        self.address = address
        self._rep = pattern == "rep"
        self._sock = _socket(RECEIVE_TYPES[pattern], address, bind=bind, topics=topics, curve=curve)
        self._on_frame = on_frame
        self._reading = asyncio.Event()
        self._reading.set()
        self._loop = asyncio.ensure_future(self._run())

    # IPushProducer (dsat.flow pauses the orchester's input link while Carbon cannot take more)

    def pauseProducing(self) -> None:  # noqa: N802 (Twisted API)
        """Stop taking frames: they wait in ZeroMQ, then in the senders' bounded queues."""
        self._reading.clear()

    def resumeProducing(self) -> None:  # noqa: N802
        self._reading.set()

    def stopProducing(self) -> None:  # noqa: N802
        self.close()

    async def _run(self) -> None:
        sock = self._sock
        while True:
            await self._reading.wait()
            try:
                frame = await sock.recv(copy=True)
            except zmq.ZMQError as exc:
                if exc.errno in CLOSED:
                    return
                self.log.failure("link at {address}: ZeroMQ failed a receive; receiving goes on", address=self.address)
                continue
            try:
                reply = self._on_frame(frame)
            except Exception:
                self.log.failure("unhandled error for a frame on {address}", address=self.address)
                reply = None
            if self._rep:
                try:
                    await sock.send(reply or b"")
                except zmq.ZMQError as exc:
                    if exc.errno in CLOSED:
                        return
                    self.log.failure("link at {address}: ZeroMQ refused a reply", address=self.address)

    def close(self) -> None:
        self._loop.cancel()
        self._sock.close(linger=0)

"""ZeroMQ links on real sockets: a bounded send queue, pause and resume, a failing handler logged (inproc), and
CURVE, whose ZAP handler admits the topology's hosts and no one else (tcp, in one process)."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio
from twisted.logger import globalLogPublisher

from dsat import keys, topology, transport
from dsat.counters import Rejections
from dsat.tools.stack import free_port
from dsat.transport import ZmqReceiver, ZmqSender, context
from tests.harness import MULTI, REGISTRY


def run(test: Callable[[str], Coroutine[Any, Any, None]]) -> None:
    """Run an async test on a fresh event loop with an inproc address never used before."""
    asyncio.run(asyncio.wait_for(test(f"inproc://dsat-test-{os.getpid()}-{uuid.uuid4().hex}"), 10))


def test_a_full_sending_link_drops_its_oldest_frames_and_counts_them() -> None:
    """Past max_queue frames waiting, send() drops the oldest; the newest reach the peer, in order."""

    async def main(address: str) -> None:
        sender = ZmqSender("push", address, bind=True, max_queue=3)
        for i in range(5):  # the pump has not run yet: every frame waits in the link's queue
            sender.send(b"frame%d" % i)
        assert (sender.pending(), sender.dropped) == (3, 2)
        peer = context().socket(zmq.PULL)
        peer.connect(address)
        got = [await peer.recv() for _ in range(3)]
        assert got == [b"frame2", b"frame3", b"frame4"]
        assert await sender.flush(5) and sender.sent == 3
        peer.close(linger=0)
        sender.close()

    run(main)


def test_a_paused_receiver_handles_no_frame_until_resumed() -> None:
    """pauseProducing stops the handler between frames; what arrives meanwhile waits, then comes in order."""

    async def main(address: str) -> None:
        handled: list[bytes] = []
        all_in = asyncio.Event()

        def on_frame(frame: bytes) -> None:
            handled.append(frame)
            if frame == b"first":
                receiver.pauseProducing()  # as the egress does when it fills up
            if len(handled) == 3:
                all_in.set()

        receiver = ZmqReceiver("pull", address, on_frame)
        peer = context().socket(zmq.PUSH)
        peer.connect(address)
        for frame in (b"first", b"second", b"third"):
            await peer.send(frame)
        while not handled:
            await asyncio.sleep(0)
        # the other two frames are in the receiver's socket now...
        assert await receiver._sock.poll(5000, zmq.POLLIN) == zmq.POLLIN
        for _ in range(100):
            await asyncio.sleep(0)
        assert handled == [b"first"]  # ...and stay there while paused
        receiver.resumeProducing()
        await all_in.wait()
        assert handled == [b"first", b"second", b"third"]
        peer.close(linger=0)
        receiver.close()

    run(main)


def test_an_exception_in_the_handler_is_logged_and_the_next_frame_handled() -> None:
    """A handler that raises is logged with the link's address; the loop goes on with the next frame."""
    events: list[dict[str, Any]] = []

    async def main(address: str) -> None:
        good = asyncio.Event()

        def on_frame(frame: bytes) -> None:
            if frame == b"bad":
                raise ValueError("boom")
            good.set()

        receiver = ZmqReceiver("pull", address, on_frame)
        peer = context().socket(zmq.PUSH)
        peer.connect(address)
        await peer.send(b"bad")
        await peer.send(b"good")
        await good.wait()
        peer.close(linger=0)
        receiver.close()

    globalLogPublisher.addObserver(events.append)
    try:
        run(main)
    finally:
        globalLogPublisher.removeObserver(events.append)
    failures = [e for e in events if e.get("log_failure") is not None]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(ValueError) and failures[0]["address"].startswith("inproc://")


def test_a_rep_link_answers_each_frame_with_what_the_handler_returns() -> None:
    """REP: the handler's bytes go back to the requester (an empty frame when it returns None)."""

    async def main(address: str) -> None:
        receiver = ZmqReceiver("rep", address, lambda frame: frame.upper() if frame != b"none" else None)
        peer = context().socket(zmq.REQ)
        peer.connect(address)
        await peer.send(b"ping")
        assert await peer.recv() == b"PING"
        await peer.send(b"none")
        assert await peer.recv() == b""
        peer.close(linger=0)
        receiver.close()

    run(main)


def free_port_v6() -> int:
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        return int(sock.getsockname()[1])


async def until(predicate: object, seconds: float = 10.0) -> None:
    """Wait on the running loop until *predicate()* is true; fail after *seconds*."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.mark.integration
@pytest.mark.parametrize("interface", ["127.0.0.1", "[::1]"])
def test_a_curve_link_carries_a_known_hosts_frames_and_refuses_a_stranger_and_plain_tcp(
    tmp_path: Path, interface: str
) -> None:
    """A sender with web01's keys reaches the hub's receiver; one with a stranger's key and one without CURVE
    deliver nothing, and the hub counts unknown_key and handshake_failed."""
    topo = topology.loads(MULTI, path=tmp_path / "t.toml", registry=REGISTRY)
    keys.create(topo)
    address = f"tcp://{interface}:{free_port() if interface == '127.0.0.1' else free_port_v6()}"
    hub, web01 = keys.KeyRing(topo, "hub"), keys.KeyRing(topo, "web01")
    stranger_public, stranger_secret = zmq.curve_keypair()
    received: list[bytes] = []
    rejections = Rejections("hub")

    async def scenario() -> None:
        zap = transport.start_zap(hub.allow_list())
        zap.count_into(rejections)
        receiver = transport.ZmqReceiver("pull", address, received.append, curve=keys.Curve(hub.public, hub.secret))
        good = transport.ZmqSender("push", address, curve=keys.Curve(web01.public, web01.secret, hub.public))
        rogue = transport.ZmqSender("push", address, curve=keys.Curve(stranger_public, stranger_secret, hub.public))
        plain = transport.ZmqSender("push", address)
        try:
            rogue.send(b"from a stranger")
            plain.send(b"without curve")
            good.send(b"from web01")
            await until(lambda: received and rejections["unknown_key"] and rejections["handshake_failed"])
            await asyncio.sleep(0.3)  # time for anything else to arrive, were it let in
        finally:
            for link in (good, rogue, plain, receiver):
                link.close()
            zap.close()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert received == [b"from web01"]
    assert rejections["unknown_key"] >= 1 and rejections["handshake_failed"] >= 1


@pytest.mark.integration
def test_a_curve_server_socket_without_the_zap_handler_is_refused(tmp_path: Path) -> None:
    """Binding a CURVE server before the ZAP handler runs would admit anyone: it raises instead."""
    curve = keys.Curve(*zmq.curve_keypair())

    async def scenario() -> None:
        with pytest.raises(RuntimeError, match="needs the ZapHandler started first"):
            transport.ZmqReceiver("pull", f"tcp://127.0.0.1:{free_port()}", lambda frame: None, curve=curve)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()


class RefusingSocket:
    """A ZeroMQ socket whose first send raises what libzmq raises for a peer it cannot route to."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.calls = 0

    async def send(self, frame: bytes, copy: bool = True) -> None:
        self.calls += 1
        if self.calls == 1:
            raise zmq.ZMQError(zmq.EHOSTUNREACH)
        self.sent.append(bytes(frame))

    def close(self, linger: int = 0) -> None:
        pass


def test_a_frame_zeromq_refuses_is_counted_and_the_link_goes_on_sending() -> None:
    """The pump used to end at ZeroMQ's first error, and the link went silent with nothing said."""

    async def main(address: str) -> None:
        sender = ZmqSender("push", address, bind=True)
        sender._sock.close(linger=0)
        fake = RefusingSocket()
        sender._sock = fake  # type: ignore[assignment]
        for i in range(3):
            sender.send(b"frame%d" % i)
        assert await sender.flush(5)
        assert fake.sent == [b"frame1", b"frame2"]
        assert (sender.sent, sender.dropped, sender.failed) == (2, 1, 1)
        sender.send(b"later")
        assert await sender.flush(5) and fake.sent[-1] == b"later"
        sender.close()

    run(main)

"""ZeroMQ links on real inproc sockets: a bounded send queue, pause and resume, a failing handler logged."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import zmq
import zmq.asyncio
from twisted.logger import globalLogPublisher

from dsat.transport import ZmqReceiver, ZmqSender, context


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

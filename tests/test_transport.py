"""Real ZeroMQ links with CURVE, in one process: the ZAP handler admits the topology's hosts and no one else."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
import zmq

from dsat import keys, topology, transport
from dsat.counters import Rejections
from dsat.stack import free_port
from tests.test_topology import MULTI, REGISTRY

pytestmark = pytest.mark.integration


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

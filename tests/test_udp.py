"""UDP listeners: a sized receive buffer, and every datagram the kernel drops counted (Linux SO_RXQ_OVFL)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactorClock

from dsat.udp import CountingPort, listen_udp

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_RXQ_OVFL is Linux's")


class Keep(DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: list[bytes] = []

    def datagramReceived(self, datagram: bytes, addr: object) -> None:  # noqa: N802
        self.datagrams.append(datagram)


def listening(buffer: int) -> tuple[CountingPort, Keep, socket.socket]:
    keep = Keep()
    port = listen_udp(MemoryReactorClock(), ("127.0.0.1", 0), keep, receive_buffer=buffer)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.connect(("127.0.0.1", port.getHost().port))
    return port, keep, client


def test_datagrams_are_read_as_twisted_reads_them() -> None:
    """Each datagram reaches datagramReceived whole, with the sender's address."""
    port, keep, client = listening(1 << 20)
    client.send(b"a.b 1 1700000000")
    client.send(b"hits:1|c")
    port.doRead()
    assert keep.datagrams == [b"a.b 1 1700000000", b"hits:1|c"]
    client.close()
    port.stopListening()


def net_admin() -> bool:
    """Whether this process holds CAP_NET_ADMIN (what SO_RCVBUFFORCE needs), from its effective capabilities."""
    status = Path("/proc/self/status").read_text()
    effective = int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), 16)
    return bool(effective & (1 << 12))  # CAP_NET_ADMIN


@linux
def test_the_receive_buffer_is_the_size_asked() -> None:
    """The receive buffer is what was asked: past net.core.rmem_max with CAP_NET_ADMIN (root, usually), capped by
    it otherwise (a user, or root in a container without the capability)."""
    asked = 6 * 1024 * 1024
    port, _, client = listening(asked)
    granted = port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    assert granted == (asked if net_admin() else min(asked, rmem_max))
    client.close()
    port.stopListening()


@linux
def test_what_the_kernel_drops_is_counted_exactly() -> None:
    """A flood into a tiny buffer loses datagrams in the kernel: read + counted as dropped == sent."""
    port, keep, client = listening(4096)
    sent = 2000
    for i in range(sent):
        client.send(b"x" * 200 + str(i).encode())
    port.doRead()
    read_flood = len(keep.datagrams)
    client.send(b"marker")  # carries the drop count as of its arrival: every drop of the flood
    port.doRead()
    assert keep.datagrams[-1] == b"marker"
    assert 0 < port.kernel_dropped < sent
    assert read_flood + port.kernel_dropped == sent
    client.close()
    port.stopListening()


def test_an_exception_in_the_protocol_is_logged_and_reading_goes_on() -> None:
    """A datagramReceived that raises is logged; the next datagram is still read."""

    class Fragile(Keep):
        def datagramReceived(self, datagram: bytes, addr: object) -> None:  # noqa: N802
            if datagram == b"bad":
                raise ValueError("boom")
            super().datagramReceived(datagram, addr)

    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        fragile = Fragile()
        port = listen_udp(MemoryReactorClock(), ("127.0.0.1", 0), fragile, receive_buffer=1 << 16)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.connect(("127.0.0.1", port.getHost().port))
        client.send(b"bad")
        client.send(b"good")
        port.doRead()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert fragile.datagrams == [b"good"]
    assert any(e.get("log_failure") is not None and "datagram" in e.get("log_format", "") for e in events)
    client.close()
    port.stopListening()

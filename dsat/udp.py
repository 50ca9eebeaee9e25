"""UDP listeners that never lose a datagram silently.

A UDP socket whose receive buffer is full loses datagrams in the kernel,
where the process sees nothing ("receive buffer errors" in ``netstat -su``).
So every UDP listener of the orchester (Graphite plaintext, statsd) gets a
receive buffer of ``[ingress] udp_buffer`` bytes (as statsd servers size
theirs; Linux caps it at ``net.core.rmem_max`` unless the process may raise
it, and a smaller buffer is logged), and asks Linux for ``SO_RXQ_OVFL``: each
datagram then carries the socket's count of datagrams dropped so far, which
:class:`CountingPort` keeps in ``CountingPort.kernel_dropped`` and the
orchester reports as ``self.orchester.udp.dropped``.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import sys
from typing import Any

from twisted.internet import udp
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

#: Linux's SO_RXQ_OVFL socket option (``<asm-generic/socket.h>``); Python's socket module does not name it.
SO_RXQ_OVFL = 40
#: Room for one SO_RXQ_OVFL control message (a 32-bit count) beside each datagram.
_CONTROL_SPACE = socket.CMSG_SPACE(4)
_COUNT = struct.Struct("=I")

log = Logger()


class CountingPort(udp.Port):
    """Twisted's UDP port reading with ``recvmsg``, to learn the kernel's drop count with each datagram."""

    kernel_dropped = 0

    def createInternetSocket(self) -> socket.socket:  # noqa: N802 (Twisted API)
        sock = super().createInternetSocket()
        if sys.platform.startswith("linux"):
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        return sock

    def doRead(self) -> None:  # noqa: N802 (Twisted API)
        """As ``udp.Port.doRead``, with the SO_RXQ_OVFL count taken from each datagram's control data."""
        read = 0
        while read < self.maxThroughput:
            try:
                data, ancillary, _flags, addr = self.socket.recvmsg(self.maxPacketSize, _CONTROL_SPACE)
            except OSError as exc:
                if exc.args[0] in udp._sockErrReadIgnore:
                    return
                if exc.args[0] in udp._sockErrReadRefuse:
                    if self._connectedAddr:
                        self.protocol.connectionRefused()
                    return
                raise
            read += len(data)
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(value) >= _COUNT.size:
                    self.kernel_dropped = _COUNT.unpack_from(value)[0]
            if self.addressFamily == socket.AF_INET6:
                addr = addr[:2]
            try:
                self.protocol.datagramReceived(data, addr)
            except BaseException:
                log.failure("unhandled error for a datagram on port {port}", port=self.port)


def listen_udp(
    reactor: Any, address: tuple[str, int], protocol: DatagramProtocol, *, receive_buffer: int
) -> CountingPort:
    """Listen on *address* with a receive buffer of *receive_buffer* bytes; the port counts kernel drops."""
    interface, port_number = address
    port = CountingPort(port_number, protocol, interface, reactor=reactor)
    port.startListening()
    sock = port.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux reports twice what it grants
    if granted < receive_buffer:
        try:
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), receive_buffer)
            granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        except OSError:
            pass
    if granted < receive_buffer:
        log.warn(
            "UDP {interface}:{port}: receive buffer {granted} bytes, not the {asked} asked"
            " (raise net.core.rmem_max to allow it)",
            interface=interface,
            port=port_number,
            granted=granted,
            asked=receive_buffer,
        )
    return port


def unix_socket_in_use(path: str) -> bool:
    """Whether a process receives on the Unix datagram socket at *path* (a socket file left by a process that
    died is not in use: connecting to it is refused)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def listen_unix_datagram(reactor: Any, path: str, protocol: DatagramProtocol) -> Any:
    """Receive datagrams on a Unix socket at *path*, writable by every user (as the Datadog agent's socket is:
    clients in other containers or users send to it); a socket file no process receives on is replaced."""
    if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode) and not unix_socket_in_use(path):
        os.unlink(path)
        log.info("{path}: a socket no process received on, replaced", path=path)
    return reactor.listenUNIXDatagram(path, protocol, mode=0o622)

"""Fault matrix, misbehaving clients (issue 20): real ``dsat up`` processes with a plaintext listener.

Thousands of idle connections that never finish a line (slowloris), the
orchester's descriptor limit reached, and a client sending millions of new
distinct names as fast as it can: in each, other clients keep being served
(every datapoint of theirs delivered), the orchester's memory stays within a
stated bound, and every connection it refuses or closes is counted by reason
in its own metrics (``dsat.testhost.self.orchester.rejected.<reason>``).
"""

from __future__ import annotations

import resource
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import pytest

from dsat.ingress import IDLE_GRACE, MAX_CONNECTIONS, RESERVED_DESCRIPTORS
from dsat.tools.stack import free_port
from tests.harness import CountingCarbon, Processes, ingress_topology, orchester_up, record, step_pid, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

OWN = ".self.orchester."


class WatchingCarbon(CountingCarbon):
    """A :class:`CountingCarbon` that also sums the orchester's own counters and counts the ``flood.*`` datapoints."""

    def __init__(self, port: int, clients: int, per_client: int) -> None:
        super().__init__(port, clients, per_client)
        self.own: Counter[str] = Counter()
        self.others = 0
        self._lock = threading.Lock()

    def _mark(self, path: str, ts: float, value: float) -> None:
        if path.startswith("bp."):
            super()._mark(path, ts, value)
        elif OWN in path:
            with self._lock:
                self.own[path.split(OWN, 1)[1]] += int(value)
        elif path.startswith("flood."):
            self.others += 1

    def rejected(self, *reasons: str) -> int:
        with self._lock:
            return sum(self.own[f"rejected.{reason}"] for reason in reasons)


def orchester_topology(base: Path, carbon_port: int, tcp: int, extra: str = "") -> Path:
    return ingress_topology(
        base,
        carbon_port,
        f"""
[tracker]
metrics_every = "1s"
[ingress]
plaintext = "127.0.0.1:{tcp}"
[spool]
path = "spool/carbon.db"
max_mb = 256
policy = "block"
replay_rate = 1000000
{extra}
""",
    )


class Sender(threading.Thread):
    """Client *c*: sends its *total* datapoints ``bp.c<c>.m<k> <n> <ts>`` in chunks of *chunk* every *pace* seconds,
    all at once from when :attr:`hurry` is set; its connection stays open until :meth:`close`."""

    def __init__(self, port: int, c: int, total: int, *, chunk: int = 50, pace: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.c, self.total, self.chunk, self.pace = c, total, chunk, pace
        self.sent = 0
        self.hurry = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        now = int(time.time())
        try:
            while self.sent < self.total:
                size = self.total - self.sent if self.hurry.is_set() else min(self.chunk, self.total - self.sent)
                lines = "".join(
                    f"bp.c{self.c}.m{n % 100} {n} {now + n // 100}\n" for n in range(self.sent, self.sent + size)
                )
                self.sock.sendall(lines.encode())
                self.sent += size
                self.hurry.wait(self.pace)
        except OSError as exc:
            self.error = exc

    def finish(self) -> None:
        self.hurry.set()
        self.join(60)
        assert self.error is None, f"client {self.c}: {self.error!r}"
        assert self.sent == self.total

    def close(self) -> None:
        self.sock.close()


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the orchester has closed (or reset) this connection; never waits."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def open_many(port: int, count: int, first_bytes: bytes) -> tuple[list[socket.socket], int]:
    """*count* connections tried by 8 threads (every other one sends *first_bytes*, a line never finished): the
    ones opened, and how many were reset before their connect returned (refused by the orchester at once)."""
    socks: list[socket.socket] = []
    reset = [0]
    lock = threading.Lock()

    def opener(share: int) -> None:
        for i in range(share):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            except ConnectionError:
                with lock:
                    reset[0] += 1
                continue
            if i % 2 and first_bytes:
                with suppress(OSError):  # refused at once
                    sock.sendall(first_bytes)
            with lock:
                socks.append(sock)

    threads = [threading.Thread(target=opener, args=(count // 8 + (t < count % 8),)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return socks, reset[0]


class RssWatch(threading.Thread):
    """The highest RSS of process *pid*, sampled every 0.1 s until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.start_rss = self.peak = self.proc.memory_info().rss
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.NoSuchProcess:
                return

    @contextmanager
    def running(self) -> Iterator[RssWatch]:
        self.start()
        try:
            yield self
        finally:
            self.done.set()
            self.join(5)


def test_slowloris_idle_connections_are_bounded_counted_and_others_are_served(
    short_tmp: Path, processes: Processes
) -> None:
    """3,000 connections that never finish a line: at most max_connections are held, the rest refused
    (too_many_connections) and, past the idle grace, the idlest give their place to a new client (idle_evicted), every
    closing counted; the clients that send are never closed and all their datapoints arrive, RSS stays bounded."""
    clients, per_client, flood, rss_bound = 4, 20_000, 3000, 64 * 2**20
    carbon_port, tcp = free_port(), free_port()
    topo = orchester_topology(short_tmp, carbon_port, tcp)
    sink = WatchingCarbon(carbon_port, clients + 1, per_client)
    sink.start()
    try:
        up, proc = orchester_up(processes, topo, tcp)
        orchester = proc.pid
        watch = RssWatch(orchester)
        senders = [Sender(tcp, c, per_client, chunk=20, pace=0.1) for c in range(clients)]
        for s in senders:
            s.start()
        with watch.running():
            began = time.monotonic()
            idle, reset = open_many(tcp, flood, b"slow.loris.never 1")
            opened_in = time.monotonic() - began
            held = MAX_CONNECTIONS - clients
            # every flood connection was accepted or refused: all but the ones held were closed, each one counted
            wait_for(
                lambda: reset + sum(map(closed_by_peer, idle)) == flood - held,
                120,
                "the orchester to refuse the connections past its bound",
                detail=lambda: f"{reset} reset + {sum(map(closed_by_peer, idle))} closed of {flood - held}",
            )
            settled_at = time.monotonic()
            wait_for(
                lambda: sink.rejected("too_many_connections", "idle_evicted") == flood - held,
                60,
                "the refusals counted in the orchester's own metrics",
                detail=lambda: f"{dict(sink.own)}",
            )
            # past the grace, a new client takes the place of the idlest connection
            time.sleep(max(0.0, settled_at + IDLE_GRACE + 1 - time.monotonic()))
            late = Sender(tcp, clients, per_client)
            late.hurry.set()
            late.start()
            late.finish()
            wait_for(
                lambda: reset + sum(map(closed_by_peer, idle)) == flood - held + 1,
                60,
                "the idlest connection closed for the new client",
            )
            for s in senders:
                s.finish()
            wait_for(
                lambda: sink.delivered() == (clients + 1) * per_client,
                120,
                "every datapoint of the clients that send",
                detail=lambda: f"{sink.delivered()} of {(clients + 1) * per_client}",
            )
            wait_for(
                lambda: sink.rejected("too_many_connections", "idle_evicted") == flood - held + 1,
                60,
                "the eviction counted",
                detail=lambda: f"{dict(sink.own)}",
            )
        assert not any(closed_by_peer(s.sock) for s in [*senders, late])  # the clients that send keep their connection
        rss_growth = watch.peak - watch.start_rss
        assert rss_growth < rss_bound, f"RSS grew {rss_growth / 2**20:.0f} MiB"
        assert psutil.Process(orchester).is_running() and step_pid(up, "orchester") == orchester
        counted = {k: v for k, v in sink.own.items() if k.startswith("rejected.")}
        for sock in idle:
            sock.close()
        for s in [*senders, late]:
            s.close()
        assert processes.stop(up) == 0, processes.log_of(up)[-3000:]
    finally:
        sink.stop()
    record(
        "clients_slowloris",
        idle_connections=flood,
        opened_in_s=round(opened_in, 1),
        reset_at_connect=reset,
        held=held,
        max_connections=MAX_CONNECTIONS,
        idle_grace_s=IDLE_GRACE,
        counted=counted,
        clients_served=clients + 1,
        datapoints_delivered=sink.delivered(),
        rss_start_mib=round(watch.start_rss / 2**20, 1),
        rss_growth_mib=round(rss_growth / 2**20, 1),
        rss_bound_mib=rss_bound // 2**20,
    )


def test_descriptor_limit_reached_refuses_new_clients_counted_and_serves_again_once_freed(
    short_tmp: Path, processes: Processes
) -> None:
    """With RLIMIT_NOFILE lowered on the running orchester, connections past the limit less the reserved descriptors
    are refused (fd_limit), counted, with no EMFILE and no busy loop; the clients already connected keep being served,
    and once the idle connections are gone a new client is served again."""
    clients, per_client, flood = 2, 10_000, 400
    carbon_port, tcp = free_port(), free_port()
    topo = orchester_topology(short_tmp, carbon_port, tcp)
    sink = WatchingCarbon(carbon_port, clients + 1, per_client)
    sink.start()
    try:
        up, proc = orchester_up(processes, topo, tcp)
        orchester = proc.pid
        wait_for(lambda: sink.own["points_out"] > 0, 30, "the orchester's first own metrics at Carbon")
        senders = [Sender(tcp, c, per_client, pace=0.1) for c in range(clients)]
        for s in senders:
            s.start()
        base = proc.num_fds()
        room = 150
        limit = base + RESERVED_DESCRIPTORS + room
        resource.prlimit(orchester, resource.RLIMIT_NOFILE, (limit, limit))
        idle, reset = open_many(tcp, flood, b"")
        wait_for(
            lambda: sink.rejected("fd_limit", "idle_evicted") == reset + sum(map(closed_by_peer, idle)) > 0,
            60,
            "the refusals at the descriptor limit counted",
            detail=lambda: f"{reset} reset, {sum(map(closed_by_peer, idle))} closed, counted {dict(sink.own)}",
        )
        held = flood - reset - sum(map(closed_by_peer, idle))
        fds_at_limit = proc.num_fds()
        cpu_before, window_start = sum(proc.cpu_times()[:2]), time.monotonic()
        time.sleep(3)  # a window to measure the CPU the orchester uses while held at its limit
        cpu_share = (sum(proc.cpu_times()[:2]) - cpu_before) / (time.monotonic() - window_start)
        for s in senders:
            s.finish()
        wait_for(
            lambda: sink.delivered() == clients * per_client,
            60,
            "every datapoint of the clients connected before the limit",
            detail=lambda: f"{sink.delivered()} of {clients * per_client}",
        )
        assert not any(closed_by_peer(s.sock) for s in senders)
        for sock in idle:
            sock.close()
        wait_for(lambda: proc.num_fds() < base + room // 2, 30, "the idle connections' descriptors freed")
        late = Sender(tcp, clients, per_client)
        late.hurry.set()
        late.start()
        late.finish()
        wait_for(
            lambda: sink.delivered() == (clients + 1) * per_client,
            60,
            "every datapoint of a client that connects once descriptors are free",
            detail=lambda: f"{sink.delivered()} of {(clients + 1) * per_client}",
        )
        assert not closed_by_peer(late.sock)
        log = processes.log_of(up)
        assert "EMFILE" not in log and "Could not accept" not in log and "Traceback" not in log, log[-3000:]
        assert cpu_share < 0.5, f"the orchester used {cpu_share:.0%} of a core while held at its descriptor limit"
        assert step_pid(up, "orchester") == orchester
        counted = {k: v for k, v in sink.own.items() if k.startswith("rejected.")}
        for s in [*senders, late]:
            s.close()
        assert processes.stop(up) == 0, log[-3000:]
    finally:
        sink.stop()
    record(
        "clients_descriptor_limit",
        rlimit_nofile=limit,
        reserved_descriptors=RESERVED_DESCRIPTORS,
        descriptors_at_start=base,
        descriptors_at_limit=fds_at_limit,
        connections_tried=flood,
        connections_held=held,
        counted=counted,
        cpu_share_at_limit=round(cpu_share, 3),
        datapoints_delivered=sink.delivered(),
    )


def test_a_flood_of_new_names_stays_in_bounded_memory_while_others_flow(short_tmp: Path, processes: Processes) -> None:
    """A client sending 5,000,000 new distinct names as fast as it can over two connections: the orchester's RSS
    stays under its bound (the bounded caches), every one of its datapoints arrives, and so do a paced client's."""
    names, connections, per_client, rss_bound = 5_000_000, 2, 20_000, 400 * 2**20
    carbon_port, tcp = free_port(), free_port()
    topo = orchester_topology(short_tmp, carbon_port, tcp)
    sink = WatchingCarbon(carbon_port, 1, per_client)
    sink.start()
    try:
        up, proc = orchester_up(processes, topo, tcp)
        orchester = proc.pid
        now = int(time.time())
        share = names // connections
        payloads = [
            b"".join(b"flood.n%d 1 %d\n" % (i, now) for i in range(k * share, (k + 1) * share))
            for k in range(connections)
        ]
        watch = RssWatch(orchester)
        with watch.running():
            began = time.monotonic()
            other = Sender(tcp, 0, per_client, chunk=100, pace=0.05)
            other.start()

            def flood(payload: bytes) -> None:
                with socket.create_connection(("127.0.0.1", tcp), timeout=120) as sock:
                    sock.sendall(payload)

            floods = [threading.Thread(target=flood, args=(p,), daemon=True) for p in payloads]
            for t in floods:
                t.start()
            for t in floods:
                t.join(300)
            sent_in = time.monotonic() - began
            other.finish()
            wait_for(
                lambda: sink.others >= names and sink.delivered() == per_client,
                300,
                "every flooded datapoint and every datapoint of the paced client",
                detail=lambda: f"{sink.others} of {names} flooded, {sink.delivered()} of {per_client}",
            )
            delivered_in = time.monotonic() - began
        other.close()
        rss_growth = watch.peak - watch.start_rss
        assert watch.peak < rss_bound, f"RSS peaked at {watch.peak / 2**20:.0f} MiB"
        assert processes.stop(up) == 0, processes.log_of(up)[-3000:]
    finally:
        sink.stop()
    record(
        "clients_new_names_flood",
        names=names,
        connections=connections,
        sent_in_s=round(sent_in, 1),
        delivered_in_s=round(delivered_in, 1),
        names_per_s=round(names / delivered_in),
        flooded_delivered=sink.others,
        paced_client_delivered=sink.delivered(),
        rss_start_mib=round(watch.start_rss / 2**20, 1),
        rss_peak_mib=round(watch.peak / 2**20, 1),
        rss_growth_mib=round(rss_growth / 2**20, 1),
        rss_bound_mib=rss_bound // 2**20,
    )

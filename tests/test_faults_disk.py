"""Fault matrix, the spool's disk and a stalled Carbon (issue 20): real ``dsat up`` processes, real filesystems.

Carbon is down (or stalled) while 20 clients send on the plaintext port, and
the spool's disk fails under the orchester: a small tmpfs filled by the spool
itself, an ext4 filesystem that the kernel remounts read-only after an error
(``errors=remount-ro``; a plain ``mount -o remount,ro`` is refused while the
spool's file is open for writing), the spool's file deleted.  A carbon
stand-in then reads, and counts every distinct datapoint that arrives:
under ``block`` every one must arrive; under ``drop_oldest`` what arrived
plus what the orchester counted as dropped must be what was sent.  No
traceback may appear in the log.  Each test mounts what it needs and removes
it afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dsat.tools.stack import free_port
from tests.harness import (
    CountingCarbon,
    Processes,
    ingress_topology,
    install_missing_programs,
    kill_orchester,
    orchester_up,
    record,
    spooled_points,
    status,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]


class Mount:
    """A filesystem mounted on *where* for one test (root only), unmounted at the end even if still in use."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.image: Path | None = None
        where.mkdir(parents=True, exist_ok=True)

    def tmpfs(self, size: str) -> None:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(self.where)], check=True, timeout=120
        )

    def ext4(self, size_mb: int) -> None:
        install_missing_programs({"mkfs.ext4": "e2fsprogs"})
        self.image = self.where.with_name(self.where.name + ".img")
        with self.image.open("wb") as f:
            f.truncate(size_mb * 2**20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True, timeout=120)
        subprocess.run(
            ["mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.where)], check=True, timeout=120
        )

    def fail_read_only(self) -> None:
        """An error in the filesystem: ext4 remounts itself read-only (what a failing disk does to a server)."""
        source = subprocess.run(
            ["findmnt", "-no", "SOURCE", str(self.where)], capture_output=True, text=True, check=True, timeout=120
        ).stdout.strip()
        Path(f"/sys/fs/ext4/{os.path.basename(source)}/trigger_fs_error").write_text("dsat fault test\n")

    def options(self) -> str:
        return subprocess.run(
            ["findmnt", "-no", "OPTIONS", str(self.where)], capture_output=True, text=True, check=True, timeout=120
        ).stdout.strip()

    def remove(self) -> None:
        subprocess.run(["umount", "-l", str(self.where)], capture_output=True, timeout=120)
        if self.image is not None:
            self.image.unlink(missing_ok=True)


@pytest.fixture
def mount(short_tmp: Path) -> Iterator[Mount]:
    if os.geteuid() != 0:
        pytest.fail("the spool disk faults mount filesystems: run the tests as root (CI does)")
    m = Mount(short_tmp / "spool")
    yield m
    m.remove()


def send_clients(
    port: int, clients: int, per_client: int, names: int, first: int = 0
) -> tuple[list[threading.Thread], list[int]]:
    """*clients* threads, client c sending the values 0..per_client-1 on ``bp.c<first + c>.m<n % names>``
    (:class:`CountingCarbon`'s form)."""
    now = int(time.time()) - 3600
    sent = [0] * clients

    def client(c: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            for start in range(0, per_client, 2000):
                chunk = "".join(
                    f"bp.c{first + c}.m{n % names} {n} {now + n // names}\n" for n in range(start, start + 2000)
                )
                sock.sendall(chunk.encode())
                sent[c] += 2000

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    return threads, sent


def orchester_counters(topo: Path) -> dict[str, int]:
    snap = status(topo)
    if snap is None:
        return {}
    return dict(snap.get("heartbeats", {}).get("orchester", {}).get("counters", {}))


def spool_topology(base: Path, carbon_port: int, tcp: int, policy: str, max_queue: int | None) -> Path:
    queue = f"[orchester]\nmax_queue = {max_queue}\n" if max_queue is not None else ""
    return ingress_topology(
        base,
        carbon_port,
        f"""
[tracker]
metrics_every = "1h"
{queue}
[ingress]
plaintext = "127.0.0.1:{tcp}"
[spool]
path = "spool/carbon.db"
policy = "{policy}"
""",
    )


def no_traceback(log: str) -> None:
    for marker in ("Traceback", "Unhandled error", "Unhandled Error"):
        assert marker not in log, log[log.index(marker) - 2000 : log.index(marker) + 3000]


def carbon_back_and_count(
    processes: Processes, up: subprocess.Popen[bytes], topo: Path, carbon_port: int, clients: int, per_client: int,
    policy: str, threads: list[threading.Thread], sent: Callable[[], int], episodes: int = 1,
) -> dict[str, int]:  # fmt: skip
    """Carbon returns: wait until every datapoint is delivered (block) or delivered + dropped = sent (drop_oldest),
    and ``dsat status`` shows at least *episodes* of a full disk (the orchester's heartbeat, every 5 s)."""
    total = clients * per_client
    sink = CountingCarbon(carbon_port, clients, per_client)
    sink.start()
    try:
        if policy == "block":
            wait_for(
                lambda: sink.delivered() == total,
                180,
                "every datapoint at the carbon stand-in",
                detail=lambda: f"{sink.delivered()} of {total}; {orchester_counters(topo)}",
            )
        for t in threads:
            t.join(120)
        assert sent() == total
        counters: dict[str, int] = {}

        def balanced() -> bool:
            counters.update(orchester_counters(topo))
            return (
                sink.delivered() + counters.get("dropped", 0) == total
                and counters.get("spool_disk_full", 0) >= episodes
            )

        wait_for(
            balanced,
            180,
            "delivered + counted as dropped = sent, and the disk-full episode in dsat status",
            detail=lambda: f"delivered {sink.delivered()}, sent {total}, orchester {counters}",
        )
        log = processes.log_of(up)
        assert processes.stop(up) == 0, log[-3000:]
        no_traceback(processes.log_of(up))
        return {
            "delivered": sink.delivered(),
            "dropped": counters.get("dropped", 0),
            "received": sink.received,
            "disk_full_episodes": counters.get("spool_disk_full", 0),
        }
    finally:
        sink.stop()


@pytest.mark.parametrize("policy", ["block", "drop_oldest"])
def test_a_spool_disk_that_fills_is_a_full_spool(
    short_tmp: Path, processes: Processes, mount: Mount, policy: str
) -> None:
    """The issue's scenario: Carbon down, the spool on a 4 MB tmpfs, 20 clients, 1,000,000 datapoints on 200,000
    names; block delivers every one once Carbon is back, drop_oldest delivers + counts as dropped every one."""
    clients, per_client, names = 20, 50_000, 10_000
    mount.tmpfs("4m")
    carbon_port, tcp = free_port(), free_port()
    # block at the defaults (max_queue 1,000,000 in memory); drop_oldest with less memory, so that it drops
    topo = spool_topology(short_tmp, carbon_port, tcp, policy, None if policy == "block" else 50_000)
    up, _ = orchester_up(processes, topo, tcp)
    threads, sent = send_clients(tcp, clients, per_client, names)
    wait_for(lambda: "ALERT spool_disk_full" in processes.log_of(up), 120, "the spool's disk to fill")
    if policy == "drop_oldest":
        wait_for(lambda: sum(sent) == clients * per_client, 120, "the clients to send everything")
    figures = carbon_back_and_count(
        processes, up, topo, carbon_port, clients, per_client, policy, threads, lambda: sum(sent)
    )
    if policy == "block":
        assert figures["dropped"] == 0
    else:
        assert figures["dropped"] > 0  # memory held 50,000: the rest had to go, counted
    record(
        f"spool_disk_full_{policy}",
        datapoints_sent=clients * per_client,
        names=clients * names,
        tmpfs_mb=4,
        datapoints_delivered=figures["delivered"],
        datapoints_counted_dropped=figures["dropped"],
        datapoints_received_with_resends=figures["received"],
        disk_full_episodes=figures["disk_full_episodes"],
    )
    assert figures["disk_full_episodes"] >= 1


@pytest.mark.parametrize("policy", ["block", "drop_oldest"])
def test_a_spool_disk_remounted_read_only_in_the_middle_is_a_full_spool(
    short_tmp: Path, processes: Processes, mount: Mount, policy: str
) -> None:
    """ext4 goes read-only under a spool holding batches: block pauses the inputs and, Carbon back, delivers
    everything (the spooled rows replayed from the read-only file); drop_oldest delivers + counts the rest."""
    clients, per_client, names = 10, 20_000, 5_000
    mount.ext4(64)
    carbon_port, tcp = free_port(), free_port()
    topo = spool_topology(short_tmp, carbon_port, tcp, policy, 20_000)
    up, _ = orchester_up(processes, topo, tcp)
    threads, sent = send_clients(tcp, clients // 2, per_client, names)
    wait_for(lambda: sum(sent) >= clients // 2 * per_client, 120, "the first clients to send everything")
    wait_for(lambda: orchester_counters(topo).get("dropped") is not None, 30, "a heartbeat of the orchester")
    mount.fail_read_only()
    assert {"ro", "emergency_ro"} & set(mount.options().split(",")), mount.options()
    more, sent_more = send_clients(tcp, clients // 2, per_client, names, first=clients // 2)
    wait_for(lambda: "ALERT spool_disk_full" in processes.log_of(up), 120, "the spool to find its disk read-only")
    if policy == "block":
        wait_for(lambda: "inputs paused" in processes.log_of(up), 120, "the orchester to pause its inputs")
    else:
        wait_for(lambda: sum(sent_more) == clients // 2 * per_client, 120, "the clients to send everything")
    figures = carbon_back_and_count(
        processes,
        up,
        topo,
        carbon_port,
        clients,
        per_client,
        policy,
        [*threads, *more],
        lambda: sum(sent) + sum(sent_more),
    )
    record(
        f"spool_disk_read_only_{policy}",
        datapoints_sent=clients * per_client,
        datapoints_delivered=figures["delivered"],
        datapoints_counted_dropped=figures["dropped"],
        disk_full_episodes=figures["disk_full_episodes"],
    )
    assert figures["disk_full_episodes"] == 1  # read-only for good: one episode, one alert


@pytest.mark.parametrize("fault", ["deleted", "replaced"])
def test_a_spool_file_deleted_or_replaced_while_the_orchester_runs_loses_nothing(
    short_tmp: Path, processes: Processes, fault: str
) -> None:
    """rm of the spool (or garbage put in its place) while it holds batches: the orchester opens a new one there
    within a second and copies what it held into it, so even a kill -9 after that loses nothing: once Carbon is
    back every datapoint arrives."""
    clients, per_client, names = 10, 20_000, 2_000
    carbon_port, tcp = free_port(), free_port()
    topo = spool_topology(short_tmp, carbon_port, tcp, "drop_oldest", None)  # the defaults
    up, _ = orchester_up(processes, topo, tcp)
    half = clients // 2 * per_client
    first, sent_first = send_clients(tcp, clients // 2, per_client, names)
    wait_for(lambda: spooled_points(short_tmp) == half, 120, "the first half in the spool")
    path = short_tmp / "spool" / "carbon.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if fault == "replaced":
        path.write_bytes(os.urandom(16384))
    wait_for(lambda: "ALERT spool_replaced" in processes.log_of(up), 30, "the orchester to notice")
    wait_for(lambda: spooled_points(short_tmp) == half, 30, "what the old spool held, in the new file")
    kill_orchester(up, tcp)  # what was only in the deleted file would be gone now
    more, sent_more = send_clients(tcp, clients // 2, per_client, names, first=clients // 2)
    figures = carbon_back_and_count(
        processes, up, topo, carbon_port, clients, per_client, "block", [*first, *more],
        lambda: sum(sent_first) + sum(sent_more), episodes=0,
    )  # fmt: skip
    assert figures["dropped"] == 0
    if fault == "replaced":
        assert list((short_tmp / "spool").glob("carbon.db.corrupt-*")), "the garbage was not set aside"
    record(
        f"spool_file_{fault}",
        datapoints_sent=clients * per_client,
        datapoints_spooled_when_the_file_went=half,
        datapoints_delivered=figures["delivered"],
    )


class StallingCarbon(CountingCarbon):
    """Accepts connections and reads nothing until :meth:`read` (a carbon-cache stuck, its TCP window full)."""

    def __init__(self, port: int, clients: int, per_client: int) -> None:
        super().__init__(port, clients, per_client)
        self.reading = threading.Event()
        self.accepted = 0

    def _read(self, conn: socket.socket) -> None:
        self.accepted += 1
        self.reading.wait()
        super()._read(conn)

    def read(self) -> None:
        self.reading.set()


#: How long the stalled Carbon reads nothing (the issue: two minutes).
STALL_SECONDS = 120
#: The orchester's RSS may grow this much over its start while Carbon reads nothing: [orchester] max_queue
#: (1,000,000 datapoints by default) encoded in memory, and the parsing on the way.
RSS_GROWTH_BOUND_MIB = 200


def test_a_carbon_that_accepts_but_never_reads_for_two_minutes(short_tmp: Path, processes: Processes) -> None:
    """At the defaults: the orchester's memory stays within a bound, what does not fit is spooled, the stalled
    connection is given up after [carbon] timeout and what it held sent again, and every datapoint arrives once
    Carbon reads."""
    clients, per_client, names = 20, 50_000, 10_000
    total = clients * per_client
    carbon_port, tcp = free_port(), free_port()
    topo = spool_topology(short_tmp, carbon_port, tcp, "drop_oldest", None)
    sink = StallingCarbon(carbon_port, clients, per_client)
    sink.start()
    try:
        up, proc = orchester_up(processes, topo, tcp)
        rss_at_start = proc.memory_info().rss
        wait_for(lambda: sink.accepted > 0, 30, "the orchester to connect to the stalled carbon")
        stalled_at = time.monotonic()
        threads, sent = send_clients(tcp, clients, per_client, names)
        rss = [rss_at_start]
        while time.monotonic() - stalled_at < STALL_SECONDS:
            rss.append(proc.memory_info().rss)
            time.sleep(1)
        for t in threads:
            t.join(60)
        assert sum(sent) == total
        spooled = spooled_points(short_tmp)
        sink.read()
        wait_for(
            lambda: sink.delivered() == total,
            180,
            "every datapoint at the carbon once it reads",
            detail=lambda: f"{sink.delivered()} of {total}; {orchester_counters(topo)}",
        )
        counters = orchester_counters(topo)
        assert processes.stop(up) == 0, processes.log_of(up)[-3000:]
        log = processes.log_of(up)
        no_traceback(log)
    finally:
        sink.stop()
    growth = (max(rss) - rss_at_start) / 2**20
    assert growth < RSS_GROWTH_BOUND_MIB, f"the orchester grew {growth:.0f} MiB while carbon did not read"
    assert counters.get("dropped", 0) == 0
    assert spooled > 0, "nothing was spooled: did carbon's window ever fill?"
    record(
        "carbon_never_reads",
        stall_seconds=STALL_SECONDS,
        datapoints_sent=total,
        datapoints_delivered=sink.delivered(),
        datapoints_spooled_while_stalled=spooled,
        orchester_rss_mib_at_start=round(rss_at_start / 2**20, 1),
        orchester_rss_growth_mib=round(growth, 1),
        rss_growth_bound_mib=RSS_GROWTH_BOUND_MIB,
        datapoints_received_with_resends=sink.received,
        connections_given_up_and_made_again=sink.accepted - 1,
    )


def test_when_space_comes_back_the_spool_takes_writes_again_by_itself(
    short_tmp: Path, processes: Processes, mount: Mount
) -> None:
    """Another file fills the spool's disk; once it is removed, what waited in memory is spooled without a restart,
    so a kill -9 of the orchester after that loses nothing: Carbon back, every datapoint arrives."""
    clients, per_client, names = 10, 20_000, 2_000
    total = clients * per_client
    mount.tmpfs("32m")  # room for everything once the other file is gone
    carbon_port, tcp = free_port(), free_port()
    topo = spool_topology(short_tmp, carbon_port, tcp, "block", None)
    up, _ = orchester_up(processes, topo, tcp)
    wait_for(lambda: spooled_points(short_tmp) == 0 and (mount.where / "carbon.db").exists(), 30, "the spool")
    ballast = mount.where / "ballast"
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={ballast}", "bs=64k"], capture_output=True, timeout=120
    )  # until the disk is full
    threads, sent = send_clients(tcp, clients, per_client, names)
    wait_for(lambda: "ALERT spool_disk_full" in processes.log_of(up), 60, "the spool to find its disk full")
    for t in threads:
        t.join(120)
    assert sum(sent) == total
    held = spooled_points(short_tmp)
    ballast.unlink()
    wait_for(lambda: "takes writes again" in processes.log_of(up), 30, "the spool to write again by itself")
    wait_for(
        lambda: spooled_points(short_tmp) == total,
        60,
        "everything in the spool",
        detail=lambda: (spooled_points(short_tmp), status(topo)),
    )
    kill_orchester(up, tcp)  # only what is on disk survives this
    figures = carbon_back_and_count(
        processes, up, topo, carbon_port, clients, per_client, "block", threads, lambda: sum(sent), episodes=0
    )
    record(
        "spool_disk_space_back",
        datapoints_sent=total,
        datapoints_spooled_before_the_disk_filled=held,
        datapoints_delivered=figures["delivered"],
    )

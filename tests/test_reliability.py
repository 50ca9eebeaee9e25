"""Lose nothing: real carbon-cache, real Whisper, real processes, while things break.

Each scenario runs a topology with the ``synthetic`` collector, whose every
datapoint carries its run number, so the Whisper files tell exactly which
runs arrived: every metric must hold every run from 1 to the last.  The
figures (datapoints sent and stored, replay rate) are written to
``test-artifacts/reliability.json`` for ``docs/reliability.rst``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from dsat.tools.stack import free_port
from tests.harness import (
    Carbon,
    CarbonStandIn,
    CountingCarbon,
    Processes,
    assert_every_run_stored,
    free_udp_port,
    ingress_topology,
    listening,
    record,
    recv_queued,
    running,
    settled_runs,
    spool_rows,
    status,
    step_pid,
    synthetic,
    topology,
    wait_for,
    wait_for_more_runs,
)

pytestmark = pytest.mark.integration


def test_carbon_down_for_60_seconds_loses_nothing(short_tmp: Path, carbon: Carbon, processes: Processes) -> None:
    """5,000 datapoints/s while carbon-cache is stopped for 60 s: every one reaches Whisper after it returns."""
    metrics = 5000
    up = running(short_tmp, carbon, processes, "load5k", metrics, first_runs=3)
    carbon.stop()
    down_at = time.monotonic()
    wait_for(lambda: time.monotonic() - down_at >= 60 and spool_rows(short_tmp) >= 60, 120, "60 s of spooling")
    spooled_batches = spool_rows(short_tmp)
    down_for = time.monotonic() - down_at
    carbon.start()
    back_at = time.monotonic()
    wait_for(lambda: spool_rows(short_tmp) == 0, 120, "the spool to be replayed")
    replay_seconds = time.monotonic() - back_at
    wait_for_more_runs(carbon, "load5k", 3)  # a few more live runs after the replay
    assert processes.stop(up) == 0, processes.log_of(up)[-3000:]

    runs = settled_runs(carbon, "load5k", metrics)
    last = assert_every_run_stored(runs)
    assert last >= 60
    record(
        "carbon_down_60s",
        datapoints_per_second=metrics,
        carbon_down_seconds=round(down_for, 1),
        datapoints_sent=last * metrics,
        datapoints_stored=sum(len(r) for r in runs),
        batches_spooled=spooled_batches,
        replay_seconds=round(replay_seconds, 1),
        replay_datapoints_per_second=round(spooled_batches * metrics / replay_seconds),
    )


def test_kill_9_of_the_orchester_loses_nothing_that_reached_the_spool(
    short_tmp: Path, carbon: Carbon, processes: Processes
) -> None:
    """kill -9 of the orchester while it spools; it is restarted; after carbon returns every run is stored."""
    metrics = 1000
    topo = topology(short_tmp, carbon, synthetic("flow", metrics))
    up = processes.dsat("up", str(topo), name="up")
    wait_for(lambda: spool_rows(short_tmp) >= 10, 60, "batches in the spool")
    orchester = step_pid(up, "orchester")
    assert orchester is not None
    os.kill(orchester, signal.SIGKILL)
    spooled_at_kill = spool_rows(short_tmp)
    wait_for(lambda: (pid := step_pid(up, "orchester")) and pid != orchester, 30, "the orchester to restart")
    wait_for(lambda: spool_rows(short_tmp) >= spooled_at_kill + 10, 60, "spooling to go on")
    carbon.start()
    wait_for(lambda: spool_rows(short_tmp) == 0, 120, "the spool to be replayed")
    wait_for_more_runs(carbon, "flow", 2)
    assert processes.stop(up) == 0, processes.log_of(up)[-3000:]
    runs = settled_runs(carbon, "flow", metrics)
    last = assert_every_run_stored(runs)
    assert last >= 20
    record(
        "orchester_kill_9",
        batches_spooled_at_kill=spooled_at_kill,
        datapoints_sent=last * metrics,
        datapoints_stored=sum(len(r) for r in runs),
    )


def test_a_transform_killed_mid_batch_is_retried_and_every_run_is_stored(
    short_tmp: Path, carbon: Carbon, processes: Processes
) -> None:
    """kill -9 of a slow transform: its batch times out, is sent again, and every run is stored (Whisper
    keeps one value per timestamp, so this cannot see a duplicate; at-least-once is what is proven)."""
    metrics = 100
    topo = topology(
        short_tmp,
        carbon,
        f'[satellites.src]\nuse = "synthetic"\nevery = "1s"\nnext = ["slow"]\noptions = {{ metrics = {metrics} }}\n'
        f'[satellites.slow]\nuse = "chaos"\noptions = {{ delay = 0.5, busy_file = "{short_tmp}/busy" }}\n',
        timeout='"3s"',
    )
    carbon.start()
    up = processes.dsat("up", str(topo), name="up")
    wait_for(lambda: len(carbon.runs("src", 1)[0]) >= 3, 60, "the first runs in Whisper")
    slow = step_pid(up, "slow")
    assert slow is not None
    wait_for(lambda: (short_tmp / "busy").exists(), 10, "the transform to be working on a batch", interval=0.01)
    os.kill(slow, signal.SIGKILL)
    wait_for(lambda: (s := status(topo)) and s["tasks"]["retry"] >= 1, 30, "a retry")
    # a few more runs after the retry.  (At 0.8 s of work per 1 s batch the restarted transform never caught
    # up: the timed-out batches it still had queued were sent again, adding work, until they were given up.)
    wait_for_more_runs(carbon, "src", 4)
    assert processes.stop(up) == 0, processes.log_of(up)[-3000:]
    last = assert_every_run_stored(settled_runs(carbon, "src", metrics))
    assert last >= 8


def test_a_collector_that_stalls_keeps_every_run_in_a_slot_of_its_own(
    short_tmp: Path, carbon: Carbon, processes: Processes
) -> None:
    """The collector's process stopped for 0.9 s five times, then 2.5 s: each late run keeps its own Whisper slot.

    Stamped with the moment it ran, a run made late by a stall shared a second with the next run, and one of
    the two was overwritten (this scenario lost a run of all 1,000 metrics before dsat.schedule).
    """
    metrics = 1000
    up = running(short_tmp, carbon, processes, "stall", metrics, first_runs=2)
    collector = step_pid(up, "stall")
    assert collector is not None
    for stall in (0.9, 0.9, 0.9, 0.9, 0.9, 2.5):
        os.kill(collector, signal.SIGSTOP)
        time.sleep(stall)
        os.kill(collector, signal.SIGCONT)
        time.sleep(1.1)
    wait_for_more_runs(carbon, "stall", 2)
    assert processes.stop(up) == 0, processes.log_of(up)[-3000:]
    last = assert_every_run_stored(settled_runs(carbon, "stall", metrics))
    assert last >= 12
    assert "slot(s) of 1s had none" in processes.log_of(up)  # the 2.5 s stall: slots went by, counted and logged


def test_a_failing_step_opens_its_circuit_and_is_not_hammered(
    short_tmp: Path, carbon: Carbon, processes: Processes
) -> None:
    """A transform failing every batch: its circuit opens, an alert fires, other steps keep flowing, probes follow."""
    alerts = short_tmp / "alerts.jsonl"
    hook = f'{sys.executable} -c \'import sys; open("{alerts}", "a").write(sys.stdin.read() + chr(10))\''
    topo = topology(
        short_tmp,
        carbon,
        '[satellites.bad_src]\nuse = "synthetic"\nevery = "500ms"\nnext = ["broken"]\noptions = { metrics = 10 }\n'
        '[satellites.broken]\nuse = "chaos"\noptions = { fail = true }\n'
        '[satellites.good]\nuse = "synthetic"\nevery = "1s"\noptions = { metrics = 10 }\n',
        alert_command=json.dumps(hook),
        breaker_window='"10s"',
        breaker_min_failures="3",
        breaker_cooldown='"5s"',
    )
    carbon.start()
    up = processes.dsat("up", str(topo), name="up")
    wait_for(lambda: alerts.exists() and "circuit_open" in alerts.read_text(), 60, "a circuit_open alert")
    first = json.loads(alerts.read_text().splitlines()[0])
    assert first["alert"] == "circuit_open" and first["step"] == "broken"
    opened_at = status(topo)
    assert opened_at is not None
    good_before = len(carbon.runs("good", 1)[0])
    since = time.monotonic()
    # Probed after the 5 s cool-down: it failed again and reopened.
    later = wait_for(
        lambda: (s := status(topo)) and s["alerts"].get("circuit_open", 0) >= 2 and s, 60, "the circuit to reopen"
    )
    window = time.monotonic() - since
    assert isinstance(later, dict)
    # Not hammered: with the circuit open only probes reach it (2 batches a second would without it).
    received = later["steps"]["broken"]["batches_received"] - opened_at["steps"]["broken"]["batches_received"]
    assert received <= 4, received
    # The other branch kept its throughput: a run a second, one more run due from a lagging carbon-cache.
    wait_for(
        lambda: len(carbon.runs("good", 1)[0]) - good_before >= int(window) - 1,
        30,
        f"{int(window) - 1} runs of the other branch in Whisper",
    )
    good_after = len(carbon.runs("good", 1)[0])
    assert processes.stop(up) == 0
    record(
        "circuit_breaker",
        seconds_until_reopened=round(window, 1),
        batches_reaching_open_step=received,
        good_runs=good_after - good_before,
        circuit_open_alerts=later["alerts"]["circuit_open"],
    )


def test_a_full_spool_drops_oldest_and_counts_every_dropped_datapoint(
    short_tmp: Path, carbon: Carbon, processes: Processes
) -> None:
    """With a 1 MiB spool and carbon down, the datapoints counted as dropped are exactly the ones missing."""
    metrics = 5000  # one run a second, about 150 kB pickled: a 1 MiB spool holds 6 or 7 runs
    topo = topology(short_tmp, carbon, synthetic("fill", metrics))
    topo.write_text(topo.read_text().replace("replay_rate = 200000", "replay_rate = 200000\nmax_mb = 1"))
    up = processes.dsat("up", str(topo), name="fill")

    def orchester_dropped() -> int:
        snap = status(topo)
        beat = snap["heartbeats"].get("orchester") if snap else None
        return int(beat["counters"].get("dropped", 0)) if beat else 0

    # 5,000 datapoints a run: three runs' worth dropped means the spool overflowed a few times
    wait_for(lambda: orchester_dropped() >= 3 * metrics, 90, "the spool to overflow a few times")
    carbon.start()
    wait_for(lambda: spool_rows(short_tmp) == 0, 60, "the spool to be replayed")
    # no drop once the spool has room: the next heartbeat carries the final count
    emptied = time.time()
    beat = wait_for(
        lambda: (s := status(topo)) and s["heartbeats"]["orchester"]["age"] < time.time() - emptied and s,
        30,
        "a heartbeat from the orchester after the replay",
    )
    dropped = int(beat["heartbeats"]["orchester"]["counters"]["dropped"])  # type: ignore[index]
    assert processes.stop(up) == 0
    runs = settled_runs(carbon, "fill", metrics)
    last = max(max(r) for r in runs if r)
    sent = last * metrics
    stored = sum(len(r) for r in runs)
    assert dropped > 0
    assert sent - stored == dropped, (sent, stored, dropped)
    record("spool_full_drop_oldest", datapoints_sent=sent, datapoints_stored=stored, datapoints_dropped=dropped)


# The default ring and the jump hash, which has no ring (fnv1a_ch is a ring built as carbon_ch's is; dsat route
# on it is tested in tests/test_route.py without processes, and each run here costs 20 s of the suite's budget).
@pytest.mark.parametrize("hashing", ["carbon_ch", "jump_fnv1a_ch"])
def test_removing_a_dead_destination_delivers_what_was_spooled_for_it(
    short_tmp: Path, carbon: Carbon, processes: Processes, hashing: str
) -> None:
    """Two caches, one never up: `dsat route T remove` places its spooled share on the live one; every run lands.

    With carbon_ch and jump_fnv1a_ch; the dead one written as carbon-c-relay writes it (``host:port=instance``).
    """
    metrics = 200
    dead = free_port()
    topo = topology(short_tmp, carbon, synthetic("gen", metrics))
    topo.write_text(
        topo.read_text().replace(
            f'destinations = ["127.0.0.1:{carbon.port}"]',
            f'destinations = ["127.0.0.1:{carbon.port}:a", "127.0.0.1:{dead}=b"]\nhashing = "{hashing}"',
        )
    )
    carbon.start()
    up = processes.dsat("up", str(topo), name="up")
    wait_for(lambda: spool_rows(short_tmp) >= 10, 60, "ten batches spooled for the dead destination")
    spooled = spool_rows(short_tmp)
    removed = subprocess.run(
        [sys.executable, "-m", "dsat", "route", str(topo), "remove", f"127.0.0.1:{dead}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert removed.returncode == 0, removed.stderr
    wait_for(lambda: spool_rows(short_tmp) == 0, 60, "the dead destination's share to be placed and replayed")
    wait_for_more_runs(carbon, "gen", 3)  # a few more live runs, all to the one cache left
    assert processes.stop(up) == 0, processes.log_of(up)[-3000:]

    runs = settled_runs(carbon, "gen", metrics)
    last = assert_every_run_stored(runs)
    record(
        "remove_dead_destination" + ("" if hashing == "carbon_ch" else f"_{hashing}"),
        datapoints_sent=last * metrics,
        datapoints_stored=sum(len(r) for r in runs),
        batches_spooled_for_the_dead_destination=spooled,
    )


def test_block_policy_pauses_tcp_clients_in_bounded_memory_and_then_delivers_everything(
    short_tmp: Path, processes: Processes
) -> None:
    """Carbon down, block, 1 MiB spool: 20 clients sending 2,000,000 datapoints are paused, the orchester's RSS
    stays bounded, and once Carbon is back every datapoint arrives."""
    import socket
    import threading

    clients, per_client, rss_bound = 20, 100_000, 80 * 2**20
    carbon_port, tcp = free_port(), free_port()
    topo = ingress_topology(
        short_tmp,
        carbon_port,
        f"""
[tracker]
metrics_every = "1h"
[orchester]
max_queue = 50000
[ingress]
plaintext = "127.0.0.1:{tcp}"
[spool]
path = "spool/carbon.db"
max_mb = 1
policy = "block"
replay_rate = 500000
""",
    )
    up = processes.dsat("up", str(topo), name="up")
    wait_for(lambda: listening(tcp), 30, "the orchester's plaintext port")
    orchester = step_pid(up, "orchester")
    assert orchester is not None
    proc = psutil.Process(orchester)
    rss_at_start = proc.memory_info().rss
    now = int(time.time())
    sent = [0] * clients

    def client(c: int) -> None:
        with socket.create_connection(("127.0.0.1", tcp)) as sock:
            # a small send buffer, so a paused orchester blocks the client itself rather than its kernel
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            for start in range(0, per_client, 2000):
                chunk = "".join(f"bp.c{c}.m{n % 100} {n} {now + n // 100}\n" for n in range(start, start + 2000))
                sock.sendall(chunk.encode())
                sent[c] += 2000

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    wait_for(lambda: "inputs paused" in processes.log_of(up), 60, "the orchester to pause its inputs")
    # Paused: the clients' data waits unread in the kernel, not in the orchester.
    wait_for(lambda: recv_queued(tcp) > 0, 30, "data waiting unread at the orchester's sockets")
    rss_paused = []
    for _ in range(20):
        rss_paused.append(proc.memory_info().rss)
        time.sleep(0.1)
    queued_unread, sent_while_paused = recv_queued(tcp), sum(sent)
    assert "inputs resumed" not in processes.log_of(up)
    assert sent_while_paused < clients * per_client  # the clients are held back
    assert max(rss_paused) < rss_bound, f"RSS {max(rss_paused) / 2**20:.0f} MiB while paused"

    sink = CountingCarbon(carbon_port, clients, per_client)
    sink.start()
    try:
        back_at = time.monotonic()
        wait_for(
            lambda: sink.delivered() == clients * per_client,
            120,
            "every datapoint at the carbon stand-in",
            detail=lambda: f"{sink.delivered()} of {clients * per_client}",
        )
        delivered_in = time.monotonic() - back_at
        for t in threads:
            t.join(30)
        assert sum(sent) == clients * per_client
        assert processes.stop(up) == 0, processes.log_of(up)[-3000:]
    finally:
        sink.stop()
    record(
        "block_policy_bounded_memory",
        clients=clients,
        datapoints_sent=clients * per_client,
        datapoints_delivered=sink.delivered(),
        datapoints_received_with_resends=sink.received,
        datapoints_sent_by_clients_while_paused=sent_while_paused,
        bytes_unread_in_kernel_while_paused=queued_unread,
        orchester_rss_mib_at_start=round(rss_at_start / 2**20, 1),
        orchester_rss_mib_while_paused=round(max(rss_paused) / 2**20, 1),
        rss_bound_mib=rss_bound // 2**20,
        seconds_to_deliver_after_carbon_back=round(delivered_in, 1),
    )


@pytest.mark.parametrize("udp_buffer", [212_992, 8 * 2**20], ids=["linux_default_buffer", "udp_buffer_8MiB"])
def test_statsd_datagrams_lost_in_the_kernel_are_counted(
    short_tmp: Path, processes: Processes, udp_buffer: int
) -> None:
    """200,000 statsd datagrams sent as fast as one client can: the ones counted plus the ones the kernel
    dropped (self.orchester.udp.dropped) are exactly the ones sent; no loss is invisible."""
    import socket

    sent, carbon_port, statsd_port = 200_000, free_port(), free_udp_port()
    totals = {"hits": 0.0, "markers": 0.0, "dropped": 0.0, "own": 0}

    def on_point(path: str, ts: float, value: float) -> None:
        if path.startswith("dsat.testhost.self.orchester."):
            totals["own"] += 1  # the orchester is up, its statsd port open (opened before its first metrics)
        if path == "stats.counters.hits.count":
            totals["hits"] += value
        elif path == "stats.counters.marker.count":
            totals["markers"] += value
        elif path == "dsat.testhost.self.orchester.udp.dropped":
            totals["dropped"] += value

    sink = CarbonStandIn(carbon_port, on_point)
    sink.start()
    topo = ingress_topology(
        short_tmp,
        carbon_port,
        f"""
[tracker]
metrics_every = "1s"
[ingress]
statsd = "127.0.0.1:{statsd_port}"
statsd_flush = "1s"
udp_buffer = {udp_buffer}
""",
    )
    up = processes.dsat("up", str(topo), name="up")
    try:
        wait_for(lambda: totals["own"], 30, "the orchester's own metrics")
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.connect(("127.0.0.1", statsd_port))
        started = time.monotonic()
        for burst in range(sent // 1000):  # 1,000 datagrams a millisecond at most: the 134,000/s or so
            while time.monotonic() < started + burst / 134:
                pass
            for _ in range(1000):
                client.send(b"hits:1|c")
        rate = sent / (time.monotonic() - started)

        markers = [0]

        def flood_read() -> bool:
            # The kernel reports its drop count with the next datagram it delivers: keep one coming.
            client.send(b"marker:1|c")
            markers[0] += 1
            return totals["hits"] + totals["markers"] + totals["dropped"] >= sent

        wait_for(flood_read, 30, "the flood to be read or counted as dropped", detail=lambda: totals)
        client.send(b"marker:1|c")  # into an empty buffer now: it carries the final drop count
        markers[0] += 1
        wait_for(
            lambda: totals["hits"] + totals["markers"] + totals["dropped"] == sent + markers[0],
            30,
            "every datagram counted or counted as dropped",
            detail=lambda: (totals, markers),
        )
        client.close()
        assert processes.stop(up) == 0
    finally:
        sink.stop()
    record(
        f"statsd_loss_{'default' if udp_buffer == 212_992 else 'sized'}_buffer",
        udp_buffer_bytes=udp_buffer,
        datagrams_sent=sent,
        datagrams_sent_per_second=round(rate),
        datagrams_counted=int(totals["hits"]),
        markers_sent_after=markers[0],
        datagrams_dropped_by_the_kernel_counted=int(totals["dropped"]),
    )


def test_a_truncated_spool_does_not_stop_the_orchester_and_what_reads_back_is_replayed(
    short_tmp: Path, processes: Processes
) -> None:
    """The spool file cut in half while the orchester was down: it starts, moves the file aside with an alert,
    takes live data, and every datapoint still readable in the old file reaches Carbon."""
    import shutil
    import socket

    from dsat.graphite_wire import encode_pickle
    from dsat.spool import Spool

    carbon_port, tcp = free_port(), free_port()
    received: set[tuple[str, float]] = set()
    sink = CarbonStandIn(carbon_port, lambda path, ts, value: received.add((path, ts)))
    topo = ingress_topology(
        short_tmp,
        carbon_port,
        f'[tracker]\nmetrics_every = "1h"\n[ingress]\nplaintext = "127.0.0.1:{tcp}"\n'
        '[spool]\npath = "spool/carbon.db"\n',
    )
    db = short_tmp / "spool" / "carbon.db"
    old = Spool(db, sync="normal")
    for b in range(400):
        old.put(
            f"127.0.0.1:{carbon_port}", encode_pickle([(f"old.b{b}.m{i}", 1_700_000_000, 1.0) for i in range(50)]), 50
        )
    old.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    old.close()
    with db.open("r+b") as f:
        f.truncate(db.stat().st_size // 2)
    # what can be read back, found the same way on a copy
    shutil.copy(db, short_tmp / "copy.db")
    expected = Spool(short_tmp / "copy.db").salvaged
    assert 0 < expected < 400 * 50

    sink.start()
    up = processes.dsat("up", str(topo), name="up")
    try:
        wait_for(lambda: listening(tcp), 30, "the orchester's plaintext port")
        with socket.create_connection(("127.0.0.1", tcp)) as client:
            client.sendall(b"live.after.corruption 1 1700000000\n")
        wait_for(lambda: ("live.after.corruption", 1_700_000_000) in received, 30, "the live datapoint at Carbon")
        wait_for(
            lambda: sum(path.startswith("old.") for path, _ in received) == expected,
            30,
            f"the {expected} readable spooled datapoints at Carbon",
            detail=lambda: sum(path.startswith("old.") for path, _ in received),
        )
        assert processes.stop(up) == 0
    finally:
        sink.stop()
    assert [p.name for p in db.parent.iterdir() if ".corrupt-" in p.name]
    assert "ALERT spool_corrupt" in processes.log_of(up)

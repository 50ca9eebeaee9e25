"""`dsat route`: routing changes at run time, on the control channel, without a restart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from dsat.carbon import CarbonEgress
from dsat.errors import ConfigError
from dsat.graphite_wire import decode, encode_pickle, encode_plaintext
from dsat.spool import Spool
from dsat.tools import route
from dsat.tools.stack import free_port
from tests.harness import Processes, connect, sent_bytes, unpickle_messages, wait_for


def test_commands_and_how_they_show_in_force() -> None:
    """set/add/drain become control changes; the orchester's reported configuration says when they hold."""
    change = route.command("set", ["gauge", "archive", "carbon"])
    assert change == {"action": "route", "type": "gauge", "targets": "archive,carbon"}
    assert route.in_force(change, {"routes": '{"gauge": ["archive", "carbon"], "*": ["carbon"]}'})
    assert not route.in_force(change, {"routes": '{"*": ["carbon"]}'})
    drain = route.command("drain", ["127.0.0.1:2104:b"])
    assert route.in_force(drain, {"destinations": "127.0.0.1:2004"})
    assert not route.in_force(drain, {"destinations": "127.0.0.1:2004,127.0.0.1:2104"})
    remove = route.command("remove", ["127.0.0.1:2104"])
    assert remove == {"action": "remove", "destination": "127.0.0.1:2104"}
    assert route.in_force(remove, {"destinations": "127.0.0.1:2004"})
    with pytest.raises(ConfigError, match="usage"):
        route.command("set", ["gauge"])


def test_egress_adds_and_drains_destinations() -> None:
    """Adding a destination brings it into the ring; draining takes it out of new placements only."""
    egress = CarbonEgress(MemoryReactorClock(), [("127.0.0.1", 2004, "a")])
    assert egress.place("x") == (0,)
    assert egress.add_destination("127.0.0.1:2104:b")
    assert not egress.add_destination("127.0.0.1:2104:b")
    assert {egress.place(f"m{i}")[0] for i in range(200)} == {0, 1}
    assert egress.drain_destination("127.0.0.1:2004")
    assert {egress.place(f"m{i}")[0] for i in range(200)} == {1}
    assert egress.placing == ["127.0.0.1:2104"]
    with pytest.raises(ConfigError, match="replication"):
        egress.drain_destination("127.0.0.1:2104")
    with pytest.raises(ConfigError, match="not a carbon destination"):
        egress.drain_destination("10.9.9.9:1")


THREE = [("127.0.0.1", 2004, "a"), ("127.0.0.1", 2104, "b"), ("127.0.0.1", 2204, "c")]


def spool_rows(spool: Spool) -> dict[str, list[tuple[str, float, float]]]:
    """Every spooled datapoint, decoded, by destination name."""
    rows: dict[str, list[tuple[str, float, float]]] = {}
    for dest, data in spool.db.execute("SELECT dest, data FROM batches ORDER BY id"):
        rows.setdefault(dest, []).extend(decode(data))
    return rows


def test_removing_a_destination_places_its_spool_on_the_others(tmp_path: Path) -> None:
    """`remove` drains a destination and moves what its spool holds to where carbon_ch now puts it."""
    spool = Spool(tmp_path / "s.db")
    egress = CarbonEgress(MemoryReactorClock(), THREE, spool=spool)
    egress.start()
    points = [(f"servers.host{i}.cpu.user", 1_700_000_000.0 + i, float(i)) for i in range(300)]
    egress.send(points)  # every destination is down: all of it is spooled
    before = spool_rows(spool)
    assert len(before["127.0.0.1:2104"]) > 50 and spool.pending() == 300

    assert egress.remove_destination("127.0.0.1:2104")
    assert not egress.remove_destination("127.0.0.1:2104")
    after = spool_rows(spool)
    assert "127.0.0.1:2104" not in after and spool.pending() == 300
    assert sorted(p for rows in after.values() for p in rows) == sorted(points)
    names = {0: "127.0.0.1:2004", 2: "127.0.0.1:2204"}
    for point in before["127.0.0.1:2104"]:
        assert point in after[names[egress.place(point[0])[0]]]
    assert [d.spool_pending for d in egress.destinations] == [len(after[names[0]]), 0, len(after[names[2]])]
    assert not egress.destinations[1].service.running
    assert egress.placing == ["127.0.0.1:2004", "127.0.0.1:2204"]


def test_removing_a_destination_hands_its_memory_queue_to_the_others() -> None:
    """Without a spool, batches waiting in the removed destination's memory go to the others, callbacks kept."""
    egress = CarbonEgress(MemoryReactorClock(), THREE[:2])
    done: list[int] = []
    egress.send([(f"m{i}", 1.0, float(i)) for i in range(40)], lambda: done.append(1))
    assert egress.remove_destination("127.0.0.1:2004")
    assert egress.destinations[0].queued_points == 0 and egress.destinations[1].queued_points == 40
    proto = connect(egress.destinations[1])
    assert done == [1]
    assert sorted(p[0] for m in unpickle_messages(sent_bytes(proto)) for p in m) == sorted(f"m{i}" for i in range(40))


def test_spool_rows_of_a_destination_no_longer_configured_are_placed_again_at_start(tmp_path: Path) -> None:
    """A destination taken out of the topology leaves no data behind in the spool: start() places it again."""
    spool = Spool(tmp_path / "s.db")
    old = [(f"app.{i}.requests", 1_700_000_000.0, float(i)) for i in range(100)]
    spool.put("10.0.0.9:2004", encode_pickle(old[:60]), 60)
    spool.put("10.0.0.9:2004", encode_plaintext(old[60:]), 40)  # [carbon] protocol may have changed too
    egress = CarbonEgress(MemoryReactorClock(), THREE[:2], spool=spool)
    egress.start()
    after = spool_rows(spool)
    assert set(after) <= {"127.0.0.1:2004", "127.0.0.1:2104"} and spool.pending() == 100
    assert sorted(p for rows in after.values() for p in rows) == sorted(old)
    assert sum(d.spool_pending for d in egress.destinations) == 100


@pytest.mark.integration
def test_route_a_type_to_a_sink_while_running(short_tmp: Path, processes: Processes) -> None:
    """`dsat route T set gauge archive` sends gauges to the archive sink from then on, with no restart."""
    capture = short_tmp / "archive.txt"
    topo = short_tmp / "t.toml"
    topo.write_text(
        f"""
[dsat]
where = "testhost"
run_dir = "run"
[carbon]
destinations = ["127.0.0.1:{free_port()}"]
[spool]
path = ""
[satellites.gen]
use = "synthetic"
every = "250ms"
options = {{ metrics = 3 }}
[satellites.archive]
use = "capture"
options = {{ path = "{capture}" }}
"""
    )
    up = processes.dsat("up", str(topo), name="up")
    wait_for(lambda: topo.parent.joinpath("run", "orchester").exists(), 30, "the orchester")
    assert not capture.exists()
    out = subprocess.run(
        [sys.executable, "-m", "dsat", "route", str(topo), "set", "gauge", "archive"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert '"gauge": ["archive"]' in out.stdout
    wait_for(lambda: capture.exists() and "dsat.testhost.gen.m0" in capture.read_text(), 20, "gauges at the sink")
    bad = subprocess.run(
        [sys.executable, "-m", "dsat", "route", str(topo), "set", "gauge", "nowhere"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "unknown targets" in bad.stderr
    assert processes.stop(up) == 0


@pytest.mark.parametrize("hashing", ["carbon_ch", "fnv1a_ch", "jump_fnv1a_ch"])
def test_add_drain_and_remove_work_with_each_hashing(tmp_path: Path, hashing: str) -> None:
    """With each [carbon] hashing: add brings a destination in, drain takes it out of new placements, and
    remove places its spool where the method now puts each name, as a fresh placement over the others would."""
    spool = Spool(tmp_path / "s.db")
    egress = CarbonEgress(MemoryReactorClock(), THREE[:2], spool=spool, hashing=hashing)
    egress.start()
    names = [f"servers.host{i}.cpu.user" for i in range(300)]
    assert egress.add_destination("127.0.0.1:2204=c")  # carbon-c-relay's way of writing an instance
    assert not egress.add_destination("127.0.0.1:2204:c")
    assert {egress.place(name)[0] for name in names} == {0, 1, 2}
    egress.send([(name, 1_700_000_000.0, 1.0) for name in names])  # every destination is down: all spooled
    before = spool_rows(spool)
    assert egress.drain_destination("127.0.0.1:2004:a")
    assert {egress.place(name)[0] for name in names} == {1, 2}
    assert egress.remove_destination("127.0.0.1:2104=b")
    after = spool_rows(spool)
    assert set(after) == {"127.0.0.1:2004", "127.0.0.1:2204"} and spool.pending() == 300
    # What the removed destination held went where the method places each name now (only 2204 is placing).
    assert {point[0] for point in before["127.0.0.1:2104"]} <= {point[0] for point in after["127.0.0.1:2204"]}
    assert egress.placing == ["127.0.0.1:2204"] and egress.placement.hashing == hashing


def test_a_destination_that_clashes_in_the_rings_keys_is_refused_at_run_time() -> None:
    """`dsat route add` checks the new destination as the topology would: fnv1a_ch keys on the instance."""
    egress = CarbonEgress(MemoryReactorClock(), THREE[:2], hashing="fnv1a_ch")
    with pytest.raises(ConfigError, match="share an instance"):
        egress.add_destination("10.0.0.9:2004=a")
    jump = CarbonEgress(
        MemoryReactorClock(), [("127.0.0.1", 2004, "9"), ("127.0.0.1", 2104, "10")], hashing="jump_fnv1a_ch"
    )
    with pytest.raises(ConfigError, match="no one order"):
        jump.add_destination("127.0.0.1:2204=1a")  # 9 < 10 as numbers, 10 < 1a < 9 as text: no order

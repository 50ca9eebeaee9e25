"""Placement (dsat.placement): carbon_ch as carbon's own ring, carbon-relay and graphite-web place names."""

from __future__ import annotations

import random
import subprocess
import tempfile
from pathlib import Path

import pytest

import dsat.compiled
import dsat.placement
from dsat.placement import RING_POSITIONS, RING_REPLICAS, CarbonCh, make_placement
from dsat.topology import parse_destination
from tests.harness import install_missing_programs

NOW = 1_764_680_000.0


def test_with_one_node_everything_goes_to_it_and_there_is_no_ring() -> None:
    """One destination: every name is placed on it, a batch is one part, an empty batch none."""
    placement = CarbonCh({("127.0.0.1", None): 3}, 1)
    assert placement.only == 3 and placement.table == []
    assert placement.place("any.name") == (3,)
    assert placement.split([("a", 1.0, 1.0), ("b", 1.0, 2.0)]) == {3: [("a", 1.0, 1.0), ("b", 1.0, 2.0)]}
    assert placement.split([]) == {}


@pytest.mark.parametrize("replication", [1, 2])
def test_split_keeps_each_names_points_in_batch_order(replication: int) -> None:
    """Points are grouped per destination, but a name's points stay in the order of the batch."""
    placement = CarbonCh({("127.0.0.1", f"c{i}"): i for i in range(4)}, replication)
    batch = [(f"app.name{i % 37}", float(i), float(i)) for i in range(2_000)]
    parts = placement.split(batch)
    for index, part in parts.items():
        expected = [point for point in batch if index in placement.place(point[0])]
        assert sorted(part) == sorted(expected)
        for name in {point[0] for point in expected}:
            assert [p for p in part if p[0] == name] == [p for p in expected if p[0] == name]


@pytest.mark.parametrize("count", [2, 3, 5, 12])
def test_every_ring_position_has_the_destinations_carbons_ring_gives(count: int) -> None:
    """The position table agrees with carbon's own get_nodes at each of the 65,536 carbon_ch positions."""
    from carbon.hashing import ConsistentHashRing

    destinations = [(f"10.0.{i}.1", 2004, f"i{i}") for i in range(count)]
    ring = ConsistentHashRing([(host, instance) for host, _, instance in destinations])
    index = {(host, instance): i for i, (host, _, instance) in enumerate(destinations)}
    placement = CarbonCh(index, 2)
    for position in range(RING_POSITIONS):
        ring.compute_ring_position = lambda key, position=position: position  # type: ignore[method-assign]
        nodes = ring.get_nodes("any")
        assert placement.table[position] == (index[next(nodes)], index[next(nodes)]), position


def test_tagged_series_are_placed_by_their_canonical_name_as_carbon_does() -> None:
    """20,000 tagged names, tags in any order: placed where carbon_ch puts TaggedSeries.parse(name).path.

    That is also the cache graphite-web's carbonlink asks for the series' points not yet written.
    """
    import random

    from carbon.routers import ConsistentHashingRouter
    from carbon.util import TaggedSeries
    from graphite.render.hashing import ConsistentHashRing as GraphiteWebRing

    from dsat.naming import clean_path

    class Settings(dict):
        __getattr__ = dict.__getitem__

    destinations = [("127.0.0.1", 2004, "a"), ("127.0.0.1", 2104, "b"), ("10.0.0.2", 2004, "c")]
    settings = Settings(REPLICATION_FACTOR=1, DIVERSE_REPLICAS=False, ROUTER_HASH_TYPE="carbon_ch")
    router = ConsistentHashingRouter(settings)
    for dest in destinations:
        router.addDestination(dest)
    placement = CarbonCh({(host, instance): i for i, (host, _port, instance) in enumerate(destinations)}, 1)
    # graphite-web's carbonlink ring (CARBONLINK_HOSTS host:port:instance): where it asks for unwritten points.
    carbonlink = GraphiteWebRing([(host, instance) for host, _port, instance in destinations], hash_type="carbon_ch")
    rng = random.Random(7)
    unnormalized_elsewhere = 0
    for i in range(20_000):
        tags = [f"host=web{i % 50:02d}", f"dc=dc{i % 3}", f"disk=sd{chr(97 + i % 4)}", f"id={i}"]
        rng.shuffle(tags)
        raw = ";".join([f"disk.used{i % 7}", *tags])
        theirs = [(host, port) for host, port, _instance in router.getDestinations(TaggedSeries.parse(raw).path)]
        ours = [destinations[index][:2] for index in placement.place(clean_path(raw))]
        assert ours == theirs, raw
        host, instance = carbonlink.get_node(clean_path(raw))
        assert ours == [next((h, p) for h, p, i in destinations if (h, i) == (host, instance))], raw
        raw_place = [(host, port) for host, port, _instance in router.getDestinations(raw)]
        unnormalized_elsewhere += raw_place != theirs
    # Placing the name as sent (carbon-relay without TAG_RELAY_NORMALIZED) would scatter one series.
    assert unnormalized_elsewhere > 5_000


# -- carbon-c-relay's fnv1a_ch and jump_fnv1a_ch ----------------------------------------------------------------

#: Clusters as carbon-c-relay writes them (name, type, replication, members ``host:port[=instance]``): with and
#: without instances, several ports on one host, long and numeric instances, replication 1 to 3.
RELAY_CLUSTERS = [
    ("f1", "fnv1a_ch", 1, [f"10.1.0.{i}:2003" for i in range(1, 6)]),
    (
        "f2",
        "fnv1a_ch",
        2,
        ["10.2.0.1:2003=4d79d13554fa1301476c1f9fe968b0ac", "10.2.0.1:2103=cache-b", "10.2.0.2:2003", "10.2.0.3:2003=c"],
    ),
    ("j1", "jump_fnv1a_ch", 1, [f"10.3.0.{i}:2003" for i in range(1, 8)]),
    (
        "j2",
        "jump_fnv1a_ch",
        3,
        ["10.4.0.1:2003", "10.4.0.2:2003=10", "10.4.0.3:2003=9", "10.4.0.4:2003", "10.4.0.5:2003=0"],
    ),
    ("c1", "carbon_ch", 2, ["10.5.0.1:2003=a", "10.5.0.1:2103=b", "10.5.0.2:2003", "10.5.0.3:2003=c"]),
]


def relay_names(count: int, utf8: bool = True) -> list[str]:
    """*count* distinct names as clients send them: dotted ASCII words, digits, and (*utf8*) a share of UTF-8."""
    rng = random.Random(25)
    words = ["servers", "web", "db", "cpu", "load", "disk_used", "requests-per-sec", "p99", "eu", "us"]
    words += ["été", "日本"] if utf8 else []
    names: set[str] = set()
    while len(names) < count:
        parts = [rng.choice(words) + (str(rng.randrange(1000)) if rng.random() < 0.5 else "") for _ in range(2, 8)]
        names.add(".".join(parts[: rng.randint(2, len(parts))]))
    return sorted(names)


def relay_placement(clusters: list[tuple[str, str, int, list[str]]], names: list[str]) -> dict[str, dict[str, list]]:
    """What ``carbon-c-relay -t`` prints for each name: ``{cluster: {name: ["host:port", ...]}}``."""
    with tempfile.TemporaryDirectory() as folder:
        conf = Path(folder) / "relay.conf"
        lines = [
            f"cluster {name} {kind} replication {repl} {' '.join(members)};" for name, kind, repl, members in clusters
        ]
        lines.append(f"match * send to {' '.join(name for name, *_ in clusters)} stop;")
        conf.write_text("\n".join(lines) + "\n")
        done = subprocess.run(
            ["carbon-c-relay", "-t", "-f", str(conf)],
            input="\n".join(names) + "\n",
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    placed: dict[str, dict[str, list]] = {name: {} for name, *_ in clusters}
    name = cluster = ""
    for line in done.stdout.splitlines():
        if line.startswith("    * -> "):
            name = line.removeprefix("    * -> ")
        elif line.startswith("    ") and not line.startswith("     ") and line.endswith(")") and "(" in line:
            cluster = line.strip().partition("(")[2][:-1]
            placed[cluster][name] = []
        elif line.startswith("        ") and cluster:
            placed[cluster][name].append(line.strip())
    return placed


@pytest.mark.integration  # runs carbon-c-relay
def test_fnv1a_ch_and_jump_fnv1a_ch_place_every_name_where_carbon_c_relay_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 names on five clusters: DSAT's destinations are ``carbon-c-relay -t``'s, compiled and in pure Python.

    carbon_ch is carbon's own ring (carbon-relay's placement); carbon-c-relay's
    carbon_ch breaks ties on a ring position its own way, so it is counted, not asserted.
    """
    install_missing_programs({"carbon-c-relay": "carbon-c-relay"})
    names = relay_names(20_000)
    theirs = relay_placement(RELAY_CLUSTERS, names)
    points = [(name, NOW, 1.0) for name in names]
    for cluster, kind, replication, members in RELAY_CLUSTERS:
        written = [parse_destination(member) for member in members]
        assert None not in written
        placement = make_placement(kind, [(dest, i) for i, dest in enumerate(written) if dest], replication)
        assert len(theirs[cluster]) == len(names), cluster
        for compiled in (True, False):
            monkeypatch.setattr(dsat.placement, "speedups", dsat.compiled.speedups if compiled else None)
            ours = {p[0]: indexes for indexes, group in placement.group(points).items() for p in group}
            mismatches = [
                name for name in names if [members[i].partition("=")[0] for i in ours[name]] != theirs[cluster][name]
            ]
            if kind == "carbon_ch":
                assert len(mismatches) < len(names) // 100, (cluster, len(mismatches))
            else:
                assert mismatches == [], (cluster, compiled, len(mismatches), mismatches[:5])
        assert all(placement.place(name) == ours[name] for name in names[:2000])


def test_fnv1a_ch_is_carbons_where_carbon_has_it() -> None:
    """carbon 1.1's fnv1a_ch (instances as ring keys): the same destination for 20,000 ASCII names.

    Carbon moves a ring point that lands on a taken position one up, carbon-c-relay
    keeps the first in (position, host, port) order: this ring has no such clash.
    """
    from carbon.hashing import ConsistentHashRing, carbonHash

    destinations = [
        ("10.0.0.1", 2003, "storage-01"),
        ("10.0.0.1", 2103, "storage-02"),
        ("10.0.0.2", 2003, "storage-03"),
    ]
    ring = ConsistentHashRing([(host, instance) for host, _, instance in destinations], hash_type="fnv1a_ch")
    keys = [f"{i}-{instance}" for _, _, instance in destinations for i in range(RING_REPLICAS)]
    assert len({carbonHash(key, "fnv1a_ch") for key in keys}) == len(keys)  # no point moved by carbon
    placement = make_placement("fnv1a_ch", [(dest, i) for i, dest in enumerate(destinations)], 1)
    index = {(host, instance): i for i, (host, _, instance) in enumerate(destinations)}
    names = relay_names(20_000, utf8=False)
    assert [placement.place(name) for name in names] == [(index[ring.get_node(name)],) for name in names]


@pytest.mark.integration  # runs carbon-c-relay
def test_the_position_dsat_test_rules_shows_is_carbon_c_relays_hash_pos() -> None:
    """``Placement.where`` (``dsat test-rules``) gives the ``hash_pos`` ``carbon-c-relay -t -d`` prints."""
    install_missing_programs({"carbon-c-relay": "carbon-c-relay"})
    names = relay_names(200)
    clusters = [cluster for cluster in RELAY_CLUSTERS if cluster[0] in ("f2", "j2")]
    conf = "".join(f"cluster {n} {kind} replication {r} {' '.join(m)};\n" for n, kind, r, m in clusters)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "relay.conf").write_text(conf + "match * send to f2 j2 stop;\n")
        done = subprocess.run(
            ["carbon-c-relay", "-t", "-d", "-f", str(Path(folder) / "relay.conf")],
            input="\n".join(names) + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    positions = [int(line.strip()[9:-1]) for line in done.stdout.splitlines() if line.strip().startswith("hash_pos(")]
    assert len(positions) == 2 * len(names)
    for (_, kind, replication, members), offset in zip(clusters, (0, 1), strict=True):
        written = [parse_destination(member) for member in members]
        placement = make_placement(kind, [(dest, i) for i, dest in enumerate(written) if dest], replication)
        ours = [int(placement.where(name).split()[2]) for name in names]
        assert ours == positions[offset::2], kind

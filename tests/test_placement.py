"""Placement (dsat.placement): carbon_ch as carbon's own ring, carbon-relay and graphite-web place names."""

from __future__ import annotations

import pytest

from dsat.placement import RING_POSITIONS, CarbonCh


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

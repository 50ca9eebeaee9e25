"""Placement: which carbon destinations hold a metric name, decided as carbon-relay decides it.

The egress (:mod:`dsat.carbon`) sends each datapoint to the destinations
that hold its name, so that DSAT, a carbon-relay and graphite-web's
carbonlink configured with the same destinations agree on where a metric
lives.  :class:`CarbonCh` is carbon's ``carbon_ch`` consistent-hash ring,
built by carbon's own code (:class:`carbon.hashing.ConsistentHashRing`) and
read once into a table of its 65,536 positions, so that a batch's points are
grouped by their destinations in one pass (compiled:
:mod:`dsat.compiled`).  A placement is fixed once built: the egress builds a
new one whenever the destinations data is placed on change.  Other relays'
hashes (carbon-c-relay's ``fnv1a_ch``, ``jump_fnv1a_ch``) belong here too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from hashlib import md5

try:  # CPython's own md5 (HACL*): the same digest as hashlib's, twice as fast on a short key
    from _md5 import md5 as _md5
except ImportError:  # pragma: no cover - a Python built without it
    _md5 = md5

from carbon.hashing import ConsistentHashRing

from dsat.compiled import speedups
from dsat.datapoint import Datapoint

#: carbon_ch ring positions: the first 16 bits of a key's md5.
RING_POSITIONS = 1 << 16

#: A node of the ring: a destination's ``(host, instance)``, as carbon-relay names it (no instance is None).
Node = tuple[str, str | None]


class _PositionRing(ConsistentHashRing):
    """Carbon's ``carbon_ch`` ring that can also be asked by ring position (an int) rather than by key.

    The ring itself is built by carbon's code from the node names as ever;
    ``get_nodes(position)`` then walks it exactly as carbon's does for a key
    at that position.
    """

    def compute_ring_position(self, key: str | int) -> int:
        if isinstance(key, int):
            return key
        return super().compute_ring_position(key)


class CarbonCh:
    """carbon-relay's ``ConsistentHashingRouter`` with ``carbon_ch``: each name on ``replication`` destinations.

    *nodes* maps each destination's ring node ``(host, instance)`` to the
    index the caller knows it by; a name goes to the first ``replication``
    distinct nodes after its ring position, the indexes of those are what
    :meth:`place` gives.  With one node there is no ring: everything goes
    to it.
    """

    def __init__(self, nodes: Mapping[Node, int], replication: int) -> None:
        self.nodes = dict(nodes)
        self.replication = replication
        names = list(self.nodes)
        self._ring = _PositionRing(names) if len(names) > 1 else None
        #: The destinations of each carbon_ch ring position (empty with one node).
        self.table: list[tuple[int, ...]] = self._table(self._ring) if self._ring is not None else []
        #: The destination of everything when there is one node, else None.
        self.only: int | None = self.nodes[names[0]] if self._ring is None else None

    def _table(self, ring: _PositionRing) -> list[tuple[int, ...]]:
        """The destinations of every ring position, asked of carbon's ring once per arc between two of its entries.

        Carbon places a position on the first ring entry at or after it
        (wrapping past the last), so every position of the arc that ends at
        an entry gets what carbon's ``get_nodes`` gives for that entry's own
        position.
        """

        def nodes_at(position: int) -> tuple[int, ...]:
            nodes = ring.get_nodes(position)
            return tuple(self.nodes[next(nodes)] for _ in range(self.replication))

        table: list[tuple[int, ...]] = []
        for position, _ in ring.ring:
            if position >= len(table):
                end = min(position + 1, RING_POSITIONS)
                table.extend([nodes_at(position)] * (end - len(table)))
        if len(table) < RING_POSITIONS:
            table.extend([nodes_at(len(table))] * (RING_POSITIONS - len(table)))
        return table

    def place(self, path: str) -> tuple[int, ...]:
        """Indexes of the destinations that hold *path* (``replication`` of them)."""
        if self.only is not None:
            return (self.only,)
        return self._place_many([path])[0]

    def _place_many(self, paths: Iterable[str]) -> list[tuple[int, ...]]:
        """:meth:`place` for each of *paths*: carbon's ring position from the md5, then the position's destinations.

        Carbon's position of a key is the first 16 bits of its md5
        (``int(md5(key).hexdigest()[:4], 16)``), so the destinations depend on
        the position alone: a table of the 65,536 positions, made from
        carbon's own ring (:meth:`_table`), gives them.
        """
        at, from_bytes = self.table, int.from_bytes
        return [at[from_bytes(_md5(path.encode("utf-8")).digest()[:2], "big")] for path in paths]

    def group(self, points: Sequence[Datapoint]) -> dict[tuple[int, ...], list[Datapoint]]:
        """The batch's points by the tuple of destinations that hold them, in order (compiled: :mod:`dsat.compiled`).

        Only with a ring (more than one node).
        """
        if speedups is not None:
            grouped: dict[tuple[int, ...], list[Datapoint]] | None = speedups.group_by_place(points, self.table)
            if grouped is not None:
                return grouped
        groups: dict[tuple[int, ...], list[Datapoint]] = {}
        for point, indexes in zip(points, self._place_many([point[0] for point in points]), strict=True):
            group = groups.get(indexes)
            if group is None:
                group = groups[indexes] = []
            group.append(point)
        return groups

    def split(self, points: Sequence[Datapoint]) -> dict[int, list[Datapoint]]:
        """The batch's points by the index of each destination that holds them; each name's points in order."""
        if self.only is not None:
            return {self.only: list(points)} if points else {}
        # Grouped by the table's tuple of destinations first (a few distinct ones), then per destination.
        groups = self.group(points)
        # A name always gets the same tuple, so each name's points keep their order in every part.
        parts: dict[int, list[Datapoint]] = {}
        for indexes, group in groups.items():
            for index in indexes:
                part = parts.get(index)
                parts[index] = group if part is None else [*part, *group]
        return parts

"""Placement: which carbon destinations hold a metric name, decided as carbon-relay or carbon-c-relay decides it.

The egress (:mod:`dsat.carbon`) sends each datapoint to the destinations
that hold its name, so that DSAT, a relay and graphite-web's carbonlink
configured with the same destinations agree on where a metric lives.
``[carbon] hashing`` picks one of three methods (:func:`make_placement`):

* :class:`CarbonCh`, carbon's ``carbon_ch`` consistent-hash ring, built by
  carbon's own code (:class:`carbon.hashing.ConsistentHashRing`);
* :class:`Fnv1aCh`, carbon-c-relay's ``fnv1a_ch`` ring (100 FNV-1a points
  per destination, keyed by its instance or ``host:port``);
* :class:`JumpFnv1aCh`, carbon-c-relay's ``jump_fnv1a_ch`` (Lamping and
  Veach's jump hash of the name's 64-bit FNV-1a over the destinations in
  order, no ring).

Both rings are read once into a table of their 65,536 positions, so that a
batch's points are grouped by their destinations in one pass (compiled:
:mod:`dsat.compiled`; the jump hash is compiled too).  A placement is fixed
once built: the egress builds a new one whenever the destinations data is
placed on change.  Written from the algorithms as carbon-c-relay 3.7
documents and implements them, and compared with ``carbon-c-relay -t`` name
for name (``tests/test_hashing_relay.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import cmp_to_key
from hashlib import md5

try:  # CPython's own md5 (HACL*): the same digest as hashlib's, twice as fast on a short key
    from _md5 import md5 as _md5
except ImportError:  # pragma: no cover - a Python built without it
    _md5 = md5

from carbon.hashing import ConsistentHashRing

from dsat.compiled import speedups
from dsat.datapoint import Datapoint
from dsat.topology.model import jump_compare

#: carbon_ch ring positions: the first 16 bits of a key's md5.
RING_POSITIONS = 1 << 16

#: A node of the ring: a destination's ``(host, instance)``, as carbon-relay names it (no instance is None).
Node = tuple[str, str | None]
#: A destination as the topology writes it: ``(host, port, instance)`` (no instance is None).
Member = tuple[str, int, str | None]


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


class Placement:
    """What every placement answers: :meth:`place`, :meth:`split` and, with one destination, :attr:`only`."""

    #: The method's name in ``[carbon] hashing``.
    hashing = ""
    #: The destination of everything when there is one, else None.
    only: int | None = None
    replication = 1

    def place(self, path: str) -> tuple[int, ...]:
        """Indexes of the destinations that hold *path* (``replication`` of them)."""
        if self.only is not None:
            return (self.only,)
        return self._place_many([path])[0]

    def _place_many(self, paths: Iterable[str]) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def _compiled_group(self, points: Sequence[Datapoint]) -> dict[tuple[int, ...], list[Datapoint]] | None:
        """The compiled :meth:`group`, or None (not built, or a batch it does not handle)."""
        return None

    def where(self, path: str) -> str:
        """How the method found *path*'s place: what ``dsat test-rules`` shows (carbon-c-relay's ``hash_pos``)."""
        raise NotImplementedError

    def group(self, points: Sequence[Datapoint]) -> dict[tuple[int, ...], list[Datapoint]]:
        """The batch's points by the tuple of destinations that hold them, in order (compiled: :mod:`dsat.compiled`).

        Only with more than one destination.
        """
        grouped = self._compiled_group(points)
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
        # Grouped by the tuple of destinations first (a few distinct ones), then per destination.
        groups = self.group(points)
        # A name always gets the same tuple, so each name's points keep their order in every part.
        parts: dict[int, list[Datapoint]] = {}
        for indexes, group in groups.items():
            for index in indexes:
                part = parts.get(index)
                parts[index] = group if part is None else [*part, *group]
        return parts


class CarbonCh(Placement):
    """carbon-relay's ``ConsistentHashingRouter`` with ``carbon_ch``: each name on ``replication`` destinations.

    *nodes* maps each destination's ring node ``(host, instance)`` to the
    index the caller knows it by; a name goes to the first ``replication``
    distinct nodes after its ring position, the indexes of those are what
    :meth:`Placement.place` gives.  With one node there is no ring: everything goes
    to it.
    """

    hashing = "carbon_ch"

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

    def _place_many(self, paths: Iterable[str]) -> list[tuple[int, ...]]:
        """:meth:`place` for each of *paths*: carbon's ring position from the md5, then the position's destinations.

        Carbon's position of a key is the first 16 bits of its md5
        (``int(md5(key).hexdigest()[:4], 16)``), so the destinations depend on
        the position alone: a table of the 65,536 positions, made from
        carbon's own ring (:meth:`_table`), gives them.
        """
        at, from_bytes = self.table, int.from_bytes
        return [at[from_bytes(_md5(path.encode("utf-8")).digest()[:2], "big")] for path in paths]

    def _compiled_group(self, points: Sequence[Datapoint]) -> dict[tuple[int, ...], list[Datapoint]] | None:
        if speedups is None:
            return None
        grouped: dict[tuple[int, ...], list[Datapoint]] | None = speedups.group_by_place(points, self.table)
        return grouped

    def where(self, path: str) -> str:
        return f"carbon_ch position {int.from_bytes(_md5(path.encode('utf-8')).digest()[:2], 'big')}"


# -- carbon-c-relay's hashes ------------------------------------------------------------------------------------

_FNV32_OFFSET, _FNV32_PRIME = 0x811C9DC5, 0x01000193
_FNV64_OFFSET, _FNV64_PRIME = 0xCBF29CE484222325, 0x100000001B3
_MASK64 = (1 << 64) - 1
#: carbon-c-relay reads a name as C ``char``s, signed on amd64: a byte from 0x80 up is XORed in sign-extended.
_SIGNED32 = [b | 0xFFFFFF00 if b & 0x80 else b for b in range(256)]
_SIGNED64 = [b | 0xFFFFFFFFFFFFFF00 if b & 0x80 else b for b in range(256)]
#: carbon-c-relay writes a ring key into a 256-byte buffer: the key is its first 255 bytes.
_RING_KEY_BYTES = 255
#: Points per destination on a fnv1a_ch ring (carbon-c-relay's HASH_REPLICAS, carbon's replica_count).
RING_REPLICAS = 100


def fnv1a_32(data: bytes) -> int:
    """32-bit FNV-1a of *data*, each byte taken as carbon-c-relay takes it (sign-extended from 0x80 up)."""
    value, signed = _FNV32_OFFSET, _SIGNED32
    for byte in data:
        value = ((value ^ signed[byte]) * _FNV32_PRIME) & 0xFFFFFFFF
    return value


def fnv1a_64(data: bytes) -> int:
    """64-bit FNV-1a of *data*, each byte taken as carbon-c-relay takes it (sign-extended from 0x80 up)."""
    value, signed = _FNV64_OFFSET, _SIGNED64
    for byte in data:
        value = ((value ^ signed[byte]) * _FNV64_PRIME) & _MASK64
    return value


def fnv1a_position(data: bytes) -> int:
    """A fnv1a_ch ring position (0-65535): the two halves of the 32-bit FNV-1a XORed."""
    value = fnv1a_32(data)
    return (value >> 16) ^ (value & 0xFFFF)


def jump_bucket(key: int, buckets: int) -> int:
    """Lamping and Veach's jump consistent hash of the 64-bit *key* into ``range(buckets)``, in C doubles."""
    bucket, jump = -1, 0
    while jump < buckets:
        bucket = jump
        key = (key * 2862933555777941757 + 1) & _MASK64
        jump = int(float(bucket + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return bucket


def _xorshift(key: int) -> int:
    """The next key of a jump_fnv1a_ch name after each replica (xorshift64*)."""
    key ^= key >> 12
    key ^= (key << 25) & _MASK64
    key ^= key >> 27
    return (key * 2685821657736338717) & _MASK64


def _ring_table(entries: list[tuple[int, int]], replication: int) -> list[tuple[int, ...]]:
    """The destinations of each of the 65,536 positions of a sorted ring of ``(position, index)`` entries.

    A position belongs to the first entry at or after it (wrapping past the
    last); its destinations are the first *replication* distinct ones from
    there on.  Each arc between two entries is walked once.
    """

    def walk(start: int) -> tuple[int, ...]:
        found: list[int] = []
        at = start
        while len(found) < replication:
            index = entries[at % len(entries)][1]
            if index not in found:
                found.append(index)
            at += 1
        return tuple(found)

    table: list[tuple[int, ...]] = []
    for at, (position, _) in enumerate(entries):
        if position >= len(table):
            table.extend([walk(at)] * (position + 1 - len(table)))
    table.extend([walk(0)] * (RING_POSITIONS - len(table)))
    return table


class Fnv1aCh(Placement):
    """carbon-c-relay's ``fnv1a_ch`` cluster: a ring of 100 FNV-1a points per destination.

    *members* are ``((host, port, instance), index)`` in the topology's
    order.  A destination's ring keys are ``"<i>-<instance>"`` or, without an
    instance, ``"<i>-<host>:<port>"`` for i in 0..99, each placed at
    :func:`fnv1a_position`; entries are sorted by position, then host, then
    port, and of two on one position the first holds it.  A name goes to
    the first ``replication`` distinct destinations from its own position
    on, as with carbon_ch.
    """

    hashing = "fnv1a_ch"

    def __init__(self, members: Sequence[tuple[Member, int]], replication: int) -> None:
        self.members = list(members)
        self.replication = replication
        #: The destinations of each fnv1a_ch ring position (empty with one destination).
        self.table: list[tuple[int, ...]] = []
        self.only: int | None = self.members[0][1] if len(self.members) == 1 else None
        if self.only is None:
            self.table = _ring_table(self._ring(), replication)

    def _ring(self) -> list[tuple[int, int]]:
        """The sorted ring, ``(position, index)``, each run of one position held by its first entry."""
        entries = []
        for (host, port, instance), index in self.members:
            for replica in range(RING_REPLICAS):
                key = f"{replica}-{instance}" if instance is not None else f"{replica}-{host}:{port}"
                position = fnv1a_position(key.encode("utf-8")[:_RING_KEY_BYTES])
                entries.append((position, host.encode("utf-8"), port, index))
        entries.sort(key=lambda entry: entry[:3])
        ring: list[tuple[int, int]] = []
        for position, _, _, index in entries:
            held = ring[-1][1] if ring and ring[-1][0] == position else index
            ring.append((position, held))
        return ring

    def _place_many(self, paths: Iterable[str]) -> list[tuple[int, ...]]:
        at = self.table
        return [at[fnv1a_position(path.encode("utf-8"))] for path in paths]

    def _compiled_group(self, points: Sequence[Datapoint]) -> dict[tuple[int, ...], list[Datapoint]] | None:
        if speedups is None:
            return None
        grouped: dict[tuple[int, ...], list[Datapoint]] | None = speedups.group_by_place(points, self.table, 1)
        return grouped

    def where(self, path: str) -> str:
        return f"fnv1a_ch position {fnv1a_position(path.encode('utf-8'))}"


class JumpFnv1aCh(Placement):
    """carbon-c-relay's ``jump_fnv1a_ch`` cluster: the jump hash of a name's 64-bit FNV-1a over the destinations.

    *members* are ``((host, port, instance), index)`` in the topology's
    order.  The buckets are the destinations with an instance first, in the
    order of their instances (:func:`dsat.topology.jump_compare`), then
    those without one in the topology's order.  A name's first destination
    is bucket :func:`jump_bucket` of its FNV-1a; for each further replica
    the chosen bucket is replaced by the last one, the bucket count drops by
    one and the key is stirred (xorshift64*) before the next jump.  Taking a
    destination away moves the names of every bucket after it: grow a
    jump_fnv1a_ch cluster at its end only.
    """

    hashing = "jump_fnv1a_ch"

    def __init__(self, members: Sequence[tuple[Member, int]], replication: int) -> None:
        self.replication = replication
        by_instance = [(member[2], index) for member, index in members]
        with_instance = sorted((m for m in by_instance if m[0] is not None), key=cmp_to_key(self._compare))
        #: The destinations' indexes in bucket order.
        self.order: list[int] = [index for _, index in with_instance]
        self.order += [index for instance, index in by_instance if instance is None]
        self.only: int | None = self.order[0] if len(self.order) == 1 else None

    @staticmethod
    def _compare(left: tuple[str | None, int], right: tuple[str | None, int]) -> int:
        return jump_compare(left[0], right[0])

    def _buckets(self, key: int) -> tuple[int, ...]:
        order, found = list(self.order), []
        count = len(order)
        while True:
            bucket = jump_bucket(key, count)
            found.append(order[bucket])
            if len(found) == self.replication:
                return tuple(found)
            key = _xorshift(key)
            count -= 1
            order[bucket] = order[count]

    def _place_many(self, paths: Iterable[str]) -> list[tuple[int, ...]]:
        return [self._buckets(fnv1a_64(path.encode("utf-8"))) for path in paths]

    def _compiled_group(self, points: Sequence[Datapoint]) -> dict[tuple[int, ...], list[Datapoint]] | None:
        if speedups is None:
            return None
        grouped: dict[tuple[int, ...], list[Datapoint]] | None = speedups.group_by_jump(
            points, self.order, self.replication
        )
        return grouped

    def where(self, path: str) -> str:
        bucket = jump_bucket(fnv1a_64(path.encode("utf-8")), len(self.order))
        return f"jump_fnv1a_ch bucket {bucket} of {len(self.order)}"


def make_placement(hashing: str, members: Sequence[tuple[Member, int]], replication: int) -> Placement:
    """The placement of *hashing* over *members* (``((host, port, instance), index)``, in the topology's order).

    *hashing*, the members and *replication* are checked by
    :func:`dsat.topology.placement_problems` before.
    """
    if hashing == "carbon_ch":
        return CarbonCh({(host, instance): index for (host, _, instance), index in members}, replication)
    if hashing == "fnv1a_ch":
        return Fnv1aCh(members, replication)
    return JumpFnv1aCh(members, replication)

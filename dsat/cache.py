"""The bounded cache of the hot path: what a path became, kept while it is used, within a byte budget.

The orchester caches, per distinct metric path, what cleaning it
(:class:`dsat.naming.PathCache`) and the
rules (:class:`dsat.rules.RuleSet`) made of it.  A cache emptied when full
collapses as soon as the names outnumber it: every lookup misses, and the
work of filling it is wasted.  :class:`GenerationalCache` keeps two
generations instead, *young* and *old*, each a plain dict (so a batch of
lookups runs inside C, ``map(dict.get, keys)``): new entries go to the young
one; when its estimated size reaches half the budget, the old generation is
dropped and the young one becomes old.  A hit in the old generation moves the
entry back to the young one, so an entry used at least once per generation
stays, whatever the number of names that pass through once.  Sizes are
estimated from the key's length (:data:`ENTRY_BYTES` plus twice the key:
the key and a value of about its size), since a byte count of Python objects
costs more than the lookup it saves.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence, Sized
from typing import Generic, TypeVar

from dsat.errors import ConfigError

#: Estimated bytes of one entry besides its key's and value's characters: the dict slot and two object headers.
ENTRY_BYTES = 160
#: Default budget of one cache, in estimated bytes.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: A generation dropped with fewer hits than 1/THRASH_RATIO of its entries means the names outnumber the cache...
THRASH_RATIO = 16
#: ...and then a quarter as many batches of new entries are kept as before, down to one in MAX_ADMIT_EVERY;
#: each swap that finds the cache useful keeps twice as many, up to every batch.
MAX_ADMIT_EVERY = 64

K = TypeVar("K", bound="Hashable")
V = TypeVar("V")


def entry_bytes(key: Sized) -> int:
    """The estimated size of one entry whose key is *key* (a path as str or bytes)."""
    return ENTRY_BYTES + 2 * len(key)


class GenerationalCache(Generic[K, V]):
    """Key -> value in two generations, at most *max_bytes* (estimated) in all; values are never None.

    ``get`` and ``get_many`` answer None for a key not held.  An entry lives
    until two generation swaps pass without it being used; a swap happens
    when an insertion would take the young generation past half of
    *max_bytes*, so each generation holds at most half of it (an entry
    larger than that is not kept).

    A cache that names outnumber would only churn: every entry is dropped
    before its name comes back, and filling it is wasted work.  When the
    generation dropped at a swap served fewer hits than 1/:data:`THRASH_RATIO`
    of its entries, :meth:`admit_many` keeps a quarter as many of the batches
    of new entries as before (one in 4, 16, :data:`MAX_ADMIT_EVERY`): less
    work per miss, and what is held stays long enough to be hit when its
    names come round again.  Each swap where the dropped generation was
    useful admits twice as many, up to every batch.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 2 * ENTRY_BYTES:
            raise ConfigError(f"cache of {max_bytes} bytes: too small to hold one entry per generation")
        self.max_bytes = max_bytes
        self._young: dict[K, V] = {}
        self._old: dict[K, V] = {}
        self._young_bytes = 0
        self._old_bytes = 0
        #: Generation swaps so far.
        self.swaps = 0
        self._old_hits = 0  # hits the old generation served since it became old
        #: Batches given to :meth:`admit_many` per batch kept: 1, more while the cache churns.
        self.admit_every = 1
        self._batches = 0

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    @property
    def nbytes(self) -> int:
        """The estimated size of what is held, at most ``max_bytes``."""
        return self._young_bytes + self._old_bytes

    def clear(self) -> None:
        self._young, self._old = {}, {}
        self._young_bytes = self._old_bytes = 0

    def get(self, key: K) -> V | None:
        value = self._young.get(key)
        if value is None:
            value = self._old.get(key)
            if value is not None:
                self._old_hits += 1
                self.put(key, value)
        return value

    def get_many(self, keys: Sequence[K]) -> list[V | None]:
        """The value of each key, None where it is not held; the old generation's hits are copied to the young one.

        Each generation is looked up for the whole batch inside C (``map``);
        an entry copied stays in the old generation too until it is dropped
        (counted in both: the estimate errs high).
        """
        found = list(map(self._young.get, keys))
        if not self._old or None not in found:
            return found
        older = list(map(self._old.get, keys))
        back = [
            (key, old) for key, young, old in zip(keys, found, older, strict=True) if young is None and old is not None
        ]
        if back:
            self._old_hits += len(back)
            self.put_many([key for key, _ in back], [value for _, value in back])
        return [old if young is None else young for young, old in zip(found, older, strict=True)]

    def put(self, key: K, value: V) -> None:
        cost = entry_bytes(key)  # type: ignore[arg-type]
        if 2 * cost > self.max_bytes:
            return  # larger than a generation: not kept
        if 2 * (self._young_bytes + cost) > self.max_bytes:
            self._swap()
        self._young[key] = value
        self._young_bytes += cost

    def put_many(self, keys: Sequence[K], values: Iterable[V]) -> None:
        """Hold each key's value, in one dict update (a key given twice is counted twice: the estimate errs high)."""
        cost = ENTRY_BYTES * len(keys) + 2 * sum(map(len, keys))  # type: ignore[arg-type]
        if 2 * cost > self.max_bytes:  # more than a generation: one at a time, swapping as it fills
            for key, value in zip(keys, values, strict=True):
                self.put(key, value)
            return
        if 2 * (self._young_bytes + cost) > self.max_bytes:
            self._swap()
        self._young.update(zip(keys, values, strict=True))
        self._young_bytes += cost

    def skips(self) -> bool:
        """Whether a batch may leave the cache alone: it churns, and would not admit this batch's new entries.

        While the names outnumber the cache, most lookups miss and only one
        batch in :attr:`admit_every` is admitted; a caller that can work a
        batch out without the cache (a batch of paths already safe) skips it
        for the others.  The skipped batch is counted as :meth:`admit_many`
        counts one, so the admitted one still comes, and with it the swaps
        that tell when the cache is useful again.
        """
        if self.admit_every == 1 or (self._batches + 1) % self.admit_every == 0:
            return False
        self._batches += 1
        return True

    def admit_many(self, keys: Sequence[K], values: Iterable[V]) -> None:
        """:meth:`put_many` for entries just worked out after a miss: every batch, or one in :attr:`admit_every`."""
        self._batches += 1
        if self._batches % self.admit_every == 0:
            self.put_many(keys, values)

    def _swap(self) -> None:
        if self._old:
            churning = self._old_hits * THRASH_RATIO < len(self._old)
            if churning:
                self.admit_every = min(4 * self.admit_every, MAX_ADMIT_EVERY)
            else:
                self.admit_every = max(self.admit_every // 2, 1)
        self._old_hits = 0
        self._old, self._young = self._young, {}
        self._old_bytes, self._young_bytes = self._young_bytes, 0
        self.swaps += 1

"""GenerationalCache: generations, eviction, the byte bound, batch lookups."""

from __future__ import annotations

import random

import pytest

from dsat.cache import ENTRY_BYTES, GenerationalCache, entry_bytes
from dsat.errors import ConfigError


def test_a_new_entry_is_found_and_a_missing_one_is_none() -> None:
    """What was put is found, by get and get_many; a key never put answers None."""
    cache: GenerationalCache[str, str] = GenerationalCache(10 * entry_bytes("k0"))
    cache.put("k0", "v0")
    cache.put_many(["k1", "k2"], ["v1", ""])
    assert cache.get("k0") == "v0" and cache.get("nope") is None
    assert cache.get_many(["k2", "nope", "k1"]) == ["", None, "v1"]


def test_entries_not_used_for_two_generations_are_evicted() -> None:
    """An entry lives through one swap in the old generation and is gone after the second."""
    cache: GenerationalCache[str, int] = GenerationalCache(2 * 2 * entry_bytes("a"))  # two per generation
    cache.put_many(["a", "b"], [1, 2])
    cache.put("c", 3)  # swap: a, b old
    assert cache.swaps == 1 and len(cache) == 3
    cache.put("d", 4)
    cache.put("e", 5)  # swap: c, d old; a, b dropped
    assert cache.swaps == 2
    assert cache.get_many(["a", "b"]) == [None, None]
    assert cache.get("c") == 3 and cache.get("e") == 5


def test_a_hit_in_the_old_generation_keeps_the_entry() -> None:
    """An entry used once per generation survives any number of swaps, while one-off keys pass through."""
    cache: GenerationalCache[str, int] = GenerationalCache(2 * 4 * entry_bytes("hot"))
    for i in range(100):
        cache.put(f"x{i:02d}", i)  # one-off keys of the same length as "hot"
        if i % 3 == 0:
            if i == 0:
                cache.put("hot", -1)
            assert cache.get_many(["hot"]) == [-1], i
    assert cache.swaps > 20


@pytest.mark.parametrize("seed", range(5))
def test_the_estimated_size_never_passes_the_budget(seed: int) -> None:
    """Whatever the keys, one by one or in batches of any size, the estimate stays within max_bytes."""
    rng = random.Random(seed)
    budget = rng.randrange(2 * ENTRY_BYTES, 40_000)
    cache: GenerationalCache[str, str] = GenerationalCache(budget)
    for _ in range(300):
        keys = ["k" * rng.randrange(1, 300) + str(rng.random()) for _ in range(rng.randrange(1, 80))]
        if rng.random() < 0.5:
            cache.put_many(keys, keys)
        else:
            for key in keys:
                cache.put(key, key)
        cache.get_many(keys[: len(keys) // 2])
        assert cache.nbytes <= budget
        assert cache.nbytes == sum(entry_bytes(k) for k in cache._young) + sum(entry_bytes(k) for k in cache._old)


def test_an_entry_larger_than_a_generation_is_not_kept() -> None:
    """A key whose entry alone exceeds half the budget is refused, and the others stay."""
    cache: GenerationalCache[str, str] = GenerationalCache(2 * entry_bytes("a" * 10))
    cache.put("a", "1")
    cache.put("b" * 100, "2")
    assert cache.get("b" * 100) is None and cache.get("a") == "1"


def test_a_budget_too_small_is_refused() -> None:
    """A budget that cannot hold one entry per generation is a ConfigError."""
    with pytest.raises(ConfigError, match="too small"):
        GenerationalCache(ENTRY_BYTES)


@pytest.mark.parametrize("batch", [False, True])
def test_lookups_on_a_random_workload_are_right_or_none(batch: bool) -> None:
    """Under churn every value found is the one put, what was just put is found, and swaps and old hits happen."""
    rng = random.Random(7)
    cache: GenerationalCache[str, int] = GenerationalCache(2 * 5 * entry_bytes("x"))  # five keys a generation
    old_hits = 0
    for _ in range(300):
        keys = [str(rng.randrange(10)) for _ in range(rng.randrange(1, 4))]
        old_hits += sum(k in cache._old and k not in cache._young for k in keys)
        found = cache.get_many(keys) if batch else [cache.get(k) for k in keys]
        assert all(value is None or value == int(key) for key, value in zip(keys, found, strict=True))
        new = [k for k, value in dict(zip(keys, found, strict=True)).items() if value is None]
        if batch:
            cache.put_many(new, [int(k) for k in new])
        else:
            for k in new:
                cache.put(k, int(k))
        assert cache.get_many(new) == [int(k) for k in new]
    assert cache.swaps > 10 and old_hits > 10


def test_a_scan_larger_than_the_cache_admits_fewer_batches() -> None:
    """Names that outnumber the cache ten times make it keep fewer new batches, and what it holds then gets hits."""
    cache: GenerationalCache[str, int] = GenerationalCache(2 * 100 * entry_bytes("k0000"))  # 100 a generation
    names = [f"k{i:04d}" for i in range(2000)]
    for start in range(0, len(names), 10):  # first round: every name new, in batches of 10
        batch = names[start : start + 10]
        assert cache.get_many(batch) == [None] * 10
        cache.admit_many(batch, list(range(10)))
    assert cache.admit_every >= 4 and cache.nbytes <= cache.max_bytes
    hits = 0
    for _ in range(5):  # the next rounds find some of what stayed (admitting everything would find none)
        for start in range(0, len(names), 10):
            batch = names[start : start + 10]
            found = cache.get_many(batch)
            hits += 10 - found.count(None)
            cache.admit_many([k for k, v in zip(batch, found, strict=True) if v is None], [0] * found.count(None))
    assert hits >= 100 and cache.nbytes <= cache.max_bytes


def test_a_cache_that_serves_hits_admits_every_batch() -> None:
    """A working set that fits, beside one-off names, keeps every new batch admitted."""
    cache: GenerationalCache[str, int] = GenerationalCache(2 * 100 * entry_bytes("k0000"))
    hot = [f"h{i:04d}" for i in range(40)]
    for round_ in range(50):
        found = cache.get_many(hot)
        cache.admit_many([k for k, v in zip(hot, found, strict=True) if v is None], [1] * found.count(None))
        one_off = [f"o{round_:02d}{i:02d}" for i in range(20)]
        cache.admit_many(one_off, [2] * 20)
    assert cache.swaps > 5 and cache.admit_every == 1
    assert cache.get_many(hot) == [1] * 40


def test_a_churning_cache_lets_the_batches_it_would_not_admit_skip_it() -> None:
    """skips() is False while the cache is useful; churning, it is True but for the batch admit_many would keep."""
    cache: GenerationalCache[str, int] = GenerationalCache(2 * 100 * entry_bytes("k0000"))
    assert not cache.skips()
    names = [f"k{i:04d}" for i in range(2000)]
    for start in range(0, len(names), 10):
        cache.admit_many(names[start : start + 10], list(range(10)))
    every = cache.admit_every
    assert every >= 4
    verdicts = []
    for k in range(3 * every):
        skipped = cache.skips()
        verdicts.append(skipped)
        if not skipped:  # the caller looks up, misses, and admits what it worked out: it is kept
            cache.admit_many([f"new{k}"], [1])
            assert cache.get(f"new{k}") == 1
    assert verdicts[:every].count(False) == 1  # one batch in admit_every goes through the cache
    assert verdicts.count(True) >= 2 * every  # (admitting may swap and make admit_every larger still)


def test_the_path_cache_checks_safe_batches_whole_while_its_names_outnumber_it() -> None:
    """Churning, a batch of safe paths gets the same answer without a lookup; a batch needing cleaning uses it."""
    from dsat.naming import PathCache

    paths = PathCache(max_bytes=2 * 100 * entry_bytes(b"k0000.x"))
    for start in range(0, 4000, 10):
        paths.clean_many([b"k%04d.x" % i for i in range(start, start + 10)])
    assert paths._cache.admit_every > 1
    lookups = []
    real = paths._cache.get_many
    paths._cache.get_many = lambda keys: lookups.append(len(keys)) or real(keys)  # type: ignore[method-assign]
    for start in range(0, 2000, 10):
        assert paths.clean_many([b"s%04d.y" % i for i in range(start, start + 10)]) == [
            f"s{i:04d}.y" for i in range(start, start + 10)
        ]
    assert 0 < len(lookups) < 20  # of 200 batches, most skipped the cache; the admitted ones did not
    assert paths.clean_many([b"a..b", b"c"]) == ["a.b", "c"]

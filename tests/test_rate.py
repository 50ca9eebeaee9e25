"""The rate transform: counters become per-second rates, with resets, wraps, bad samples and bounded state."""

from __future__ import annotations

import math

import pytest

from dsat.errors import ConfigError
from dsat.satellites import REGISTRY, rate
from dsat.satellites.rate import Rate


def test_first_sample_gives_nothing() -> None:
    """A path's first sample only sets the state: the batch is dropped (None)."""
    r = Rate({})
    assert r([("a", 10, 100.0)]) is None
    assert r.previous == {"a": (10, 100.0)}
    assert r.skipped == {"out_of_order": 0, "not_finite": 0, "over_max_rate": 0}


def test_steady_increase_is_divided_by_elapsed_time() -> None:
    """Each later sample gives (value - previous) / dt at the new timestamp, under the same path."""
    r = Rate({})
    r([("dsat.h.cpu.total.user", 0, 100.0)])
    assert r([("dsat.h.cpu.total.user", 10, 200.0)]) == [("dsat.h.cpu.total.user", 10, 10.0)]
    assert r([("dsat.h.cpu.total.user", 30, 600.0)]) == [("dsat.h.cpu.total.user", 30, 20.0)]
    assert r([("dsat.h.cpu.total.user", 40, 600.0)]) == [("dsat.h.cpu.total.user", 40, 0.0)]


def test_several_series_in_one_batch() -> None:
    """Each path keeps its own state, in one batch as across batches."""
    r = Rate({})
    assert r([("a", 10, 1.0), ("b", 10, 5.0)]) is None
    assert r([("a", 20, 11.0), ("b", 20, 25.0), ("c", 20, 7.0)]) == [("a", 20, 1.0), ("b", 20, 2.0)]


def test_drop_without_wrap_is_a_reset() -> None:
    """A lower value is a counter that restarted at 0: the new value itself is the increase."""
    r = Rate({})
    r([("a", 0, 1000.0)])
    assert r([("a", 10, 50.0)]) == [("a", 10, 5.0)]
    assert r([("a", 20, 150.0)]) == [("a", 20, 10.0)]


def test_wrap_at_2_32() -> None:
    """With wrap = 2**32, a drop from the top half to the bottom half is a wrap: value + wrap - previous."""
    r = Rate({"wrap": 2**32})
    r([("a", 0, 2.0**32 - 100)])
    assert r([("a", 10, 50.0)]) == [("a", 10, 15.0)]


@pytest.mark.parametrize(("previous", "value"), [(1000.0, 50.0), (4.0e9, 3.9e9), (2.0**33, 10.0)])
def test_other_drops_with_wrap_are_resets(previous: float, value: float) -> None:
    """With wrap set, a drop that does not cross from the top half to the bottom half is still a reset."""
    r = Rate({"wrap": 2**32})
    r([("a", 0, previous)])
    assert r([("a", 10, value)]) == [("a", 10, value / 10)]


def test_duplicate_and_out_of_order_samples_are_skipped_and_counted() -> None:
    """dt <= 0 gives nothing and keeps the state: the next good sample is measured from the last good one."""
    r = Rate({})
    r([("a", 10, 100.0)])
    assert r([("a", 10, 150.0), ("a", 5, 90.0)]) is None
    assert r.skipped["out_of_order"] == 2
    assert r([("a", 20, 200.0)]) == [("a", 20, 10.0)]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_skipped_and_counted(bad: float) -> None:
    """NaN and infinite values give nothing, are counted, and leave the state alone."""
    r = Rate({})
    r([("a", 0, 100.0)])
    assert r([("a", 10, bad), ("b", 10, bad)]) is None
    assert r.skipped["not_finite"] == 2
    assert "b" not in r.previous
    assert r([("a", 20, 300.0)]) == [("a", 20, 10.0)]


def test_max_rate_drops_spikes_but_moves_on() -> None:
    """A rate over max_rate is dropped and counted; the next rate is measured from the spiked value."""
    r = Rate({"max_rate": 100})
    r([("a", 0, 0.0)])
    assert r([("a", 10, 5000.0)]) is None
    assert r.skipped["over_max_rate"] == 1
    assert r([("a", 20, 5500.0)]) == [("a", 20, 50.0)]


def test_max_series_forgets_the_least_recently_updated_path() -> None:
    """At max_series paths, a new path evicts the least recently updated one, which then starts over."""
    r = Rate({"max_series": 2})
    r([("a", 0, 0.0), ("b", 0, 0.0)])
    r([("a", 10, 10.0)])
    r([("c", 10, 0.0)])
    assert list(r.previous) == ["a", "c"] and r.forgotten == 1
    assert r([("a", 20, 30.0), ("b", 20, 40.0)]) == [("a", 20, 2.0)]
    assert list(r.previous) == ["a", "b"] and r.forgotten == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"wrap": 0}, "wrap must be a positive number"),
        ({"wrap": "32"}, "wrap must be a positive number"),
        ({"max_rate": True}, "max_rate must be a positive number"),
        ({"max_series": 0}, "max_series must be a positive whole number"),
        ({"max_series": 1.5}, "max_series must be a positive whole number"),
    ],
)
def test_bad_options_are_config_errors(options: dict[str, object], message: str) -> None:
    """A wrong option is a ConfigError naming it, raised when the transform is built."""
    with pytest.raises(ConfigError, match=message):
        Rate(options)


def test_registered_as_a_rate_transform() -> None:
    """The registry's "rate" builds a Rate, a transform whose batches are of type "rate"."""
    spec = REGISTRY["rate"]
    assert spec is rate.SPEC and spec.kind == "transform" and spec.type == "rate"
    assert isinstance(spec.factory({}), Rate)

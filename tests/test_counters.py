"""Counting rejections by reason and logging a bounded sample of them."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.logger import globalLogPublisher

from dsat.counters import Rejections, should_log


@pytest.fixture
def logged() -> Any:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_should_log_the_first_ten_then_powers_of_two() -> None:
    """1..10 are logged, then 16, 32, 64...: a flood is sampled, never silent."""
    assert [n for n in range(1, 200) if should_log(n)] == [*range(1, 11), 16, 32, 64, 128]


def test_every_rejection_is_counted_and_a_sample_is_logged(logged: list[dict[str, Any]]) -> None:
    """1,000 rejections of one reason: all counted, 16 log lines (1..10, 16, 32 ... 512) with owner and total."""
    rejections = Rejections("orchester")
    for i in range(1000):
        rejections.reject("bad_name", f"name {i}")
    assert rejections["bad_name"] == 1000
    lines = [e for e in logged if e.get("reason") == "bad_name"]
    assert [e["total"] for e in lines] == [*range(1, 11), 16, 32, 64, 128, 256, 512]
    assert all(e["owner"] == "orchester" for e in lines)


def test_a_counted_batch_of_rejections_is_logged_when_it_passes_a_sampled_total(logged: list[dict[str, Any]]) -> None:
    """reject(reason, error, count) adds count at once (a parser's per-batch totals); it is logged when the
    total passes one of the sampled counts (1..10, 16, 32...), so a batch of 50 is never silent."""
    rejections = Rejections("ingress")
    for _ in range(4):
        rejections.reject("nan", "50 from 10.0.0.1:5000", 50)  # totals 50, 100, 150, 200
    assert rejections == {"nan": 200}
    assert [e["total"] for e in logged if e.get("reason") == "nan"] == [50, 100, 150]  # past 1..10, 64, 128

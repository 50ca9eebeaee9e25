"""Counting rejections by reason, logging a bounded sample, and the one place frames are decoded and checked."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.logger import globalLogPublisher

from dsat.counters import Rejections, should_log
from dsat.envelope import Envelope, encode


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


def test_decode_counts_each_bad_frame_by_its_reason() -> None:
    """A frame that does not decode is counted under the envelope error's reason and gives None."""
    rejections = Rejections("orchester")
    assert rejections.decode(b"", channel="data") is None
    assert rejections.decode(b"\x00" * 100, channel="data") is None
    assert rejections == {"truncated": 1, "bad_magic": 1}


def test_decode_refuses_an_envelope_on_the_wrong_channel_or_of_the_wrong_type() -> None:
    """An envelope that decodes but belongs elsewhere is counted wrong_channel; the right one comes back."""
    rejections = Rejections("orchester")
    data = encode(Envelope(type="gauge", step="cpu", points=(("a.b", 1.0, 2.0),)))
    control = encode(Envelope(channel="control", type="route", step="cli"))
    assert rejections.decode(data, channel="control") is None
    assert rejections.decode(control, channel="control", type="heartbeat") is None
    assert rejections == {"wrong_channel": 2}
    env = rejections.decode(control, channel="control", type="route")
    assert env is not None and env.step == "cli"
    got = rejections.decode(data, channel="data")
    assert got is not None and got.points == (("a.b", 1.0, 2.0),)

"""Tracker events and heartbeats as a step sends them, and frames from the tracker's PUB socket."""

from __future__ import annotations

import msgpack
import pytest

from dsat.breaker import BREAKER_TOPIC
from dsat.envelope import Envelope, decode
from dsat.events import Reporter, parse_published, published, topic_for
from dsat.testing import FakeSender


def batch(**meta: str | int | float) -> Envelope:
    return Envelope(
        type="gauge", emitter="cpu", task_id="t1", seq=7, step="cpu", points=(("a", 1.0, 1.0),) * 3, meta=meta
    )


def reporter() -> tuple[Reporter, FakeSender]:
    sender = FakeSender()
    return Reporter(sender, step="rate", where="h", pid=42), sender


def test_each_event_names_the_batch_the_hop_and_its_details() -> None:
    """ACK, SEND, HAPPY_END and ERROR are event envelopes with no points, from this hop, about the batch."""
    rep, sender = reporter()
    env = batch()
    rep.ack(env)
    rep.sent(env, to=["a", "b", "a"])
    rep.ended(env, points=3, rejected=0)
    rep.error(env, "boom")
    got = sender.envelopes()
    assert [e.event for e in got] == ["ACK", "SEND", "HAPPY_END", "ERROR"]
    assert all(
        (e.channel, e.task_id, e.emitter, e.seq, e.step, e.where, e.pid, e.points)
        == ("event", "t1", "cpu", 7, "rate", "h", 42, ())
        for e in got
    )
    assert dict(got[0].meta) == {"points": 3}
    assert dict(got[1].meta) == {"legs": 3, "to": "a,b,a", "points": 3}
    assert dict(got[2].meta) == {"points": 3, "rejected": 0}
    assert dict(got[3].meta) == {"reason": "boom"}


def test_a_retried_batch_repeats_its_attempt_in_every_event() -> None:
    """The attempt number a retried batch carries travels with each event about it."""
    rep, sender = reporter()
    rep.ack(batch(attempt=2))
    rep.ended(batch(attempt=2))
    assert [e.meta.get("attempt") for e in sender.envelopes()] == [2, 2]


def test_an_untracked_envelope_sends_no_event() -> None:
    """No task_id (datapoints from Graphite clients, DSAT's own metrics): nothing to tell the tracker."""
    rep, sender = reporter()
    rep.ack(batch().evolve(task_id=""))
    rep.ended(batch().evolve(task_id=""))
    assert sender.frames == []


def test_a_heartbeat_carries_counters_and_settings_on_the_control_channel() -> None:
    """A heartbeat is a control envelope from the step, with its totals and settings in meta."""
    rep, sender = reporter()
    rep.heartbeat(link_dropped=3, routes='{"*": ["carbon"]}')
    (env,) = [decode(f) for f in sender.frames]
    assert (env.channel, env.type, env.step, env.where, env.pid) == ("control", "heartbeat", "rate", "h", 42)
    assert dict(env.meta) == {"link_dropped": 3, "routes": '{"*": ["carbon"]}'}


def test_published_frames_split_back_into_topic_and_body() -> None:
    """published() and parse_published() are inverse: emitter topics and the breaker topic."""
    for topic in (topic_for("cpu"), BREAKER_TOPIC):
        assert parse_published(published(topic, {"state": "open", "n": 1})) == (topic, {"state": "open", "n": 1})
    assert topic_for("cpu") == b"cpu\0"


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (b"no separator", "no topic"),
        (b"cpu\0\xc1", "does not decode"),
        (b"cpu\0" + msgpack.packb([1, 2]), "not a map"),
    ],
)
def test_a_bad_published_frame_is_a_value_error_with_a_reason(frame: bytes, why: str) -> None:
    """No topic, a body that does not decode, or one that is not a map: ValueError saying which."""
    with pytest.raises(ValueError, match=why):
        parse_published(frame)

"""The envelope and its wire format: round trips, hostile frames, and the batch/event constructors."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any

import msgpack
import pytest

from dsat.counters import Rejections
from dsat.envelope import (
    CODECS,
    EVENTS,
    MAX_FRAME_BYTES,
    Batches,
    Envelope,
    codec_for,
    decode,
    decode_checked,
    encode,
)
from dsat.errors import ConfigError, EnvelopeError, PluginError

FULL = Envelope(
    type="counter",
    emitter="cpu",
    task_id="0123456789abcdef0123456789abcdef",
    seq=42,
    where="web-01",
    step="rate",
    wid=3,
    pid=4321,
    next=("orchester", "archive"),
    channel="data",
    event="",
    meta={"legs": 2, "ratio": 0.5, "reason": "ok"},
    points=(
        ("dsat.web-01.cpu.user", 1_700_000_000, 12.5),
        ("dsat.web-01.cpu.system", 1_700_000_000.25, 7),
        ("dsat.web-01.température.cœur", -1, -0.0),
        ("dsat.web-01.big", 2**63 - 1, 1e300),
    ),
)
CODEC_NAMES = list(CODECS)


def msgpack_frame(body: Any) -> bytes:
    return b"DS\x01\x01" + msgpack.packb(body, use_bin_type=True)


def json_frame(text: str | bytes) -> bytes:
    return b"DS\x01\x02" + (text.encode() if isinstance(text, str) else text)


def body_with(**fields: Any) -> dict[str, Any]:
    """A valid small body (as the encoder writes it) with some fields replaced."""
    body: dict[str, Any] = msgpack.unpackb(encode(FULL)[4:])
    body.update(fields)
    return body


def reason_of(frame: bytes, **limits: int) -> str:
    with pytest.raises(EnvelopeError) as info:
        decode(frame, **limits)
    return info.value.reason


# -- round trips -------------------------------------------------------------


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_every_field_round_trips(codec: str) -> None:
    """An envelope with every field set, unicode paths and extreme numbers decodes equal to itself."""
    assert decode(encode(FULL, codec)) == FULL


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_default_envelope_with_empty_batch_round_trips(codec: str) -> None:
    """The all-defaults envelope (no points) survives the trip."""
    assert decode(encode(Envelope(), codec)) == Envelope()


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_unicode_in_every_string_field_round_trips(codec: str) -> None:
    """Non-ASCII text (accents, CJK, emoji) in names, hosts, meta and paths comes back unchanged."""
    env = Envelope(
        type="jauge",
        emitter="收集器",
        where="hôte-ü",
        step="étape",
        next=("→next",),
        meta={"raison": "trop tard ⏰"},
        points=(("métrique.😀", 1, 2),),
    )
    assert decode(encode(env, codec)) == env


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_int_and_float_values_keep_their_type(codec: str) -> None:
    """An int stays an int and a float stays a float (1.0 does not become 1)."""
    env = Envelope(points=(("a", 1, 1.0), ("b", 2.0, 3)))
    [(_, t1, v1), (_, t2, v2)] = decode(encode(env, codec)).points
    assert (type(t1), type(v1), type(t2), type(v2)) == (int, float, float, int)


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_points_decode_to_a_tuple_of_tuples(codec: str) -> None:
    """Decoded points are a tuple of 3-tuples whatever the codec's own array type is."""
    points = decode(encode(FULL, codec)).points
    assert type(points) is tuple and all(type(p) is tuple for p in points)


def test_header_carries_magic_version_and_codec_id() -> None:
    """Bytes 0-3 are b"DS", the wire version 1 and the codec id (1 msgpack, 2 JSON)."""
    assert encode(FULL)[:4] == b"DS\x01\x01"
    assert encode(FULL, "json")[:4] == b"DS\x01\x02"


def test_the_msgpack_body_is_a_map_keyed_by_field_name() -> None:
    """A plain msgpack reader sees a map of every field name; points are arrays of three."""
    body = msgpack.unpackb(encode(FULL)[4:])
    assert list(body) == [f for f in Envelope.__dataclass_fields__]
    assert body["points"][0] == ["dsat.web-01.cpu.user", 1_700_000_000, 12.5]


def test_missing_keys_take_their_defaults() -> None:
    """A body holding only some keys decodes, the others taking the dataclass defaults."""
    assert decode(msgpack_frame({})) == Envelope()
    assert decode(json_frame('{"type":"gauge","seq":7}')) == Envelope(type="gauge", seq=7)


def test_unknown_keys_are_ignored() -> None:
    """Keys a later version-1 sender may add (any value type, even binary keys) do not break decoding."""
    frame = msgpack_frame({"type": "gauge", "priority": [1, {"x": b"\x00"}], b"raw": 1})
    assert decode(frame) == Envelope(type="gauge")


def test_nan_and_infinity_travel_in_msgpack() -> None:
    """NaN and infinities are valid floats: msgpack carries them and decode accepts them."""
    env = Envelope(points=(("a", 1, math.nan), ("b", 2, math.inf), ("c", -math.inf, 1)))
    [(_, _, nan), second, third] = decode(encode(env)).points
    assert math.isnan(nan) and second == ("b", 2, math.inf) and third == ("c", -math.inf, 1)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_json_refuses_to_encode_nan_and_infinity(value: float) -> None:
    """JSON has no portable NaN/infinity, so encoding one raises EnvelopeError 'unencodable'."""
    with pytest.raises(EnvelopeError) as info:
        encode(Envelope(points=(("a", 1, value),)), "json")
    assert info.value.reason == "unencodable"


@pytest.mark.parametrize(
    "env",
    [
        Envelope(seq=2**64),
        Envelope(points=(("a", 1, object()),)),  # type: ignore[arg-type]
        Envelope(points=(("\ud800", 1, 1),)),
    ],
    ids=["int-beyond-64-bits", "unknown-type", "lone-surrogate"],
)
def test_what_msgpack_cannot_carry_is_unencodable(env: Envelope) -> None:
    """A value msgpack cannot represent raises EnvelopeError 'unencodable', not a library error."""
    with pytest.raises(EnvelopeError) as info:
        encode(env)
    assert info.value.reason == "unencodable"


def test_codec_for_knows_the_fixed_table() -> None:
    """msgpack has wire id 1 and JSON wire id 2."""
    assert (codec_for("msgpack").wire_id, codec_for("json").wire_id) == (1, 2)


def test_unknown_codec_name_lists_the_valid_ones() -> None:
    """Asking for an unknown codec raises PluginError (a ConfigError) naming the valid codecs."""
    with pytest.raises(PluginError, match="msgpack, json") as info:
        codec_for("pickle")
    assert isinstance(info.value, ConfigError)
    with pytest.raises(PluginError):
        encode(FULL, "pickle")


# -- hostile frames ----------------------------------------------------------

VALID = encode(FULL)
HOSTILE: list[tuple[str, bytes, str]] = [
    ("empty", b"", "truncated"),
    ("1-byte", b"D", "truncated"),
    ("2-bytes", b"DS", "truncated"),
    ("3-bytes", b"DS\x01", "truncated"),
    ("bad-magic", b"XS" + VALID[2:], "bad_magic"),
    ("no-header", VALID[4:], "bad_magic"),
    ("version-0", b"DS\x00\x01" + VALID[4:], "bad_version"),
    ("version-2", b"DS\x02\x01" + VALID[4:], "bad_version"),
    ("codec-9", b"DS\x01\x09" + VALID[4:], "unknown_codec"),
    ("codec-0", b"DS\x01\x00" + VALID[4:], "unknown_codec"),
    ("empty-body", b"DS\x01\x01", "undecodable"),
    ("trailing-bytes", VALID + b"\x00", "undecodable"),
    ("never-used-byte", b"DS\x01\x01\xc1", "undecodable"),
    ("garbage", b"DS\x01\x01" + random.Random(7).randbytes(200), "undecodable"),
    ("invalid-utf8-str", b"DS\x01\x01\x81\xa4type\xa2\xff\xfe", "undecodable"),
    ("int-map-key", msgpack_frame({1: 2}), "undecodable"),
    ("ext-type", msgpack_frame(body_with(meta={"x": msgpack.ExtType(5, b"abc")})), "undecodable"),
    ("ext-type-unknown-key", msgpack_frame({"later": msgpack.ExtType(1, b"")}), "undecodable"),
    ("timestamp-ext", msgpack_frame({"later": msgpack.Timestamp(1, 0)}), "undecodable"),
    ("huge-array-header", b"DS\x01\x01\xdd\xff\xff\xff\xff", "undecodable"),
    ("huge-map-header", b"DS\x01\x01\xdf\xff\xff\xff\xff", "undecodable"),
    ("huge-points-header", b"DS\x01\x01\x81\xa6points\xdd\xff\xff\xff\xff\x93", "undecodable"),
    ("huge-str-header", b"DS\x01\x01\x81\xa4type\xdb\xff\xff\xff\xff", "undecodable"),
    ("deep-msgpack", b"DS\x01\x01" + b"\x91" * 100_000, "undecodable"),
    ("json-invalid-utf8", json_frame(b'{"type":"\xff"}'), "undecodable"),
    ("json-nan", json_frame('{"points":[["a",1,NaN]]}'), "undecodable"),
    ("json-infinity", json_frame('{"points":[["a",1,-Infinity]]}'), "undecodable"),
    ("json-truncated", json_frame('{"points":[["a",1,'), "undecodable"),
    ("json-trailing", json_frame('{"seq":1} {}'), "undecodable"),
    ("json-deep", json_frame("[" * 100_000), "undecodable"),
    ("json-utf16", json_frame('{"seq":1}'.encode("utf-16")), "undecodable"),
    ("body-list", msgpack_frame([1, 2, 3]), "bad_field"),
    ("body-int", msgpack_frame(7), "bad_field"),
    ("json-body-list", json_frame("[]"), "bad_field"),
    ("seq-str", msgpack_frame(body_with(seq="1")), "bad_field"),
    ("seq-float", msgpack_frame(body_with(seq=1.0)), "bad_field"),
    ("seq-bool", msgpack_frame(body_with(seq=True)), "bad_field"),
    ("pid-nil", msgpack_frame(body_with(pid=None)), "bad_field"),
    ("type-bin", msgpack_frame(body_with(type=b"gauge")), "bad_field"),
    ("emitter-int", msgpack_frame(body_with(emitter=1)), "bad_field"),
    ("next-str", msgpack_frame(body_with(next="orchester")), "bad_field"),
    ("next-of-int", msgpack_frame(body_with(next=["a", 1])), "bad_field"),
    ("meta-list", msgpack_frame(body_with(meta=[1])), "bad_field"),
    ("meta-list-value", msgpack_frame(body_with(meta={"legs": [1]})), "bad_field"),
    ("meta-bool-value", msgpack_frame(body_with(meta={"ok": True})), "bad_field"),
    ("meta-nil-value", msgpack_frame(body_with(meta={"ok": None})), "bad_field"),
    ("meta-bin-key", msgpack_frame(body_with(meta={b"legs": 1})), "bad_field"),
    ("unknown-channel", msgpack_frame(body_with(channel="gossip")), "bad_field"),
    ("unknown-event", msgpack_frame(body_with(channel="event", event="MAYBE")), "bad_field"),
    ("event-channel-without-event", msgpack_frame(body_with(channel="event", event="")), "bad_field"),
    ("event-on-data-channel", msgpack_frame(body_with(channel="data", event="ACK")), "bad_field"),
    ("points-str", msgpack_frame(body_with(points="abc")), "bad_field"),
    ("points-map", msgpack_frame(body_with(points={"a": 1})), "bad_field"),
    ("json-points-int", json_frame('{"points":5}'), "bad_field"),
    ("point-2-elements", msgpack_frame(body_with(points=[["a", 1, 2], ["b", 1]])), "bad_point"),
    ("point-4-elements", msgpack_frame(body_with(points=[["a", 1, 2, 3]])), "bad_point"),
    ("point-str-value", msgpack_frame(body_with(points=[["a", 1, "2"]])), "bad_point"),
    ("point-bool-timestamp", msgpack_frame(body_with(points=[["a", True, 2]])), "bad_point"),
    ("point-nil-value", msgpack_frame(body_with(points=[["a", 1, None]])), "bad_point"),
    ("point-bin-path", msgpack_frame(body_with(points=[[b"a", 1, 2]])), "bad_point"),
    ("point-int-path", msgpack_frame(body_with(points=[[1, 1, 2]])), "bad_point"),
    ("point-scalar", msgpack_frame(body_with(points=[5])), "bad_point"),
    ("point-3-char-str", msgpack_frame(body_with(points=["abc"])), "bad_point"),
    ("point-map", msgpack_frame(body_with(points=[{"a": 1, "b": 2, "c": 3}])), "bad_point"),
    ("point-nested-array", msgpack_frame(body_with(points=[["a", [1], 2]])), "bad_point"),
    ("json-point-object", json_frame('{"points":[{"a":1,"b":2,"c":3}]}'), "bad_point"),
    ("json-point-bool-value", json_frame('{"points":[["a",1,true]]}'), "bad_point"),
    ("json-point-null-path", json_frame('{"points":[[null,1,2]]}'), "bad_point"),
]


@pytest.mark.parametrize(("frame", "reason"), [(f, r) for _, f, r in HOSTILE], ids=[n for n, _, _ in HOSTILE])
def test_hostile_frame_raises_envelope_error_with_its_reason(frame: bytes, reason: str) -> None:
    """Each malformed frame raises EnvelopeError carrying the reason slug operators count it under."""
    assert reason_of(frame) == reason


@pytest.mark.parametrize("cut", [5, 9, 20, 40, len(VALID) // 2, len(VALID) - 1])
def test_truncated_msgpack_body_is_undecodable(cut: int) -> None:
    """A valid frame cut anywhere inside its body is 'undecodable'."""
    assert reason_of(VALID[:cut]) == "undecodable"


def test_bad_point_message_names_the_index() -> None:
    """The bad_point message says which point is wrong and shows it."""
    frame = msgpack_frame(body_with(points=[["a", 1, 2], ["b", 1, 2], ["c", 1, "x"]]))
    with pytest.raises(EnvelopeError, match=r"point 2 is not .*'c', 1, 'x'"):
        decode(frame)


def test_bad_field_message_names_the_field() -> None:
    """The bad_field message names the field and the type found."""
    with pytest.raises(EnvelopeError, match="field 'seq' is a string, not an integer"):
        decode(msgpack_frame(body_with(seq="1")))


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_more_points_than_the_limit_is_too_many_points(codec: str) -> None:
    """A batch over max_points raises 'too_many_points' with either codec; at the limit it decodes."""
    frame = encode(Envelope(points=(("a", 1, 1),) * 3), codec)
    assert len(decode(frame, max_points=3).points) == 3
    assert reason_of(frame, max_points=2) == "too_many_points"


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_too_many_points_at_the_default_limit(codec: str) -> None:
    """One point over the default MAX_POINTS is refused, not cut down to an msgpack limit error."""
    frame = encode(Envelope(points=(("a", 1, 1),) * 100_001), codec)
    assert reason_of(frame) == "too_many_points"


def test_frame_over_the_size_limit_is_refused_before_decoding() -> None:
    """A frame longer than max_frame_bytes is 'too_large' even when its header is garbage."""
    assert reason_of(VALID, max_frame_bytes=len(VALID) - 1) == "too_large"
    assert reason_of(b"garbage!" * 10, max_frame_bytes=79) == "too_large"
    assert decode(VALID, max_frame_bytes=len(VALID)) == FULL
    assert reason_of(b"DS\x01\x01" + bytes(MAX_FRAME_BYTES)) == "too_large"


# -- property-style: no other exception ------------------------------------------


def decodes_or_envelope_error(frame: bytes) -> None:
    try:
        assert isinstance(decode(frame), Envelope)
    except EnvelopeError as exc:
        assert exc.reason in {
            "truncated",
            "bad_magic",
            "bad_version",
            "unknown_codec",
            "undecodable",
            "bad_field",
            "too_many_points",
            "bad_point",
        }


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_any_truncation_or_byte_change_gives_an_envelope_or_envelope_error(codec: str) -> None:
    """Truncating a valid frame anywhere, or setting any byte to any value, never raises anything else."""
    frame = encode(FULL.evolve(channel="event", event="SEND", points=FULL.points[:2]), codec)
    for cut in range(len(frame)):
        decodes_or_envelope_error(frame[:cut])
    for position in range(len(frame)):
        for value in range(256):
            decodes_or_envelope_error(frame[:position] + bytes((value,)) + frame[position + 1 :])


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_random_multi_byte_damage_gives_an_envelope_or_envelope_error(codec: str) -> None:
    """Several random bytes overwritten, inserted or deleted at once never raise anything else."""
    rng = random.Random(20240601)
    frame = bytearray(encode(FULL, codec))
    for _ in range(3000):
        damaged = frame[:]
        for _ in range(rng.randint(1, 6)):
            position = rng.randrange(4, len(damaged))
            action = rng.randrange(3)
            if action == 0:
                damaged[position] = rng.randrange(256)
            elif action == 1:
                damaged.insert(position, rng.randrange(256))
            else:
                del damaged[position]
        decodes_or_envelope_error(bytes(damaged))


# -- constructors ------------------------------------------------------------


def test_new_batch_starts_a_tracked_batch() -> None:
    """new_batch gives a fresh uuid4-hex task_id, step = emitter, the data channel and points as tuples."""
    points = [("a", 1, 1.0), ("b", 2, 2.0)]
    env = Envelope.new_batch(points, type="gauge", emitter="cpu", where="h", seq=9, pid=5, wid=1, next=("o",))
    assert len(env.task_id) == 32 and int(env.task_id, 16) >= 0
    assert (env.type, env.emitter, env.step, env.where, env.seq, env.pid, env.wid, env.next) == (
        "gauge",
        "cpu",
        "cpu",
        "h",
        9,
        5,
        1,
        ("o",),
    )
    assert (env.channel, env.event, env.points) == ("data", "", tuple(points))


def test_new_batch_ids_are_unique() -> None:
    """Every new batch gets its own task_id."""
    ids = {Envelope.new_batch((), type="g", emitter="c", where="h", seq=i).task_id for i in range(100)}
    assert len(ids) == 100


def test_event_for_reports_about_the_batch_without_its_points() -> None:
    """event_for keeps the batch identity, sets the reporting hop and meta, and carries no points."""
    event = FULL.event_for("SEND", step="orchester", where="router", pid=77, legs=2, points=4)
    assert event == Envelope(
        type=FULL.type,
        emitter=FULL.emitter,
        task_id=FULL.task_id,
        seq=FULL.seq,
        where="router",
        step="orchester",
        pid=77,
        channel="event",
        event="SEND",
        meta={"legs": 2, "points": 4},
    )


@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_every_tracker_event_round_trips(event: str, codec: str) -> None:
    """Each tracker event built by event_for decodes back equal, reason text included."""
    env = FULL.event_for(event, step="s", where="h", reason="disk full")
    assert decode(encode(env, codec)) == env


def test_evolve_copies_with_changes() -> None:
    """evolve returns a changed copy and leaves the original alone."""
    changed = FULL.evolve(step="sink", next=())
    assert (changed.step, changed.next, changed.task_id) == ("sink", (), FULL.task_id)
    assert FULL.step == "rate"


def test_batches_is_a_list_marker() -> None:
    """Batches is a plain list a transform can return to emit several batches."""
    batches = Batches([[("a", 1, 1)], []])
    assert isinstance(batches, list) and len(batches) == 2


WIRE_DOC = Path(__file__).resolve().parent.parent / "docs" / "wire.rst"
HEX_ROW = re.compile(r"^   ([0-9a-f]{4})  ((?:[0-9a-f]{2} )*[0-9a-f]{2})(?: |$)", re.MULTILINE)


def test_the_wire_doc_example_is_what_encode_writes() -> None:
    """The annotated hex frame in docs/wire.rst is, byte for byte and offset for offset, encode's output."""
    rows = [(int(offset, 16), bytes.fromhex(data)) for offset, data in HEX_ROW.findall(WIRE_DOC.read_text())]
    env = Envelope.new_batch(
        (("dsat.web1.cpu.user", 1700000000, 12.5),),
        type="gauge",
        emitter="cpu",
        where="web1",
        seq=7,
        pid=4242,
        next=("orchester",),
    ).evolve(task_id="5f0c2a9e4b7d4e1f8a3c6b2d9e0f1a2b")
    frame = encode(env)
    assert b"".join(data for _, data in rows) == frame
    assert [offset for offset, _ in rows] == [sum(len(d) for _, d in rows[:i]) for i in range(len(rows))]
    assert f"is these {len(frame)} bytes" in WIRE_DOC.read_text()


def test_json_body_is_readable_utf8() -> None:
    """The JSON codec writes plain UTF-8 JSON a person can read while debugging."""
    text = encode(Envelope(type="jauge", points=(("é", 1, 2),)), "json")[4:].decode("utf-8")
    assert json.loads(text)["points"] == [["é", 1, 2]] and "é" in text


def test_decode_counts_each_bad_frame_by_its_reason() -> None:
    """A frame that does not decode is counted under the envelope error's reason and gives None."""
    rejections = Rejections("orchester")
    assert decode_checked(b"", rejections, channel="data") is None
    assert decode_checked(b"\x00" * 100, rejections, channel="data") is None
    assert rejections == {"truncated": 1, "bad_magic": 1}


def test_decode_refuses_an_envelope_on_the_wrong_channel_or_of_the_wrong_type() -> None:
    """An envelope that decodes but belongs elsewhere is counted wrong_channel; the right one comes back."""
    rejections = Rejections("orchester")
    data = encode(Envelope(type="gauge", step="cpu", points=(("a.b", 1.0, 2.0),)))
    control = encode(Envelope(channel="control", type="route", step="cli"))
    assert decode_checked(data, rejections, channel="control") is None
    assert decode_checked(control, rejections, channel="control", type="heartbeat") is None
    assert rejections == {"wrong_channel": 2}
    env = decode_checked(control, rejections, channel="control", type="route")
    assert env is not None and env.step == "cli"
    got = decode_checked(data, rejections, channel="data")
    assert got is not None and got.points == (("a.b", 1.0, 2.0),)

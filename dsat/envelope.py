"""The envelope: one ZeroMQ message holding one batch of datapoints and the DSAT vector.

Owns the wire format (documented in ``docs/wire.rst``): a 4-byte header (magic
``DS``, wire version, codec id) then a map encoded with a codec from a fixed
table (msgpack by default, JSON for debugging), never one named by the wire.
Decoding is the trust boundary for frames: the size is checked before anything
is parsed, msgpack runs with limits no declared length can exceed, and every
field and datapoint is type-checked, so a hostile frame raises
:class:`~dsat.errors.EnvelopeError` with a ``reason`` slug and never anything else.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from dsat.counters import Rejections
from dsat.datapoint import Datapoint
from dsat.errors import EnvelopeError, PluginError

Batch = Sequence[Datapoint]

CHANNELS = ("data", "event", "control")
EVENTS = ("ACK", "SEND", "HAPPY_END", "ERROR")
WIRE_VERSION = 1
MAGIC = b"DS"
HEADER_SIZE = 4
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_POINTS = 100_000


class Batches(list[Batch]):
    """Marker a transform returns to emit several batches: ``Batches([b1, b2])``."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message: the DSAT vector fields and a batch of ``(path, timestamp, value)``."""

    type: str = ""
    emitter: str = ""
    task_id: str = ""
    seq: int = 0
    where: str = ""
    step: str = ""
    wid: int = 0
    pid: int = 0
    next: tuple[str, ...] = ()
    channel: str = "data"
    event: str = ""
    meta: Mapping[str, str | int | float] = field(default_factory=dict)
    points: tuple[Datapoint, ...] = ()

    def evolve(self, **changes: Any) -> Envelope:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def new_batch(
        cls,
        points: Batch,
        *,
        type: str,
        emitter: str,
        where: str,
        seq: int,
        pid: int = 0,
        wid: int = 0,
        next: tuple[str, ...] = (),
    ) -> Envelope:
        """A new batch created by *emitter*, tracked under a fresh ``task_id``."""
        return cls(
            type=type,
            emitter=emitter,
            task_id=uuid.uuid4().hex,
            seq=seq,
            where=where,
            step=emitter,
            wid=wid,
            pid=pid,
            next=tuple(next),
            points=tuple(points),
        )

    def event_for(self, event: str, *, step: str, where: str, pid: int = 0, **meta: str | int | float) -> Envelope:
        """The tracker event the hop *step* reports about this batch (no points; details in ``meta``)."""
        return Envelope(
            type=self.type,
            emitter=self.emitter,
            task_id=self.task_id,
            seq=self.seq,
            where=where,
            step=step,
            pid=pid,
            channel="event",
            event=event,
            meta=meta,
        )


# -- codecs ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Codec:
    """How the body of a frame is encoded: ``dumps`` a field map to bytes, ``loads`` it back."""

    name: str
    wire_id: int
    dumps: Callable[[dict[str, Any]], bytes]
    loads: Callable[[bytes], Any]


def _msgpack_dumps(body: dict[str, Any]) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def _msgpack_loads(body: bytes) -> Any:
    # No declared length may exceed the bytes that could hold it (an array
    # element takes at least 1 byte, a map entry 2), so a tiny frame cannot
    # make msgpack preallocate a huge array or map; the frame size, checked
    # before, bounds everything else.  Arrays come back as tuples.
    size = len(body)
    return msgpack.unpackb(
        body,
        raw=False,
        use_list=False,
        strict_map_key=True,
        ext_hook=_no_ext,
        max_str_len=size,
        max_bin_len=size,
        max_array_len=size,
        max_map_len=size // 2,
        max_ext_len=0,
    )


def _json_dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode()


def _json_reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_loads(body: bytes) -> Any:
    return json.loads(body.decode("utf-8"), parse_constant=_json_reject_constant)


CODECS: Mapping[str, Codec] = {
    "msgpack": Codec("msgpack", 1, _msgpack_dumps, _msgpack_loads),
    "json": Codec("json", 2, _json_dumps, _json_loads),
}
#: The codec of every link that names none (``[dsat] codec``).
DEFAULT_CODEC = "msgpack"
_BY_WIRE_ID = {codec.wire_id: codec for codec in CODECS.values()}
# What the decoders raise on a body they cannot read: msgpack.unpackb's errors (incomplete input,
# ExtraData, FormatError, StackError, limits), UnicodeDecodeError and JSONDecodeError are all
# ValueErrors; json raises RecursionError on deep nesting.
_UNDECODABLE = (ValueError, RecursionError)


def codec_for(name: str) -> Codec:
    """The codec called *name*; an unknown name raises PluginError listing the valid ones."""
    try:
        return CODECS[name]
    except KeyError:
        raise PluginError(f"unknown codec {name!r}; valid codecs are: {', '.join(CODECS)}") from None


# -- encode / decode -------------------------------------------------------


def encode(env: Envelope, codec: str = DEFAULT_CODEC) -> bytes:
    """The frame for *env*, its body encoded with *codec*.

    Raises EnvelopeError (reason ``unencodable``) when the codec cannot carry a
    value: NaN or infinity with JSON, an integer beyond 64 bits, an unknown type.
    """
    c = codec_for(codec)
    body = {
        "type": env.type,
        "emitter": env.emitter,
        "task_id": env.task_id,
        "seq": env.seq,
        "where": env.where,
        "step": env.step,
        "wid": env.wid,
        "pid": env.pid,
        "next": env.next,
        "channel": env.channel,
        "event": env.event,
        "meta": dict(env.meta),
        "points": env.points,
    }
    try:
        payload = c.dumps(body)
    except (ValueError, TypeError, OverflowError) as exc:
        raise EnvelopeError(
            f"{c.name} cannot encode the envelope of task {env.task_id!r} from {env.emitter!r}: {exc}",
            reason="unencodable",
        ) from None
    return MAGIC + bytes((WIRE_VERSION, c.wire_id)) + payload


_STR_FIELDS = frozenset(("type", "emitter", "task_id", "where", "step", "channel", "event"))
_INT_FIELDS = frozenset(("seq", "wid", "pid"))


_WIRE_TYPES = {
    str: "a string",
    int: "an integer",
    float: "a float",
    bool: "a boolean",
    type(None): "nil",
    bytes: "binary",
    tuple: "an array",
    list: "an array",
    dict: "a map",
}


def _wire_type(value: Any) -> str:
    """What *value* was on the wire, in the wire format's words (for error messages)."""
    return _WIRE_TYPES.get(type(value), type(value).__name__)


def _bad_field(message: str) -> EnvelopeError:
    return EnvelopeError(message, reason="bad_field")


def decode(frame: bytes, *, max_frame_bytes: int = MAX_FRAME_BYTES, max_points: int = MAX_POINTS) -> Envelope:
    """The envelope in *frame*; anything else raises EnvelopeError with a reason slug."""
    size = len(frame)
    if size > max_frame_bytes:
        raise EnvelopeError(f"frame is {size} bytes, over the {max_frame_bytes}-byte limit", reason="too_large")
    if size < HEADER_SIZE:
        raise EnvelopeError(f"frame is {size} bytes, shorter than the {HEADER_SIZE}-byte header", reason="truncated")
    if frame[:2] != MAGIC:
        raise EnvelopeError(f"frame starts with {bytes(frame[:2])!r}, not the magic b'DS'", reason="bad_magic")
    if frame[2] != WIRE_VERSION:
        raise EnvelopeError(
            f"header byte 2: wire version {frame[2]} is not supported (this DSAT speaks {WIRE_VERSION})",
            reason="bad_version",
        )
    codec = _BY_WIRE_ID.get(frame[3])
    if codec is None:
        valid = ", ".join(f"{c.wire_id} {c.name}" for c in CODECS.values())
        raise EnvelopeError(f"header byte 3: codec id {frame[3]} is unknown (valid: {valid})", reason="unknown_codec")
    try:
        body = codec.loads(bytes(frame[HEADER_SIZE:]))
    except _UNDECODABLE as exc:
        detail = str(exc) or type(exc).__name__
        raise EnvelopeError(f"{codec.name} body does not decode: {detail}", reason="undecodable") from None
    if type(body) is not dict:
        raise _bad_field(f"body is {_wire_type(body)}, not a map")
    fields: dict[str, Any] = {}
    for key, value in body.items():
        if key in _STR_FIELDS:
            if type(value) is not str:
                raise _bad_field(f"field {key!r} is {_wire_type(value)}, not a string")
        elif key in _INT_FIELDS:
            if type(value) is not int:
                raise _bad_field(f"field {key!r} is {_wire_type(value)}, not an integer")
        elif key == "next":
            if type(value) not in (tuple, list) or any(type(name) is not str for name in value):
                raise _bad_field("field 'next' is not an array of strings")
            value = tuple(value)
        elif key == "meta":
            if type(value) is not dict or any(
                type(k) is not str or type(v) not in (str, int, float) for k, v in value.items()
            ):
                raise _bad_field("field 'meta' is not a map of string to string or number")
        elif key == "points":
            value = _check_points(value, max_points)
        else:
            continue  # an unknown key: forward compatibility within a wire version
        fields[key] = value
    channel = fields.get("channel", "data")
    event = fields.get("event", "")
    if channel not in CHANNELS:
        raise _bad_field(f"channel {channel!r} is not one of {', '.join(CHANNELS)}")
    if channel == "event" and event not in EVENTS:
        raise _bad_field(f"event {event!r} on channel 'event' is not one of {', '.join(EVENTS)}")
    if channel != "event" and event:
        raise _bad_field(f"event {event!r} on channel {channel!r}: only channel 'event' carries events")
    return Envelope(**fields)


def decode_checked(frame: bytes, rejections: Rejections, *, channel: str, type: str | None = None) -> Envelope | None:
    """The envelope in *frame* if it decodes and is on *channel* (and of *type*); else count why, None."""
    try:
        env = decode(frame)
    except EnvelopeError as exc:
        rejections.reject(exc.reason, exc)
        return None
    if env.channel != channel or (type is not None and env.type != type):
        rejections.reject("wrong_channel", f"{env.channel!r}/{env.type!r} from {env.step!r} where {channel!r} belongs")
        return None
    return env


def _check_points(points: Any, max_points: int) -> tuple[Datapoint, ...]:
    """*points* as a tuple of ``(str, number, number)`` tuples, or EnvelopeError."""
    if type(points) is not tuple and type(points) is not list:
        raise _bad_field(f"field 'points' is {_wire_type(points)}, not an array")
    if len(points) > max_points:
        raise EnvelopeError(f"{len(points)} points, over the {max_points}-point limit", reason="too_many_points")
    if type(points) is list:  # JSON arrays; msgpack already gives tuples
        points = tuple([tuple(p) if type(p) is list else p for p in points])
    if _all_datapoints(points):
        return points
    index, point = next((i, p) for i, p in enumerate(points) if not _is_datapoint(p))
    raise EnvelopeError(
        f"point {index} is not [path (string), timestamp (number), value (number)]: {point!r:.80}",
        reason="bad_point",
    )


_NUMBER = (int, float)  # exact types: bool, an int subclass, is not a number here


def _all_datapoints(points: tuple[Any, ...]) -> bool:
    """Whether every point is a ``(str, number, number)`` tuple: the per-datapoint hot loop.

    Unpacking into three names is the cheapest shape check.  It would also
    accept any other 3-item iterable, but the decoders only produce tuples
    (msgpack arrays), lists turned into tuples (JSON arrays), dicts, whose
    keys are strings, and scalars, so only a tuple can pass.
    """
    number = _NUMBER
    try:
        for path, timestamp, value in points:
            if type(path) is not str or type(timestamp) not in number or type(value) not in number:
                return False
    except (TypeError, ValueError):  # a point that does not unpack into three items
        return False
    return True


def _is_datapoint(point: Any) -> bool:
    """Whether one point is a ``(str, number, number)`` tuple (finds the bad one for the message)."""
    return (
        type(point) is tuple
        and len(point) == 3
        and type(point[0]) is str
        and type(point[1]) in _NUMBER
        and type(point[2]) in _NUMBER
    )

"""The envelope: one ZeroMQ message holding one batch of datapoints and the DSAT vector.

Owns the wire format (documented in ``docs/wire.rst``): a 4-byte header
(magic ``DS``, version, codec id) then a map encoded with a codec from a
fixed table (msgpack by default, JSON for debugging).  Decoding is the trust
boundary for frames: size is checked before anything is parsed, msgpack runs
with limits, and every field is type-checked, so a hostile frame raises
:class:`~dsat.errors.EnvelopeError` with a reason slug and never anything else.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from dsat.errors import EnvelopeError, PluginError

Datapoint = tuple[str, float, float]
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
        """A new tracked batch created by *emitter* (a fresh ``task_id``)."""
        return cls(
            type=type,
            emitter=emitter,
            task_id=uuid.uuid4().hex,
            seq=seq,
            where=where,
            step=emitter,
            wid=wid,
            pid=pid,
            next=next,
            points=tuple(points),
        )

    def event_for(self, event: str, *, step: str, where: str, pid: int = 0, **meta: str | int | float) -> Envelope:
        """The tracker event a hop reports about this batch."""
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


@dataclass(frozen=True)
class Codec:
    """How the body of a frame is encoded."""

    name: str
    wire_id: int
    dumps: Callable[[dict[str, Any]], bytes]
    loads: Callable[[bytes, int, int], Any]


def _msgpack_loads(body: bytes, max_frame: int, max_points: int) -> Any:
    def no_ext(code: int, data: bytes) -> Any:
        raise EnvelopeError(f"msgpack extension type {code} is not allowed", reason="undecodable")

    return msgpack.unpackb(
        body,
        raw=False,
        use_list=False,
        strict_map_key=True,
        ext_hook=no_ext,
        max_str_len=max_frame,
        max_bin_len=0,
        max_array_len=max(max_points, 64),
        max_map_len=64,
        max_ext_len=0,
    )


def _json_dumps(body: dict[str, Any]) -> bytes:
    try:
        return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
    except ValueError as exc:
        raise EnvelopeError(f"JSON cannot carry this batch: {exc}", reason="unencodable") from None


def _json_reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_loads(body: bytes, max_frame: int, max_points: int) -> Any:
    return json.loads(body.decode("utf-8"), parse_constant=_json_reject_constant)


CODECS: Mapping[str, Codec] = {
    "msgpack": Codec("msgpack", 1, lambda body: msgpack.packb(body, use_bin_type=True), _msgpack_loads),
    "json": Codec("json", 2, _json_dumps, _json_loads),
}
_BY_WIRE_ID = {codec.wire_id: codec for codec in CODECS.values()}


def codec_for(name: str) -> Codec:
    """The codec called *name*; unknown names raise PluginError listing the valid ones."""
    try:
        return CODECS[name]
    except KeyError:
        raise PluginError(f"unknown codec {name!r}; valid codecs are: {', '.join(sorted(CODECS))}") from None


# -- encode / decode -------------------------------------------------------


def encode(env: Envelope, codec: str = "msgpack") -> bytes:
    """The frame for *env*, its body encoded with *codec*."""
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
        "next": list(env.next),
        "channel": env.channel,
        "event": env.event,
        "meta": dict(env.meta),
        "points": env.points,
    }
    return MAGIC + bytes((WIRE_VERSION, c.wire_id)) + c.dumps(body)


_STR_FIELDS = ("type", "emitter", "task_id", "where", "step", "channel", "event")
_INT_FIELDS = ("seq", "wid", "pid")
_KNOWN = frozenset((*_STR_FIELDS, *_INT_FIELDS, "next", "meta", "points"))


def _bad(message: str) -> EnvelopeError:
    return EnvelopeError(message, reason="bad_field")


def decode(frame: bytes, *, max_frame_bytes: int = MAX_FRAME_BYTES, max_points: int = MAX_POINTS) -> Envelope:
    """The envelope in *frame*; raises EnvelopeError (with a reason slug) for anything else."""
    size = len(frame)
    if size > max_frame_bytes:
        raise EnvelopeError(f"frame is {size} bytes, over the {max_frame_bytes}-byte limit", reason="too_large")
    if size < HEADER_SIZE:
        raise EnvelopeError(f"frame is {size} bytes, shorter than the {HEADER_SIZE}-byte header", reason="truncated")
    if frame[:2] != MAGIC:
        raise EnvelopeError(f"frame starts with {bytes(frame[:2])!r}, not the magic b'DS'", reason="bad_magic")
    if frame[2] != WIRE_VERSION:
        raise EnvelopeError(
            f"wire version {frame[2]} is not supported (this DSAT speaks {WIRE_VERSION})", reason="bad_version"
        )
    codec = _BY_WIRE_ID.get(frame[3])
    if codec is None:
        raise EnvelopeError(f"codec id {frame[3]} is unknown (valid: 1 msgpack, 2 json)", reason="unknown_codec")
    try:
        body = codec.loads(bytes(frame[HEADER_SIZE:]), max_frame_bytes, max_points)
    except EnvelopeError:
        raise
    except Exception as exc:  # every decoder failure, whatever the library raises, is one reason
        raise EnvelopeError(f"{codec.name} body does not decode: {exc}", reason="undecodable") from None
    if not isinstance(body, dict):
        raise _bad(f"body is a {type(body).__name__}, not a map")
    fields: dict[str, Any] = {}
    for key, value in body.items():
        if key not in _KNOWN:
            continue  # forward compatibility within a wire version
        if key in _STR_FIELDS:
            if not isinstance(value, str):
                raise _bad(f"field {key!r} must be a string, not {type(value).__name__}")
        elif key in _INT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _bad(f"field {key!r} must be an integer, not {type(value).__name__}")
        elif key == "next":
            if not isinstance(value, list | tuple) or not all(isinstance(n, str) for n in value):
                raise _bad("field 'next' must be an array of strings")
            value = tuple(value)
        elif key == "meta":
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str | int | float) for k, v in value.items()
            ):
                raise _bad("field 'meta' must be a map of string to string or number")
        fields[key] = value
    if fields.get("channel", "data") not in CHANNELS:
        raise _bad(f"channel {fields['channel']!r} is not one of {', '.join(CHANNELS)}")
    if fields.get("event", "") not in ("", *EVENTS):
        raise _bad(f"event {fields['event']!r} is not one of {', '.join(EVENTS)}")
    if "points" in fields:
        fields["points"] = _check_points(fields["points"], max_points)
    return Envelope(**fields)


def _check_points(points: Any, max_points: int) -> tuple[Datapoint, ...]:
    if not isinstance(points, list | tuple):
        raise _bad(f"field 'points' must be an array, not {type(points).__name__}")
    if len(points) > max_points:
        raise EnvelopeError(f"{len(points)} points, over the {max_points}-point limit", reason="too_many_points")
    num = (int, float)
    for index, point in enumerate(points):
        # One pass, type() identity checks: this loop runs for every datapoint.
        if (
            type(point) is not tuple
            and type(point) is not list
            or len(point) != 3
            or type(point[0]) is not str
            or type(point[1]) not in num
            or type(point[2]) not in num
        ):
            raise EnvelopeError(
                f"point {index} is not [path (string), timestamp (number), value (number)]: {point!r:.80}",
                reason="bad_point",
            )
    if type(points) is tuple and (not points or type(points[0]) is tuple):
        return points
    return tuple(tuple(p) for p in points)

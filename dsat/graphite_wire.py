"""Graphite's wire formats, both ways: carbon's plaintext line and pickle protocols, parsed and encoded.

What a Graphite client writes to carbon-cache and what carbon-cache reads,
as pure functions on bytes, with no socket and no reactor: the ingress
(:mod:`dsat.ingress`) parses what clients send with :func:`parse_plaintext`
and :func:`parse_pickle`, the egress (:mod:`dsat.carbon`) encodes batches
with :func:`encode_pickle` or :func:`encode_plaintext` and reads spooled ones
back with :func:`decode`, and the name shards (:mod:`dsat.shards`) pick names
out of a plain body with :func:`plain_fields`.  Both directions live here so
that a format's rule (a plain line, a pickle frame, its limits) is written
once.

Parsing is a trust boundary: whole buffers in, datapoints and rejection
counts out, never an exception.  It accepts what carbon-cache's
``MetricLineReceiver``, ``MetricDatagramReceiver`` and
``MetricPickleReceiver`` accept, with the same "-1 means now" timestamp, and
rejects the rest by reason (``docs/ingress.rst``).  Every datapoint read is
checked by the one datapoint rule (:mod:`dsat.datapoint`): its path made safe
by :mod:`dsat.naming`, a tagged one (``name;k=v``) put in carbon's canonical
form, its value and timestamp in bounds.  Pickles are loaded by an unpickler
that knows only the opcodes carbon's format needs, so a pickle can build
lists, tuples, strings, numbers and constants and call nothing.
"""

from __future__ import annotations

import io
import pickle
import re
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from dsat.compiled import speedups
from dsat.datapoint import BadDatapoint, Datapoint, Validator, all_numbers_acceptable, all_plain_numbers
from dsat.errors import BadName

#: Longest plaintext line accepted by default, in bytes (``[ingress] max_line``).
MAX_LINE = 4096
#: Largest pickle frame, in bytes: carbon's PICKLE_RECEIVER_MAX_LENGTH.
MAX_PICKLE_LENGTH = 2**20
#: carbon-cache's pickle receiver refuses messages over 1 MiB; 500 points a
#: message is carbon's own MAX_DATAPOINTS_PER_MESSAGE default.
POINTS_PER_MESSAGE = 500
#: A pickle message's length prefix: 4 bytes, big-endian.
_LENGTH = struct.Struct("!L")
#: The whitespace ``bytes.split()`` splits on: ASCII's six.
_ASCII_WHITESPACE = b" \t\n\r\x0b\x0c"
#: The ASCII characters carbon's ``str.split()`` splits on and ``bytes.split()`` does not: the
#: information separators (``str.isspace()``), turned into spaces for the line by line path.
_SEPARATORS_AS_SPACE = bytes.maketrans(b"\x1c\x1d\x1e\x1f", b"    ")
#: The characters above ASCII that ``str.isspace()`` calls whitespace (tests check the list against
#: Python's own), and their UTF-8, which no other character's UTF-8 holds.
_UNICODE_WHITESPACE = "\x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
_UNICODE_WHITESPACE_UTF8 = re.compile(b"|".join(re.escape(space.encode()) for space in _UNICODE_WHITESPACE))
#: Every byte but those that may separate fields: ASCII whitespace, the information separators,
#: and the bytes over 0x7f (those of a Unicode whitespace among them).
_NOT_SEPARATOR = bytes(set(range(128)) - set(_ASCII_WHITESPACE) - set(b"\x1c\x1d\x1e\x1f"))
_OVER_ASCII = bytes(range(128, 256))


# -- encoding ------------------------------------------------------------------


#: The line breaks ``str.splitlines()`` knows besides ``\n``, as bytes and UTF-8 (``\r\n`` as one break).
_OTHER_LINE_BREAKS = re.compile(rb"\r\n?|[\x0b\x0c\x1c\x1d\x1e]|\xc2\x85|\xe2\x80[\xa8\xa9]")


def datagram_lines(datagram: bytes) -> bytes:
    r"""A UDP packet's lines, each ending in ``\n``, cut where carbon's ``MetricDatagramReceiver`` cuts them.

    Carbon decodes the packet and cuts it with ``str.splitlines()``: besides ``\n``, at ``\r`` (``\r\n``
    once), ``\x0b``, ``\x0c``, ``\x1c`` to ``\x1e``, U+0085, U+2028 and U+2029; its last line needs no
    newline.
    """
    if _OTHER_LINE_BREAKS.search(datagram) is not None:
        datagram = _OTHER_LINE_BREAKS.sub(b"\n", datagram)
    return datagram if datagram.endswith(b"\n") else datagram + b"\n"


def encode_pickle(points: Sequence[Datapoint]) -> bytes:
    """Encode points as carbon pickle messages of at most POINTS_PER_MESSAGE each."""
    out = []
    for start in range(0, len(points), POINTS_PER_MESSAGE):
        body = pickle.dumps(
            [(path, (ts, value)) for path, ts, value in points[start : start + POINTS_PER_MESSAGE]],
            protocol=2,
        )
        out.append(_LENGTH.pack(len(body)))
        out.append(body)
    return b"".join(out)


def encode_plaintext(points: Sequence[Datapoint]) -> bytes:
    """Encode points as carbon plaintext lines ``path value timestamp`` (compiled: :mod:`dsat.compiled`)."""
    if speedups is not None:
        encoded: bytes | None = speedups.encode_plaintext(points)
        if encoded is not None:
            return encoded
    return "".join([f"{path} {value!r} {int(ts)}\n" for path, ts, value in points]).encode()


ENCODERS: dict[str, Callable[[Sequence[Datapoint]], bytes]] = {
    "pickle": encode_pickle,
    "plaintext": encode_plaintext,
}


def is_pickle(data: bytes) -> bool:
    """Was *data* written by :func:`encode_pickle` (rather than :func:`encode_plaintext`)?"""
    return data[4:6] == b"\x80\x02"


def pickle_frames(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The complete length-prefixed pickle messages at the start of *buffer* (without their prefix), and the rest."""
    frames = []
    offset, size = 0, len(buffer)
    while size - offset >= _LENGTH.size:
        (length,) = _LENGTH.unpack_from(buffer, offset)
        end = offset + _LENGTH.size + length
        if end > size:
            break
        frames.append(buffer[offset + _LENGTH.size : end])
        offset = end
    return frames, buffer[offset:]


def decode(data: bytes) -> list[Datapoint]:
    """The datapoints of a batch as :func:`encode_pickle` or :func:`encode_plaintext` wrote it.

    Reads spooled and queued batches back, whichever protocol wrote them
    (pickle messages start with a length and pickle protocol 2's ``\\x80\\x02``,
    which no plaintext line can hold).  Points that do not read back are left out.
    """
    if not is_pickle(data):
        return parse_plaintext(data, 0.0)[0]
    points: list[Datapoint] = []
    for frame in pickle_frames(data)[0]:
        points.extend(parse_pickle(frame, 0.0)[0])
    return points


# -- parsing the plaintext protocol ---------------------------------------------


def parse_plaintext(
    buffer: bytes, now: float, *, max_line_length: int = MAX_LINE, validator: Validator | None = None
) -> tuple[list[Datapoint], Counter[str], bytes]:
    """The datapoints in the complete ``path value timestamp`` lines of *buffer*, the rejections, the rest.

    Lines end with ``\\n``; what follows the last one is returned as the
    remainder, for the caller to prepend to the next buffer.  Fields are
    separated by whatever carbon's ``str.split()`` splits on: ASCII
    whitespace (so ``\\r\\n`` endings work), ``\\x1c``-``\\x1f`` and, in a UTF-8
    line, Unicode's whitespace (U+00A0, U+3000...); value and
    timestamp are read with ``float()`` as carbon does, and a timestamp in
    ``(-2, -1]`` (carbon: ``int(ts) == -1``) means *now*.  Rejected lines are
    counted by reason: ``line_too_long`` (over *max_line_length* bytes),
    ``invalid_line`` (not three fields), then the datapoint rule's
    (:mod:`dsat.datapoint`: ``bad_value``, also for a value that is not a
    number, ``nan``, ``bad_timestamp``, ``bad_name``, ``bad_tag``).
    """
    if validator is None:
        validator = Validator()
    rejected: Counter[str] = Counter()
    end = buffer.rfind(b"\n") + 1
    body, rest = buffer[:end], buffer[end:]
    if not body:
        return [], rejected, rest
    points = parse_plain(body, max_line_length, validator, rejected)
    if points is None:
        points = _parse_each(body, now, max_line_length, validator, rejected)
    return points, rejected, rest


def plain_fields(body: bytes) -> list[bytes] | None:
    """The fields of *body* (complete lines), three a line, if it is laid out as clients send it; else None.

    Plain: every line is three non-empty fields joined by single spaces and
    ends with ``\\n``.  Then what may separate fields in the body is exactly
    ``"  \\n"`` once per line (one ``translate`` inside C tells), and splitting
    it yields three fields per line unless one is empty.  What may separate
    fields is what carbon's ``str.split()`` splits on: ASCII whitespace, the
    information separators ``\\x1c``-``\\x1f`` and, in a body that is not
    ASCII, the UTF-8 of a Unicode whitespace (U+00A0...); a body holding
    any but the space and the newline is not plain.  Any other layout is for
    the line by line path (``_parse_each``), which tells each line's fault.
    """
    separators = body.translate(None, _NOT_SEPARATOR)
    if not separators.isascii():  # UTF-8 names: plain unless one of its characters is whitespace
        if _UNICODE_WHITESPACE_UTF8.search(separators):
            return None
        separators = separators.translate(None, _OVER_ASCII)
    lines = len(separators) // 3
    if separators != b"  \n" * lines:
        return None
    fields = body.split()
    return fields if len(fields) == 3 * lines else None


def parse_plain(
    body: bytes, max_line_length: int, validator: Validator, rejected: Counter[str]
) -> list[Datapoint] | None:
    """The datapoints of *body* if it is plain (bad names aside), else None for ``_parse_each`` to sort out.

    Plain: laid out as :func:`plain_fields` says, within the length limit,
    with numbers the datapoint rule accepts
    (:func:`dsat.datapoint.all_numbers_acceptable`).  That is what clients
    send, so this is the fast path: each step runs over the whole batch
    inside C (``translate``, ``split``, ``map``, ``zip``, ``sum``), and a
    batch that is not plain costs one more pass.  Names are the rule's too:
    the validator's path cache cleans the batch's new ones together.
    """
    fields = plain_fields(body)
    if fields is None:
        return None
    raw_paths, raw_values, raw_stamps = fields[0::3], fields[1::3], fields[2::3]
    if max(map(len, raw_paths)) + max(map(len, raw_values)) + max(map(len, raw_stamps)) + 2 > max_line_length:
        return None
    try:
        values = list(map(float, raw_values))
        try:
            stamps = list(map(float, map(int, raw_stamps)))  # int() parses the usual integers faster
        except ValueError:
            stamps = list(map(float, raw_stamps))
    except (ValueError, OverflowError):
        return None
    if not all_numbers_acceptable(stamps, values):
        return None
    paths = validator.paths
    clean = paths.clean_many(raw_paths)
    if "" not in clean:
        return list(zip(clean, stamps, values, strict=True))
    paths.count_rejected(raw_paths, clean, rejected)
    return [point for point in zip(clean, stamps, values, strict=True) if point[0]]


def _number(raw: bytes | str) -> float | None:
    """*raw* read as carbon reads a number (``float()``), None if it is not one (the rule then refuses it)."""
    try:
        return float(raw)
    except ValueError:
        return None


def _when(stamp: object, now: float) -> object:
    """Carbon's "-1 means now": a timestamp in ``(-2, -1]`` is *now*; the datapoint rule checks the rest."""
    return now if type(stamp) in (int, float) and -2.0 < stamp <= -1.0 else stamp  # type: ignore[operator]


def _unicode_fields(line: bytes) -> list[str] | list[bytes]:
    """The fields of a *line* holding bytes over 0x7f, split where carbon's ``str.split()`` splits it.

    Carbon decodes the line as UTF-8 and splits it at any whitespace
    ``str.isspace()`` knows (U+00A0, U+2003, U+3000...); the fields are then
    str, so ``float()`` reads a value in any script's digits, as carbon's
    does.  A line that is not UTF-8 (carbon drops the whole connection on
    it) is split the same way around its undecodable bytes, which stay in
    their field as bytes: that field is then refused, the path as
    ``bad_name`` (not UTF-8), a number as ``bad_value`` or ``bad_timestamp``.
    """
    try:
        return line.decode("utf-8").split()
    except UnicodeDecodeError:
        return [field.encode("utf-8", "surrogateescape") for field in line.decode("utf-8", "surrogateescape").split()]


def _parse_each(
    body: bytes, now: float, max_line_length: int, validator: Validator, rejected: Counter[str]
) -> list[Datapoint]:
    """The datapoints of *body*, checked line by line, each rejection counted by reason.

    Each line is split as carbon's ``line.decode("utf-8").strip().split()``
    splits it: the information separators (``\\x1c``-``\\x1f``) are spaces, an
    ASCII line is then split at ASCII whitespace, any other one by
    :func:`_unicode_fields`.
    """
    points: list[Datapoint] = []
    append = points.append
    check = validator.check
    lines = body.translate(_SEPARATORS_AS_SPACE).split(b"\n")
    lines.pop()  # empty: the body ends with a newline
    for line in lines:
        if len(line) > max_line_length:
            rejected["line_too_long"] += 1
            continue
        fields = line.split() if line.isascii() else _unicode_fields(line)
        if len(fields) != 3:
            rejected["invalid_line"] += 1
            continue
        raw_path, raw_value, raw_stamp = fields
        try:
            append(check(raw_path, _when(_number(raw_stamp), now), _number(raw_value)))
        except (BadDatapoint, BadName) as exc:
            rejected[exc.reason] += 1
    return points


# -- parsing the pickle protocol -------------------------------------------------


# The opcodes that build what carbon's pickle holds, in every protocol: lists, tuples, strings,
# integers and floats (None and booleans too, so that an item holding one is refused alone), with
# marks, the memo and protocol 4 framing.  None of them loads a global (so nothing can be called)
# or builds anything else.
_CARBON_OPCODES = (
    *(pickle.PROTO, pickle.FRAME, pickle.STOP, pickle.MARK, pickle.POP, pickle.POP_MARK, pickle.DUP),
    *(pickle.INT, pickle.BININT, pickle.BININT1, pickle.BININT2, pickle.LONG, pickle.LONG1, pickle.LONG4),
    *(pickle.FLOAT, pickle.BINFLOAT),
    *(pickle.NONE, pickle.NEWTRUE, pickle.NEWFALSE),  # constants: an item holding one is refused by the rule alone
    *(pickle.STRING, pickle.BINSTRING, pickle.SHORT_BINSTRING),
    *(pickle.UNICODE, pickle.BINUNICODE, pickle.SHORT_BINUNICODE, pickle.BINUNICODE8),
    *(pickle.EMPTY_LIST, pickle.LIST, pickle.APPEND, pickle.APPENDS),
    *(pickle.EMPTY_TUPLE, pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3),
    *(pickle.PUT, pickle.BINPUT, pickle.LONG_BINPUT, pickle.MEMOIZE, pickle.GET, pickle.BINGET, pickle.LONG_BINGET),
)


class _CarbonUnpickler(pickle._Unpickler):
    """Python's own unpickler with every opcode but :data:`_CARBON_OPCODES` taken out.

    Any other opcode is unknown to it (``KeyError``), so a frame can build
    lists, tuples, strings and numbers and nothing else: no global, no call.
    It is the pure-Python unpickler on purpose: the C one (3.11) sizes its
    memo from the index a PUT or LONG_BINPUT opcode names and zero-fills it,
    so five hostile bytes make it fill gigabytes (40 s in a test), while this
    one keeps the memo in a dict and reads no more than the frame holds.
    """

    dispatch = {op[0]: pickle._Unpickler.dispatch[op[0]] for op in _CARBON_OPCODES}


# What loading hostile bytes can raise besides UnpicklingError: EOFError and struct.error on a
# short frame, KeyError on an opcode outside the table, IndexError on an empty stack, ValueError
# on a bad number or string, TypeError and AttributeError when opcodes meet the wrong objects.
_UNLOADABLE = (
    pickle.UnpicklingError,
    EOFError,
    struct.error,
    KeyError,
    IndexError,
    ValueError,
    TypeError,
    AttributeError,
)
_PAIRS = (tuple, list)
_PAIR_TYPES = frozenset(_PAIRS)


def parse_pickle(
    frame: bytes, now: float, *, validator: Validator | None = None
) -> tuple[list[Datapoint], Counter[str]]:
    """The datapoints in one carbon pickle frame (a list of ``(path, (timestamp, value))``) and the rejections.

    A frame that does not load with carbon's opcodes alone, or is not a list,
    counts one ``bad_pickle`` and yields nothing; an item not shaped like
    carbon's (a pair of a string and a pair) counts ``bad_point``.  A string
    value or timestamp is read with ``float()``, as carbon does, and a
    timestamp in ``(-2, -1]`` means now; then each item is checked by the
    datapoint rule as in :func:`parse_plaintext` (``bad_value``, ``nan``,
    ``bad_timestamp``, ``bad_name``, ``bad_tag``).
    """
    if validator is None:
        validator = Validator()
    check = validator.check
    rejected: Counter[str] = Counter()
    try:
        items = _CarbonUnpickler(io.BytesIO(frame), encoding="utf-8").load()
    except _UNLOADABLE:
        rejected["bad_pickle"] += 1
        return [], rejected
    if type(items) not in _PAIRS:
        rejected["bad_pickle"] += 1
        return [], rejected
    plain = _pickled_plain(items, validator)
    if plain is not None:
        return plain, rejected
    points: list[Datapoint] = []
    for item in items:
        if (
            type(item) not in _PAIRS
            or len(item) != 2
            or type(item[0]) is not str
            or type(item[1]) not in _PAIRS
            or len(item[1]) != 2
        ):
            rejected["bad_point"] += 1
            continue
        raw_path, (stamp, value) = item
        if type(value) is str:
            value = _number(value)
        if type(stamp) is str:
            stamp = _number(stamp)
        try:
            path, stamp, value = check(raw_path, _when(stamp, now), value)
        except (BadDatapoint, BadName) as exc:
            rejected[exc.reason] += 1
            continue
        points.append((path, float(stamp), float(value)))
    return points, rejected


def _pickled_plain(items: list[Any] | tuple[Any, ...], validator: Validator) -> list[Datapoint] | None:
    """The datapoints of *items* if every one is carbon's shape, plain numbers and a clean path, else None.

    What carbon clients send, checked a column at a time inside C (``map``
    of ``type`` and ``len``, ``zip``) with the datapoint rule's batch checks
    (:func:`dsat.datapoint.all_plain_numbers`,
    :meth:`~dsat.naming.PathCache.clean_many`); None sends the frame to the
    item by item loop, which counts each refusal by reason.
    """
    if not items:
        return []
    if not set(map(type, items)) <= _PAIR_TYPES or set(map(len, items)) != {2}:
        return None
    raw_paths, pairs = zip(*items, strict=True)
    if set(map(type, raw_paths)) != {str} or not set(map(type, pairs)) <= _PAIR_TYPES or set(map(len, pairs)) != {2}:
        return None
    stamps, values = zip(*pairs, strict=True)
    if not all_plain_numbers(stamps, values):
        return None
    paths = validator.paths.clean_many(raw_paths)
    if "" in paths:
        return None
    return list(zip(paths, map(float, stamps), map(float, values), strict=True))

"""What Carbon may store: the one rule for a datapoint, which every way into Carbon applies.

A datapoint is ``(path, timestamp, value)``.  It is acceptable when

- its value is a number (``int`` or ``float``, not a ``bool``) that fits a
  float, else ``bad_value``; and finite, else ``nan`` (NaN or infinite);
- its timestamp is a number (not a ``bool``), finite, above 0 and below
  :data:`MAX_TIMESTAMP` (2\\ :sup:`32`: Whisper stores unsigned 32-bit
  seconds, and a timestamp in milliseconds lands above it), else
  ``bad_timestamp``;
- its path is one :func:`dsat.naming.clean_path` makes safe (the path that
  goes on is the safe one), else ``bad_name`` or ``bad_tag``.

Checked in that order; the first that fails is the reason counted
(:data:`REASONS`, ``docs/reliability.rst``).  :func:`number_problem` is the
rule for the numbers, :class:`Validator` the whole rule behind a bounded path
cache: the orchester runs every satellite batch, its own metrics and the
aggregates through it, the statsd flush its output, and the Graphite ingress
each line or pickle item it reads.  The ingress's fast path checks a whole
plain chunk at once with :func:`all_numbers_acceptable`, the same bounds over
lists, and sends any chunk it does not prove acceptable to the per-line path
(``tests/test_datapoint.py`` checks that both agree).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dsat.cache import DEFAULT_MAX_BYTES
from dsat.counters import Rejections
from dsat.errors import BadName, DsatError
from dsat.naming import PathCache

Datapoint = tuple[str, float, float]

#: Timestamps must be below this: Whisper stores 32-bit unsigned seconds (millisecond timestamps land here).
MAX_TIMESTAMP = 2**32
#: The reasons a datapoint is refused for, in the order they are checked.
BAD_VALUE, NAN, BAD_TIMESTAMP, BAD_NAME, BAD_TAG = "bad_value", "nan", "bad_timestamp", "bad_name", "bad_tag"
#: Every reason, as counted in ``rejected.<reason>``.
REASONS = (BAD_VALUE, NAN, BAD_TIMESTAMP, BAD_NAME, BAD_TAG)


class BadDatapoint(DsatError):
    """A datapoint's value or timestamp is not one Carbon may store; ``reason`` is one of :data:`REASONS`."""


#: The exact types of a number, checked first (a set lookup); an ``int`` or ``float`` subclass but ``bool`` also is one.
_EXACT = frozenset((int, float))


def _not_number(x: object) -> bool:
    return type(x) not in _EXACT and (isinstance(x, bool) or not isinstance(x, int | float))


def number_problem(timestamp: object, value: object) -> str | None:
    """Why a datapoint with *timestamp* and *value* is refused (``bad_value``, ``nan``, ``bad_timestamp``), or None."""
    if _not_number(value):
        return BAD_VALUE
    try:
        finite = math.isfinite(value)  # type: ignore[arg-type]
    except OverflowError:  # an int too large for a float
        return BAD_VALUE
    if not finite:
        return NAN
    if _not_number(timestamp) or not 0 < timestamp < MAX_TIMESTAMP:  # type: ignore[operator]  # NaN compares false
        return BAD_TIMESTAMP
    return None


def all_numbers_acceptable(timestamps: Sequence[float], values: Sequence[float]) -> bool:
    """Whether :func:`number_problem` is None for every pair, for lists of floats, checked inside C.

    A finite sum proves every number in it finite (an overflowing sum of
    finite numbers only answers False); the bounds are :data:`MAX_TIMESTAMP`'s.
    False says nothing about any one pair: check each.
    """
    if not timestamps:
        return True
    total, since = sum(values), sum(timestamps)
    return total - total == 0.0 and since - since == 0.0 and min(timestamps) > 0.0 and max(timestamps) < MAX_TIMESTAMP


def all_plain_numbers(timestamps: Sequence[object], values: Sequence[object]) -> bool:
    """:func:`all_numbers_acceptable` for numbers of any type: exactly ``int`` or ``float``, and acceptable."""
    kinds = set(map(type, values))
    kinds.update(map(type, timestamps))
    if not kinds <= _EXACT:
        return False
    if int in kinds:
        try:
            timestamps, values = list(map(float, timestamps)), list(map(float, values))  # type: ignore[arg-type]
        except OverflowError:
            return False
    return all_numbers_acceptable(timestamps, values)  # type: ignore[arg-type]


class Validator:
    """The datapoint rule behind a bounded :class:`~dsat.naming.PathCache` (pass *paths* to share one)."""

    def __init__(self, paths: PathCache | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.paths = PathCache(max_bytes) if paths is None else paths

    def check(self, path: str | bytes, timestamp: object, value: object) -> Datapoint:
        """The datapoint as Carbon stores it (its path made safe).

        Raises :class:`BadDatapoint` or :class:`~dsat.errors.BadName`.
        """
        problem = number_problem(timestamp, value)
        if problem is not None:
            raise BadDatapoint(f"{path[:80]!r}: timestamp {timestamp!r}, value {value!r}", reason=problem)
        return self.paths.clean(path), timestamp, value  # type: ignore[return-value]  # numbers: checked

    def keep(self, points: Sequence[Datapoint], rejections: Rejections) -> list[Datapoint]:
        """The acceptable datapoints of *points*, made safe; each other one counted (and logged) in *rejections*.

        The batch is checked whole first: its paths cleaned together
        (:meth:`~dsat.naming.PathCache.clean_many`) and its numbers by
        :func:`all_numbers_acceptable`; when every one passes unchanged (the
        usual batch), that is all.  Otherwise each datapoint is checked, and
        a refused one goes through :meth:`check` for its reason and message.
        """
        raw = [point[0] for point in points]
        paths = self.paths.clean_many(raw)
        if paths == raw and all_plain_numbers([p[1] for p in points], [p[2] for p in points]):
            return list(points)
        out: list[Datapoint] = []
        append = out.append
        for point, path in zip(points, paths, strict=True):
            if path and number_problem(point[1], point[2]) is None:
                append(point if path == point[0] else (path, point[1], point[2]))
                continue
            try:
                self.check(*point)
            except (BadDatapoint, BadName) as exc:
                rejections.reject(exc.reason, exc)
        return out

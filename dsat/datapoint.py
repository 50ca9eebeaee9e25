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
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from dsat.cache import DEFAULT_MAX_BYTES
from dsat.errors import BadName, DsatError
from dsat.naming import PathCache

if TYPE_CHECKING:  # dsat.counters imports dsat.envelope, which imports this module
    from dsat.counters import Rejections

Datapoint = tuple[str, float, float]

#: Timestamps must be below this: Whisper stores 32-bit unsigned seconds (millisecond timestamps land here).
MAX_TIMESTAMP = 2**32
#: The reasons a datapoint is refused for, in the order they are checked.
BAD_VALUE, NAN, BAD_TIMESTAMP, BAD_NAME, BAD_TAG = "bad_value", "nan", "bad_timestamp", "bad_name", "bad_tag"
REASONS = (BAD_VALUE, NAN, BAD_TIMESTAMP, BAD_NAME, BAD_TAG)


class BadDatapoint(DsatError):
    """A datapoint's value or timestamp is not one Carbon may store; ``reason`` is one of :data:`REASONS`."""


def number_problem(timestamp: object, value: object) -> str | None:
    """Why a datapoint with *timestamp* and *value* is refused (``bad_value``, ``nan``, ``bad_timestamp``), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return BAD_VALUE
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return BAD_VALUE
    if not finite:
        return NAN
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        return BAD_TIMESTAMP
    if not 0 < timestamp < MAX_TIMESTAMP:  # NaN compares false: refused too
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


class Validator:
    """The datapoint rule behind a bounded :class:`~dsat.naming.PathCache` (pass *paths* to share one)."""

    def __init__(self, paths: PathCache | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.paths = PathCache(max_bytes) if paths is None else paths

    def check(self, path: str | bytes, timestamp: object, value: object) -> Datapoint:
        """The datapoint as Carbon stores it (its path made safe); raises :class:`BadDatapoint` or :class:`BadName`."""
        problem = number_problem(timestamp, value)
        if problem is not None:
            raise BadDatapoint(f"{path[:80]!r}: timestamp {timestamp!r}, value {value!r}", reason=problem)
        return self.paths.clean(path), timestamp, value  # type: ignore[return-value]  # numbers: checked

    def keep(self, points: Iterable[Datapoint], rejections: Rejections) -> list[Datapoint]:
        """The acceptable datapoints of *points*, made safe; each other one counted (and logged) in *rejections*."""
        check, reject = self.check, rejections.reject
        out: list[Datapoint] = []
        append = out.append
        for path, timestamp, value in points:
            try:
                append(check(path, timestamp, value))
            except (BadDatapoint, BadName) as exc:
                reject(exc.reason, exc)
        return out

"""The one place metric paths are made safe.

The tree is ``<prefix>.<where>.<step>.<metric...>`` (``docs/naming.rst``);
DSAT's own metrics live under ``<prefix>.<where>.self``.  A path component
keeps letters, digits (any script) and ``_-:+=@%#~``; after Unicode NFKC
normalisation every other character (``.``, ``/``, ``\\``, whitespace, glob
characters, control characters...) becomes ``_``.  Empty and over-long names
are rejected with :class:`~dsat.errors.BadName`, and so is a full path that
arrives from outside with a control character in it.  Whatever the input, a
path that comes out of here names a file inside the Whisper directory.

A Graphite 1.1 tagged series (``name;k=v;k2=v2``, or ``name{k="v",k2="v2"}``)
is parsed with carbon 1.1.10's ``TaggedSeries`` rules and comes out in its
canonical form (tags sorted as carbon sorts them, the ``name`` tag dropped):
the name part is made safe like any path, tag keys and values are checked,
never rewritten (``docs/naming.rst``, "Tagged series").
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

from dsat.cache import DEFAULT_MAX_BYTES, GenerationalCache
from dsat.compiled import speedups
from dsat.errors import BadName

#: A Whisper file name is the component plus ".wsp"; NAME_MAX is 255 bytes.
MAX_COMPONENT_BYTES = 200
#: The longest metric path accepted, in characters.
MAX_PATH_CHARS = 1024
#: The punctuation a component keeps; every other non-alphanumeric character becomes "_".
SAFE_PUNCTUATION = "_-:+=@%#~"
#: The reserved step name under which DSAT writes its own metrics.
SELF = "self"
#: Separates the name of a tagged series from its tags, and one tag from the next.
TAG_SEPARATOR = ";"
#: What carbon forbids in a tag key (its ``TaggedSeries.prohibitedTagChars``).
FORBIDDEN_IN_KEY = ";!^="

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc
_ASCII_SAFE = re.compile(r"[A-Za-z0-9_\-:+=@%#~]+")
# A whole path already safe: ASCII components of 1 to MAX_COMPONENT_BYTES characters, joined by dots.
_SAFE_COMPONENT = rf"[A-Za-z0-9_\-:+=@%#~]{{1,{MAX_COMPONENT_BYTES}}}"
_SAFE_PATH = rf"{_SAFE_COMPONENT}(?:\.{_SAFE_COMPONENT})*"
_ASCII_SAFE_PATH = re.compile(_SAFE_PATH)
# Already-safe paths, one a line: a whole batch checked in one pass (text, and raw bytes from the wire).
_ASCII_SAFE_LINES = re.compile(rf"{_SAFE_PATH}(?:\n{_SAFE_PATH})*")
_ASCII_SAFE_RAW_LINES = re.compile(_ASCII_SAFE_LINES.pattern.encode())
# The usual tagged path (_simple_tagged): a safe name not starting with "~", then ;key=value tags of safe characters.
_TAG_KEY = r"[A-Za-z0-9_\-:+@%#.]+"
_TAG_VALUE = r"[A-Za-z0-9_\-:+=@%#.][A-Za-z0-9_\-:+=@%#.~]*"
_SIMPLE_TAGGED = re.compile(rf"((?!~){_SAFE_PATH})((?:;{_TAG_KEY}={_TAG_VALUE})+)")
#: The bytes of safe ASCII components, the dot between them and the newline between paths (_safe_lines).
_SAFE_RAW_BYTES = bytes(b for b in range(128) if _ASCII_SAFE.fullmatch(chr(b))) + b".\n"
_DOT_AS_NEWLINE = bytes.maketrans(b".", b"\n")


def _safe_chars(text: str) -> str:
    """NFKC-normalise *text* and replace every character a component may not hold with ``_``."""
    if _ASCII_SAFE.fullmatch(text):
        return text
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch if ch.isalnum() or ch in SAFE_PUNCTUATION else "_" for ch in text)


def _check_length(part: str, whole: str) -> str:
    size = len(part.encode("utf-8"))
    if size > MAX_COMPONENT_BYTES:
        raise BadName(
            f"{whole[:60]!r}...: a path component is {size} bytes, over {MAX_COMPONENT_BYTES}",
            reason="bad_name",
        )
    return part


def component(text: str) -> str:
    """Make one path component safe (a host, step, interface, disk or mount name).

    Every unsafe character becomes ``_`` (``"../"`` is ``"___"``, ``"eth0.100"``
    is ``"eth0_100"``); a result made only of ``_`` is kept.  Raises
    :class:`~dsat.errors.BadName` for an empty *text* or a result over
    :data:`MAX_COMPONENT_BYTES` bytes in UTF-8.
    """
    if not text:
        raise BadName("empty path component", reason="bad_name")
    return _check_length(_safe_chars(text), text)


def metric_path(prefix: str, where: str, step: str, metric: str) -> str:
    """``<prefix>.<where>.<step>.<metric>``, every part made safe with :func:`component`.

    *metric* may hold dots (``core0.user``): each dot-separated part is a
    component, so an empty part (``"a..b"``, ``".a"``, ``""``) raises
    :class:`~dsat.errors.BadName`, as does a result over :data:`MAX_PATH_CHARS`.  A
    tagged *metric* (``latency;region=eu``) keeps its tags, checked and
    sorted as :func:`tagged_path` does: ``<prefix>.<where>.<step>.latency;region=eu``.
    """
    if is_tagged(metric):
        name, tags = parse_tags(metric)
        return _canonical(metric_path(prefix, where, step, name), tags, metric)
    parts = metric.split(".")
    if "" in parts:
        raise BadName(f"metric {metric[:60]!r} has an empty component", reason="bad_name")
    path = ".".join([component(prefix), component(where), component(step), *(component(p) for p in parts)])
    if len(path) > MAX_PATH_CHARS:
        raise BadName(f"{path[:60]!r}...: {len(path)} characters, over {MAX_PATH_CHARS}", reason="bad_name")
    return path


def clean_path(path: str) -> str:
    """Check and make safe a full path that arrived from outside; raises :class:`~dsat.errors.BadName` if it cannot be.

    Rejected: a control character (checked first), an empty path, a path
    over :data:`MAX_PATH_CHARS` characters (before or after normalisation), a
    component over :data:`MAX_COMPONENT_BYTES` bytes, a path with no
    component.  Otherwise empty components are dropped (``a..b`` is ``a.b``)
    and each component is made safe as :func:`component` does.  A tagged
    path is checked and put in canonical form by :func:`tagged_path`.
    """
    if TAG_SEPARATOR in path and len(path) <= MAX_PATH_CHARS:
        simple = _simple_tagged(path)  # safe characters only, so no control character; its canonical form fits
        if simple is not None:
            return simple
    match = _CONTROL.search(path)
    if match:
        raise BadName(
            f"{path[:60]!r}: control character U+{ord(match.group()):04X} at offset {match.start()}",
            reason="bad_name",
        )
    if not path:
        raise BadName("empty path", reason="bad_name")
    if len(path) > MAX_PATH_CHARS:
        raise BadName(f"{path[:60]!r}...: {len(path)} characters, over {MAX_PATH_CHARS}", reason="bad_name")
    if _ASCII_SAFE_PATH.fullmatch(path):
        return path
    if is_tagged(path):
        return tagged_path(path)
    return _clean_untagged(path, path)


def _simple_tagged(path: str) -> str | None:
    """:func:`tagged_path` of the usual tagged *path*, without its character-by-character checks, else None.

    Usual: a safe ASCII name not starting with ``~``, then ``;key=value``
    tags of safe ASCII characters (no ``;!^=~`` in a key, no leading ``~``
    in a value), no key twice and no ``name`` key.  Its canonical form is
    the name and the ``;key=value`` strings sorted, as :func:`format_tags`
    makes it; anything else returns None for :func:`tagged_path` to read
    (compiled: :mod:`dsat.compiled`, the same None).
    """
    if speedups is not None:
        simple: str | None = speedups.simple_tagged(path)
        return simple
    match = _SIMPLE_TAGGED.fullmatch(path)
    if match is None:
        return None
    name, tags = match.groups()
    segments = sorted(tags[1:].split(TAG_SEPARATOR))  # "key=value": sorted as carbon sorts ";key=value"
    keys = [segment[: segment.index("=")] for segment in segments]
    if "name" in keys or len(set(keys)) != len(keys):
        return None
    return name + TAG_SEPARATOR + TAG_SEPARATOR.join(segments)


def all_safe(paths: Sequence[str]) -> bool:
    """Whether :func:`clean_path` returns every one of *paths* unchanged, checked in one pass over them all.

    True when each is already safe ASCII (components of 1 to
    :data:`MAX_COMPONENT_BYTES` safe characters joined by dots, at most
    :data:`MAX_PATH_CHARS` characters): the common case, which the orchester
    checks for a whole batch of new paths at once.  False says nothing about
    any one path: clean each with :func:`clean_path`.
    """
    if not paths:
        return False
    try:
        joined = "\n".join(paths).encode("ascii")
    except UnicodeEncodeError:
        return False
    return _safe_lines(joined, len(paths), max(map(len, paths)))


def decode_safe(raw_paths: Sequence[bytes]) -> list[str] | None:
    """*raw_paths* decoded, if :func:`clean_path` would return every one of them unchanged, else None.

    The raw-bytes twin of :func:`all_safe`, for paths read from the wire:
    one pass over the batch, one decode.
    """
    if not raw_paths:
        return None
    joined = b"\n".join(raw_paths)
    if not _safe_lines(joined, len(raw_paths), max(map(len, raw_paths))):
        return None
    return joined.decode("ascii").split("\n")


def _safe_lines(joined: bytes, count: int, longest: int) -> bool:
    """Whether *joined*, *count* paths (the longest *longest* bytes) one a line, are all safe ASCII already.

    When no path is longer than a component may be, the check is a handful
    of scans inside C (every byte safe, a dot or a newline; no empty
    component; one newline between paths), several times faster than the
    regex it agrees with, which checks batches with longer paths.
    """
    if not longest or longest > MAX_PATH_CHARS or joined.count(b"\n") != count - 1:  # newline in a path: no
        return False
    if longest > MAX_COMPONENT_BYTES:
        return _ASCII_SAFE_RAW_LINES.fullmatch(joined) is not None
    if joined.translate(None, _SAFE_RAW_BYTES):
        return False
    separators = joined.translate(_DOT_AS_NEWLINE)  # an empty component is two separators in a row, or one at an end
    return not (separators.startswith(b"\n") or separators.endswith(b"\n") or b"\n\n" in separators)


def _clean_untagged(path: str, whole: str) -> str:
    """:func:`clean_path` past its first checks, for a path without tags (or the name part of one, in *whole*)."""
    parts = [_check_length(_safe_chars(p), whole) for p in path.split(".") if p]
    if not parts:
        raise BadName(f"{whole[:60]!r}: no path components", reason="bad_name")
    cleaned = ".".join(parts)
    if len(cleaned) > MAX_PATH_CHARS:
        raise BadName(
            f"{whole[:60]!r}...: {len(cleaned)} characters once normalised, over {MAX_PATH_CHARS}",
            reason="bad_name",
        )
    return cleaned


# -- tagged series -------------------------------------------------------------

# carbon's OpenMetrics segment: key="value" (\" and \\ escaped), then "," or ":," or the end.
_OPENMETRICS_TAG = re.compile(r'([^=]+)="((?:[\\]["\\]|[^"\\])+)"(:?,|$)')


def is_tagged(path: str) -> bool:
    """Whether *path* is a tagged series in either of carbon's forms (``name;k=v``, ``name{k="v"}``)."""
    return TAG_SEPARATOR in path or (path[-2:] == '"}' and "{" in path)


def _bad_tag(path: str, why: str) -> BadName:
    return BadName(f"{path[:60]!r}: {why}", reason="bad_tag")


def check_tag(key: str, value: str, path: str) -> None:
    """Carbon's rules for one tag (``validateTagAndValue``), and DSAT's one more.

    A tag that breaks one raises :class:`~dsat.errors.BadName` (``bad_tag``).

    Carbon's: the key is not empty and holds none of ``;!^=``; the value is
    not empty, holds no ``;`` and does not start with ``~``.  DSAT's: neither
    holds whitespace (carbon's line protocol would split on it) or a control
    character.
    """
    if not key:
        raise _bad_tag(path, "a tag key is empty")
    if not value:
        raise _bad_tag(path, f"the value of tag {key[:40]!r} is empty")
    for char in FORBIDDEN_IN_KEY:
        if char in key:
            raise _bad_tag(path, f"tag key {key[:40]!r} holds {char!r}")
    if TAG_SEPARATOR in value:
        raise _bad_tag(path, f"the value of tag {key[:40]!r} holds ';'")
    if value[0] == "~":
        raise _bad_tag(path, f"the value of tag {key[:40]!r} starts with '~'")
    if any(ch.isspace() for ch in key + value) or _CONTROL.search(key + value):
        raise _bad_tag(path, f"tag {key[:40]!r} holds whitespace or a control character")


def parse_tags(path: str) -> tuple[str, dict[str, str]]:
    """The name and the tags of a tagged *path*, read as carbon's ``TaggedSeries.parse`` reads it.

    ``name;k=v;...`` or, when *path* ends with ``"}`` and holds a ``{``,
    ``name{k="v",...}``.  A later tag overrides an earlier one with the same
    key; a ``name`` tag is dropped (the name is the name).  Each tag is
    checked by :func:`check_tag`.  The name is returned as sent: making it
    safe, and carbon's "no leading ``~``", are :func:`tagged_path`'s.
    Raises :class:`~dsat.errors.BadName` ``bad_tag``.
    """
    tags: dict[str, str] = {}
    if path[-2:] == '"}' and "{" in path:  # carbon's test for the OpenMetrics form
        name, _, raw = path[:-1].partition("{")
        if "{" in raw:
            raise _bad_tag(path, "more than one '{'")
        while raw:
            match = _OPENMETRICS_TAG.match(raw)
            if match is None:
                raise _bad_tag(path, f"cannot read tag {raw[:40]!r}")
            key, value = match.group(1), match.group(2).replace(r"\"", '"').replace("\\\\", "\\")
            check_tag(key, value, path)
            tags[key] = value
            raw = raw[match.end() :]
    else:
        name, *segments = path.split(TAG_SEPARATOR)
        for segment in segments:
            key, equals, value = segment.partition("=")
            if not equals or not key:
                raise _bad_tag(path, f"tag {segment[:40]!r} is not key=value")
            check_tag(key, value, path)
            tags[key] = value
    tags.pop("name", None)
    return name, tags


def format_tags(name: str, tags: dict[str, str]) -> str:
    """The canonical form of a tagged series, carbon's ``TaggedSeries.format``: ``;key=value`` strings sorted."""
    return name + "".join(sorted([f";{key}={value}" for key, value in tags.items()]))


def tagged_path(path: str) -> str:
    """A tagged *path* made safe and canonical; raises :class:`~dsat.errors.BadName` (``bad_tag`` or ``bad_name``).

    The name part is made safe as :func:`clean_path` makes any path (so
    ``a b;k=v`` is ``a_b;k=v``); the tags are read and checked by
    :func:`parse_tags`, never changed, and sorted by :func:`format_tags`.
    The result must still fit in :data:`MAX_PATH_CHARS`, and must not end
    with ``"}`` (carbon would read it back in the other form).  A *path*
    whose tags are all ``name`` tags comes out untagged.
    """
    name, tags = parse_tags(path)
    return _canonical(_clean_untagged(name, path), tags, path)


def _canonical(name: str, tags: dict[str, str], path: str) -> str:
    """:func:`format_tags` of a safe *name* and checked *tags*, if carbon reads it back the same and it fits.

    The name loses its leading ``~`` as carbon's does (after it is made safe,
    which may uncover one: ``.~a`` is ``~a``); nothing left is ``bad_name``.
    """
    name = name.lstrip("~")
    if not name:
        raise BadName(f"{path[:60]!r}: no metric name before the tags", reason="bad_name")
    canonical = format_tags(name, tags)
    if canonical[-2:] == '"}' and "{" in canonical:
        raise _bad_tag(path, 'its canonical form ends with "}, which carbon would read as name{k="v"}')
    if len(canonical) > MAX_PATH_CHARS:
        raise BadName(f"{path[:60]!r}...: {len(canonical)} characters, over {MAX_PATH_CHARS}", reason="bad_name")
    return canonical


class PathCache:
    """:func:`clean_path` behind one bounded cache: what every entry of the orchester calls per batch.

    Raw paths, as ``str`` or as ``bytes`` from the wire (decoded as UTF-8,
    strictly: undecodable bytes are a ``bad_name``), map to the path
    :func:`clean_path` makes of them, or to ``""`` when it rejects them.
    Held in a :class:`~dsat.cache.GenerationalCache` of *max_bytes*, so it
    keeps the paths in use however many pass through once (a hit also gives
    back the same ``str``, whose hash Python keeps: the rules' cache looks
    it up faster than a fresh one).  New paths are cleaned a batch at a
    time (:meth:`clean_many`): when every one is already safe ASCII
    (:func:`all_safe`, :func:`decode_safe`) the batch costs one pass, else
    each is cleaned on its own.  Paths longer than
    :data:`MAX_PATH_CHARS` are not kept.  Only the verdict is kept for a
    rejected path; its reason is found again when asked (:meth:`clean`,
    :meth:`count_rejected`), so a cached rejection raises a fresh
    :class:`~dsat.errors.BadName`.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._cache: GenerationalCache[str | bytes, str] = GenerationalCache(max_bytes)

    def __len__(self) -> int:
        return len(self._cache)

    def clean(self, raw: str | bytes) -> str:
        """The clean path of *raw*; :class:`~dsat.errors.BadName` (``bad_name``, ``bad_tag``) when it has none."""
        path = self._cache.get(raw)
        if path is None:
            path = self.clean_many([raw])[0]
        if path:
            return path
        raise _why(raw)

    def clean_many(self, raw_paths: Sequence[str | bytes]) -> list[str]:
        """The clean path of each of *raw_paths* (``""`` for a rejected one), new ones cleaned as one batch.

        While the names outnumber the cache (:meth:`~dsat.cache.GenerationalCache.skips`),
        a batch all safe already is checked whole, without the lookups that
        would mostly miss.
        """
        cache = self._cache
        if raw_paths and cache.skips():
            safe = _all_safe(raw_paths)  # type: ignore[arg-type]
            if safe is not None:
                return safe
        found = cache.get_many(raw_paths)
        if None not in found:
            return found  # type: ignore[return-value]
        missing = [raw for raw, path in zip(raw_paths, found, strict=True) if path is None]
        fresh = _all_safe(missing)
        if fresh is None:
            fresh = [_clean_raw(raw) for raw in missing]
            kept = [(raw, path) for raw, path in zip(missing, fresh, strict=True) if len(raw) <= MAX_PATH_CHARS]
            cache.admit_many([raw for raw, _ in kept], [path for _, path in kept])
        else:
            cache.admit_many(missing, fresh)
        new = iter(fresh)
        return [next(new) if path is None else path for path in found]

    def count_rejected(self, raw_paths: Sequence[str | bytes], clean: Sequence[str], rejected: Counter[str]) -> None:
        """Count in *rejected*, by reason, the *raw_paths* whose *clean* path is ``""``."""
        for raw, path in zip(raw_paths, clean, strict=True):
            if not path:
                rejected[_why(raw).reason] += 1


def _all_safe(raw_paths: list[str | bytes]) -> list[str] | None:
    """*raw_paths* as str if :func:`clean_path` keeps every one unchanged, else None (one pass)."""
    if isinstance(raw_paths[0], bytes):
        return decode_safe(raw_paths)  # type: ignore[arg-type]
    return raw_paths if all_safe(raw_paths) else None  # type: ignore[return-value, arg-type]


def _clean_raw(raw: str | bytes) -> str:
    """The clean path of *raw*, ``""`` if it has none."""
    try:
        return clean_path(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (UnicodeDecodeError, BadName):
        return ""


def _why(raw: str | bytes) -> BadName:
    """Why :func:`clean_path` rejects *raw* (which it does), as a fresh :class:`~dsat.errors.BadName`."""
    try:
        clean_path(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except UnicodeDecodeError as exc:
        return BadName(f"{raw[:60]!r}: not UTF-8 ({exc.reason} at byte {exc.start})", reason="bad_name")
    except BadName as exc:
        return exc
    raise AssertionError(f"{raw[:60]!r} was rejected but cleans")  # pragma: no cover

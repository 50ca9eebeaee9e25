"""The one place metric paths are made safe.

The tree is ``<prefix>.<where>.<step>.<metric...>`` (``docs/naming.rst``);
DSAT's own metrics live under ``<prefix>.<where>.self``.  A path component
keeps letters, digits (any script) and ``_-:+=@%#~``; after Unicode NFKC
normalisation every other character (``.``, ``/``, ``\\``, whitespace, glob
characters, control characters...) becomes ``_``.  Empty and over-long names
are rejected with :class:`~dsat.errors.BadName`, and so is a full path that
arrives from outside with a control character in it.  Whatever the input, a
path that comes out of here names a file inside the Whisper directory.
"""

from __future__ import annotations

import re
import unicodedata

from dsat.errors import BadName

#: A Whisper file name is the component plus ".wsp"; NAME_MAX is 255 bytes.
MAX_COMPONENT_BYTES = 200
MAX_PATH_CHARS = 1024
#: The punctuation a component keeps; every other non-alphanumeric character becomes "_".
SAFE_PUNCTUATION = "_-:+=@%#~"
#: The reserved step name under which DSAT writes its own metrics.
SELF = "self"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc
_ASCII_SAFE = re.compile(r"[A-Za-z0-9_\-:+=@%#~]+")
# A whole path already safe: ASCII components of 1 to MAX_COMPONENT_BYTES characters, joined by dots.
_ASCII_SAFE_PATH = re.compile(
    rf"[A-Za-z0-9_\-:+=@%#~]{{1,{MAX_COMPONENT_BYTES}}}(?:\.[A-Za-z0-9_\-:+=@%#~]{{1,{MAX_COMPONENT_BYTES}}})*"
)


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
    :class:`BadName` for an empty *text* or a result over
    :data:`MAX_COMPONENT_BYTES` bytes in UTF-8.
    """
    if not text:
        raise BadName("empty path component", reason="bad_name")
    return _check_length(_safe_chars(text), text)


def metric_path(prefix: str, where: str, step: str, metric: str) -> str:
    """``<prefix>.<where>.<step>.<metric>``, every part made safe with :func:`component`.

    *metric* may hold dots (``core0.user``): each dot-separated part is a
    component, so an empty part (``"a..b"``, ``".a"``, ``""``) raises
    :class:`BadName`, as does a result over :data:`MAX_PATH_CHARS`.
    """
    parts = metric.split(".")
    if "" in parts:
        raise BadName(f"metric {metric[:60]!r} has an empty component", reason="bad_name")
    path = ".".join([component(prefix), component(where), component(step), *(component(p) for p in parts)])
    if len(path) > MAX_PATH_CHARS:
        raise BadName(f"{path[:60]!r}...: {len(path)} characters, over {MAX_PATH_CHARS}", reason="bad_name")
    return path


def clean_path(path: str) -> str:
    """Check and make safe a full path that arrived from outside; raises :class:`BadName` if it cannot be.

    Rejected: a control character (checked first), an empty path, a path
    over :data:`MAX_PATH_CHARS` characters (before or after normalisation), a
    component over :data:`MAX_COMPONENT_BYTES` bytes, a path with no
    component.  Otherwise empty components are dropped (``a..b`` is ``a.b``)
    and each component is made safe as :func:`component` does.
    """
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
    parts = [_check_length(_safe_chars(p), path) for p in path.split(".") if p]
    if not parts:
        raise BadName(f"{path!r}: no path components", reason="bad_name")
    cleaned = ".".join(parts)
    if len(cleaned) > MAX_PATH_CHARS:
        raise BadName(
            f"{path[:60]!r}...: {len(cleaned)} characters once normalised, over {MAX_PATH_CHARS}",
            reason="bad_name",
        )
    return cleaned


class PathCleaner:
    """:func:`clean_path` behind a bounded cache: the orchester calls it for every datapoint.

    Results and rejections are cached for paths up to :data:`MAX_PATH_CHARS`
    characters (longer ones are rejected at once and not kept); when the
    cache holds *max_size* paths it is emptied.
    """

    def __init__(self, max_size: int = 100_000) -> None:
        self.max_size = max_size
        self._cache: dict[str, str | BadName] = {}

    def __call__(self, path: str) -> str:
        result = self._cache.get(path)
        if result is None:
            if len(path) > MAX_PATH_CHARS:
                return clean_path(path)  # raises BadName
            try:
                result = clean_path(path)
            except BadName as exc:
                result = exc
            if len(self._cache) >= self.max_size:
                self._cache.clear()
            self._cache[path] = result
        if isinstance(result, str):
            return result
        # A fresh exception each time: re-raising the cached one would grow its traceback forever.
        raise BadName(str(result), reason=result.reason)

    def __len__(self) -> int:
        return len(self._cache)

"""The one place metric paths are made safe.

The tree is ``<prefix>.<where>.<step>.<metric...>`` (``docs/naming.rst``);
DSAT's own metrics live under ``<prefix>.<where>.self``.  A path component
keeps letters, digits and ``_-:+=@%#~``; every other character (``.``,
``/``, ``\\``, whitespace, glob characters...) becomes ``_``, after Unicode
NFKC normalisation.  Control characters (NUL included) and over-long names
are rejected with :class:`~dsat.errors.BadName`.  Whatever the input, a path
that comes out of here names a file inside the Whisper directory.
"""

from __future__ import annotations

import re
import unicodedata

from dsat.errors import BadName

#: A Whisper file name is the component plus ".wsp"; NAME_MAX is 255 bytes.
MAX_COMPONENT_BYTES = 200
MAX_PATH_CHARS = 1024
SAFE_PUNCTUATION = "_-:+=@%#~"
SELF = "self"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ASCII_SAFE = re.compile(r"[A-Za-z0-9_\-:+=@%#~]+")


def _check_control(text: str) -> None:
    match = _CONTROL.search(text)
    if match:
        raise BadName(
            f"{text[:60]!r}: control character U+{ord(match.group()):04X} at offset {match.start()}",
            reason="bad_name",
        )


def _safe_chars(text: str) -> str:
    if _ASCII_SAFE.fullmatch(text):
        return text
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch if ch.isalnum() or ch in SAFE_PUNCTUATION else "_" for ch in text)


def _check_length(part: str, whole: str) -> str:
    if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
        raise BadName(f"{whole[:60]!r}...: a path component is over {MAX_COMPONENT_BYTES} bytes", reason="bad_name")
    return part


def component(text: str) -> str:
    """Make one path component safe (a host, step, interface or disk name)."""
    _check_control(text)
    if not text:
        raise BadName("empty path component", reason="bad_name")
    return _check_length(_safe_chars(text), text)


def metric_path(prefix: str, where: str, step: str, metric: str) -> str:
    """``<prefix>.<where>.<step>.<metric>``, every part safe; *metric* may have dots."""
    _check_control(metric)
    parts = [p for p in metric.split(".") if p]
    if not parts:
        raise BadName(f"metric name {metric!r} has no components", reason="bad_name")
    return ".".join([component(prefix), component(where), component(step), *(component(p) for p in parts)])


def clean_path(path: str) -> str:
    """Check and make safe a full path that arrived from outside; raises BadName if it cannot be."""
    _check_control(path)
    if len(path) > MAX_PATH_CHARS:
        raise BadName(f"{path[:60]!r}...: {len(path)} characters, over {MAX_PATH_CHARS}", reason="bad_name")
    parts = [_check_length(_safe_chars(p), path) for p in path.split(".") if p]
    if not parts:
        raise BadName(f"{path!r}: no path components", reason="bad_name")
    return ".".join(parts)


class PathCleaner:
    """:func:`clean_path` behind a bounded cache: the orchester calls it for every datapoint."""

    def __init__(self, max_size: int = 100_000) -> None:
        self.max_size = max_size
        self._cache: dict[str, str | BadName] = {}

    def __call__(self, path: str) -> str:
        result = self._cache.get(path)
        if result is None:
            try:
                result = clean_path(path)
            except BadName as exc:
                result = exc
            if len(self._cache) >= self.max_size:
                self._cache.clear()
            self._cache[path] = result
        if type(result) is str:
            return result
        raise result  # type: ignore[misc]

"""Every error DSAT raises on purpose.

One root, :class:`DsatError`, and one subclass per kind of failure, so callers
can catch exactly what they handle.  Each error that is counted carries a short
``reason`` slug (``truncated``, ``bad_name``...) used as the counter name in
DSAT's own metrics and in log lines.
"""

from __future__ import annotations


class DsatError(Exception):
    """Root of every error DSAT raises on purpose."""

    reason = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ConfigError(DsatError):
    """A topology, rule or settings file is wrong.

    ``problems`` holds every problem found (validation reports them all at
    once); each is a problem string already naming the file,
    the key path, what is wrong and how to fix it.
    """

    reason = "bad_config"

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems) if problems else [message]


class EnvelopeError(DsatError):
    """A frame could not be decoded into an envelope (or encoded from one)."""

    reason = "bad_frame"


class BadName(DsatError):
    """A metric path cannot be made safe (NUL, control characters, too long, empty)."""

    reason = "bad_name"


class PluginError(ConfigError):
    """An unknown satellite, codec or rule name was asked for."""


class BenchError(DsatError):
    """``dsat bench`` could not run its topology or its load (what failed, and the log to read)."""


class KeyFileError(DsatError):
    """A CURVE key file is missing, unreadable, or a secret key others can read."""

    reason = "bad_key_file"


class SpoolCorrupt(DsatError):
    """The spool file is not an SQLite database, fails its check, or holds another schema."""

    reason = "spool_corrupt"


class SpoolUnavailable(DsatError):
    """The spool file cannot be opened for a reason of its disk (full, read-only, I/O error): not quarantined."""

    reason = "spool_unavailable"

"""The topology's schema: what each key accepts, checked one value at a time.

``_Problems`` collects every problem as ``<file>: <key path>: <what is
wrong>; <how to fix>``, with a did-you-mean for a typo (``_suggest``);
``_SCHEMA`` lists every table's keys, their types and an example for the
fix; the checks of one kind of value (an address, a pattern, a codec, a
duration, a watchdog timeout) are written once here and used by every table
(:mod:`dsat.topology.tables`).  :func:`parse_duration` is the one reader of
``"250ms"``, ``"10s"``, ``"5m"``, ``"1h"``, for the file and the command line.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import MISSING, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from dsat.envelope import CODECS
from dsat.errors import ConfigError
from dsat.topology.model import DEFAULT_WATCHDOG, MIN_WATCHDOG, PATTERNS, _key

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_TABLES = ("dsat", "hosts", "groups", "tracker", "orchester", "carbon", "ingress", "rules", "spool", "satellites")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


_DURATION_HINT = 'write a duration like "250ms", "10s", "5m", "1h" or a number of seconds'


def _duration_seconds(value: Any) -> float:
    """Seconds from a duration value; ValueError says what is wrong with it."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{value!r} is not a duration longer than zero")
    return seconds


def parse_duration(value: Any, *, where: str) -> float:
    """Seconds from ``"250ms"``, ``"10s"``, ``"5m"``, ``"1h"`` or a positive number.

    *where* (a key path) starts the :class:`~dsat.errors.ConfigError` message for anything else.
    """
    try:
        return _duration_seconds(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}; {_DURATION_HINT}") from None


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f'did you mean "{close[0]}"? ' if close else ""


class _Problems:
    """Collects problems as ``<file>: <key>: <message>``."""

    def __init__(self, path: Path) -> None:
        self.file = path.name
        self.items: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.items.append(f"{self.file}: {key}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            count = len(self.items)
            summary = f"{self.file}: {count} problem{'s' if count > 1 else ''} found"
            raise ConfigError("\n".join([summary, *self.items]), problems=self.items)


def _tables(problems: _Problems, doc: dict[str, Any], name: str, fix: str) -> list[tuple[str, Any]]:
    """The entries of the top-level table *name* (none if absent); *fix* is the problem when it is no table."""
    table = doc.get(name, {})
    if not isinstance(table, dict):
        problems.add(name, fix)
        return []
    return list(table.items())


def _beside(topology_path: Path, name: str) -> Path:
    """A file the topology names: absolute, or relative to the topology file's folder."""
    file = Path(name)
    return file if file.is_absolute() else topology_path.parent / file


_DURATION_TYPES = (str, int, float)

#: table -> key -> (accepted types, an example to show in the fix).
_SCHEMA: dict[str, dict[str, tuple[tuple[type, ...], str]]] = {
    "dsat": {
        "insecure": ((bool,), "insecure = true"),
        "keys": ((str,), 'keys = "keys"'),
        "port_base": ((int,), "port_base = 7400"),
        "prefix": ((str,), 'prefix = "dsat"'),
        "where": ((str,), 'where = "web01"'),
        "run_dir": ((str,), 'run_dir = ".dsat/run"'),
        "codec": ((str,), 'codec = "msgpack"'),
        "plugins": ((list,), 'plugins = ["mycompany.satellites"]'),
        "watchdog": (_DURATION_TYPES, 'watchdog = "60s"'),
    },
    "tracker": {
        "events": ((str,), 'events = "ipc://{run_dir}/tracker-events"'),
        "states": ((str,), 'states = "ipc://{run_dir}/tracker-states"'),
        "status": ((str,), 'status = "ipc://{run_dir}/tracker-status"'),
        "timeout": (_DURATION_TYPES, 'timeout = "30s"'),
        "metrics_every": (_DURATION_TYPES, 'metrics_every = "10s"'),
        "max_retries": ((int,), "max_retries = 3"),
        "backoff": ((int, float), "backoff = 2.0"),
        "alert_command": ((str,), 'alert_command = "/usr/local/bin/page-oncall"'),
        "breaker_window": (_DURATION_TYPES, 'breaker_window = "30s"'),
        "breaker_threshold": ((int, float), "breaker_threshold = 0.5"),
        "breaker_min_failures": ((int,), "breaker_min_failures = 5"),
        "breaker_cooldown": (_DURATION_TYPES, 'breaker_cooldown = "30s"'),
        "host": ((str,), 'host = "hub"'),
    },
    "host": {
        "address": ((str,), 'address = "10.0.0.1"'),
    },
    "orchester": {
        "listen": ((str,), 'listen = "ipc://{run_dir}/orchester"'),
        "pattern": ((str,), 'pattern = "pull"'),
        "control": ((str,), 'control = "ipc://{run_dir}/orchester-control"'),
        "max_queue": ((int,), "max_queue = 1000000"),
        "routes": ((dict,), '[orchester.routes] then "*" = ["carbon"]'),
        "host": ((str, list), 'host = "hub" or, for a Binary Star pair, host = ["hub-a", "hub-b"]'),
        "heartbeat": (_DURATION_TYPES, 'heartbeat = "1s"'),
        "missed_beats": ((int,), "missed_beats = 3"),
    },
    "carbon": {
        "destinations": ((list,), 'destinations = ["127.0.0.1:2004"]'),
        "replication": ((int,), "replication = 1"),
        "hashing": ((str,), 'hashing = "carbon_ch"'),
        "protocol": ((str,), 'protocol = "pickle"'),
        "timeout": (_DURATION_TYPES, 'timeout = "10s"'),
    },
    "ingress": {
        "plaintext": ((str,), 'plaintext = "127.0.0.1:2003"'),
        "plaintext_tls": ((str,), 'plaintext_tls = "127.0.0.1:2443"'),
        "tls_certificate": ((str,), 'tls_certificate = "tls/cert.pem"'),
        "tls_key": ((str,), 'tls_key = "tls/key.pem"'),
        "plaintext_udp": ((str,), 'plaintext_udp = "127.0.0.1:2003"'),
        "pickle": ((str,), 'pickle = "127.0.0.1:2004"'),
        "statsd": ((str,), 'statsd = "127.0.0.1:8125"'),
        "statsd_socket": ((str,), 'statsd_socket = "/var/run/datadog/dsd.socket"'),
        "statsd_flush": (_DURATION_TYPES, 'statsd_flush = "10s"'),
        "statsd_prefix": ((str,), 'statsd_prefix = "stats"'),
        "statsd_percentiles": ((list,), "statsd_percentiles = [90, 99]"),
        "max_line": ((int,), "max_line = 4096"),
        "udp_buffer": ((int,), "udp_buffer = 8388608"),
        "max_connections": ((int,), "max_connections = 1024"),
        "idle_timeout": (_DURATION_TYPES, 'idle_timeout = "10m"'),
        "idle_grace": (_DURATION_TYPES, 'idle_grace = "5s"'),
        "workers": ((int, str), 'workers = 2 (or "auto": one per CPU)'),
    },
    "rules": {
        "rewrite": ((str,), 'rewrite = "rewrite-rules.conf"'),
        "aggregation": ((str,), 'aggregation = "aggregation-rules.conf"'),
        "allow": ((list,), 'allow = ["^servers\\."]'),
        "deny": ((list,), 'deny = ["\\.tmp\\."]'),
    },
    "spool": {
        "path": ((str,), 'path = "spool/carbon.db"'),
        "max_mb": ((int,), "max_mb = 1024"),
        "policy": ((str,), 'policy = "drop_oldest"'),
        "sync": ((str,), 'sync = "full"'),
        "replay_rate": ((int, float), "replay_rate = 50000"),
    },
    "satellite": {
        "use": ((str,), 'use = "cpu"'),
        "every": (_DURATION_TYPES, 'every = "10s"'),
        "next": ((list,), 'next = ["orchester"]'),
        "options": ((dict,), "options = { percpu = true }"),
        "host": ((str, list), 'host = "web01" or host = ["web01", "web02"] or a [groups] name'),
        "listen": ((str,), 'listen = "ipc://{run_dir}/sat-NAME"'),
        "pattern": ((str,), 'pattern = "pull"'),
        "codec": ((str,), 'codec = "msgpack"'),
        "watchdog": (_DURATION_TYPES, 'watchdog = "5m"'),
    },
}


_TYPE_NAMES = {
    bool: "true or false",
    str: "a string",
    int: "an integer",
    float: "a number",
    list: "a list",
    dict: "a table",
}


def _check_table(problems: _Problems, key: str, table: Any, schema: str) -> dict[str, Any]:
    """Unknown keys and wrong types in one table; returns the well-typed entries."""
    if not isinstance(table, dict):
        problems.add(key, f"must be a table, not {type(table).__name__}; write it as [{key}]")
        return {}
    allowed = _SCHEMA[schema]
    good: dict[str, Any] = {}
    for name, value in table.items():
        if name not in allowed:
            problems.add(
                f"{key}.{_key(name)}",
                f"unknown key; {_suggest(name, list(allowed))}valid keys are: {', '.join(allowed)}",
            )
            continue
        types, example = allowed[name]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            want = 'a duration like "10s" or a number' if types == _DURATION_TYPES else _TYPE_NAMES[types[0]]
            problems.add(
                f"{key}.{name}",
                f"must be {want}, not {type(value).__name__} {value!r:.40}; write e.g. {example}",
            )
            continue
        good[name] = value
    return good


def _unknown_tables(problems: _Problems, doc: Mapping[str, Any]) -> None:
    for name in doc:
        if name not in _TABLES:
            problems.add(
                _key(name),
                f"unknown table; {_suggest(name, list(_TABLES))}valid tables are: {', '.join(_TABLES)}",
            )


def _address(problems: _Problems, key: str, value: str, run_dir: Path) -> str:
    address = value.replace("{run_dir}", str(run_dir))
    if address.startswith("ipc://"):
        if len(address) == len("ipc://"):
            problems.add(key, "ipc:// address has no path; write ipc:///path/to/socket")
    elif address.startswith("tcp://"):
        host, _, port = address[len("tcp://") :].rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            problems.add(key, f"{value!r} is not a tcp address; write tcp://HOST:PORT with a port from 1 to 65535")
    elif address.startswith("inproc://"):
        problems.add(key, f"{value!r}: inproc:// does not cross processes; use ipc://PATH or tcp://HOST:PORT")
    else:
        problems.add(key, f"{value!r} has no valid scheme; write ipc://PATH or tcp://HOST:PORT")
    return address


def _pattern(problems: _Problems, key: str, value: str) -> str:
    if value not in PATTERNS:
        problems.add(key, f"{value!r} is not a receiving pattern; use one of: {', '.join(PATTERNS)}")
    return value


def _codec(problems: _Problems, key: str, value: str) -> str:
    if value not in CODECS:
        problems.add(key, f'unknown codec "{value}"; {_suggest(value, list(CODECS))}valid: {", ".join(CODECS)}')
    return value


def _duration(problems: _Problems, key: str, value: Any, default: float) -> float:
    if value is None:
        return default
    try:
        return _duration_seconds(value)
    except ValueError as exc:
        problems.add(key, f"{exc}; {_DURATION_HINT}")
        return default


def _watchdog(problems: _Problems, key: str, value: Any, default: float) -> float:
    """A watchdog timeout (:mod:`dsat.watchdog`): a duration of at least :data:`MIN_WATCHDOG`."""
    seconds = _duration(problems, key, value, default)
    if seconds < MIN_WATCHDOG:
        problems.add(
            key,
            f"{value!r} is too short: a busy step's reactor may pause that long and be killed for it;"
            f' write at least "{MIN_WATCHDOG:g}s", e.g. watchdog = "{DEFAULT_WATCHDOG:g}s"',
        )
        return default
    return seconds


_Conf = TypeVar("_Conf", bound="DataclassInstance")


def _build(problems: _Problems, table: str, entries: Mapping[str, Any], conf: type[_Conf], **given: Any) -> _Conf:
    """*conf* made from the checked *entries* of *table*, and *given* (what the table's builder computed).

    Every key of *table* that is a field of *conf* with a default goes in
    as written, a duration as seconds and a number as a float (by the key's
    types in ``_SCHEMA``, in the order of the fields); an absent key keeps
    the dataclass default.  So a
    new key is one field of *conf* with its default and one line of
    ``_SCHEMA``.  *given* (addresses, hosts, lists) takes precedence.
    """
    out: dict[str, Any] = {}
    for f in fields(conf):
        if f.name not in entries or f.default is MISSING:
            continue
        value, types = entries[f.name], _SCHEMA[table][f.name][0]
        if types == _DURATION_TYPES:
            out[f.name] = _duration(problems, f"{table}.{f.name}", value, f.default)
        elif float in types:
            out[f.name] = float(value)
        else:
            out[f.name] = value
    return conf(**(out | given))

"""The counting Carbon sink of ``dsat bench``: what arrived at the Carbon socket, when, and only once?

:func:`serve` runs in a process of its own and listens where the benched
topology's ``[carbon] destinations`` point.  It reads Carbon's pickle or
plaintext protocol as carbon-cache does (a pickle is read with no globals
allowed, like carbon's own safe unpickler), and for every datapoint of the
bench's load (see :mod:`dsat.tools.bench_load`) it notes whether that (name,
timestamp) came before (a duplicate, delivered at least once) and how long ago
it entered DSAT.  Everything else is counted as ``other``, and DSAT's own
``self.orchester.*`` counts (spooled, dropped, resent, replayed) are summed
from the metrics the orchester sends about itself.  With *upstreams* it also
forwards every byte to a real carbon-cache, so carbon's own pace holds the
pipeline back as in production.

The bench talks to it over a pipe: ``("phase", Phase)`` starts counting a new
phase from zero, ``("report",)`` answers with a :class:`Tally` as a dict,
``("stop",)`` ends it.
"""

from __future__ import annotations

import io
import pickle
import re
import selectors
import signal
import socket
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from dsat.graphite_wire import pickle_frames
from dsat.tools.bench_load import NAME_INDEX, PLAINTEXT_POINT, Phase

#: The orchester's own counters the sink sums (``<prefix>.<where>.self.orchester.<name>``).
OWN_COUNTERS = ("spooled", "dropped", "resent", "replayed")
_OWN_PLAINTEXT = re.compile(rb"\.self\.orchester\.(" + "|".join(OWN_COUNTERS).encode() + rb") (\S+) \d+\n")
_OWN_NAME = re.compile(r"\.self\.orchester\.(" + "|".join(OWN_COUNTERS) + r")$")
#: Past this many (name, tick) slots the sink stops telling duplicates apart (a bit each).
MAX_SLOTS = 512 * 1024 * 1024
#: Latencies are kept in buckets of this many seconds.
BUCKET = 0.0001
PERCENTILES = (50, 95, 99)


class _NoGlobals(pickle.Unpickler):
    """Carbon's pickle holds lists, tuples, strings and numbers: any global is refused.

    The C unpickler, not :func:`dsat.graphite_wire.parse_pickle`'s: the sink reads only what the
    benched DSAT wrote, at the bench's rate, and the pure-Python one that hostile clients need is
    about six times slower.
    """

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} refused")


@dataclass
class Tally:
    """What one phase's load did at the Carbon socket."""

    received: int = 0  # bench datapoints, duplicates included
    delivered: int = 0  # distinct (name, timestamp) of the phase
    duplicates: int | None = 0  # None: too many slots to tell
    stray: int = 0  # bench datapoints of no current phase (an earlier one's stragglers)
    other: int = 0  # datapoints not from the bench (DSAT's own metrics, the topology's collectors)
    undecodable: int = 0  # pickle messages that did not decode
    own: dict[str, float] = field(default_factory=lambda: dict.fromkeys(OWN_COUNTERS, 0.0))
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    last_arrival: float | None = None


class Counting:
    """The counts of the current phase; fed whole buffers, never single datapoints from the socket."""

    def __init__(self) -> None:
        self.phase: Phase | None = None
        self.tally = Tally()
        self.seen: bytearray | None = None
        self.latencies: Counter[int] = Counter()

    def start(self, phase: Phase) -> None:
        self.phase = phase
        self.tally = Tally()
        slots = phase.ticks * phase.names
        self.seen = bytearray(slots // 8 + 1) if slots <= MAX_SLOTS else None
        self.tally.duplicates = 0 if self.seen is not None else None
        self.latencies = Counter()

    def points(self, found: list[tuple[int, int]], others: int, now: float) -> None:
        """*found*: (name index, timestamp) of the bench datapoints in one buffer; *others*: the rest."""
        tally = self.tally
        tally.other += others
        if not found:
            return
        phase = self.phase
        if phase is None:
            tally.stray += len(found)
            return
        tally.last_arrival = now
        by_ts: Counter[int] = Counter()
        seen = self.seen
        for index, ts in found:
            tick = ts - phase.base
            if not (0 <= tick < phase.ticks and index < phase.names):
                tally.stray += 1
                continue
            tally.received += 1
            by_ts[ts] += 1
            if seen is not None:
                slot = tick * phase.names + index
                byte, bit = slot >> 3, 1 << (slot & 7)
                if seen[byte] & bit:
                    tally.duplicates = (tally.duplicates or 0) + 1
                    continue
                seen[byte] |= bit
            tally.delivered += 1
        for ts, count in by_ts.items():
            self.latencies[max(0, round((now - phase.entered(ts)) / BUCKET))] += count
        if seen is None:
            tally.delivered = tally.received

    def own(self, name: str, value: float) -> None:
        self.tally.own[name] += value

    def report(self) -> dict[str, Any]:
        self.tally.latency_ms = latency_summary(self.latencies)
        return asdict(self.tally)


def latency_summary(buckets: Counter[int]) -> dict[str, float | None]:
    """p50, p95, p99 and max in milliseconds of a histogram of :data:`BUCKET`-wide latencies."""
    total = sum(buckets.values())
    out: dict[str, float | None] = {key: None for key in [*(f"p{p}" for p in PERCENTILES), "max"]}
    if not total:
        return out
    keys = sorted(buckets)
    wanted = [(f"p{p}", p / 100 * total) for p in PERCENTILES]
    running = 0
    for key in keys:
        running += buckets[key]
        while wanted and running >= wanted[0][1]:
            out[wanted.pop(0)[0]] = round(key * BUCKET * 1000, 2)
    out["max"] = round(keys[-1] * BUCKET * 1000, 2)
    return out


def parse_plaintext(counting: Counting, complete: bytes, now: float) -> None:
    found = [(int(j), int(ts)) for j, ts in PLAINTEXT_POINT.findall(complete)]
    for name, value in _OWN_PLAINTEXT.findall(complete):
        counting.own(name.decode(), float(value))
    counting.points(found, complete.count(b"\n") - len(found), now)


def parse_pickle(counting: Counting, buffer: bytes, now: float) -> bytes:
    """Count every complete pickle message in *buffer*; returns what is left of it."""
    found: list[tuple[int, int]] = []
    others = 0
    frames, rest = pickle_frames(buffer)
    for body in frames:
        try:
            points = _NoGlobals(io.BytesIO(body)).load()
            for name, (ts, value) in points:
                if m := NAME_INDEX.search(name):
                    found.append((int(m.group(1)), int(ts)))
                    continue
                others += 1
                if own := _OWN_NAME.search(name):
                    counting.own(own.group(1), float(value))
        except (pickle.UnpicklingError, ValueError, TypeError, EOFError, AttributeError):
            counting.tally.undecodable += 1
    counting.points(found, others, now)
    return rest


def serve(
    listeners: list[socket.socket],
    protocol: str,
    control: Connection,
    upstreams: list[tuple[str, int]] | None = None,
) -> None:
    """Count what arrives on *listeners* until the bench says stop; forward to *upstreams* if given."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the bench's to handle: it closes *control*
    counting = Counting()
    selector = selectors.DefaultSelector()
    for i, listener in enumerate(listeners):
        selector.register(listener, selectors.EVENT_READ, ("listen", i))
    selector.register(control, selectors.EVENT_READ, ("control", None))
    buffers: dict[socket.socket, bytes] = {}
    forward: dict[socket.socket, socket.socket] = {}
    while True:
        for key, _ in selector.select():
            kind, index = key.data
            if kind == "control":
                try:
                    message = control.recv()
                except EOFError:
                    return
                if message[0] == "stop":
                    return
                if message[0] == "phase":
                    counting.start(message[1])
                else:
                    control.send(counting.report())
                continue
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if kind == "listen":
                conn, _ = sock.accept()
                selector.register(conn, selectors.EVENT_READ, ("conn", None))
                buffers[conn] = b""
                if upstreams:
                    forward[conn] = socket.create_connection(upstreams[index], timeout=30)
                continue
            chunk = sock.recv(1 << 20)
            if not chunk:
                selector.unregister(sock)
                sock.close()
                buffers.pop(sock, None)
                if sock in forward:
                    forward.pop(sock).close()
                continue
            if sock in forward:
                forward[sock].sendall(chunk)
            now = time.monotonic()
            buffer = buffers[sock] + chunk
            if protocol == "pickle":
                buffers[sock] = parse_pickle(counting, buffer, now)
            else:
                cut = buffer.rfind(b"\n") + 1
                buffers[sock] = buffer[cut:]
                parse_plaintext(counting, buffer[:cut], now)

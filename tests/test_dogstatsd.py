"""DogStatsD's dialect of statsd (protocol v1.3) and what the real ``datadog`` client sends, over UDP and Unix."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from datadog.dogstatsd import DogStatsd
from twisted.internet.task import Clock

from dsat.counters import Rejections
from dsat.datapoint import Datapoint
from dsat.statsd import StatsdAggregator, StatsdProtocol

NOW = 1_700_000_000
TIMER_STATS = 14  # what one timer flushes with the default percentiles


def make() -> StatsdAggregator:
    clock = Clock()
    clock.advance(NOW + 0.4)
    return StatsdAggregator(clock, rejections=Rejections("test"))


def flushed(agg: StatsdAggregator) -> dict[str, float]:
    return {path: value for path, ts, value in agg.flush() if ts == NOW}


def test_histograms_and_distributions_flush_as_timers() -> None:
    """``|h`` and ``|d`` are aggregated as ``|ms`` is, under ``timers.<name>``; unlike a duration they may be
    negative."""
    agg = make()
    agg.receive(b"size:10|h\nsize:30|h|@0.5\nlat:1|d\nlat:-3|d\nmixed:1|ms\nmixed:2|h\nmixed:3|d")
    got = flushed(agg)
    assert agg.rejections == Counter()
    assert got["stats.timers.size.count"] == 3.0 and got["stats.timers.size.upper"] == 30.0
    assert got["stats.timers.size.median"] == 20.0
    assert got["stats.timers.lat.lower"] == -3.0 and got["stats.timers.lat.sum"] == -2.0
    assert got["stats.timers.mixed.count"] == 3.0  # one series, whichever call the application made
    assert len(got) == 3 * TIMER_STATS


def test_packed_values_share_type_rate_and_tags() -> None:
    """Protocol v1.1's ``name:1:2:3|h|@0.5|#k:v`` is three samples with the one type, rate and tags."""
    agg = make()
    agg.receive(b"t:1:2:3|h|@0.5|#k:v\nc:1:2|c|#k:v\ng:5:7|g\nu:a:b|s")
    got = flushed(agg)
    assert got["stats.timers.t.count;k=v"] == 6.0 and got["stats.timers.t.sum;k=v"] == 6.0
    assert got["stats.counters.c.count;k=v"] == 3.0
    assert got["stats.gauges.g"] == 7.0  # the last one
    assert got["stats.sets.u.count"] == 1.0  # a set is not packed: "a:b" is one member
    assert agg.rejections == Counter()


def test_etsy_statsd_multi_samples_still_read_with_dogstatsd_fields() -> None:
    """etsy's ``name:1|c|@0.5:2|ms`` (a ``:`` after the type or the rate starts a sample) and a ``c:`` container
    field (a field after the type) are told apart."""
    agg = make()
    agg.receive(b"a:1|c|@0.5:2|ms\nb:1|c:2|c|c:abc123")
    got = flushed(agg)
    assert got["stats.counters.a.count"] == 2.0 and got["stats.timers.a.count"] == 1.0
    assert got["stats.counters.b.count"] == 3.0
    assert agg.rejections == Counter()


def test_a_timestamp_writes_a_gauge_or_counter_at_its_own_time_unaggregated() -> None:
    """``|T<unix>``: each value goes out at the next flush stamped with its own time, not summed nor kept; the
    aggregated series of the same name are untouched."""
    agg = make()
    agg.receive(
        b"temp:21|g|#room:k1|T1600000000\ntemp:22|g|#room:k1|T1600000060\n"
        b"jobs:3|c|@0.5|T1600000000\njobs:4|c|T1600000000\njobs:1|c\ntemp:30|g|#room:k1"
    )
    assert agg.rejections == Counter()
    points = agg.flush()
    assert sorted(points) == sorted(
        [
            ("stats.gauges.temp;room=k1", 1_600_000_000, 21.0),
            ("stats.gauges.temp;room=k1", 1_600_000_060, 22.0),
            ("stats.counters.jobs.count", 1_600_000_000, 6.0),
            ("stats.counters.jobs.count", 1_600_000_000, 4.0),
            ("stats.counters.jobs.rate", NOW, 0.1),
            ("stats.counters.jobs.count", NOW, 1.0),
            ("stats.gauges.temp;room=k1", NOW, 30.0),
        ]
    )
    assert agg.flush() == [("stats.gauges.temp;room=k1", NOW, 30.0)]  # written once; the held gauge is its own


def test_timestamped_values_are_bounded_by_max_values() -> None:
    """Timestamped points wait for the flush within ``max_values``; past it they are dropped and counted."""
    clock = Clock()
    agg = StatsdAggregator(clock, max_values=2, rejections=Rejections("test"))
    agg.receive(b"g:1|g|T1600000000\ng:2|g|T1600000001\ng:3|g|T1600000002")
    assert agg.rejections == Counter({"too_many_values": 1}) and len(agg.flush()) == 2


def test_origin_detection_fields_are_read_and_ignored() -> None:
    """The container ID ``|c:``, external data ``|e:`` and cardinality ``|card:`` change nothing: same series."""
    agg = make()
    agg.receive(
        b"hits:1|c|#env:prod|c:ci-0123abcd,in-4567\nhits:1|c|#env:prod|e:it-false,cn-app,pu-123|card:low\n"
        b"hits:1|c|#env:prod"
    )
    assert flushed(agg) == {"stats.counters.hits.rate;env=prod": 0.3, "stats.counters.hits.count;env=prod": 3.0}
    assert agg.rejections == Counter()


def test_a_bare_tag_is_dropped_and_counted_and_its_metric_kept() -> None:
    """``#env:prod,production``: the metric lands with ``env=prod``; ``production`` is counted ``bare_tag``."""
    agg = make()
    agg.receive(b"hits:1|c|#env:prod,production\nup:1|g|#canary")
    assert flushed(agg) == {
        "stats.counters.hits.rate;env=prod": 0.1,
        "stats.counters.hits.count;env=prod": 1.0,
        "stats.gauges.up": 1.0,
    }
    assert agg.rejections == Counter({"bare_tag": 2})


def test_events_and_service_checks_are_counted_under_their_own_reasons() -> None:
    """``_e{...}`` and ``_sc|...`` are not metrics: counted ``event`` and ``service_check``, never invalid."""
    agg = make()
    agg.receive(b"_e{5,4}:title|text|#k:v\n_sc|db.up|0|#k:v|m:fine\nok:1|c")
    assert agg.rejections == Counter({"event": 1, "service_check": 1})
    assert set(flushed(agg)) == {"stats.counters.ok.rate", "stats.counters.ok.count"}


# -- the real client ---------------------------------------------------------


@pytest.fixture
def udp_server() -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    yield server
    server.close()


@pytest.fixture
def unix_server(tmp_path: Path) -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "dsd.socket"))
    server.settimeout(5)
    yield server
    server.close()


def client_of(server: socket.socket, container_id: str | None) -> DogStatsd:
    """The ``datadog`` client with its defaults (unbuffered, no thread), pointed at *server*; telemetry off; with a
    container ID, the cardinality field too (both as origin detection sends them)."""
    address = server.getsockname()
    where = {"socket_path": address} if isinstance(address, str) else {"host": address[0], "port": address[1]}
    origin = (
        {"container_id": container_id, "cardinality": "low"} if container_id else {"origin_detection_enabled": False}
    )
    # socket_timeout=None: the client waits for room in the socket's queue instead of dropping
    options = {**where, **origin, "disable_telemetry": True, "constant_tags": ["app:web"], "socket_timeout": None}
    return DogStatsd(**options)  # type: ignore[arg-type]


def every_method(client: DogStatsd) -> int:
    """Calls each method of the client once (what an application does); returns how many datagrams it sent."""
    client.gauge("dd.gauge", 12, tags=["env:prod"])
    client.increment("dd.count", tags=["env:prod", "production"])  # a bare tag
    client.increment("dd.count", 2, sample_rate=1)
    client.decrement("dd.count")
    client.count("dd.count", 5)
    client.histogram("dd.hist", 250, tags=["env:prod"])
    client.distribution("dd.dist", 0.5, tags=["env:prod"])
    client.timing("dd.timing", 320)
    with client.timed("dd.timed"):
        pass
    client.set("dd.set", "alice")
    client.gauge_with_timestamp("dd.tsgauge", 7, 1_600_000_000, tags=["env:prod"])
    client.count_with_timestamp("dd.tscount", 3, 1_600_000_000)
    client.event("Deployed", "version 42", alert_type="success", tags=["env:prod"])
    client.service_check("dd.check", DogStatsd.OK, tags=["env:prod"], message="fine")
    return 14


def sent_by(client: DogStatsd, server: socket.socket) -> list[tuple[bytes, object]]:
    """What *server* received while the client called every method: read as it comes, as a Unix datagram
    socket's queue holds only a few datagrams (the client, not blocking, drops what does not fit)."""
    got: list[tuple[bytes, object]] = []
    reader = threading.Thread(target=lambda: got.extend(server.recvfrom(65536) for _ in range(14)))
    reader.start()
    assert every_method(client) == 14
    reader.join(10)
    return got


@pytest.mark.parametrize("transport", ["udp", "unix"])
@pytest.mark.parametrize("container_id", [None, "0123456789abcdef" * 4])
def test_every_method_of_the_datadog_client_lands(
    transport: str, container_id: str | None, request: pytest.FixtureRequest
) -> None:
    """Each method of ``datadog.DogStatsd`` (0.56), with and without a container ID, over UDP and a Unix datagram
    socket: every metric lands (a bare tag dropped and counted), events and service checks are counted apart."""
    server = request.getfixturevalue(f"{transport}_server")
    client = client_of(server, container_id)
    datagrams = sent_by(client, server)
    client.close_socket()
    assert len(datagrams) == 14
    assert all(b"|c:" + container_id.encode() + b"|card:low" in data for data, _ in datagrams if container_id)
    agg = make()
    batches: list[list[Datapoint]] = []
    protocol = StatsdProtocol(agg, batches.append)
    for data, addr in datagrams:
        protocol.datagramReceived(data, addr)  # type: ignore[arg-type]
    protocol.flush()
    points = {(path, ts): value for path, ts, value in batches[0]}
    assert agg.rejections == Counter({"bare_tag": 1, "event": 1, "service_check": 1})
    assert points[("stats.gauges.dd.gauge;app=web;env=prod", NOW)] == 12.0
    assert points[("stats.counters.dd.count.count;app=web;env=prod", NOW)] == 1.0
    assert points[("stats.counters.dd.count.count;app=web", NOW)] == 2 - 1 + 5
    assert points[("stats.timers.dd.hist.upper;app=web;env=prod", NOW)] == 250.0
    assert points[("stats.timers.dd.dist.upper;app=web;env=prod", NOW)] == 0.5
    assert points[("stats.timers.dd.timing.upper;app=web", NOW)] == 320.0
    assert points[("stats.timers.dd.timed.count;app=web", NOW)] == 1.0
    assert points[("stats.sets.dd.set.count;app=web", NOW)] == 1.0
    assert points[("stats.gauges.dd.tsgauge;app=web;env=prod", 1_600_000_000)] == 7.0
    assert points[("stats.counters.dd.tscount.count;app=web", 1_600_000_000)] == 3.0
    assert len(points) == 1 + 2 * 2 + 4 * TIMER_STATS + 1 + 2


def test_the_orchester_receives_dogstatsd_on_its_unix_socket_into_the_statsd_aggregator(tmp_path: Path) -> None:
    """[ingress] statsd_socket: on a real reactor, the orchester's listeners take the datadog client's
    socket_path datagrams into the aggregator the UDP port feeds (one counter, summed across both); the socket
    is writable by every user; after the listeners close, listening again on the path takes over the file."""
    import stat
    import time
    from types import SimpleNamespace

    from twisted.internet.selectreactor import SelectReactor

    from dsat.flow import Producers
    from dsat.process import Listeners
    from dsat.tools.stack import free_port
    from dsat.topology import IngressConf

    reactor = SelectReactor()
    port, path = free_port(), tmp_path / "dsd.socket"
    landed: dict[str, float] = {}

    def ingest(points: list[Datapoint]) -> None:
        for name, _, value in points:
            landed[name] = landed.get(name, 0.0) + value

    orch = SimpleNamespace(ingest=ingest, rejected=Rejections("test"), egress=SimpleNamespace(producers=Producers()))
    conf = IngressConf(statsd=("127.0.0.1", port), statsd_socket=path, statsd_flush=0.2)
    listeners = Listeners(reactor, SimpleNamespace(ingress=conf, path=None))  # type: ignore[arg-type]
    try:
        for attempt in range(2):  # the second time, the socket file the first listeners left is taken over
            landed.clear()
            listeners.listen(orch)  # type: ignore[arg-type]
            assert stat.S_IMODE(path.stat().st_mode) & 0o022 == 0o022
            unix = DogStatsd(socket_path=str(path), origin_detection_enabled=False, disable_telemetry=True)
            unix.increment("hits", 2, tags=["env:prod"])
            unix.histogram("size", 512, tags=["env:prod"])
            unix.close_socket()
            udp = DogStatsd(host="127.0.0.1", port=port, origin_detection_enabled=False, disable_telemetry=True)
            udp.increment("hits", 1, tags=["env:prod"])
            udp.close_socket()
            expected = {"stats.counters.hits.count;env=prod": 3.0, "stats.timers.size.upper;env=prod": 512.0}
            deadline = time.monotonic() + 4
            while any(landed.get(name) != value for name, value in expected.items()) and time.monotonic() < deadline:
                reactor.iterate(0.05)
            assert {name: landed.get(name) for name in expected} == expected, attempt
            assert not orch.rejected
            closed: list[object] = []
            listeners.close().addBoth(closed.append)
            while not closed and time.monotonic() < deadline:
                reactor.iterate(0.05)
            assert closed, "the listeners did not close"
    finally:
        reactor.removeAll()
        reactor.waker.connectionLost(None)

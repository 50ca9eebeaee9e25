"""End to end: Graphite 1.1 tagged series from plaintext, pickle, statsd and DogStatsD clients to seriesByTag in
graphite-web.

One ``dsat demo`` stack (real carbon-cache with ``ENABLE_TAGS``, Whisper,
graphite-web with its TagDB, over real sockets and HTTP) takes tagged
datapoints from each kind of client; the tests then ask graphite-web for them
by tag, list the tag keys it knows, and check what was refused.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import socket
import struct
import time
import urllib.parse
import urllib.request

import pytest
from carbon.util import TaggedSeries
from datadog.dogstatsd import DogStatsd

from dsat import topology
from tests.harness import render, wait_for

pytestmark = pytest.mark.e2e


def series_values(url: str, target: str) -> dict[str, list[float]]:
    """Each series *target* renders and its non-null values; empty while graphite-web cannot serve it."""
    try:
        series = render(url, target)
    except OSError:
        return {}
    return {s["target"]: [v for v, _ts in s["datapoints"] if v is not None] for s in series}


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def sent(demo):
    """Tagged datapoints sent once over plaintext (with a refused one in the batch), pickle and statsd."""
    conf = topology.load(demo["topology"]).ingress
    assert conf.plaintext and conf.pickle and conf.statsd
    # one 10 s Whisper slot, already closed, taken now: render() reads the last 10 minutes, and a suite run
    # takes longer than that between importing this module and running it
    now = int(time.time()) // 10 * 10 - 10
    with socket.create_connection(conf.plaintext) as client:
        client.sendall(
            f"tags.e2e.plain;host=web01;dc=eu 42 {now}\n"  # tags out of order: stored canonical
            f"tags.e2e.bad;dc=~eu 666 {now}\n"  # carbon refuses a value starting with ~
            f"tags.e2e.untagged 7 {now}\n".encode()
        )
    body = pickle.dumps([("tags.e2e.pickle;host=web02;dc=eu", (now, 43.0))], protocol=2)
    with socket.create_connection(conf.pickle) as client:
        client.sendall(struct.pack("!L", len(body)) + body)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"tags.e2e.hits:5|c|#host:web03,dc:eu", conf.statsd)
    # the Datadog client as an application in a container runs it: its container ID (|c:) and cardinality on
    # every line, a histogram, a distribution with a bare tag, a gauge at its own timestamp (|T)
    dogstatsd = DogStatsd(
        host=conf.statsd[0],
        port=conf.statsd[1],
        container_id="abc123",
        cardinality="low",
        disable_telemetry=True,
        socket_timeout=None,
    )
    dogstatsd.histogram("tags.e2e.latency", 250, tags=["host:web04", "dc:eu"])
    dogstatsd.distribution("tags.e2e.size", 512, tags=["host:web05", "dc:eu", "production"])
    dogstatsd.gauge_with_timestamp("tags.e2e.temp", 21.5, now, tags=["host:web06", "dc:eu"])
    dogstatsd.close_socket()
    return {**demo, "now": now}


def test_tagged_datapoints_from_every_client_render_by_tag(sent) -> None:
    """seriesByTag('dc=eu', ...) finds the plaintext, pickle and statsd series under canonical names, exact values."""
    url = sent["url"]
    expected = {
        "tags.e2e.plain;dc=eu;host=web01": [42.0],
        "tags.e2e.pickle;dc=eu;host=web02": [43.0],
        "stats.counters.tags.e2e.hits.count;dc=eu;host=web03": [5.0],
    }
    target = "seriesByTag('dc=eu','name=~^(tags|stats\\.counters\\.tags)\\.e2e\\.(plain|pickle|hits\\.count)$')"

    def found() -> dict[str, list[float]]:
        return {name: values for name, values in series_values(url, target).items() if values}

    assert wait_for(lambda: found() == expected, 60, "the three tagged series by tag", detail=found)
    one = series_values(url, "seriesByTag('name=tags.e2e.plain','host=web01')")
    assert one == {"tags.e2e.plain;dc=eu;host=web01": [42.0]}


def test_dogstatsd_as_its_client_sends_it_renders_by_tag(sent) -> None:
    """The datadog client's histogram and distribution land as timers, its |T gauge at its own timestamp, the
    container ID ignored and the bare tag dropped: seriesByTag finds each under its canonical name."""
    url = sent["url"]
    expected = {
        "stats.timers.tags.e2e.latency.upper;dc=eu;host=web04": [250.0],
        "stats.timers.tags.e2e.size.upper;dc=eu;host=web05": [512.0],
        "stats.gauges.tags.e2e.temp;dc=eu;host=web06": [21.5],
    }
    target = "seriesByTag('dc=eu','name=~^stats\\.(timers|gauges)\\.tags\\.e2e\\.(latency\\.upper|size\\.upper|temp)$')"

    def found() -> dict[str, list[float]]:
        return {name: values for name, values in series_values(url, target).items() if values}

    assert wait_for(lambda: found() == expected, 60, "the DogStatsD series by tag", detail=found)
    temp = render(url, "seriesByTag('name=stats.gauges.tags.e2e.temp')")
    assert [ts for value, ts in temp[0]["datapoints"] if value is not None] == [sent["now"]]


def test_graphite_web_lists_the_tag_keys(sent) -> None:
    """/tags/autoComplete/tags lists the keys carbon registered for the tagged series (dc, host, name)."""
    url = sent["url"]
    query = urllib.parse.urlencode({"expr": "name=tags.e2e.plain"})

    def keys() -> object:
        try:
            return get_json(f"{url}tags/autoComplete/tags?{query}")
        except OSError:
            return None

    assert wait_for(lambda: {"dc", "host"} <= set(keys() or ()), 60, "the tag keys in graphite-web", detail=keys)
    assert "host" in get_json(f"{url}tags/autoComplete/tags?tagPrefix=ho")  # type: ignore[operator]


def test_a_refused_tag_is_counted_and_the_rest_of_its_batch_lands(sent) -> None:
    """The line with a bad tag is counted as bad_tag and makes no file; the untagged line of its batch is stored."""
    url, whisper_dir = sent["url"], sent["whisper"]
    assert wait_for(lambda: series_values(url, "tags.e2e.untagged").get("tags.e2e.untagged") == [7.0], 60, "the line")
    counted = re.compile(r"orchester: rejected \(bad_tag\): 1 from 127\.0\.0\.1:\d+; 1 so far")
    assert wait_for(lambda: counted.search(sent["procs"].log_of(sent["proc"])), 30, "the bad_tag rejection logged")
    assert "tags.e2e.bad" not in json.dumps(series_values(url, "seriesByTag('dc=~eu')"))
    stored = {os.path.relpath(os.path.join(d, f), whisper_dir) for d, _, files in os.walk(whisper_dir) for f in files}
    refused = "tags.e2e.bad;dc=~eu"
    assert not any("e2e/bad" in path for path in stored)
    assert TaggedSeries.encode(refused, os.sep, hash_only=True) + ".wsp" not in stored
    plain = "tags.e2e.plain;dc=eu;host=web01"
    assert TaggedSeries.encode(plain, os.sep, hash_only=True) + ".wsp" in stored  # under _tagged/, hashed
    own = whisper_dir / "dsat" / sent["where"] / "self" / "orchester" / "rejected" / "bad_tag.wsp"
    assert wait_for(own.exists, 30, "the bad_tag count among DSAT's own metrics")

"""End to end: Graphite 1.1 tagged series from plaintext, pickle and statsd clients to seriesByTag in graphite-web.

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
    return demo


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

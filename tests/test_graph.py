"""``dsat graph``: the dot text of a topology parses with Graphviz and shows steps, hosts, links, routes, carbon."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from dsat import topology
from dsat.tools import graph
from tests.harness import ROOT, install_missing_programs

DEMO = ROOT / "dsat" / "demo.toml"
ROUTED = """
[hosts.hub]
address = "10.0.0.1"
[hosts.web01]
address = "10.0.0.11"
[orchester.routes]
"*" = ["carbon"]
counter = ["keep", "carbon"]
[carbon]
destinations = ["127.0.0.1:2004:a", "127.0.0.1:2104:b"]
protocol = "plaintext"
replication = 2
[satellites.cpu]
use = "cpu"
every = "10s"
host = "web01"
[satellites.keep]
use = "capture"
pattern = "sub"
options = { path = "kept.txt" }
"""


@pytest.fixture(scope="module")
def dot() -> None:
    install_missing_programs({"dot": "graphviz"})


def parsed(text: str) -> dict[str, Any]:
    """Graphviz's own reading of dot text, as JSON (``dot -Tjson``)."""
    done = subprocess.run(["dot", "-Tjson"], input=text, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def edges(doc: dict[str, Any]) -> set[tuple[str, str, str]]:
    names = {obj["_gvid"]: obj["name"] for obj in doc["objects"] if "nodes" not in obj}
    return {(names[e["tail"]], names[e["head"]], e.get("label", "")) for e in doc.get("edges", [])}


@pytest.mark.integration  # runs Graphviz's dot
def test_the_demo_graph_parses_and_shows_every_step_link_and_destination(dot: None) -> None:
    """The demo: every satellite, the ingress listeners, push → pull links and the pickle egress to its cache."""
    doc = parsed(graph.to_dot(topology.load(DEMO)))
    drawn = edges(doc)
    assert ("cpu", "rate", "push → pull") in drawn
    assert ("rate", "orchester", "push → pull") in drawn
    assert ("orchester", "carbon-cache 127.0.0.1:2104", "type * / pickle") in drawn
    assert ("ingress statsd", "orchester", "statsd") in drawn
    nodes = {obj["name"] for obj in doc["objects"] if "nodes" not in obj}
    assert {"tracker", "orchester", "cpu", "memory", "load", "disk", "disk_usage", "network", "rate"} <= nodes


@pytest.mark.integration  # runs Graphviz's dot
def test_routes_by_type_hosts_and_every_destination_are_drawn(tmp_path: Path, dot: None) -> None:
    """Routes carry their types, a link its pattern, each host its own cluster, each destination its own node."""
    path = tmp_path / "routed.toml"
    path.write_text(ROUTED)
    doc = parsed(graph.to_dot(topology.load(path)))
    drawn = edges(doc)
    assert ("orchester", "keep", "type counter / pub → sub") in drawn
    assert (
        "orchester",
        "carbon-cache 127.0.0.1:2004:a",
        "type *, counter / plaintext, carbon_ch, replication 2",
    ) in drawn
    assert (
        "orchester",
        "carbon-cache 127.0.0.1:2104:b",
        "type *, counter / plaintext, carbon_ch, replication 2",
    ) in drawn
    clusters = {obj["label"] for obj in doc["objects"] if "nodes" in obj}
    assert clusters == {"host hub", "host web01"}
    web01 = next(obj for obj in doc["objects"] if obj.get("label") == "host web01")
    names = {obj["_gvid"]: obj["name"] for obj in doc["objects"] if "nodes" not in obj}
    assert [names[n] for n in web01["nodes"]] == ["cpu"]


def test_quote_keeps_any_name_one_dot_id() -> None:
    """Quotes, backslashes and newlines in a name stay inside one quoted dot ID."""
    assert graph.quote('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'


@pytest.mark.integration  # runs dsat graph and dot
def test_dsat_graph_writes_svg_that_is_xml(tmp_path: Path, dot: None) -> None:
    """dsat graph --format svg -o FILE writes an SVG document with a node per step."""
    out = tmp_path / "demo.svg"
    done = subprocess.run(
        [sys.executable, "-m", "dsat", "graph", str(DEMO), "--format", "svg", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg")
    titles = {el.text for el in root.iter("{http://www.w3.org/2000/svg}title")}
    assert {"orchester", "rate", "cpu"} <= titles


def test_the_docs_picture_is_the_demo_as_dsat_graph_draws_it(dot: None) -> None:
    """docs/_static/demo-topology.svg shows the demo's steps today (docs/bench.rst has the command that draws it)."""
    root = ET.parse(ROOT / "docs" / "_static" / "demo-topology.svg").getroot()
    titles = {el.text for el in root.iter("{http://www.w3.org/2000/svg}title")}
    steps = set(topology.load(DEMO).satellites)
    assert steps | {"orchester", "tracker"} <= titles

"""End to end: the demo topology with a real carbon-cache, real Whisper files and real graphite-web.

``dsat demo`` starts everything as real processes on free ports; the tests
read Whisper files from disk and ask graphite-web over HTTP.  Collectors run
every second here (the demo's 10 s would only make the test slower).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import psutil
import pytest
import whisper

from tests.harness import ROOT, render, wait_for

pytestmark = pytest.mark.e2e


def render_png(url: str, target: str) -> bytes:
    """graphite-web's PNG of *target* (drawn even when the series hold no points)."""
    query = urllib.parse.urlencode({"target": target, "from": "-10min", "width": 400, "height": 200})
    with urllib.request.urlopen(f"{url}render?{query}", timeout=10) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
        return resp.read()


def non_null_series(url: str, target: str) -> list[str]:
    try:
        series = render(url, target)
    except OSError:
        return []
    return [s["target"] for s in series if any(v is not None for v, _ts in s["datapoints"])]


def test_whisper_files_appear_at_the_documented_paths(demo) -> None:
    """Every path docs/naming.rst lists for the demo stack becomes a Whisper file inside the Whisper dir."""
    documented = documented_demo_paths()
    assert len(documented) > 20
    where = demo["where"]

    def missing() -> list[str]:
        return [
            p
            for p in documented
            if not (demo["whisper"] / (p.replace("<where>", where).replace(".", "/") + ".wsp")).exists()
        ]

    wait_for(lambda: not missing(), 60, "the documented Whisper files", interval=1, detail=missing)
    for wsp in demo["whisper"].rglob("*.wsp"):
        assert wsp.resolve().is_relative_to(demo["whisper"].resolve())
    cpu_user = demo["whisper"] / "dsat" / where / "cpu" / "total" / "user.wsp"
    info = whisper.info(str(cpu_user))
    assert info["archives"][0]["secondsPerPoint"] == 10


def test_graphite_web_renders_host_and_dsat_metrics(demo) -> None:
    """graphite-web's /render?format=json returns non-null points for cpu rates and DSAT's own metrics."""
    url, where = demo["url"], demo["where"]
    cpu = wait_for(lambda: non_null_series(url, f"dsat.{where}.cpu.total.*"), 60, "cpu rates in graphite-web")
    assert f"dsat.{where}.cpu.total.user" in cpu
    own = wait_for(
        lambda: non_null_series(url, f"dsat.{where}.self.steps.*.batches_sent"),
        60,
        "DSAT's own metrics in graphite-web",
    )
    assert f"dsat.{where}.self.steps.cpu.batches_sent" in own
    memory = wait_for(lambda: non_null_series(url, f"dsat.{where}.memory.virtual.used"), 30, "memory gauge")
    assert memory


def test_rates_are_plausible(demo) -> None:
    """cpu seconds become per-second rates: user+system+idle of all cores is about the core count."""
    url, where = demo["url"], demo["where"]
    target = f"sumSeries(dsat.{where}.cpu.total.{{user,system,idle,iowait,nice}})"
    wait_for(lambda: non_null_series(url, target), 60, "summed cpu rates")
    values = [v for v, _ in render(url, target)[0]["datapoints"] if v is not None]
    cores = psutil.cpu_count()
    assert all(0.5 * cores < v < 1.5 * cores for v in values[-3:]), values


def test_status_reports_happy_ends_per_step(demo) -> None:
    """`dsat status` reads the running tracker: batches end well; each step has counters and heartbeats."""

    def happy() -> dict | None:
        out = subprocess.run(
            [sys.executable, "-m", "dsat", "status", "--json", str(demo["topology"])],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if out.returncode != 0:
            return None
        snap = json.loads(out.stdout)
        return snap if snap["tasks"]["happy_end"] >= 10 and steps <= set(snap["heartbeats"]) else None

    from dsat import topology

    steps = {*topology.load(demo["topology"]).satellites, "orchester"}
    snap = wait_for(happy, 60, "happy ends and every step's heartbeat in dsat status")
    assert snap["steps"]["cpu"]["batches_sent"] > 0
    assert snap["steps"]["rate"]["batches_received"] > 0
    assert snap["steps"]["orchester"]["batches_ended"] > 0
    # every step but the tracker (which answered this very request) has sent heartbeats
    missing = steps - set(snap["heartbeats"])
    assert not missing, missing
    text = subprocess.run(
        [sys.executable, "-m", "dsat", "status", str(demo["topology"])],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    assert "orchester" in text and "received" in text


def documented_demo_paths() -> list[str]:
    """The literal paths in docs/naming.rst's demo tree (``dsat.<where>....``, no wildcards)."""
    text = (ROOT / "docs" / "naming.rst").read_text()
    block = text.split(".. demo-tree-start", 1)[1].split(".. demo-tree-end", 1)[0]
    return [line.split()[0] for line in block.splitlines() if line.strip().startswith("dsat.<where>.")]


def test_a_graphite_client_can_send_to_the_demo(demo) -> None:
    """A plaintext line sent to the demo's ingress port shows in graphite-web."""
    from dsat import topology

    topo = topology.load(demo["topology"])
    assert topo.ingress.plaintext is not None
    now = int(time.time())
    with socket.create_connection(topo.ingress.plaintext) as client:
        client.sendall(f"myapp.requests 42 {now}\n".encode())
    assert wait_for(lambda: non_null_series(demo["url"], "myapp.requests"), 30, "the client's point in graphite-web")


def test_graphite_web_serves_its_ui(demo) -> None:
    """The graphite-web UI and its static files are served by the WSGI server (no development server)."""
    url = demo["url"]
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200 and b"Graphite" in resp.read()
    with urllib.request.urlopen(f"{url}static/js/composer_widgets.js", timeout=10) as resp:
        assert resp.status == 200 and len(resp.read()) > 1000
    with urllib.request.urlopen(f"{url}metrics/find?query=dsat.*", timeout=10) as resp:
        assert json.loads(resp.read())[0]["text"] == demo["where"]


def test_graphite_web_on_the_pinned_django_draws_png_and_serves_composer_and_tags(demo) -> None:
    """On Django 3.2 (pinned in dsat[graphite]) graphite-web draws a PNG graph, serves the composer and
    answers the tags API: a series tagged through it is found by its tag."""
    import django

    assert django.VERSION[:2] == (3, 2)
    url, where = demo["url"], demo["where"]
    wait_for(lambda: non_null_series(url, f"dsat.{where}.load.*"), 60, "load averages in graphite-web")
    query = urllib.parse.urlencode({"target": f"dsat.{where}.load.*", "from": "-10min", "format": "png"})
    with urllib.request.urlopen(f"{url}render?{query}", timeout=20) as resp:
        assert resp.headers["Content-Type"] == "image/png" and resp.read().startswith(b"\x89PNG\r\n")
    with urllib.request.urlopen(f"{url}composer/", timeout=10) as resp:
        assert resp.status == 200 and b"Composer" in resp.read()
    body = urllib.parse.urlencode({"path": "dsat.tagged;server=web01;app=shop"}).encode()
    with urllib.request.urlopen(f"{url}tags/tagSeries", data=body, timeout=10) as resp:
        assert json.loads(resp.read()) == "dsat.tagged;app=shop;server=web01"
    with urllib.request.urlopen(f"{url}tags/findSeries?expr=server%3Dweb01", timeout=10) as resp:
        assert json.loads(resp.read()) == ["dsat.tagged;app=shop;server=web01"]


def test_the_demo_dashboard_is_installed_and_every_graph_has_data(demo) -> None:
    """graphite-web starts with carbon_conf/dashboards/dsat.json installed, and its graphs draw real series."""
    url = demo["url"]
    shipped = json.loads((ROOT / "carbon_conf" / "dashboards" / "dsat.json").read_text())
    with urllib.request.urlopen(f"{url}dashboard/load/dsat", timeout=10) as resp:
        assert json.loads(resp.read())["state"] == shipped
    with urllib.request.urlopen(f"{url}dashboard/dsat", timeout=10) as resp:
        page = resp.read()
    assert b"initialState" in page
    assert b"Invalid theme" not in page  # graphite-web finds its dashboard CSS (carbon_conf's WEBAPP_DIR)
    # Interfaces and disks are the machine's; the rest is always there.
    optional = {
        "network": not [nic for nic in psutil.net_io_counters(pernic=True) if nic != "lo"],
        "disk.io": not psutil.disk_io_counters(perdisk=True),
        "errors": True,  # a healthy demo has no errors to draw; the graph must still render
    }
    for _graph_id, params, _url in shipped["graphs"]:
        targets = params["target"]
        may_be_empty = any(key in params["title"].lower() or key in targets[0] for key, ok in optional.items() if ok)
        if may_be_empty:
            for target in targets:
                assert render_png(url, target).startswith(b"\x89PNG\r\n\x1a\n"), target
            continue
        found = wait_for(
            lambda targets=targets: [name for target in targets for name in non_null_series(url, target)],
            60,
            f"data for the dashboard graph {params['title']!r}",
        )
        assert found

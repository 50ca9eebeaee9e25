"""End to end: the demo topology with a real carbon-cache, real Whisper files and real graphite-web.

``dsat demo`` starts everything as real processes on free ports; the tests
read Whisper files from disk and ask graphite-web over HTTP.  Collectors run
every second here (the demo's 10 s would only make the test slower).
"""

from __future__ import annotations

import datetime
import html
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zoneinfo
from pathlib import Path
from typing import Any

import psutil
import pytest
import whisper

from dsat.tools.stack import LocalStack
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
    """On the Django dsat[graphite] pins (5.2 LTS) graphite-web draws a PNG graph, serves the composer and
    answers the tags API: a series tagged through it is found by its tag, its tag and value auto-complete,
    seriesByTag renders it, and it can be deleted; graphite-web started without a warning about Django."""
    import django

    from tests.test_django_compat import pinned_django

    assert django.get_version() == pinned_django() and django.VERSION[:2] == (5, 2)
    url, where = demo["url"], demo["where"]
    wait_for(lambda: non_null_series(url, f"dsat.{where}.load.*"), 60, "load averages in graphite-web")
    query = urllib.parse.urlencode({"target": f"dsat.{where}.load.*", "from": "-10min", "format": "png"})
    with urllib.request.urlopen(f"{url}render?{query}", timeout=20) as resp:
        assert resp.headers["Content-Type"] == "image/png" and resp.read().startswith(b"\x89PNG\r\n")
    with urllib.request.urlopen(f"{url}composer/", timeout=10) as resp:
        assert resp.status == 200 and b"Composer" in resp.read()
    assert post(url, "tags/tagSeries", path="dsat.tagged;server=web01;app=shop") == "dsat.tagged;app=shop;server=web01"
    assert get_json(url, "tags/findSeries?expr=server%3Dweb01") == ["dsat.tagged;app=shop;server=web01"]
    assert get_json(url, "tags/autoComplete/tags?tagPrefix=serv") == ["server"]
    assert get_json(url, "tags/autoComplete/values?tag=server&valuePrefix=web") == ["web01"]
    assert {t["tag"] for t in get_json(url, "tags")} >= {"app", "name", "server"}
    assert get_json(url, "tags/server")["values"][0]["value"] == "web01"
    assert post(url, "tags/delSeries", path="dsat.tagged;app=shop;server=web01") is True
    assert get_json(url, "tags/findSeries?expr=server%3Dweb01") == []
    assert "security support" not in demo["procs"].log_of(demo["proc"])


def get_json(url: str, path: str) -> Any:
    with urllib.request.urlopen(f"{url}{path}", timeout=20) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def post(url: str, route: str, **fields: str) -> Any:
    with urllib.request.urlopen(f"{url}{route}", data=urllib.parse.urlencode(fields).encode(), timeout=20) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def status(url: str, path: str, data: bytes | None = None) -> tuple[int, str, bytes]:
    """HTTP status, content type and body of *path*; an error status is an answer too."""
    try:
        with urllib.request.urlopen(f"{url}{path}", data=data, timeout=30) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


# The functions menu of graphite-web's composer and dashboard (createFunctionsMenu in the installed
# composer_widgets.js): applyFuncToAll('f') calls f on every target of the graph at once,
# applyFuncToEach('f'[, 'arg']) on each target, applyFuncToEachWithInput('f', 'question') with what the user types.
MENU_ITEM = re.compile(r"applyFuncTo(All|Each|EachWithInput)\('(\w+)'(?:,\s*'((?:[^'\\]|\\.)*)')?")
# What a user would answer each question of the menu ('' leaves it blank; None: the item takes series only).
MENU_INPUT = {
    "add": "5", "delay": "2", "hitcount": "'1min'", "integralByInterval": "'1h'", "log": "10",
    "nonNegativeDerivative": "", "offset": "3", "percentileOfSeries": "95", "pow": "2", "powSeries": None,
    "summarize": "'1min'", "scale": "2", "scaleToSeconds": "60", "timeShift": "'10min'", "timeSlice": "'-30min'",
    "perSecond": "", "movingAverage": "5", "movingMedian": "5", "stdev": "5", "movingSum": "5", "movingMin": "5",
    "movingMax": "5", "linearRegression": "'-30min'", "asPercent": "", "exponentialMovingAverage": "5",
    "removeAboveValue": "5", "removeAbovePercentile": "90", "removeBelowValue": "1", "removeBelowPercentile": "10",
    "mostDeviant": "2", "highestCurrent": "2", "lowestCurrent": "2", "highestMax": "2", "nPercentile": "50",
    "removeBetweenPercentile": "50", "currentAbove": "0", "currentBelow": "100", "highestAverage": "2",
    "lowestAverage": "2", "averageAbove": "0", "averageBelow": "100", "averageOutsidePercentile": "90",
    "maximumAbove": "0", "maximumBelow": "100", "minimumAbove": "-100", "minimumBelow": "100", "limit": "2",
    "exclude": "'x'", "grep": "'y'", "removeEmptySeries": "", "alias": "'renamed'", "aliasByNode": "2",
    "color": "'red'", "alpha": "0.5", "lineWidth": "2", "keepLastValue": "", "transformNull": "0", "substr": "1",
    "threshold": "5", "group": None,
}  # fmt: skip
# Menu items that fail in graphite-web 1.1.10 itself, on Django 3.2 as on 5.2 (checked side by side): the
# error each gives, and a call of the same function as its documentation writes it, which works.
GRAPHITE_WEB_BUGS = {
    # without the week of history before the graph it bootstraps on, its bands come out shorter than the series
    "holtWintersAberration": ("IndexError: list index out of range", None),
    # a None in the series (a gap) reaches a comparison; the documented calls are made on 40 minutes without one
    "removeBetweenPercentile": ("not supported between instances of", "removeBetweenPercentile(menu.x,50)"),
    # the menu calls it on all targets at once; it takes one seriesList
    "isNonNull": ("isNonNull() takes 2 positional arguments", "isNonNull(menu.{x,y})"),
    # the menu passes the series as the threshold's value; only the PNG's legend trips on it
    "threshold": ("object has no attribute", "threshold(5,'limit','red')"),
}
MENU_SERIES = "menu.{x,y}"
# Holt-Winters bootstraps on the week before the graph: an hour of data gives it nothing to draw.
NEEDS_A_WEEK = {"holtWintersForecast", "holtWintersConfidenceBands"}


def menu_items() -> list[tuple[str, str, str]]:
    js = (Path(sys.prefix) / "webapp" / "content" / "js" / "composer_widgets.js").read_text()
    menu = js[js.index("function createFunctionsMenu") :]
    return MENU_ITEM.findall(menu[: menu.index("\n}\n")])


def menu_target(kind: str, name: str, extra: str) -> str:
    if kind == "All" or (kind == "EachWithInput" and MENU_INPUT[name] is None):
        return f"{name}(menu.x,menu.y)"
    arg = extra if kind == "Each" else MENU_INPUT[name]
    return f"{name}({MENU_SERIES}{',' + arg if arg else ''})"


def write_menu_series(whisper_dir: Path, now: int) -> None:
    """menu.x and menu.y: an hour at 10 s, the last 50 minutes filled (x 1..7, y 2..8), so a gap leads."""
    for offset, name in enumerate(("x", "y")):
        path = whisper_dir / "menu" / f"{name}.wsp"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            whisper.create(str(path), [(10, 360)])
        whisper.update_many(str(path), [(now - i * 10, float(i % 7 + 1 + offset)) for i in range(300)])


def test_every_function_of_the_composer_and_dashboard_menu_renders(demo) -> None:
    """Each of the 113 items of graphite-web's functions menu, applied as the UI applies it, renders JSON with
    series and a PNG; the four that fail in graphite-web 1.1.10 itself fail with its own error, and the same
    functions called as documented render."""
    url = demo["url"]
    write_menu_series(demo["whisper"], int(time.time()))
    items = menu_items()
    assert len(items) >= 100, "the menu's items were not found in composer_widgets.js"
    assert {name for kind, name, _ in items if kind == "EachWithInput"} <= set(MENU_INPUT)
    failed = []
    for kind, name, extra in items:
        target = menu_target(kind, name, extra)
        for fmt in ("json", "png"):
            code, ctype, body = status(
                url, "render?" + urllib.parse.urlencode({"target": target, "from": "-1h", "format": fmt})
            )
            if name in GRAPHITE_WEB_BUGS and code == 500:
                assert GRAPHITE_WEB_BUGS[name][0] in html.unescape(body.decode(errors="replace")), (target, fmt)
                continue
            if code != 200:
                failed.append((target, fmt, code))
            elif fmt == "json":
                series = json.loads(body)
                assert isinstance(series, list) and (series or name in NEEDS_A_WEEK), target
                assert all(s["datapoints"] for s in series), target
            else:
                assert ctype == "image/png" and body.startswith(b"\x89PNG\r\n"), target
    assert not failed, failed
    for name, (_, call) in GRAPHITE_WEB_BUGS.items():
        if call:
            code, _, body = status(
                url,
                "render?"
                + urllib.parse.urlencode({"target": call, "from": "-40min", "until": "-1min", "format": "json"}),
            )
            assert code == 200 and json.loads(body), (name, call, body[-500:])


def test_the_function_list_api_describes_every_function(demo) -> None:
    """/functions (graphite-web's and Grafana's function editors read it) lists every render function
    with its signature; it needs the inspect functions Python 3.11 removed (dsat.tools.django_compat)."""
    functions = get_json(demo["url"], "functions")
    assert len(functions) >= 150 and {name for _, name, _ in menu_items()} <= set(functions)
    assert functions["aliasByNode"]["function"] == "aliasByNode(seriesList, *nodes)"
    assert get_json(demo["url"], "functions/movingAverage")["group"] == "Calculate"


def test_graphite_web_views_answer_on_django_5(demo) -> None:
    """Every view of graphite-web a DSAT stack serves answers: the browser tree, render in each format and
    as a pie, find/expand/index/metadata, events (stored, listed, drawn), the composer's saved graphs after a
    login, dashboards saved, loaded, listed and deleted, the URL shortener and the version."""
    url = demo["url"]
    write_menu_series(demo["whisper"], int(time.time()))
    for path, ctype in [
        ("browser/", "text/html"),
        ("browser/header", "text/html"),
        ("browser/usergraph?query=*&path=&node=", "application/json"),
        ("dashboard/", "text/html"),
        ("version/", "text/html"),
        ("metrics/expand?query=menu.*", "application/json"),
        ("metrics/index.json", "application/json"),
        ("metrics/get-metadata?metric=menu.x&key=aggregationMethod", "application/json"),
        ("account/login", "text/html"),
    ]:
        code, got, _ = status(url, path)
        assert code == 200 and got.startswith(ctype), (path, code, got)
    assert get_json(url, "metrics/expand?query=menu.*") == {"results": ["menu.x", "menu.y"]}
    assert "menu.x" in get_json(url, "metrics/index.json")
    for fmt, ctype, magic in [
        ("csv", "text/csv", b"menu.x,"),
        ("raw", "text/plain", b"menu.x,"),
        ("svg", "image/svg+xml", b"<?xml"),
        ("pdf", "application/x-pdf", b"%PDF"),
        ("pickle", "application/pickle", b"\x80"),
        ("msgpack", "application/x-msgpack", b""),
        ("dygraph", "application/json", b"{"),
        ("rickshaw", "application/json", b"["),
    ]:
        code, got, body = status(
            url, "render?" + urllib.parse.urlencode({"target": "menu.x", "from": "-10min", "format": fmt})
        )
        assert code == 200 and got == ctype and body.startswith(magic) and len(body) > 20, (fmt, code, got)
    code, got, body = status(url, "render?target=menu.x&graphType=pie&from=-10min")
    assert code == 200 and body.startswith(b"\x89PNG"), "pie chart"
    # events: stored, listed with their time, drawn by events()
    when = int(time.time()) - 60
    event = {"what": "deploy", "tags": ["e2e"], "when": when, "data": "v1"}
    assert status(url, "events/", json.dumps(event).encode())[0] == 200
    assert [(e["what"], e["when"]) for e in get_json(url, "events/get_data?from=-10min&tags=e2e")] == [("deploy", when)]
    drawn = get_json(url, "render?target=events('e2e')&from=-10min&format=json")
    assert sum(v or 0 for v, _ in drawn[0]["datapoints"]) == 1
    # the composer's "My Graphs" after a login (a user made in graphite-web's database)
    make_user(demo, "e2e", "secret")
    jar = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    jar.open(f"{url}account/login", data=b"username=e2e&password=secret&nextPage=/", timeout=20).read()
    saved = jar.open(f"{url}composer/mygraph?action=save&graphName=g1&url=%2Frender%3Ftarget%3Dmenu.x", timeout=20)
    assert saved.read() == b"SAVED"
    mine = json.loads(jar.open(f"{url}browser/mygraph?query=*&path=&node=", timeout=20).read())
    assert [g["graphUrl"] for g in mine] == ["/render?target=menu.x"]
    # dashboards: saved, loaded, found, copied to a temporary one, deleted
    state = {"name": "e2e", "graphs": [["target=menu.x", {"target": ["menu.x"]}, "/render?target=menu.x"]]}
    assert post(url, "dashboard/save/e2e", state=json.dumps(state)) == {"success": True}
    assert get_json(url, "dashboard/load/e2e")["state"] == state
    assert "e2e" in [d["name"] for d in get_json(url, "dashboard/find?query=e2e")["dashboards"]]
    assert post(url, "dashboard/create-temporary", state=json.dumps(state))["name"].startswith("temporary-")
    assert post(url, "dashboard/delete/e2e") == {"success": True}
    # the URL shortener: a short link that redirects to the graph
    short = status(url, "s/render%3Ftarget%3Dmenu.x")[2].decode()
    assert short.startswith("/S")
    assert status(url, short.lstrip("/"))[0] == 200


def make_user(demo: dict[str, Any], name: str, password: str) -> None:
    """A graphite-web user in the demo's database (child Python: Django is set up once per process)."""
    code = (
        "import django; django.setup()\n"
        "from django.contrib.auth.models import User\n"
        f"User.objects.create_user({name!r}, password={password!r})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=graphite_env(demo), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]


def graphite_env(demo: dict[str, Any]) -> dict[str, str]:
    """graphite-web's settings as the demo's graphite-web has them (its state folder and carbon-cache's query port)."""
    conf = (demo["base"] / "state" / "conf" / "carbon.conf").read_text()
    query_port = int(re.search(r"^CACHE_QUERY_PORT\s*=\s*(\d+)", conf, re.MULTILINE).group(1))  # type: ignore[union-attr]
    stack = LocalStack(demo["base"] / "state", pickle_port=0, query_port=query_port, line_port=1)
    return {"PATH": "/usr/bin:/bin", **stack.graphite_env()}


def test_graphite_web_reads_carbon_caches_points_through_carbonlink(demo) -> None:
    """graphite-web's carbonlink asks the demo's carbon-cache about a metric: its cached points and its
    Whisper file's aggregation method come back over carbon's query port."""
    metric = f"dsat.{demo['where']}.load.load1"
    wait_for(lambda: non_null_series(demo["url"], metric), 60, metric)
    code = (
        "import sys, django; django.setup()\n"
        "from graphite.carbonlink import CarbonLink\n"
        "link = CarbonLink()\n"
        "points = link.query(sys.argv[1])\n"
        "print(type(points).__name__, link.get_metadata(sys.argv[1], 'aggregationMethod'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, metric], env=graphite_env(demo), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["list", "average"]


def test_render_reads_absolute_times_in_the_zone_asked_for(demo) -> None:
    """from/until in Europe/Paris (tz=) select the same points as the UTC times they are: pytz zones on Django 5."""
    url = demo["url"]
    now = int(time.time()) // 600 * 600 - 1200  # a whole ten minutes, inside the last hour
    write_menu_series(demo["whisper"], int(time.time()))
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    start = datetime.datetime.fromtimestamp(now, paris)
    until = datetime.datetime.fromtimestamp(now + 300, paris)
    query = {"target": "menu.x", "format": "json", "tz": "Europe/Paris"}
    query |= {"from": f"{start:%H:%M_%Y%m%d}", "until": f"{until:%H:%M_%Y%m%d}"}
    series = get_json(url, "render?" + urllib.parse.urlencode(query))
    stamps = [ts for _, ts in series[0]["datapoints"]]
    assert stamps[0] - now in (0, 10) and stamps[-1] - (now + 300) in (-10, 0), (now, stamps[0], stamps[-1])


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

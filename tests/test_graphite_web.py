"""graphite-web's start-up (its database and the dashboards shipped in carbon_conf/dashboards/), its Django,
its time zones, and its cluster reads (CLUSTER_SERVERS) between two real graphite-web processes.

Django is set up once per process, so each check runs ``dsat.tools.graphite_web`` in a child Python.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import whisper

from dsat.tools.stack import LocalStack, free_port
from tests.harness import ROOT, wait_for

pytestmark = pytest.mark.integration  # graphite-web in child Pythons

SHIPPED = json.loads((ROOT / "carbon_conf" / "dashboards" / "dsat.json").read_text())


def in_graphite(stack: LocalStack, code: str, **env: str) -> str:
    """Run *code* in a child Python with graphite-web's settings for *stack* (and *env*); its stdout."""
    prelude = "import json\nfrom dsat.tools.graphite_web import prepare_database\n"
    done = subprocess.run(
        [sys.executable, "-c", prelude + code],
        env={"PATH": "/usr/bin:/bin", **stack.graphite_env(), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_start_up_creates_the_database_and_installs_the_demo_dashboard(tmp_path: Path) -> None:
    """The first start installs 'dsat' exactly as shipped; the next one installs nothing."""
    stack = LocalStack(tmp_path, pickle_port=2104)
    out = in_graphite(
        stack,
        "print(json.dumps(prepare_database()))\n"
        "from graphite.dashboard.models import Dashboard\n"
        "print(Dashboard.objects.get(name='dsat').state)\n"
        "print(json.dumps(prepare_database()))\n",
    )
    first, state, second = out.splitlines()
    assert json.loads(first) == ["dsat"] and json.loads(second) == []
    assert json.loads(state) == SHIPPED
    assert (tmp_path / "graphite" / "graphite.db").exists()


def test_a_dashboard_saved_in_the_ui_under_the_same_name_is_kept(tmp_path: Path) -> None:
    """A user's edits to 'dsat' survive a restart: the shipped one only fills a gap."""
    stack = LocalStack(tmp_path, pickle_port=2104)
    out = in_graphite(
        stack,
        "prepare_database()\n"
        "from graphite.dashboard.models import Dashboard\n"
        'Dashboard.objects.filter(name=\'dsat\').update(state=\'{"name": "dsat", "graphs": []}\')\n'
        "print(json.dumps(prepare_database()))\n"
        "print(Dashboard.objects.get(name='dsat').state)\n",
    )
    installed, state = out.splitlines()
    assert json.loads(installed) == []
    assert json.loads(state) == {"name": "dsat", "graphs": []}


def test_every_shipped_graph_names_its_targets() -> None:
    """Each graph is [target string, params with a title and targets, url] as graphite-web's UI saves it."""
    assert SHIPPED["name"] == "dsat" and SHIPPED["graphs"]
    for target_string, params, _url in SHIPPED["graphs"]:
        assert params["title"] and params["target"]
        assert target_string.count("target=") == len(params["target"])


def test_migrations_and_system_checks_pass_on_the_pinned_django(tmp_path: Path) -> None:
    """graphite-web's and django-tagging's models, URLs and admin load on the pinned Django with no error from
    Django's system checks (one warning is left: the admin's navigation sidebar, which DSAT's stacks do not
    serve, wants the request context processor).  The migrations match the models but for the two field
    defaults graphite-web 1.1.10 changed without a migration, the same on Django 3.2; Django keeps defaults
    out of the database, so the tables are what the models need."""
    out = in_graphite(
        LocalStack(tmp_path, pickle_port=2104),
        "prepare_database()\n"
        "from django.core.management import call_command\n"
        "call_command('check', fail_level='ERROR')\n"
        "call_command('makemigrations', dry_run=True, verbosity=1)\n"
        "import django, graphite.urls\n"
        "print(django.get_version())\n",
    )
    from tests.test_django_compat import pinned_django

    changes = [line.strip() for line in out.splitlines() if "Alter field" in line or "Add field" in line]
    assert changes == ["~ Alter field history on profile", "~ Alter field tags on event"], out
    assert out.splitlines()[-1] == pinned_django()


def test_a_naive_time_is_read_in_time_zone_with_the_offset_of_its_date(tmp_path: Path) -> None:
    """graphite.util.epoch() makes a naive time aware with pytz.timezone(TIME_ZONE) through Django's make_aware;
    in Europe/Paris a July noon is 10:00 UTC and a January noon 11:00 UTC (Django 5 alone would give +00:09)."""
    out = in_graphite(
        LocalStack(tmp_path, pickle_port=2104),
        "import datetime\n"
        "prepare_database()\n"
        "from graphite.util import epoch\n"
        "print(epoch(datetime.datetime(2026, 7, 1, 12)), epoch(datetime.datetime(2026, 1, 15, 12)))\n",
        DSAT_TIME_ZONE="Europe/Paris",
    )
    summer = datetime.datetime(2026, 7, 1, 10, tzinfo=datetime.UTC).timestamp()
    winter = datetime.datetime(2026, 1, 15, 11, tzinfo=datetime.UTC).timestamp()
    assert [int(v) for v in out.split()] == [summer, winter]


def write_series(whisper_dir: Path, name: str, points: list[tuple[int, float]]) -> None:
    path = whisper_dir / (name.replace(".", "/") + ".wsp")
    path.parent.mkdir(parents=True, exist_ok=True)
    whisper.create(str(path), [(10, 360)])
    whisper.update_many(str(path), points)


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=20) as resp:
        body = resp.read()
        return json.loads(body) if resp.headers["Content-Type"].startswith("application/json") else body


def test_cluster_servers_read_the_metrics_another_graphite_web_holds(tmp_path: Path) -> None:
    """graphite-web A with DSAT_CLUSTER_SERVERS=B (graphite-web's CLUSTER_SERVERS) finds and renders B's metrics
    beside its own, merges a series both hold into one without gaps, draws it as PNG; with B stopped A still
    answers for its own metrics."""
    now = int(time.time()) // 10 * 10
    a, b = LocalStack(tmp_path / "a", pickle_port=2104, http_port=free_port()), None
    b = LocalStack(tmp_path / "b", pickle_port=2104, http_port=free_port())
    write_series(a.whisper_dir, "local.one", [(now - i * 10, 1.0) for i in range(60)])
    write_series(b.whisper_dir, "remote.two", [(now - i * 10, 2.0) for i in range(60)])
    # shared.both: A holds the older half hour, B the newer (a metric whose owner changed)
    write_series(a.whisper_dir, "shared.both", [(now - i * 10, 3.0) for i in range(30, 60)])
    write_series(b.whisper_dir, "shared.both", [(now - i * 10, 3.0) for i in range(30)])
    procs = []
    try:
        for stack, extra in ((b, {}), (a, {"DSAT_CLUSTER_SERVERS": f"127.0.0.1:{b.http_port}"})):
            (stack.state_dir / "graphite" / "log").mkdir(parents=True, exist_ok=True)
            log = (stack.state_dir / "graphite.log").open("wb")
            env = {"PATH": "/usr/bin:/bin", **stack.graphite_env(), **extra}
            procs.append(subprocess.Popen(stack.graphite_command(), env=env, stdout=log, stderr=subprocess.STDOUT))
        for stack in (a, b):
            wait_for(lambda stack=stack: reachable(stack.url), 60, f"graphite-web on {stack.url}")
        found = get(f"{a.url}metrics/find?query=*")
        assert sorted(n["text"] for n in found) == ["local", "remote", "shared"]
        window = urllib.parse.urlencode({"from": now - 600, "until": now, "format": "json"})  # (from, until]: 60 points
        for name, value in (("local.one", 1.0), ("remote.two", 2.0), ("shared.both", 3.0)):
            [series] = get(f"{a.url}render?target={name}&{window}")
            assert [v for v, _ in series["datapoints"]] == [value] * 60, name
        png = get(f"{a.url}render?target=remote.two&from=-15min")
        assert png.startswith(b"\x89PNG\r\n")
        procs[0].terminate()
        procs[0].wait(30)
        [series] = get(f"{a.url}render?target=local.one&{window}")
        assert [v for v, _ in series["datapoints"]] == [1.0] * 60
        assert [n["text"] for n in get(f"{a.url}metrics/find?query=*")] == ["local", "shared"]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(30)


def reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}version/", timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False

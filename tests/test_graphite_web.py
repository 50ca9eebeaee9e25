"""graphite-web's start-up: its database and the dashboards shipped in carbon_conf/dashboards/.

Django is set up once per process, so each check runs ``dsat.tools.graphite_web`` in a child Python.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dsat.tools.stack import LocalStack
from tests.harness import ROOT

pytestmark = pytest.mark.integration  # graphite-web in child Pythons

SHIPPED = json.loads((ROOT / "carbon_conf" / "dashboards" / "dsat.json").read_text())


def in_graphite(stack: LocalStack, code: str) -> str:
    """Run *code* in a child Python with graphite-web's settings for *stack*; its stdout."""
    prelude = "import json\nfrom dsat.tools.graphite_web import prepare_database\n"
    done = subprocess.run(
        [sys.executable, "-c", prelude + code],
        env={"PATH": "/usr/bin:/bin", **stack.graphite_env()},
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

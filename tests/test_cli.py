"""The `dsat` command line: exit statuses and what it prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsat.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_validate_accepts_the_demo_topology(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`dsat validate` on the packaged demo prints OK with its satellites and exits 0."""
    topo = tmp_path / "demo.toml"
    topo.write_text((ROOT / "dsat" / "demo.toml").read_text())
    assert main(["validate", str(topo)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "cpu" in out and "rate" in out


def test_validate_reports_every_problem_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad topology exits 2 and names the file, the key path and the fix for each problem."""
    topo = tmp_path / "bad.toml"
    topo.write_text(
        '[carbon]\ndestinations = ["127.0.0.1:2004"]\n'
        '[satellites.cpu]\nuse = "cpu"\nevery = "10 parsecs"\n'
        '[satellites.mem]\nuse = "memroy"\nevery = "1s"\n'
    )
    assert main(["validate", "--no-environment", str(topo)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml: 2 problems found" in err
    assert "satellites.cpu.every" in err and '"10s"' in err
    assert "satellites.mem.use" in err and 'did you mean "memory"' in err


def test_status_without_a_tracker_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`dsat status` exits 1 with a clear message when no tracker answers."""
    topo = tmp_path / "t.toml"
    topo.write_text((ROOT / "dsat" / "demo.toml").read_text())
    assert main(["status", "--timeout", "0.2", str(topo)]) == 1
    assert "did not answer" in capsys.readouterr().err

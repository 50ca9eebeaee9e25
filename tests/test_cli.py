"""The `dsat` command line: exit statuses and what it prints."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dsat.tools.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent


def test_version_says_how_the_hot_path_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """`dsat --version`: the version, and whether the compiled hot path is used (and if not, why not)."""
    from dsat import __version__, compiled

    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"dsat {__version__}, hot path: {compiled.describe()}\n"


def test_validate_accepts_the_demo_topology(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`dsat validate` on the packaged demo prints OK with its satellites and exits 0."""
    topo = tmp_path / "demo.toml"
    topo.write_text((ROOT / "dsat" / "demo.toml").read_text())
    # --no-environment: the demo's ports may be in use by a demo stack on this machine
    assert main(["validate", "--no-environment", str(topo)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "cpu" in out and "rate" in out


def test_validate_checks_this_machine_for_a_one_host_topology(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without [hosts], `dsat validate` checks this machine (as docs/topology.rst says): an ingress port in use
    is a problem, exit 2; --no-environment skips the check."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        topo = tmp_path / "t.toml"
        topo.write_text(
            f'[dsat]\nrun_dir = "run"\n[ingress]\nplaintext = "127.0.0.1:{port}"\n'
            '[carbon]\ndestinations = ["127.0.0.1:2004"]\n'
        )
        assert main(["validate", str(topo)]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
        assert main(["validate", "--no-environment", str(topo)]) == 0


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


HOSTS = """
[hosts.hub]
address = "10.213.1.1"
[hosts.web01]
address = "10.213.1.11"
[carbon]
destinations = ["127.0.0.1:2004"]
[satellites.load]
use = "synthetic"
every = "1s"
host = "web01"
"""


def test_up_of_a_multi_host_topology_needs_the_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`dsat up` without --host on a topology with [hosts] exits 2 and lists the hosts to pick from."""
    topo = tmp_path / "t.toml"
    topo.write_text(HOSTS)
    assert main(["up", str(topo)]) == 2
    assert (
        "t.toml: --host: this topology spans hosts; say which one this is: one of hub, web01" in capsys.readouterr().err
    )


def test_run_of_a_step_on_another_host_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`dsat run TOPOLOGY load --host hub` exits 2: load runs on web01."""
    from dsat import topology
    from dsat.errors import ConfigError
    from dsat.process import host_of

    topo = topology.loads(HOSTS, path=tmp_path / "t.toml")
    assert host_of(topo, "load", "web01") == "web01"
    with pytest.raises(ConfigError, match="step 'load' does not run on host 'hub'; it runs on web01"):
        host_of(topo, "load", "hub")
    with pytest.raises(ConfigError, match=r"say which host this is with --host NAME \(one of: hub, web01\)"):
        host_of(topo, "orchester", "")


def test_keys_makes_the_pairs_and_says_what_to_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`dsat keys` makes one pair per host, then keeps them; on a one-host topology it says none is needed."""
    topo = tmp_path / "t.toml"
    topo.write_text(HOSTS)
    assert main(["keys", str(topo)]) == 0
    out = capsys.readouterr().out
    assert "hub: new key pair" in out and "web01: new key pair" in out and "to HOST only (mode 0600)" in out
    assert main(["keys", str(topo)]) == 0
    assert "hub: kept" in capsys.readouterr().out
    one = tmp_path / "one.toml"
    one.write_text((ROOT / "dsat" / "demo.toml").read_text())
    assert main(["keys", str(one)]) == 2
    assert "no [hosts], so no link leaves this machine" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("10s", 10.0), ("2m", 120.0), ("1h", 3600.0), ("5", 5.0), ("0.5", 0.5), ("1e1", 10.0)],
)
def test_every_cli_duration_takes_the_topology_form_or_seconds(text: str, seconds: float) -> None:
    """`bench --duration`, `status --timeout` and `route --timeout` read "2m" as a topology does, or seconds."""
    parser = build_parser()
    assert parser.parse_args(["bench", "t.toml", "--duration", text]).duration == seconds
    assert parser.parse_args(["status", "t.toml", "--timeout", text]).timeout == seconds
    assert parser.parse_args(["route", "t.toml", "set", "cpu", "carbon", "--timeout", text]).timeout == seconds


@pytest.mark.parametrize("text", ["2 minutes", "10sec", "0", "-1", "0s", "inf", "nan", ""])
def test_a_bad_cli_duration_is_an_argparse_error_with_the_accepted_forms(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A duration the topology would refuse exits 2 with usage, the option, what is wrong and the forms to write."""
    with pytest.raises(SystemExit) as stopped:
        main(["bench", "t.toml", "--duration", text])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: dsat bench")
    assert "dsat bench: error: argument --duration: " in err and " is not a duration" in err
    assert 'write a duration like "250ms", "10s", "5m", "1h" or a number of seconds' in err

"""``dsat bench``: the topology copy, the counting sink, the rate search, and real runs of a small topology.

And ``bench/relay.py``'s workloads: its pickle frames and tagged names.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import pickle
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest

from dsat import topology
from dsat.graphite_wire import POINTS_PER_MESSAGE, parse_pickle
from dsat.naming import is_tagged, tagged_path
from dsat.tools import bench, bench_load, bench_sink
from dsat.tools.bench_load import Phase
from dsat.tools.stack import free_port
from tests.harness import ROOT, wait_for

SMALL = """
[dsat]
where = "bench"
[ingress]
plaintext = "127.0.0.1:{port}"
[carbon]
destinations = ["127.0.0.1:{carbon}"]
[satellites.gen]
use = "synthetic"
every = "1s"
next = ["orchester"]
"""
WITH_RATE = (
    SMALL.replace('next = ["orchester"]', 'next = ["rate"]') + '[satellites.rate]\nuse = "rate"\nnext = ["orchester"]\n'
)


def phase(**fields: Any) -> Phase:
    values = {"id": 1, "rate": 1000.0, "names": 10, "t0": 100.0, "end": 101.0, "base": 1_000_000} | fields
    return Phase(**values)


def write_topology(tmp_path: Path, text: str, name: str = "small.toml") -> Path:
    path = tmp_path / name
    path.write_text(text.format(port=free_port(), carbon=free_port()))
    return path


def test_the_copy_keeps_the_topology_but_what_the_bench_says_it_changed(tmp_path: Path) -> None:
    """derive's copy reads back with every key of the source, odd strings included, but the changes it reports."""
    odd = SMALL.replace('where = "bench"', 'where = "we\\"b\\\\01 é"')
    text = odd + 'options = {{ metrics = 3, "a b" = [1, 2.5] }}\n'
    source = write_topology(tmp_path, text)
    work = tmp_path / "work"
    work.mkdir()
    plan = bench.derive(source, work, bench.Options(rate=1000.0))
    want, got = tomllib.loads(source.read_text()), tomllib.loads(plan.path.read_text())
    assert got["dsat"].pop("run_dir") == str(work / "run") and got["dsat"] == want["dsat"]
    assert got["satellites"] == want["satellites"] and got["ingress"] == want["ingress"]
    assert got["carbon"]["destinations"] == [f"127.0.0.1:{plan.sink_ports[0]}"]
    assert got["tracker"] == {"metrics_every": "1s"}
    assert len(plan.changes) == 3, plan.changes


def test_counting_tells_delivered_duplicates_strays_and_others_apart() -> None:
    """Each (name, timestamp) counts once as delivered, again as a duplicate; other phases' points are strays."""
    counting = bench_sink.Counting()
    counting.start(phase())
    counting.points([(1, 1_000_000), (2, 1_000_000), (1, 1_000_000), (3, 999_999), (11, 1_000_001)], 4, now=100.5)
    report = counting.report()
    assert (report["received"], report["delivered"], report["duplicates"]) == (3, 2, 1)
    assert (report["stray"], report["other"], report["last_arrival"]) == (2, 4, 100.5)


def test_latency_runs_from_the_tick_in_the_timestamp_to_the_arrival() -> None:
    """A datapoint stamped with tick N that arrives at t0 + N ticks + 20 ms has a latency of 20 ms."""
    counting = bench_sink.Counting()
    counting.start(phase())
    tick = bench_load.TICK
    for n in range(100):
        counting.points([(n % 10, 1_000_000 + n)], 0, now=100.0 + (n + 0.5) * tick + 0.020 + n * 0.0001)
    lat = counting.report()["latency_ms"]
    assert lat["p50"] == pytest.approx(25.0, abs=0.2)
    assert lat["p99"] == pytest.approx(29.9, abs=0.2)
    assert lat["max"] == pytest.approx(29.9, abs=0.2)


def test_latency_summary_is_empty_without_datapoints() -> None:
    """No datapoint, no percentile: the summary says None rather than 0."""
    assert bench_sink.latency_summary(Counter()) == {"p50": None, "p95": None, "p99": None, "max": None}


def test_plaintext_and_pickle_are_read_like_carbon_reads_them() -> None:
    """Bench datapoints (bare or under a prefix), DSAT's own spooled count and the rest, in both protocols."""
    p = phase()
    for protocol in ("plaintext", "pickle"):
        counting = bench_sink.Counting()
        counting.start(p)
        points = [
            ("dsatbench.n1", 1_000_000, 1.0),
            ("dsat.tools.bench.gen.dsatbench.n2", 1_000_001, 2.0),
            ("dsat.tools.bench.self.orchester.spooled", 1_000_001, 7.0),
            ("servers.web01.cpu", 1_000_001, 3.0),
        ]
        if protocol == "plaintext":
            data = "".join(f"{name} {value!r} {ts}\n" for name, ts, value in points).encode()
            bench_sink.parse_plaintext(counting, data, now=100.1)
        else:
            body = pickle.dumps([(name, (float(ts), value)) for name, ts, value in points], protocol=2)
            rest = bench_sink.parse_pickle(counting, struct.pack("!L", len(body)) + body + b"\x00\x00", now=100.1)
            assert rest == b"\x00\x00"
        report = counting.report()
        assert (report["delivered"], report["other"], report["own"]["spooled"]) == (2, 2, 7.0), protocol


def test_a_pickle_with_a_global_is_refused_and_counted() -> None:
    """A pickle naming a global is never unpickled: it counts as undecodable, nothing else."""
    counting = bench_sink.Counting()
    counting.start(phase())
    body = pickle.dumps([("dsatbench.n1", (1_000_000.0, os.getpid))], protocol=2)
    bench_sink.parse_pickle(counting, struct.pack("!L", len(body)) + body, now=100.1)
    report = counting.report()
    assert (report["undecodable"], report["received"]) == (1, 0)


def test_ingress_lines_give_every_datapoint_its_own_whisper_slot() -> None:
    """With as many names as datapoints in a tick, no two lines share a (name, timestamp) slot."""
    p = phase(rate=50_000.0, names=50)
    data = bench_load.lines(p, 0, 50_000).decode().splitlines()
    slots = {(line.split()[0], line.split()[2]) for line in data}
    assert len(data) == len(slots) == 50_000
    assert data[-1].split()[2] == str(p.base + 999)


def test_find_max_rate_doubles_then_bisects_to_the_highest_rate_that_holds() -> None:
    """With a pipeline that holds up to 20,000/s, the search ends between 16,000 and 20,000 and says which."""
    tried = []

    def probe(rate: float) -> dict[str, Any]:
        tried.append(rate)
        return {"rate": rate}

    results = list(bench.find_max_rate(probe, lambda r: r["rate"] <= 20_000))
    assert tried[:6] == [1000, 2000, 4000, 8000, 16000, 32000]
    assert len(tried) == 6 + bench.BISECT_STEPS
    best = results[-1]
    assert best[0] == "best" and 16_000 <= best[1]["rate"] <= 20_000
    assert all(rate > 20_000 for rate in tried if rate > best[1]["rate"])


@pytest.mark.integration
def test_bench_refuses_a_topology_whose_port_is_taken(tmp_path: Path) -> None:
    """A taken ingress port stops the bench before it starts anything, naming the port."""
    topo = write_topology(tmp_path, SMALL)
    port = int(topo.read_text().split("127.0.0.1:")[1].split('"')[0])
    with socket.create_server(("127.0.0.1", port)):
        done = subprocess.run(
            [sys.executable, "-m", "dsat", "bench", str(topo)], capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


def bench_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("dsat-bench-*")}


def run_bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dsat", "bench", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.integration
def test_bench_reports_every_figure_and_the_counts_add_up(tmp_path: Path) -> None:
    """A second of ingress load: the JSON report has every field, sent = delivered + lost, nothing left behind."""
    topo = write_topology(tmp_path, SMALL)
    before = bench_dirs()
    out = tmp_path / "report.json"
    done = run_bench(str(topo), "--rate", "5000", "--duration", "1", "--names", "500", "--json", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    for key in ("sent", "delivered", "lost", "duplicates", "throughput", "latency_ms", "tracker", "orchester"):
        assert key in report, key
    assert report["sent"] == report["delivered"] + report["lost"]
    assert report["sent"] == 5_000 and report["lost"] == 0 and report["duplicates"] == 0
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert set(report["orchester"]) == {"spooled", "dropped", "resent", "replayed"}
    assert {"tracker", "orchester", "gen", "supervisor"} <= set(report["processes"])
    assert report["processes"]["orchester"]["cpu_seconds"] > 0
    assert all(p["peak_rss_mb"] > 1 for p in report["processes"].values())
    assert "gen" in report["tracker"]["steps"]
    assert "sent 5,000 = delivered 5,000 + lost 0" in done.stdout
    assert "latency ms (entering DSAT -> Carbon socket): p50" in done.stdout
    assert bench_dirs() == before


@pytest.mark.integration
def test_bench_compare_runs_both_topologies_on_the_same_collector_load(tmp_path: Path) -> None:
    """--compare with bench collectors: two reports, ratios of each figure, and rate's cost shows as latency."""
    first = write_topology(tmp_path, SMALL, "direct.toml")
    second = write_topology(tmp_path, WITH_RATE, "with-rate.toml")
    done = run_bench(
        str(first), "--compare", str(second), "--payload", "collectors", "--rate", "4000", "--duration", "1.5",
        "--json", "-",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout[done.stdout.index("{\n") :])
    one, two = result["runs"]
    assert one["topology"] == str(first) and two["topology"] == str(second)
    for report in (one, two):
        assert report["sent"] == report["delivered"] + report["lost"] and report["sent"] > 5000
        assert report["payload"] == "collectors"
    assert one["lost"] == 0
    # rate turns counters into rates: the first sample of each name gives nothing, and that shows as lost.
    assert two["lost"] >= two["names"] and "rate" in two["tracker"]["steps"]
    ratio = result["compare"]["throughput /s"]
    assert ratio["ratio"] == pytest.approx(ratio["second"] / ratio["first"], rel=1e-2)
    assert "with-rate.toml" in done.stdout and "ratio" in done.stdout


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the lost raise, on purpose
def test_a_ctrl_c_lost_inside_a_finaliser_still_stops_the_bench() -> None:
    """Python only prints a KeyboardInterrupt raised in a __del__; the bench's waits raise it again."""
    from dsat.tools import bench

    class Finalised:
        def __del__(self) -> None:
            bench._on_sigint(signal.SIGINT, None)  # as if Ctrl-C came while this ran: the raise is lost

    bench._INTERRUPTED.clear()
    try:
        Finalised()  # dropped at once: its __del__ runs, Python prints "Exception ignored" and goes on
        with pytest.raises(KeyboardInterrupt):
            bench.wait_until(lambda: False, 5, "nothing", Path("/nonexistent"))
    finally:
        bench._INTERRUPTED.clear()
    bench.wait_until(lambda: True, 5, "something", Path("/nonexistent"))  # cleared: waits as before


@pytest.mark.integration
def test_ctrl_c_stops_every_process_and_removes_every_file(tmp_path: Path) -> None:
    """SIGINT in the middle of the load: exit 130, no process of the bench alive, its folder gone."""
    topo = write_topology(tmp_path, SMALL)
    before = bench_dirs()
    out, errors = tmp_path / "bench.out", tmp_path / "bench.err"
    with out.open("wb") as stdout, errors.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dsat", "bench", str(topo), "--duration", "30"], stdout=stdout, stderr=stderr
        )
    try:
        wait_for(
            lambda: proc.poll() is not None or "delivered" in errors.read_text(errors="replace"),
            60,
            "the bench's load to start",
            detail=lambda: errors.read_text(errors="replace")[-3000:],
        )
        assert proc.poll() is None, errors.read_text(errors="replace")[-3000:]
        family = psutil.Process(proc.pid).children(recursive=True)
        assert len(family) >= 5  # the sink, dsat up and its steps
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    err = errors.read_text(errors="replace")
    assert code == 130, err[-3000:]
    assert "interrupted" in err
    deadline = time.monotonic() + 10
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert bench_dirs() == before


@pytest.mark.e2e
def test_carbon_real_puts_a_carbon_cache_behind_the_sink(tmp_path: Path) -> None:
    """--carbon real: the counted bytes go on to a real carbon-cache, which shows in the processes measured."""
    topo = write_topology(tmp_path, SMALL)
    done = run_bench(str(topo), "--carbon", "real", "--rate", "3000", "--duration", "1", "--json", "-")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout[done.stdout.index("{\n") :])
    assert report["carbon"] == "real" and report["sent"] == 3000 and report["lost"] == 0
    assert report["processes"]["carbon-cache"]["peak_rss_mb"] > 1
    assert any("a carbon-cache behind the sink" in change for change in report["changes"])


@pytest.mark.integration
def test_rate_max_reports_the_highest_rate_that_held_among_its_probes(tmp_path: Path) -> None:
    """--rate max: probes double then bisect on one running topology; the rate reported is a probe that held."""
    topo = write_topology(tmp_path, SMALL)
    done = run_bench(str(topo), "--rate", "max", "--duration", "0.5", "--max-p99", "20", "--json", "-", timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout[done.stdout.index("{\n") :])
    probes = report["max_rate"]["probes"]

    def held(p: dict[str, Any]) -> bool:
        return p["lost"] == 0 and (p["latency_ms"]["p99"] or 1e9) <= 20 and p["offered_rate"] >= 0.95 * p["rate"]

    rates = [p["rate"] for p in probes]
    failed = next((i for i, p in enumerate(probes) if not held(p)), len(probes) - 1)
    assert rates[: failed + 1] == [1000 * 2**i for i in range(failed + 1)]  # doubling until the first failure
    assert len(probes) <= failed + 1 + bench.BISECT_STEPS  # then at most BISECT_STEPS bisections
    good = [p["rate"] for p in probes if held(p)]
    assert report["max_rate"]["rate"] == (max(good) if good else None)
    assert all(p["sent"] > 0 for p in probes)
    assert "highest rate sustained" in done.stdout


class FakeTerminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_rewrites_one_line_on_a_terminal_and_prints_plain_lines_elsewhere() -> None:
    """On a terminal each update rewrites the line in place; in a file or pipe, plain lines, at most one a second."""
    terminal = FakeTerminal(tty=True)
    shown = bench.Progress(terminal)
    shown.show("a")
    shown.show("b")
    shown.done()
    assert terminal.getvalue() == "\r\x1b[Ka\r\x1b[Kb\r\x1b[K"
    pipe = FakeTerminal(tty=False)
    now = [100.0]
    plain = bench.Progress(pipe, clock=lambda: now[0])
    plain.show("a")
    now[0] = 100.9
    plain.show("b")  # within the same second: not shown
    now[0] = 101.0
    plain.show("c")
    plain.done()
    assert pipe.getvalue() == "a\nc\n"


# -- bench/relay.py --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relay_bench() -> ModuleType:
    """bench/relay.py, a script rather than a module of the package, loaded from its file."""
    spec = importlib.util.spec_from_file_location("bench_relay", ROOT / "bench" / "relay.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def pickle_frames(data: bytes) -> list[bytes]:
    """The bodies of the length-prefixed frames *data* holds, which must end with a whole frame."""
    frames, at = [], 0
    while at < len(data):
        (size,) = struct.unpack_from("!L", data, at)
        frames.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    assert at == len(data)
    return frames


@pytest.mark.parametrize("connections", [1, 3])
@pytest.mark.parametrize("tagged", [False, True])
def test_relay_bench_pickle_frames_hold_exactly_the_workloads_datapoints(
    relay_bench: ModuleType, connections: int, tagged: bool
) -> None:
    """As carbon clients frame it: 500 datapoints a frame over one connection, one frame a write over many."""
    cell = relay_bench.Cell(1_600, 2, connections, 1, "pickle", tagged)
    payload = relay_bench.workload(cell)
    received = []
    for pieces in relay_bench.writes_for(payload, connections, "pickle"):
        for piece in pieces:
            frames = pickle_frames(piece)
            if connections == 1:
                assert len(frames) == -(-cell.lines // POINTS_PER_MESSAGE)
            else:
                assert len(frames) == 1
            for frame in frames:
                points, rejected = parse_pickle(frame, time.time())
                assert not rejected
                assert len(points) <= (POINTS_PER_MESSAGE if connections == 1 else relay_bench.LINES_PER_WRITE)
                received += [(path.encode(), value, int(stamp)) for path, stamp, value in points]
    assert sorted(received) == relay_bench.datapoints(payload)
    assert len(received) == cell.lines


def test_relay_bench_tagged_names_need_canonicalising_and_still_take_the_rewrite(relay_bench: ModuleType) -> None:
    """Half the tagged names are out of carbon's order; the rewrite changes the name part alone, the sinks count them.

    --verify compares canonical forms: the rewritten workload with every name canonical is the same datapoints.
    """
    names = relay_bench.metric_names(64, tagged=True)
    assert all(is_tagged(name) for name in names)
    assert len(set(names)) == 64
    assert sum(tagged_path(name) != name for name in names) == 32
    cell = relay_bench.Cell(64, 2, 1, 1, tagged=True)
    payload = relay_bench.workload(cell)
    after = relay_bench.rewritten(payload)
    assert payload.count(relay_bench.ORIGINAL) == after.count(relay_bench.REWRITTEN) == cell.lines
    assert payload.count(relay_bench.REWRITTEN) == after.count(relay_bench.ORIGINAL) == 0
    canonical = []
    for before_line, after_line in zip(payload.splitlines(), after.splitlines(), strict=True):
        before_path, after_path = before_line.split()[0].decode(), after_line.split()[0].decode()
        assert re.sub(relay_bench.PATTERN, relay_bench.REPLACEMENT, tagged_path(before_path)) == tagged_path(after_path)
        canonical.append(after_line.replace(after_path.encode(), tagged_path(after_path).encode()))
    as_dsat_sends = b"\n".join(canonical) + b"\n"
    assert as_dsat_sends != after
    assert relay_bench.datapoints(as_dsat_sends) == relay_bench.datapoints(after)


def test_relay_bench_refuses_carbon_c_relay_for_pickle_and_leaves_it_out_of_the_defaults(
    relay_bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """carbon-c-relay has no pickle listener: named, it is refused before anything runs; by default, not run."""
    with pytest.raises(SystemExit, match="carbon-c-relay has no pickle listener"):
        relay_bench.main(["--protocol", "pickle", "--relays", "dsat,carbon-c-relay", "--no-save"])
    args = relay_bench.argparse.Namespace(relays="", sweep=False, protocol="pickle")
    assert relay_bench.relay_names(args) == ["dsat", "carbon-relay"]
    assert "carbon-c-relay has no pickle listener: not run" in capsys.readouterr().out
    args.protocol = "plaintext"
    assert relay_bench.relay_names(args) == ["dsat", "carbon-c-relay", "carbon-relay"]


def test_relay_bench_keeps_each_variants_figures_in_a_file_of_its_own(relay_bench: ModuleType) -> None:
    """The plaintext files stay where they were; pickle and tagged runs go beside them."""
    files = {
        relay_bench.results_path(relay_bench.argparse.Namespace(protocol=protocol, tagged=tagged, sweep=sweep)).name
        for protocol in ("plaintext", "pickle")
        for tagged in (False, True)
        for sweep in (False, True)
    }
    assert {
        "relay.json",
        "relay-sweep.json",
        "relay-pickle.json",
        "relay-tagged.json",
        "relay-tagged-sweep.json",
    } < files
    assert len(files) == 8


def test_relay_bench_dsat_listens_for_the_protocol_the_client_speaks(relay_bench: ModuleType, tmp_path: Path) -> None:
    """With --protocol pickle, DSAT's topology has the pickle listener on the client's port, and no plaintext one."""
    port = free_port()
    relay_bench.dsat_command(tmp_path, port, [free_port()], workers=2, protocol="pickle")
    ingress = topology.load(tmp_path / "topology.toml").ingress
    assert (ingress.pickle, ingress.plaintext) == (("127.0.0.1", port), None)

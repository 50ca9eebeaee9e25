"""The compose stack (docker/compose.yaml), built and run for real.

The test machines have no Docker engine and no image registry, so the stack
runs on podman with podman-compose, as ``../shared/CONTAINERS.md`` of the
project's machines describes: runc and no default ulimits (a containers.conf
of the test's own), and a stand-in for ``python:3.11-slim`` built with
debootstrap (``docker/podman-base-image.sh``) when the machine does not have
it.  The images are built from the same Dockerfile users build.  What is
missing (podman, runc, debootstrap, docker-compose, chromium) is installed
with apt; a machine where that or the engine cannot work fails the test with
the reason, it is never skipped.

The tests share one stack, in order: the compose file validates, every
service becomes healthy and runs unprivileged, metrics sent from the host
through the published plaintext and statsd ports come back from
graphite-web, the collectors' series are there and both carbon-caches hold
part of the tree, headless Chromium draws the demo dashboard (the screenshot
is kept in ``test-artifacts/compose/``), and data survives ``down`` and
``up``.  The stack is taken down with its volumes at the end, whatever
happened; every container's log is kept next to the screenshot.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dsat import naming
from dsat.tools.stack import free_port
from tests.harness import ROOT, install_missing_programs, wait_for

pytestmark = pytest.mark.compose

COMPOSE = ROOT / "docker" / "compose.yaml"
ARTIFACTS = ROOT / "test-artifacts" / "compose"
BASE_IMAGE = "docker.io/library/python:3.11-slim"
IMAGES = {"graphite": "localhost/dsat-graphite:latest", "dsat": "localhost/dsat:latest"}
SERVICES = [
    "tracker",
    "carbon-a",
    "carbon-b",
    "graphite-web",
    "orchester",
    "rate",
    "cpu",
    "memory",
    "load",
    "disk_usage",
    "network",
    "disk",
]
# Debian package of each program (or file) the test needs.
PACKAGES = {
    "podman": "podman",
    "runc": "runc",
    "debootstrap": "debootstrap",
    "docker-compose": "docker-compose",
    "chromium": "chromium",
    # podman 4.3's CNI networks resolve service names between containers only with this plugin
    "/usr/lib/cni/dnsname": "golang-github-containernetworking-plugin-dnsname",
}
PODMAN_UP = ROOT / "docker" / "podman-up.py"
CONTAINERS_CONF = """\
# crun (podman's default) cannot set RLIMIT_NOFILE on these machines
[containers]
default_ulimits = []
[engine]
runtime = "runc"
"""
# graphite-web's default line colours (graphite.render.glyph colorAliases) other than red, which
# "No Data" is written in: their pixels in the screenshot are drawn series and their legends.
SERIES_COLOURS = {(100, 100, 255), (0, 200, 0), (200, 100, 255), (150, 100, 50)}
WINDOW = (1440, 1100)
# Run inside the graphite-web container: for each metric, the cache its carbonlink ring picks and
# that cache's answer to get-metadata (the aggregation method of the metric's Whisper file).
CARBONLINK_PROBE = """
import sys
import django
django.setup()
from graphite.carbonlink import CarbonLink
link = CarbonLink()
for metric in sys.argv[1:]:
    print(metric, link.select_host(metric)[0], link.get_metadata(metric, "aggregationMethod"))
"""
# Flags from the machine notes: without the background-networking ones Chromium keeps dialling out.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


class Engine:
    """podman and podman-compose with the test's containers.conf; every command logged to the artifacts."""

    def __init__(self, conf: Path, log: Path) -> None:
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.log = log
        self.compose_bin = str(Path(sys.executable).with_name("podman-compose"))

    def run(self, *cmd: str, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None) -> str:
        started = time.monotonic()
        try:
            done = subprocess.run(
                cmd,
                env={**self.env, **(env or {})},
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{' '.join(cmd)} did not finish in {timeout:g}s; output so far:\n{exc.stdout}\n{exc.stderr}")
        with self.log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}  ({time.monotonic() - started:.1f}s, exit {done.returncode})\n")
            f.write(done.stdout[-20000:] + done.stderr[-20000:] + "\n")
        if check and done.returncode != 0:
            pytest.fail(
                f"{' '.join(cmd)} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done.stdout

    def ok(self, *cmd: str, timeout: float = 60) -> bool:
        return subprocess.run(cmd, env=self.env, capture_output=True, timeout=timeout).returncode == 0

    def compose(self, project: str, *args: str, env: dict[str, str], timeout: float = 300) -> str:
        return self.run(self.compose_bin, "-p", project, "-f", str(COMPOSE), *args, env=env, timeout=timeout)

    def up(self, project: str, env: dict[str, str]) -> str:
        """The stack up the way docs/containers.rst tells podman users: docker/podman-up.py, stage by stage."""
        env = {**env, "PODMAN_COMPOSE": self.compose_bin}
        return self.run(sys.executable, str(PODMAN_UP), "-p", project, "-f", str(COMPOSE), env=env, timeout=900)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """A working podman with the stand-in base image and the two DSAT images built from docker/Dockerfile."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    install_missing_programs(PACKAGES)
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    podman = Engine(conf, ARTIFACTS / "commands.log")
    podman.run("podman", "info")
    if not podman.ok("podman", "image", "exists", BASE_IMAGE):
        rootfs = Path("/var/tmp") / f"dsat-standin-{os.getpid()}"
        try:
            podman.run("sh", str(ROOT / "docker" / "podman-base-image.sh"), env={"ROOTFS": str(rootfs)}, timeout=900)
        finally:
            shutil.rmtree(rootfs, ignore_errors=True)
    for target, tag in IMAGES.items():
        podman.run(
            "podman", "build", "--network", "host", "--force-rm", "-f", str(ROOT / "docker" / "Dockerfile"),
            "--target", target, "-t", tag, str(ROOT), timeout=900,
        )  # fmt: skip
    return podman


def containers(podman: Engine, project: str) -> dict[str, str]:
    """Service name -> container name, for the project's containers."""
    out = podman.run(
        "podman", "ps", "-a", "--filter", f"label=io.podman.compose.project={project}",
        "--format", '{{.Names}} {{index .Labels "com.docker.compose.service"}}',
    )  # fmt: skip
    return {service: name for name, service in (line.split() for line in out.splitlines() if line.strip())}


def wait_healthy(podman: Engine, project: str, timeout: float = 240) -> dict[str, str]:
    """Run every container's healthcheck until all pass: podman without systemd never runs them by itself."""
    names: dict[str, str] = {}
    unhealthy: list[str] = []

    def all_healthy() -> bool:
        nonlocal names, unhealthy
        names = containers(podman, project)
        unhealthy = [s for s in SERVICES if s not in names or not podman.ok("podman", "healthcheck", "run", names[s])]
        return not unhealthy

    wait_for(
        all_healthy, timeout, "every service of the compose stack to be healthy", interval=3, detail=lambda: unhealthy
    )
    return names


def keep_logs(podman: Engine, project: str, suffix: str = "") -> None:
    for service, name in containers(podman, project).items():
        out = subprocess.run(["podman", "logs", name], env=podman.env, capture_output=True, text=True, timeout=60)
        (ARTIFACTS / f"{service}{suffix}.log").write_text(out.stdout[-200000:] + out.stderr[-200000:])


@pytest.fixture(scope="module")
def stack(engine: Engine) -> Iterator[dict[str, Any]]:
    """The compose stack up and healthy on free host ports, under a project name of its own."""
    project = f"dsattest{os.getpid()}"
    ports = {name: free_port() for name in ("HTTP", "PLAINTEXT", "PICKLE", "STATSD")}
    where = naming.component(socket.gethostname())
    env = {f"DSAT_{name}_PORT": str(port) for name, port in ports.items()} | {
        "DSAT_WHERE": where,
    }
    info = {
        "engine": engine,
        "project": project,
        "env": env,
        "where": where,
        "url": f"http://127.0.0.1:{ports['HTTP']}/",
    }
    info |= {"plaintext": ("127.0.0.1", ports["PLAINTEXT"]), "statsd": ("127.0.0.1", ports["STATSD"])}
    try:
        info["started"] = time.time()
        engine.up(project, env)
        info["containers"] = wait_healthy(engine, project)
        yield info
    finally:
        try:
            keep_logs(engine, project)
        finally:
            engine.compose(project, "down", "-v", env=env, timeout=300)
            left = engine.run("podman", "ps", "-a", "-q", "--filter", f"label=io.podman.compose.project={project}")
            volumes, networks = (
                engine.run("podman", kind, "ls", "-q", "--filter", f"label=io.podman.compose.project={project}")
                for kind in ("volume", "network")
            )
            assert not (left + volumes + networks).strip(), f"left behind: {left!r}, {volumes!r}, {networks!r}"


def render(url: str, target: str, since: str = "-15min") -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"target": target, "format": "json", "from": since})
    try:
        with urllib.request.urlopen(f"{url}render?{query}", timeout=15) as resp:
            return list(json.loads(resp.read()))
    except OSError:
        return []


def non_null(url: str, target: str) -> dict[str, list[float]]:
    """Series name -> its non-null values."""
    found = {s["target"]: [v for v, _ts in s["datapoints"] if v is not None] for s in render(url, target)}
    return {name: values for name, values in found.items() if values}


def whisper_files(podman: Engine, container: str) -> set[str]:
    out = podman.run("podman", "exec", container, "find", "/var/lib/dsat/whisper", "-name", "*.wsp")
    return {line.removeprefix("/var/lib/dsat/whisper/") for line in out.split()}


def test_the_compose_file_is_valid() -> None:
    """docker-compose (the Compose v1 reference parser, no engine needed) accepts docker/compose.yaml."""
    install_missing_programs(PACKAGES)
    done = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def published(bind_env: dict[str, str]) -> dict[str, set[str]]:
    """Service -> the host addresses its ports are published on, as docker-compose resolves the file."""
    done = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("DSAT_")} | bind_env,
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, set[str]] = {}
    for name, service in yaml.safe_load(done.stdout)["services"].items():
        for port in service.get("ports", []):
            host = port.get("host_ip", "0.0.0.0") if isinstance(port, dict) else port.rsplit(":", 2)[0]
            found.setdefault(name, set()).add(host)
    return found


def test_other_hosts_reach_the_ports_only_when_asked() -> None:
    """DSAT_BIND opens the Graphite/statsd ports wider and DSAT_HTTP_BIND graphite-web; neither opens the other."""
    install_missing_programs(PACKAGES)
    assert published({}) == {"orchester": {"127.0.0.1"}, "graphite-web": {"127.0.0.1"}}
    assert published({"DSAT_BIND": "0.0.0.0"}) == {"orchester": {"0.0.0.0"}, "graphite-web": {"127.0.0.1"}}
    assert published({"DSAT_HTTP_BIND": "0.0.0.0"}) == {"orchester": {"127.0.0.1"}, "graphite-web": {"0.0.0.0"}}


def test_every_service_is_healthy_and_unprivileged(stack: dict[str, Any]) -> None:
    """All twelve services pass their healthcheck and run as the images' non-root user."""
    names = stack["containers"]
    assert sorted(names) == sorted(SERVICES)
    for service, name in names.items():
        uid = stack["engine"].run("podman", "exec", name, "id", "-u").strip()
        assert uid == "10001", f"{service} runs as uid {uid}"


def test_no_service_says_it_cannot_write_twisteds_plugin_cache(stack: dict[str, Any]) -> None:
    """Twisted's plugin cache is built into the images: no log says "Unable to write to plugin cache" at start."""
    for service, name in stack["containers"].items():
        out = subprocess.run(
            ["podman", "logs", name], env=stack["engine"].env, capture_output=True, text=True, timeout=60
        )
        assert "Unable to write to plugin cache" not in out.stdout + out.stderr, service


def test_ports_are_published_on_the_interface_asked_for(stack: dict[str, Any]) -> None:
    """Unless asked, graphite-web and the ingress ports are published on the host's loopback only (plaintext and
    statsd each on UDP and TCP)."""
    names, podman = stack["containers"], stack["engine"]
    published = podman.run("podman", "port", names["orchester"]) + podman.run("podman", "port", names["graphite-web"])
    lines = published.split("\n")
    mapped = sorted(line.split(" -> ")[1] for line in lines if " -> " in line)
    env = stack["env"]
    want = [env["DSAT_PLAINTEXT_PORT"], env["DSAT_PICKLE_PORT"], env["DSAT_STATSD_PORT"]]
    want += [env["DSAT_PLAINTEXT_PORT"], env["DSAT_STATSD_PORT"]]  # the UDP twins
    assert mapped == sorted(f"127.0.0.1:{port}" for port in [*want, env["DSAT_HTTP_PORT"]]), published


HOT_PATH = "from dsat import compiled; print(compiled.describe())"


def test_the_images_are_small_and_hold_no_build_tools(stack: dict[str, Any]) -> None:
    """Multi-stage images: no compiler, no pip cache in the final layers, the compiled hot path built; sizes noted."""
    podman, names = stack["engine"], stack["containers"]
    sizes = {}
    for tag in IMAGES.values():
        sizes[tag] = int(podman.run("podman", "image", "inspect", "--format", "{{.Size}}", tag).strip())
    (ARTIFACTS / "image-sizes.json").write_text(json.dumps(sizes, indent=1) + "\n")
    for service in ("orchester", "graphite-web"):
        found = podman.run(
            "podman", "exec", names[service], "sh", "-c",
            "command -v gcc cc make; ls /root/.cache/pip /var/lib/dsat/.cache/pip 2>/dev/null; true",
        )  # fmt: skip
        assert not found.strip(), f"{service}'s image holds build tools or a pip cache: {found}"
    # ...but the build stage's compiler built the compiled hot path
    how = podman.run("podman", "exec", names["orchester"], "python", "-c", HOT_PATH)
    assert how.strip() == "compiled (dsat._speedups)", how
    # the python:3.11-slim base is about 130-180 MB of it
    assert sizes[IMAGES["dsat"]] < 400e6 and sizes[IMAGES["graphite"]] < 600e6, sizes


def test_metrics_sent_from_the_host_reach_graphite_web(stack: dict[str, Any]) -> None:
    """A Graphite plaintext line (TCP) and statsd counters (UDP, and TCP) sent to the published ports are rendered."""
    now = int(time.time())
    with socket.create_connection(stack["plaintext"], timeout=10) as client:
        client.sendall(f"compose.plaintext.requests 42 {now}\n".encode())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        # one packet, so one flush interval counts all three
        udp.sendto(b"compose.statsd.hits:5|c\n" * 3 + b"compose.statsd.latency:12|ms", stack["statsd"])
    with socket.create_connection(stack["statsd"], timeout=10) as client:
        client.sendall(b"compose.statsd.tcp:7|c\n")
    url = stack["url"]
    plaintext = wait_for(lambda: non_null(url, "compose.plaintext.requests"), 90, "the plaintext point in graphite-web")
    assert plaintext["compose.plaintext.requests"] == [42.0]
    counted = wait_for(lambda: non_null(url, "stats.counters.compose.statsd.hits.count"), 90, "the statsd counter")
    assert sum(counted["stats.counters.compose.statsd.hits.count"]) == 15.0
    assert wait_for(lambda: non_null(url, "stats.timers.compose.statsd.latency.upper"), 30, "the statsd timer")
    over_tcp = wait_for(lambda: non_null(url, "stats.counters.compose.statsd.tcp.count"), 30, "the statsd TCP counter")
    assert sum(over_tcp["stats.counters.compose.statsd.tcp.count"]) == 7.0


def test_the_readmes_shell_example_reaches_graphite_web(stack: dict[str, Any]) -> None:
    """The plaintext example of README.rst's "Run with Docker", run with bash as written (port moved), lands."""
    readme = (ROOT / "README.rst").read_text()
    found = re.search(r"``(echo \"myapp\.requests 42 [^`]*> /dev/tcp/127\.0\.0\.1/2003)``", readme)
    assert found, "README.rst's Docker section should show how to send a plaintext line from a shell"
    host, port = stack["plaintext"]
    command = found.group(1).replace("/dev/tcp/127.0.0.1/2003", f"/dev/tcp/{host}/{port}")
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    got = wait_for(lambda: non_null(stack["url"], "myapp.requests"), 90, "the README's point in graphite-web")
    assert got["myapp.requests"] == [42.0]


def test_a_tagged_datapoint_sent_from_the_host_is_found_by_tag(stack: dict[str, Any]) -> None:
    """A Graphite 1.1 tagged line sent to the published plaintext port is rendered by seriesByTag.

    carbon-a or carbon-b (carbon_ch on the canonical name) stores it under ``_tagged/`` and registers it in
    graphite-web's TagDB (``ENABLE_TAGS``, ``GRAPHITE_URL=http://graphite-web:8080``).
    """
    now = int(time.time())
    with socket.create_connection(stack["plaintext"], timeout=10) as client:
        client.sendall(f"compose.tagged.requests;host=web01;dc=compose 42 {now}\n".encode())
    url, target = stack["url"], "seriesByTag('name=compose.tagged.requests','dc=compose')"
    tagged = wait_for(lambda: non_null(url, target), 90, "the tagged point found by seriesByTag in graphite-web")
    assert tagged == {"compose.tagged.requests;dc=compose;host=web01": [42.0]}


def test_graphite_web_runs_on_the_pinned_django_without_a_warning(stack: dict[str, Any]) -> None:
    """The graphite image serves graphite-web on the Django dsat[graphite] pins (5.2 LTS): its function list and
    the tag API's auto-completion answer, and its start logged no warning about Django's security support."""
    from tests.test_django_compat import pinned_django

    podman, names, url = stack["engine"], stack["containers"], stack["url"]
    version = podman.run(
        "podman", "exec", names["graphite-web"], "python", "-c", "import django; print(django.get_version())"
    )
    assert version.strip() == pinned_django()
    with urllib.request.urlopen(f"{url}functions", timeout=20) as resp:
        assert len(json.loads(resp.read())) >= 150
    with socket.create_connection(stack["plaintext"], timeout=10) as client:
        client.sendall(f"compose.django.check;django=five 1 {int(time.time())}\n".encode())
    wait_for(lambda: non_null(url, "seriesByTag('django=five')"), 90, "the tagged series in graphite-web")
    with urllib.request.urlopen(f"{url}tags/autoComplete/values?tag=django&valuePrefix=fi", timeout=20) as resp:
        assert json.loads(resp.read()) == ["five"]
    logs = subprocess.run(["podman", "logs", names["graphite-web"]], env=podman.env, capture_output=True, text=True)
    started = logs.stdout + logs.stderr
    assert "Site starting" in started and "security support" not in started, started[-3000:]


def test_collectors_series_are_placed_across_both_caches(stack: dict[str, Any]) -> None:
    """dsat.<host>.* is in graphite-web; each carbon-cache holds a part of the tree, graphite-web reads both
    and asks each cache (carbonlink, for points not yet written) about the metrics the orchester put there."""
    url, where, podman = stack["url"], stack["where"], stack["engine"]
    for target in (f"dsat.{where}.cpu.total.user", f"dsat.{where}.memory.virtual.used", f"dsat.{where}.load.load1"):
        wait_for(lambda target=target: non_null(url, target), 120, f"{target} in graphite-web")
    names = stack["containers"]
    a = whisper_files(podman, names["carbon-a"])
    b = whisper_files(podman, names["carbon-b"])
    assert a and b, f"carbon-a holds {len(a)} files, carbon-b {len(b)}: carbon_ch should spread the tree"
    assert not a & b, f"without replication no metric is on both caches: {sorted(a & b)[:5]}"
    # one series from each cache, both rendered through the one graphite-web
    picked = {}
    for instance, files in (("a", a), ("b", b)):
        path = next(f for f in sorted(files) if f.startswith(f"dsat/{where}/"))
        picked[instance] = target = path.removesuffix(".wsp").replace("/", ".")
        assert render(url, target), f"graphite-web does not read {target}"
    # graphite-web's carbonlink ring picks the cache the orchester placed each metric on, and that
    # cache answers for it (get-metadata reads the metric's Whisper file, so the wrong cache would fail)
    out = podman.run("podman", "exec", names["graphite-web"], "python", "-c", CARBONLINK_PROBE, *picked.values())
    answers = dict(line.split(" ", 1) for line in out.splitlines())
    for instance, metric in picked.items():
        host, method = answers[metric].split()
        assert host == f"carbon-{instance}" and method in {"average", "sum", "max", "min", "last"}, answers


def line_pixels(shot: Path, tolerance: int = 40) -> int:
    """Pixels of drawn series lines in a screenshot: near a series colour, not inside a legend's filled swatch.

    Lines are anti-aliased, so "near" is within *tolerance* on every channel.  Calibrated on graphite-web
    1.1.10's dashboard at 1440x1100: nine graphs of "No Data" give 15, a few minutes of the stack's data
    about 3,000.
    """
    from PIL import Image, ImageChops, ImageFilter

    with Image.open(shot) as image:
        rgb = image.convert("RGB")
    lines = 0
    for colour in SERIES_COLOURS:
        r, g, b = ImageChops.difference(rgb, Image.new("RGB", rgb.size, colour)).split()
        mask = ImageChops.lighter(ImageChops.lighter(r, g), b).point(lambda v: 255 * (v <= tolerance))
        # what survives a 3x3 erosion is a filled area (a legend swatch); grow it back and take it away
        filled = mask.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.MaxFilter(5))
        lines += ImageChops.subtract(mask, filled).histogram()[255]
    return lines


def test_the_demo_dashboard_draws_graphs_in_chromium(stack: dict[str, Any], tmp_path: Path) -> None:
    """Headless Chromium opens the installed dsat dashboard; the screenshot shows lines drawn in its graphs."""
    url, where = stack["url"], stack["where"]
    wait_for(
        lambda: len(non_null(url, f"dsat.{where}.load.load1").get(f"dsat.{where}.load.load1", [])) >= 6,
        150,
        "a minute of the load average",
    )
    wait_for(lambda: non_null(url, f"dsat.{where}.self.steps.*.batches_sent"), 60, "DSAT's own metrics")
    # The time range of the stack's life, so its few minutes of data span the graphs (the dashboard
    # takes an absolute range from ?from=&until=, in the browser's time zone: UTC like graphite-web's).
    # Minutes only: from the minute the stack started to the minute after the next one.
    start, until = (time.strftime("%Y-%m-%dT%H:%M:00", time.gmtime(t)) for t in (stack["started"], time.time() + 120))
    shot = ARTIFACTS / "dashboard.png"
    cmd = ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=20000"]
    cmd += [f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={shot}"]
    cmd += [f"{url}dashboard/dsat?from={start}&until={until}"]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "TZ": "UTC"}
    )
    assert done.returncode == 0 and shot.exists(), done.stderr[-3000:]

    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == WINDOW
        white = image.convert("RGB").getcolors(maxcolors=1 << 24)
    white_pixels = sum(count for count, colour in white if colour == (255, 255, 255))
    # nine 460x300 graphs on white; an error page or a blank one has no lines in series colours
    assert white_pixels > 0.4 * WINDOW[0] * WINDOW[1], f"{white_pixels} white pixels: the graphs are not there"
    drawn = line_pixels(shot)
    assert drawn > 1000, f"only {drawn} pixels of drawn lines: the graphs have no series (see {shot})"


def test_data_survives_down_and_up(stack: dict[str, Any]) -> None:
    """`down` then `up` again (volumes kept): the points written before are still rendered."""
    podman, project, env, url = stack["engine"], stack["project"], stack["env"], stack["url"]
    before = non_null(url, "compose.plaintext.requests")
    assert before, "the plaintext point should be stored by now"
    keep_logs(podman, project, suffix=".before-down")
    podman.compose(project, "down", env=env)
    assert not containers(podman, project)
    kept = podman.run("podman", "volume", "ls", "-q", "--filter", f"label=io.podman.compose.project={project}")
    assert len(kept.split()) == 4, f"down should keep the named volumes: {kept!r}"
    podman.up(project, env)
    stack["containers"] = wait_healthy(podman, project)
    assert wait_for(lambda: non_null(url, "compose.plaintext.requests"), 60, "the old point after up") == before

"""One topology across hosts: Linux network namespaces as hosts, joined by veth pairs on a bridge.

The test creates every namespace itself (names unique per test run), gives
10.213.0.0/24 addresses that exist only on those veth links, runs real DSAT
processes inside with ``ip netns exec``, and removes it all afterwards.  The
hub runs the tracker, the orchester, carbon-cache and graphite-web; web01 and
web02 run collectors (and web02 a transform); rogue hosts try to get in.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import whisper

from dsat.tools.stack import LocalStack, free_port
from tests.harness import (
    NETNS_SCHEMAS,
    Cluster,
    Network,
    assert_every_run_stored,
    host_copy,
    make_keys,
    record,
    settled,
    spool_rows,
    wait_for,
)

pytestmark = pytest.mark.integration

SUBNET = "10.213.0"
ADDRESSES = {"hub": f"{SUBNET}.1", "web01": f"{SUBNET}.11", "web02": f"{SUBNET}.12", "rogue": f"{SUBNET}.66"}
PORT_BASE = 7400
#: Datapoints a second from web01's ``heavy`` collector: the load the link cut is tested under.
HEAVY = 1000

TOPOLOGY = """
[dsat]
run_dir = "run"
port_base = {port_base}

[hosts.hub]
address = "{hub}"

[hosts.web01]
address = "{web01}"

[hosts.web02]
address = "{web02}"

[groups]
web = ["web01", "web02"]

[tracker]
metrics_every = "1s"

[carbon]
destinations = ["127.0.0.1:{carbon_port}"]

[satellites.load]
use = "synthetic"
every = "1s"
host = "web"
options = {{ metrics = 3 }}

[satellites.heavy]
use = "synthetic"
every = "1s"
host = "web01"
options = {{ metrics = {heavy} }}

[satellites.fast]
use = "synthetic"
every = "1s"
host = "web02"
options = {{ metrics = 2 }}
next = ["rate"]

[satellites.rate]
use = "rate"
host = "web02"
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = Path(tmp_path_factory.mktemp("multihost"))
    net = Network(base, ADDRESSES)
    try:
        net.create()
        stack = LocalStack(base / "stack", pickle_port=free_port(), http_port=free_port())
        stack.prepare_carbon(NETNS_SCHEMAS)
        source = base / "source"
        source.mkdir()
        (source / "topology.toml").write_text(
            TOPOLOGY.format(port_base=PORT_BASE, carbon_port=stack.pickle_port, heavy=HEAVY, **ADDRESSES)
        )
        made = make_keys(source / "topology.toml")
        assert made.returncode == 0, made.stderr
        topologies = {host: host_copy(base, source, host) for host in ("hub", "web01", "web02", "rogue")}
        net.start("hub", stack.carbon_command(), "carbon-cache")
        net.start("hub", stack.graphite_command(), "graphite-web", env=stack.graphite_env())
        ups = {
            host: net.start(
                host, [sys.executable, "-m", "dsat", "up", str(topologies[host]), "--host", host], f"dsat-{host}"
            )
            for host in ("hub", "web01", "web02")
        }
        cluster = Cluster(net, stack, topologies)
        cluster.ups = ups
        yield cluster
    finally:
        net.destroy()


def test_both_collector_hosts_land_under_their_own_names(cluster: Cluster) -> None:
    """Collectors on web01 and web02 (one through a transform on web02) reach the hub's Whisper over CURVE,
    each under dsat.<its host>, and graphite-web serves them."""
    wanted = [("dsat", h, "load", f"m{i}") for h in ("web01", "web02") for i in range(3)]
    wanted += [("dsat", "web02", "fast", f"m{i}") for i in range(2)]
    wait_for(
        lambda: all(cluster.values(*w) for w in wanted),
        90,
        "every series of both hosts in Whisper",
        detail=lambda: [".".join(w) for w in wanted if not cluster.values(*w)],
    )
    assert not cluster.wsp("dsat", "web01", "fast", "m0").exists()  # fast runs on web02 only
    rates = cluster.values("dsat", "web02", "fast", "m0")
    assert rates and all(v == pytest.approx(1.0, abs=0.2) for v in rates), rates  # rate ran on web02
    series = cluster.render("dsat.*.load.m0")
    assert sorted(s["target"] for s in series) == ["dsat.web01.load.m0", "dsat.web02.load.m0"]
    assert all(any(v is not None for v, _ in s["datapoints"]) for s in series)  # type: ignore[attr-defined]


ROGUE = """
import json, time, zmq
from pathlib import Path
from dsat.envelope import Envelope, encode
from dsat.keys import load_public, load_secret
hub = load_public({hub_key!r})
mode = {mode!r}
ctx = zmq.Context()
def socket(kind, port):
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if mode != "plain":
        public, secret = zmq.curve_keypair() if mode == "rogue" else load_secret(Path({secret!r}))
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, hub
    if kind == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(f"tcp://{address}:{{port}}")
    return sock
push = socket(zmq.PUSH, {orchester})
push.setsockopt(zmq.SNDTIMEO, 100)
sub = socket(zmq.SUB, {states})
sent = received = 0
deadline = time.monotonic() + 6
while time.monotonic() < deadline:
    env = Envelope.new_batch([(f"dsat.{{mode}}.evil.m0", time.time(), 666.0)], type="gauge", emitter="evil",
                             where=mode, seq=sent + 1).evolve(next=("orchester",))
    if mode != "control":
        try:
            push.send(encode(env))
            sent += 1
        except zmq.Again:
            pass
    if sub.poll(200):
        sub.recv()
        received += 1
print(json.dumps({{"sent": sent, "received": received}}))
"""


def peer(cluster: Cluster, host: str, mode: str, secret: str = "") -> dict[str, int]:
    """Run a peer in *host*'s namespace that pushes batches to the orchester and subscribes to the tracker's
    states for 6 s: with a stranger's key (``rogue``), no CURVE (``plain``), or a host's own keys (``control``)."""
    hub_key = str(cluster.topologies[host].parent / "keys" / "public" / "hub.key")
    code = ROGUE.format(
        hub_key=hub_key,
        mode=mode,
        secret=secret,
        address=ADDRESSES["hub"],
        orchester=PORT_BASE + 2,
        states=PORT_BASE + 1,
    )
    return json.loads(cluster.net.python(host, code))  # type: ignore[no-any-return]


def test_rogue_hosts_get_nothing_in_and_nothing_out(cluster: Cluster) -> None:
    """A host with its own key pair and one without CURVE push batches and subscribe to the tracker's states:
    none of their datapoints lands, they receive nothing, and the hub counts each refusal by reason."""
    wait_for(lambda: cluster.values("dsat", "web01", "load", "m0"), 90, "the topology to run")
    # Control: a known host's keys get the tracker's states (so "received nothing" below can fail).
    web01_secret = cluster.topologies["web01"].parent / "keys" / "private" / "web01.key_secret"
    control = peer(cluster, "web01", "control", str(web01_secret))
    assert control["received"] > 0, control
    for mode in ("rogue", "plain"):
        result = peer(cluster, "rogue", mode)
        assert result["received"] == 0, (mode, result)
    # the counts of the refusals reach Whisper through the same orchester; only then is "nothing landed" a check
    for step in ("orchester", "tracker"):
        for reason in ("unknown_key", "handshake_failed"):
            wait_for(
                lambda step=step, reason=reason: sum(cluster.values("dsat", "hub", "self", step, "rejected", reason)),
                30,
                f"the {step}'s count of {reason} refusals",
            )
    assert not (cluster.stack.whisper_dir / "dsat" / "rogue").exists()
    assert not (cluster.stack.whisper_dir / "dsat" / "plain").exists()
    hub_log = (cluster.net.base / "dsat-hub.log").read_text(errors="replace")
    assert f"peer {ADDRESSES['rogue']} refused on a CURVE link" in hub_log


def validate(topology_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dsat", "validate", str(topology_file), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_validate_host_catches_a_missing_key_an_unknown_host_and_plain_tcp(tmp_path: Path) -> None:
    """dsat validate --host fails (status 2) on a host without its secret key, on a host not in the topology
    and on hand-written plain tcp without insecure = true, and warns when insecure = true allows it."""
    source = tmp_path / "source"
    source.mkdir()
    text = TOPOLOGY.format(port_base=PORT_BASE, carbon_port=2004, heavy=HEAVY, **ADDRESSES)
    (source / "topology.toml").write_text(text)
    made = make_keys(source / "topology.toml")
    assert made.returncode == 0, made.stderr
    web01 = host_copy(tmp_path, source, "web01")
    ok = validate(web01, "--host", "web01")
    assert (ok.returncode, ok.stdout.strip()) == (
        0,
        f"{web01}: OK for host web01 (steps: load, heavy) and the whole graph",
    )

    (web01.parent / "keys" / "private" / "web01.key_secret").unlink()
    missing = validate(web01, "--host", "web01")
    assert missing.returncode == 2
    assert "dsat.keys: " in missing.stderr and "web01.key_secret: cannot read the secret key" in missing.stderr

    # This machine is not the hub: the hub's address is not here, so its ports cannot be bound.
    hub = host_copy(tmp_path, source, "hub")
    elsewhere = validate(hub, "--host", "hub")
    assert elsewhere.returncode == 2
    assert "tracker.events: cannot bind tcp://10.213.0.1:7400 (Cannot assign requested address)" in elsewhere.stderr

    unknown = validate(web01, "--host", "web09")
    assert unknown.returncode == 2
    assert '--host: "web09" is not in [hosts]; did you mean "web02"? hosts are: hub, web01, web02' in unknown.stderr

    plain = source / "plain.toml"
    plain.write_text(text.replace('use = "rate"', 'use = "rate"\nlisten = "tcp://10.213.0.12:7999"'))
    refused = validate(plain, "--host", "hub")
    assert refused.returncode == 2
    assert "satellites.rate.listen: tcp://10.213.0.12:7999 is plain tcp written by hand" in refused.stderr
    plain.write_text(plain.read_text().replace("port_base =", "insecure = true\nport_base ="))
    warned = validate(plain, "--no-environment")
    assert warned.returncode == 0
    assert "warning: [dsat] insecure = true: the links between hosts are plain tcp" in warned.stderr
    assert "tcp://10.213.0.12:7999" in warned.stderr


def test_a_collector_host_cut_off_for_30_seconds_loses_nothing(cluster: Cluster) -> None:
    """web01's link is down for 30 s under 1,000 datapoints/s: it keeps collecting, nothing arrives meanwhile,
    and once the link is back every datapoint it produced lands in Whisper, none in two slots."""
    wait_for(lambda: len(cluster.runs("heavy", 1)[0]) >= 3, 90, "web01's heavy collector in Whisper")
    cluster.net.cut("web01", up=False)
    cut_at = time.monotonic()
    try:
        # what was on the wire before the cut has landed once two reads a second apart agree
        during = settled(lambda: [max(cluster.runs("heavy", 1)[0])], 20, "what crossed before the cut")[0]
        time.sleep(30 - (time.monotonic() - cut_at))  # the link stays down for 30 s: the scenario, not a wait
        assert max(cluster.runs("heavy", 1)[0]) == during, "data crossed a link that was down"
        assert cluster.ups["web01"].poll() is None
    finally:
        cluster.net.cut("web01", up=True)
    restored_at = time.monotonic()
    last_cut_run = during + 30
    wait_for(
        lambda: min(max(r, default=0) for r in cluster.runs("heavy", HEAVY)) >= last_cut_run,
        120,
        "web01's runs from the cut to land",
    )
    caught_up = time.monotonic() - restored_at
    wait_for(
        lambda: min(max(r, default=0) for r in cluster.runs("heavy", HEAVY)) >= last_cut_run + 5,
        60,
        "web01's runs after the cut",
    )
    os.killpg(cluster.ups["web01"].pid, signal.SIGTERM)  # stop producing, then let everything settle
    assert cluster.ups["web01"].wait(60) == 0
    stored = settled(lambda: cluster.runs("heavy", HEAVY), 60, "carbon-cache to finish writing")
    first = min(min(r) for r in stored)
    last = max(max(r) for r in stored)
    assert first == 1 and last >= last_cut_run + 5
    twice = {i: r for i, r in enumerate(stored) if len(r) != len(set(r))}
    assert not twice, f"runs stored in two slots: {dict(list(twice.items())[:3])}"
    missing = {i: sorted(set(range(1, last + 1)) - set(r))[:10] for i, r in enumerate(stored) if len(set(r)) != last}
    assert not missing, f"runs missing (metric: first missing runs): {dict(list(missing.items())[:5])}"
    record(
        "multihost_link_cut_30s",
        datapoints_per_second=HEAVY,
        link_down_seconds=30,
        datapoints_produced=last * HEAVY,
        datapoints_stored=sum(len(r) for r in stored),
        seconds_to_catch_up_after_restore=round(caught_up, 1),
    )


def test_a_new_key_for_a_collector_host_is_taken_without_restarting_the_hub(cluster: Cluster) -> None:
    """After `dsat keys --replace web01` and the copies, restarting web01 alone is enough: the hub (not
    restarted) admits its new key, its data lands again, and the old key gets nothing."""
    source = cluster.topologies["hub"].parent.parent / "source"
    old_secret = cluster.net.base / "web01-old.key_secret"
    shutil.copy2(source / "keys" / "private" / "web01.key_secret", old_secret)
    hub_up = cluster.ups["hub"]
    if cluster.ups["web01"].poll() is None:
        os.killpg(cluster.ups["web01"].pid, signal.SIGTERM)
        cluster.ups["web01"].wait(60)
    made = make_keys(source / "topology.toml", "--replace", "web01")
    assert made.returncode == 0 and "web01: new key pair" in made.stdout, made.stderr
    for host in ("hub", "web02", "rogue"):
        shutil.copy(source / "keys" / "public" / "web01.key", cluster.topologies[host].parent / "keys" / "public")
    web01 = cluster.topologies["web01"].parent / "keys"
    shutil.copy(source / "keys" / "public" / "web01.key", web01 / "public")
    shutil.copy(source / "keys" / "private" / "web01.key_secret", web01 / "private")
    restarted_at = time.time()
    cluster.ups["web01"] = cluster.net.start(
        "web01",
        [sys.executable, "-m", "dsat", "up", str(cluster.topologies["web01"]), "--host", "web01"],
        "dsat-web01-new-key",
    )

    def landed_since_restart() -> bool:
        path = cluster.wsp("dsat", "web01", "load", "m0")
        (start, _end, step), values = whisper.fetch(str(path), int(restarted_at))
        return any(v is not None for v in values)

    wait_for(landed_since_restart, 60, "web01's data under its new key")
    assert hub_up.poll() is None  # the hub ran through the whole change
    stale = peer(cluster, "rogue", "control", str(old_secret))
    assert stale["received"] == 0, stale


CARBON_LINK = {"relay": f"{SUBNET}.1", "carbon": f"{SUBNET}.2"}


def test_a_carbon_host_gone_silently_is_given_up_in_seconds_and_what_it_never_acknowledged_is_sent_again(
    short_tmp: Path,
) -> None:
    """carbon-cache on a host of its own.  Its link is cut (no RST can come back), it stops and starts again
    behind the cut, and the link returns: the relay gave up on the connection within its 2 s timeout
    (TCP_USER_TIMEOUT) and spooled, and sent again what the dead connection held, so every run is stored.

    Before, the connection stayed open through the cut, and what sat unacknowledged in the kernel was
    lost when carbon's restarted host answered with a reset, by then older than the resend window."""
    net = Network(short_tmp, CARBON_LINK, tag="c")
    metrics = 1000
    try:
        net.create()
        ports = {key: free_port() for key in ("pickle", "line", "query")}
        stack = LocalStack(
            short_tmp / "stack",
            pickle_port=ports["pickle"],
            line_port=ports["line"],
            query_port=ports["query"],
            interface="0.0.0.0",
        )
        stack.prepare_carbon(NETNS_SCHEMAS)
        relay = short_tmp / "relay"
        relay.mkdir()
        topo = relay / "t.toml"
        topo.write_text(
            f"""
[dsat]
where = "relay"
run_dir = "run"

[carbon]
destinations = ["{CARBON_LINK["carbon"]}:{ports["pickle"]}"]
timeout = "2s"

[spool]
path = "spool/carbon.db"
replay_rate = 200000

[satellites.link]
use = "synthetic"
every = "1s"
options = {{ metrics = {metrics} }}
"""
        )

        def start_carbon() -> subprocess.Popen[bytes]:
            proc = net.start("carbon", stack.carbon_command(), "carbon-cache")
            log = short_tmp / "carbon-cache.log"
            probe = f"import socket; socket.create_connection(('127.0.0.1', {ports['pickle']}), timeout=1).close()"
            command = ["ip", "netns", "exec", net.ns("carbon"), sys.executable, "-c", probe]
            wait_for(
                lambda: subprocess.run(command, capture_output=True, timeout=30).returncode == 0,
                90,
                "carbon-cache to listen",
                detail=lambda: f"exit status {proc.poll()}; its log ends: {log.read_text()[-2000:]!r}",
            )
            return proc

        def stored() -> list[list[int]]:
            paths = [stack.whisper_dir / "dsat" / "relay" / "link" / f"m{i}.wsp" for i in range(metrics)]
            out = []
            for path in paths:
                try:
                    out.append([int(v) for v in whisper.fetch(str(path), 0)[1] if v is not None])
                except (FileNotFoundError, whisper.CorruptWhisperFile):
                    out.append([])
            return out

        carbon = start_carbon()
        up = net.start("relay", [sys.executable, "-m", "dsat", "up", str(topo)], "dsat-relay")
        wait_for(lambda: len(stored()[0]) >= 3, 90, "the first runs in Whisper")
        net.cut("carbon", up=False)
        cut_at = time.monotonic()
        try:
            time.sleep(1)
            os.killpg(carbon.pid, signal.SIGTERM)  # carbon-cache writes what it read and exits; its reset is lost
            carbon.wait(30)
            # the relay gives up within its timeout, not when TCP would (some 15 minutes): its spool fills
            wait_for(lambda: spool_rows(relay) >= 3, 20, "the relay to give the silent connection up and spool")
            given_up_after = time.monotonic() - cut_at
            carbon = start_carbon()  # behind the cut: its host answers the old connection with a reset
            time.sleep(max(0.0, 12 - (time.monotonic() - cut_at)))
        finally:
            net.cut("carbon", up=True)
        wait_for(lambda: spool_rows(relay) == 0, 120, "the spool to be replayed once the link is back")
        target = max(stored()[0]) + 3
        wait_for(lambda: max(stored()[0], default=0) >= target, 60, "live runs after the replay")
        os.killpg(up.pid, signal.SIGTERM)
        assert up.wait(60) == 0
        runs_stored = settled(lambda: [set(r) for r in stored()], 60, "carbon-cache to finish writing")
        last = assert_every_run_stored(runs_stored)
        assert last >= 15
        log = (short_tmp / "dsat-relay.log").read_text()
        assert "lost: sending again the" in log
        record("carbon_link_cut", datapoints_per_second=metrics, seconds_to_give_up=round(given_up_after, 1))
    finally:
        net.destroy()

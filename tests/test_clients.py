"""Real Graphite and statsd clients, through DSAT's ingress and rules, to real Whisper files.

A carbon-relay (from the ``carbon`` package) forwarding pickle, a plain TCP
client writing plaintext, a UDP one, and the ``statsd`` Python client send to
a DSAT orchester with no satellites; a carbon rewrite rule renames on the way.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsat.tools.stack import free_port
from tests.harness import Carbon, Processes, free_udp_port, listening, wait_for

pytestmark = pytest.mark.integration

REWRITE = """
[pre]
^legacy\\.(\\w+)\\. = dsat.testhost.renamed.\\1.
"""


def start_carbon_relay(base: Path, destination_port: int) -> tuple[subprocess.Popen[bytes], int]:
    """carbon-relay listening for plaintext, forwarding pickle to *destination_port*."""
    from dsat.tools.stack import LocalStack

    line_port = free_port()
    relay = LocalStack(base / "relay", pickle_port=free_port())
    relay.prepare_carbon()
    conf = relay.state_dir / "conf"
    (conf / "carbon.conf").write_text(
        (conf / "carbon.conf").read_text()
        + f"""
[relay]
LINE_RECEIVER_INTERFACE = 127.0.0.1
LINE_RECEIVER_PORT = {line_port}
PICKLE_RECEIVER_INTERFACE = 127.0.0.1
PICKLE_RECEIVER_PORT = {free_port()}
RELAY_METHOD = rules
DESTINATIONS = 127.0.0.1:{destination_port}
DESTINATION_PROTOCOL = pickle
MAX_QUEUE_SIZE = 10000
USE_FLOW_CONTROL = True
"""
    )
    (conf / "relay-rules.conf").write_text(f"[default]\ndefault = true\ndestinations = 127.0.0.1:{destination_port}\n")
    script = str(Path(sys.executable).parent / "carbon-relay.py")
    proc = subprocess.Popen(
        [sys.executable, script, f"--config={conf / 'carbon.conf'}", "--debug", "start"],
        stdout=(base / "relay.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, line_port


def test_graphite_and_statsd_clients_reach_whisper(short_tmp: Path, carbon: Carbon, processes: Processes) -> None:
    """Plaintext over TCP and UDP, pickle from carbon-relay and statsd all land in Whisper, rewritten by the rules."""
    tcp, udp, pickle_port, statsd_port = free_port(), free_udp_port(), free_port(), free_udp_port()
    (short_tmp / "rewrite-rules.conf").write_text(REWRITE)
    topo = short_tmp / "t.toml"
    topo.write_text(
        f"""
[dsat]
where = "testhost"
run_dir = "run"
[tracker]
metrics_every = "1h"
[ingress]
plaintext = "127.0.0.1:{tcp}"
plaintext_udp = "127.0.0.1:{udp}"
pickle = "127.0.0.1:{pickle_port}"
statsd = "127.0.0.1:{statsd_port}"
statsd_flush = "1s"
statsd_prefix = "dsat.testhost.statsd"
[rules]
rewrite = "rewrite-rules.conf"
[carbon]
destinations = ["127.0.0.1:{carbon.port}"]
[spool]
path = "spool.db"
"""
    )
    carbon.start()
    up = processes.dsat("up", str(topo), name="up")
    wait_for(lambda: listening(tcp), 30, "the orchester's plaintext port")
    relay, relay_port = start_carbon_relay(short_tmp, pickle_port)
    try:
        wait_for(lambda: listening(relay_port), 30, "carbon-relay's line port")
        now = int(time.time())
        with socket.create_connection(("127.0.0.1", tcp)) as client:
            client.sendall(
                f"dsat.testhost.tcp.ok 1.5 {now}\nnot a metric line\ndsat.testhost.tcp.nan nan {now}\n"
                f"legacy.web1.requests 7 {now}\n".encode()
            )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(f"dsat.testhost.udp.ok 2.5 {now}\n".encode(), ("127.0.0.1", udp))
        with socket.create_connection(("127.0.0.1", relay_port)) as client:
            client.sendall(f"dsat.testhost.relayed.ok 3.5 {now}\n".encode())
        import statsd

        client = statsd.StatsClient("127.0.0.1", statsd_port)
        for _ in range(10):
            client.incr("hits")
            client.timing("latency", 12)
        client.gauge("queue", 42)

        wait_for(lambda: carbon.values("dsat.testhost.tcp.ok") == [1.5], 30, "the TCP plaintext point")
        wait_for(lambda: carbon.values("dsat.testhost.udp.ok") == [2.5], 30, "the UDP plaintext point")
        wait_for(lambda: carbon.values("dsat.testhost.relayed.ok") == [3.5], 60, "the point through carbon-relay")
        wait_for(lambda: carbon.values("dsat.testhost.renamed.web1.requests") == [7.0], 30, "the rewritten point")
        wait_for(lambda: 10.0 in carbon.values("dsat.testhost.statsd.counters.hits.count"), 30, "statsd counter")
        wait_for(lambda: 12.0 in carbon.values("dsat.testhost.statsd.timers.latency.mean"), 30, "statsd timer")
        wait_for(lambda: 42.0 in carbon.values("dsat.testhost.statsd.gauges.queue"), 30, "statsd gauge")
        assert not (carbon.stack.whisper_dir / "legacy").exists()
        assert not carbon.values("dsat.testhost.tcp.nan")
    finally:
        relay.terminate()
        relay.wait(30)
    assert processes.stop(up) == 0
    log = processes.log_of(up)
    assert "rejected (invalid_line)" in log and "rejected (nan)" in log

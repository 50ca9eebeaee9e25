"""Orchester memory (RSS) with 1,000,000 datapoints in the spool.

Runs ``dsat up`` with the ``synthetic`` collector (10,000 metrics, ten runs a
second: 100,000 datapoints/s) against a carbon destination that is down, waits
until the spool holds at least 1,000,000 datapoints, and prints the
orchester's resident memory.  The spool is on disk, so the goal is that RSS
stays flat (under 200 MB).

    .venv/bin/python bench/spool_memory.py
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from dsat.tools.stack import free_port

TOPOLOGY = """
[dsat]
where = "bench"
run_dir = "run"
[tracker]
metrics_every = "1h"
[carbon]
destinations = ["127.0.0.1:{port}"]
[spool]
path = "spool.db"
sync = "normal"
[satellites.load]
use = "synthetic"
every = "100ms"
options = {{ metrics = 10000 }}
"""


def spooled(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COALESCE(SUM(points), 0) FROM batches").fetchone()[0])


def orchester_rss(up: subprocess.Popen[bytes]) -> int:
    for child in psutil.Process(up.pid).children(recursive=True):
        if child.cmdline()[-1:] == ["orchester"]:
            return int(child.memory_info().rss)
    raise RuntimeError("no orchester process")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="dsat-bench-") as base:
        topo = Path(base) / "t.toml"
        topo.write_text(TOPOLOGY.format(port=free_port()))
        up = subprocess.Popen(
            [sys.executable, "-m", "dsat", "up", str(topo)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            start = time.monotonic()
            samples = []
            while spooled(Path(base) / "spool.db") < 1_000_000:
                if time.monotonic() - start > 300:
                    raise SystemExit("the spool did not reach 1,000,000 datapoints in 300 s")
                time.sleep(1)
                samples.append(orchester_rss(up))
            points = spooled(Path(base) / "spool.db")
            rss = orchester_rss(up)
            size = sum(f.stat().st_size for f in Path(base).glob("spool.db*"))
            print(f"datapoints spooled: {points:,}")
            print(f"spool on disk: {size / 1e6:.1f} MB")
            print(f"orchester RSS: {rss / 1e6:.1f} MB now, {max(samples) / 1e6:.1f} MB at most (goal < 200 MB)")
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())

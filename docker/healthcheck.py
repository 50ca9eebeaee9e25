#!/opt/dsat/bin/python
"""Container healthcheck of a DSAT step: healthy while the tracker has a heartbeat from STEP younger than 30 s.

``dsat-healthy tracker`` only asks that the tracker answers on its status socket.
"""

from __future__ import annotations

import sys

from dsat import topology
from dsat.errors import DsatError
from dsat.tools import status

step = sys.argv[1]
try:
    snap = status.fetch(topology.load("/etc/dsat/topology.toml").tracker.status, timeout=2.0)
except DsatError as exc:
    sys.exit(f"unhealthy: {exc}")
beat = snap.get("heartbeats", {}).get(step)
if step != "tracker" and (beat is None or beat["age"] > 30):
    sys.exit(f"unhealthy: no heartbeat from {step} in the last 30 s")

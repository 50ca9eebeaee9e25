"""``dsat route``: change the orchester's routing at run time, without a restart.

The change travels as a control envelope on the orchester's PUB/SUB control
channel (``[orchester] control``): set where a ``type`` goes, add a carbon
destination, drain one (no new data placed on it; what it holds still goes
to it), or remove one (drained, and what it holds placed on the others: for a
carbon-cache that is gone for good).  A SUB socket misses what is published
before it is connected, so the command is published again every half second
until the orchester's heartbeat, read from the tracker, shows the change in
force.
"""

from __future__ import annotations

import json
import time
from typing import Any

import zmq

from dsat.envelope import Envelope, encode
from dsat.errors import ConfigError, DsatError
from dsat.tools import status


def command(action: str, args: list[str]) -> dict[str, str]:
    """The control change for ``dsat route ACTION ARGS``."""
    if action == "set" and len(args) >= 2:
        return {"action": "route", "type": args[0], "targets": ",".join(args[1:])}
    if action in ("add", "drain", "remove") and len(args) == 1:
        return {"action": action, "destination": args[0]}
    raise ConfigError(
        "usage: dsat route TOPOLOGY set TYPE STEP [STEP...] | add HOST:PORT[:INSTANCE] | drain HOST:PORT"
        " | remove HOST:PORT"
    )


def in_force(change: dict[str, str], config: dict[str, Any]) -> bool:
    """Does the orchester's reported configuration show *change*?"""
    if change["action"] == "route":
        routes = json.loads(config.get("routes", "{}"))
        return routes.get(change["type"]) == change["targets"].split(",")
    placing = config.get("destinations", "").split(",")
    name = ":".join(change["destination"].split(":")[:2])
    return (name in placing) == (change["action"] == "add")


def send(topology: Any, change: dict[str, str], timeout: float = 10.0) -> dict[str, Any]:
    """Publish *change* until the orchester reports it; returns the orchester's configuration."""
    if change["action"] == "route":
        steps = set(change["targets"].split(","))
        valid = {"carbon", *(n for n, s in topology.satellites.items() if s.kind != "collector")}
        if not steps <= valid:
            raise ConfigError(f"unknown targets {sorted(steps - valid)}; valid: {', '.join(sorted(valid))}")
    frame = encode(Envelope(channel="control", type="route", step="dsat-route", meta=change))
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 500)
    pub.connect(topology.orchester.control)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            pub.send(frame)
            time.sleep(0.5)
            beat = status.fetch(topology.tracker.status, timeout=2.0).get("heartbeats", {}).get("orchester", {})
            config = beat.get("config", {})
            if beat.get("age", 99) < 1.0 and in_force(change, config):
                return dict(config)
    finally:
        pub.close()
    raise DsatError(
        f"the orchester did not report the change within {timeout:g}s; see its log for a `bad_control` rejection"
    )

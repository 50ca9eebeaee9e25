"""``dsat status``: ask the running tracker what it knows and print it.

The tracker answers on its REP socket (``[tracker] status``) with a JSON
snapshot: batches per FSM state, per-step counters, and how long ago each step
last sent a heartbeat.  On a server of an orchester pair it also shows the
pair: this server's state, its peer's as last heard (or, once the peer has
been silent past the deadline, silent and for how long), the failovers and
the last one's reason (from the orchester's heartbeat).  The restarts ``dsat up``
counted on this host (by cause: hung, killed, exited) come from its
``run/restarts.json``.
"""

from __future__ import annotations

import json
from typing import Any

import zmq

from dsat.errors import DsatError

COLUMNS = (
    ("received", "batches_received"),
    ("sent", "batches_sent"),
    ("ended", "batches_ended"),
    ("failed", "batches_failed"),
    ("timed out", "batches_timed_out"),
    ("retried", "batches_retried"),
    ("points in", "points_received"),
    ("points out", "points_sent"),
)


def fetch(address: str, timeout: float = 3.0) -> dict[str, Any]:
    """One request to the tracker's status socket; raises DsatError when it does not answer."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    try:
        sock.connect(address)
        sock.send(b"status")
        reply = sock.recv()
    except zmq.Again:
        raise DsatError(
            f"the tracker at {address} did not answer within {timeout:g}s; is the topology running (dsat up)?"
        ) from None
    finally:
        sock.close()
    return json.loads(reply)


def _peer(config: dict[str, str], beat_age: float) -> str:
    """The pair's other server: its state as last heard, or silent for how long (until now, not the heartbeat)."""
    state = config.get("ha_peer", "unheard")
    if "ha_peer_silent" not in config:
        return state
    silent = float(config["ha_peer_silent"]) + beat_age
    last = "never heard" if state == "unheard" else f"last heard {state}"
    return f"silent for {silent:.0f}s ({last})"


def format_status(snap: dict[str, Any]) -> str:
    """A plain-text table of a tracker snapshot."""
    tasks = snap["tasks"]
    lines = [
        "batches: " + ", ".join(f"{name} {tasks[name]}" for name in sorted(tasks)),
        "",
    ]
    steps = sorted(set(snap["steps"]) | set(snap.get("heartbeats", {})))
    header = ["step", *(title for title, _ in COLUMNS), "heartbeat"]
    rows = [header]
    for step in steps:
        counters = snap["steps"].get(step, {})
        beat = snap.get("heartbeats", {}).get(step)
        rows.append(
            [
                step,
                *(str(counters.get(key, 0)) for _, key in COLUMNS),
                f"{beat['age']:.0f}s ago" if beat else "-",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        lines.append(
            "  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
        )
    config = snap.get("heartbeats", {}).get("orchester", {}).get("config", {})
    if config:
        lines += ["", f"orchester routes: {config.get('routes')}", f"carbon destinations: {config.get('destinations')}"]
    if "workers" in config:
        lines.append(f"ingress workers: {config['workers']}")
    if "spool_state" in config:
        lines.append(f"spool: {config['spool_state']}")
    if "ha_state" in config:
        beat = snap["heartbeats"]["orchester"]
        failovers = beat.get("counters", {}).get("failovers", 0)
        lines += [
            f"pair: this server {config['ha_state']}; peer {_peer(config, beat['age'])}",
            f"failovers: {failovers}; last: {config.get('ha_last_failover')}",
        ]
    if snap.get("restarts"):
        lines += [
            "restarts (this host): "
            + "; ".join(
                f"{step} " + ", ".join(f"{cause} {n}" for cause, n in sorted(causes.items()))
                for step, causes in sorted(snap["restarts"].items())
            )
        ]
    if snap.get("circuits"):
        lines += ["circuits: " + ", ".join(f"{k} {v}" for k, v in sorted(snap["circuits"].items()))]
    if snap.get("alerts"):
        lines += ["alerts: " + ", ".join(f"{k} {v}" for k, v in sorted(snap["alerts"].items()))]
    if snap.get("rejected"):
        lines += [
            "",
            "tracker rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(snap["rejected"].items())),
        ]
    return "\n".join(lines)

"""``dsat graph``: a picture of a topology, in Graphviz's dot language.

:func:`to_dot` writes the graph as text (no library needed): one cluster per
host with the steps running there (collectors, transforms and sinks drawn
apart, the orchester and the tracker), the Graphite and statsd ingress
listeners, the carbon destinations; a satellite's links are labelled with
their pattern (``push → pull``), the orchester's routes with the envelope types
they carry, the egress with Carbon's protocol.  :func:`render` hands the text to
Graphviz's ``dot`` program (Debian package ``graphviz``) for SVG or PNG.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from dsat.errors import DsatError

FORMATS = ("dot", "svg", "png")
#: How each kind of step is drawn.
SHAPES = {
    "collector": 'shape=box, style="rounded,filled", fillcolor="#dbeafe"',
    "transform": 'shape=box, style=filled, fillcolor="#fef3c7"',
    "sink": 'shape=box, style=filled, fillcolor="#fce7f3"',
    "orchester": 'shape=hexagon, style=filled, fillcolor="#dcfce7"',
    "tracker": 'shape=component, style="dashed"',
    "ingress": "shape=cds",
    "carbon": 'shape=cylinder, style=filled, fillcolor="#e5e7eb"',
}


def quote(text: str) -> str:
    """A dot ID: any text, double-quoted."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(topo: Any) -> str:
    """The topology as a dot digraph."""
    lines = [
        f"digraph {quote(topo.path.name)} {{",
        "  rankdir=LR;",
        '  node [fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]
    hosts: dict[str, list[str]] = {}
    home = topo.where
    for name in ("orchester", "tracker"):
        hosts.setdefault(topo.hosts_of(name)[0] or home, []).append(f"{quote(name)} [{SHAPES[name]}];")
    for name, step in topo.satellites.items():
        label = f"{name}\n({step.use}, {step.kind}" + (f", every {step.every:g}s)" if step.every else ")")
        if len(step.hosts) > 1:  # a collector on a group: drawn once, in its first host's cluster
            label += "\non " + ", ".join(step.hosts)
        first = step.hosts[0] if step.hosts else home
        hosts.setdefault(first, []).append(f"{quote(name)} [{SHAPES[step.kind]}, label={quote(label)}];")
    for i, (host, nodes) in enumerate(hosts.items()):
        lines.append(f"  subgraph cluster_{i} {{")
        lines.append(f'    label={quote("host " + host)}; style="rounded,dashed";')
        lines += [f"    {node}" for node in nodes]
        lines.append("  }")
    ingress = topo.ingress
    for kind, listener in (
        ("plaintext tcp", ingress.plaintext),
        ("plaintext udp", ingress.plaintext_udp),
        ("pickle", ingress.pickle),
        ("statsd", ingress.statsd),
    ):
        if listener is not None:
            node = quote(f"ingress {kind}")
            label = quote(f"{kind}\n{listener[0]}:{listener[1]}")
            lines.append(f"  {node} [{SHAPES['ingress']}, label={label}];")
            lines.append(
                f"  {node} -> {quote('orchester')} [label={quote('Graphite' if kind != 'statsd' else 'statsd')}];"
            )
    for name, step in topo.satellites.items():
        for target in step.next:
            link = topo.input_of(target)
            label = f"{link.sender_pattern} → {link.pattern}"
            lines.append(f"  {quote(name)} -> {quote(target)} [label={quote(label)}];")
    by_target: dict[str, list[str]] = {}
    for type_name, targets in topo.orchester.routes.items():
        for target in targets:
            by_target.setdefault(target, []).append(type_name)
    carbon = topo.carbon
    egress_label = carbon.protocol + (f", {carbon.hashing}" if len(carbon.destinations) > 1 else "")
    egress_label += f", replication {carbon.replication}" if carbon.replication > 1 else ""
    for target, types in by_target.items():
        routed = "type " + ", ".join(types)
        if target == "carbon":
            for host, port, instance in carbon.destinations:
                dest = f"carbon-cache {host}:{port}" + (f":{instance}" if instance else "")
                lines.append(f"  {quote(dest)} [{SHAPES['carbon']}];")
                lines.append(f"  {quote('orchester')} -> {quote(dest)} [label={quote(routed + ' / ' + egress_label)}];")
        else:
            link = topo.input_of(target)
            label = f"{routed} / {link.sender_pattern} → {link.pattern}"
            lines.append(f"  {quote('orchester')} -> {quote(target)} [label={quote(label)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(dot_text: str, fmt: str) -> bytes:
    """*dot_text* as *fmt* (``dot``, ``svg`` or ``png``); svg and png need Graphviz's ``dot`` program."""
    if fmt == "dot":
        return dot_text.encode()
    program = shutil.which("dot")
    if program is None:
        raise DsatError(f"--format {fmt} needs Graphviz's dot program: apt-get install graphviz (or use --format dot)")
    done = subprocess.run([program, f"-T{fmt}"], input=dot_text.encode(), capture_output=True, timeout=60)
    if done.returncode != 0:
        raise DsatError(f"dot -T{fmt} failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}")
    return done.stdout

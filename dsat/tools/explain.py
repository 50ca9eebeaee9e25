"""``dsat test-rules``: what the rules do to each metric name, like carbon-c-relay's ``-t`` mode.

Reads metric lines (``path value timestamp``, or just paths) on standard
input and prints, for each, the name the ingress makes of it (a tagged one in
carbon's canonical form, or why it is refused), the name after the ``[pre]``
rewrites, whether a filter drops it, the aggregates it feeds, the name it
leaves with (and its tags), and the carbon destination(s) that would hold it
with the topology's ``[carbon] hashing`` and where that hash put the name
(``--topology``).  The rule files given are told apart by their content:
one with ``[pre]`` or ``[post]`` sections is a rewrite file, one with
``output (frequency) = method input`` lines an aggregation file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from dsat.errors import BadName, ConfigError
from dsat.naming import clean_path, is_tagged, parse_tags
from dsat.rules import RuleSet, load_rules

_SECTION = re.compile(r"^\s*\[(pre|post)\]\s*$", re.MULTILINE)
_AGGREGATION = re.compile(r"^\s*[^#\s].*\(\s*\d+\s*\)\s*=", re.MULTILINE)


def rule_kind(path: Path) -> str:
    """``rewrite`` or ``aggregation``, from what the file holds."""
    text = path.read_text()
    if _SECTION.search(text):
        return "rewrite"
    if _AGGREGATION.search(text):
        return "aggregation"
    raise ConfigError(f"{path}: neither a rewrite file ([pre]/[post] sections) nor an aggregation file")


def load(files: Sequence[Path], allow: Iterable[str] = (), deny: Iterable[str] = ()) -> RuleSet:
    kinds: dict[str, Path] = {}
    for file in files:
        kind = rule_kind(file)
        if kind in kinds:
            raise ConfigError(f"{file}: a second {kind} file ({kinds[kind]} is one already); merge them")
        kinds[kind] = file
    return load_rules(kinds.get("rewrite"), kinds.get("aggregation"), allow, deny)


def explain_lines(rules: RuleSet, lines: Iterable[str], egress: Any = None) -> Iterable[str]:
    """One block of text per input line."""
    for line in lines:
        fields = line.split()
        if not fields:
            continue
        try:
            path = clean_path(fields[0])
        except BadName as exc:
            yield f"{fields[0]}\n    refused        ({exc.reason}) {exc}"
            continue
        info = rules.explain(path)
        out = [fields[0]]
        if path != fields[0]:
            out.append(f"    canonical      {path}")
        if info["rewritten"] != path:
            out.append(f"    rewritten to   {info['rewritten']}")
        if info["filtered"]:
            out.append(f"    dropped by     {info['filtered_by']}")
        for aggregate in info["aggregates"]:
            out.append(f"    aggregated to  {aggregate['output']}  ({aggregate['rule']})")
        if info["output"] and not info["filtered"]:
            out.append(f"    sent as        {info['output']}")
            if is_tagged(info["output"]):
                tags = parse_tags(info["output"])[1]
                out.append(f"    tags           {' '.join(f'{k}={v}' for k, v in tags.items())}")
            if egress is not None:
                out.append(f"    destination    {placement_line(egress, info['output'])}")
        elif info["dropped"]:
            out.append(f"    not sent       ({info['dropped']})")
        yield "\n".join(out)


def placement_line(egress: Any, path: str) -> str:
    """The destination(s) that hold *path*, then how the topology's hashing found them.

    ``127.0.0.1:2004=a, 127.0.0.1:2104=b  (fnv1a_ch position 34049, replication 2)``: the
    position (a jump_fnv1a_ch bucket) is what ``carbon-c-relay -t -d`` prints as ``hash_pos``.
    """
    placement = egress.placement
    names = ", ".join(egress.written_name(i) for i in egress.place(path))
    if placement.only is not None:
        return f"{names}  (the only destination)"
    replication = f", replication {placement.replication}" if placement.replication > 1 else ""
    return f"{names}  ({placement.where(path)}{replication})"


def run(files: Sequence[Path], stdin: TextIO, stdout: TextIO, topology_path: str | None = None) -> int:
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    egress = None
    if topology_path is not None:
        from twisted.internet.testing import MemoryReactorClock

        from dsat import topology
        from dsat.carbon import CarbonEgress

        topo = topology.load(topology_path)
        allow, deny = topo.rules.allow, topo.rules.deny
        if not files:
            files = [f for f in (topo.rules.rewrite, topo.rules.aggregation) if f is not None]
        # Placement only: a reactor that never connects anything.
        egress = CarbonEgress(
            MemoryReactorClock(),
            topo.carbon.destinations,
            replication=topo.carbon.replication,
            hashing=topo.carbon.hashing,
        )
    rules = load(files, allow, deny)
    for block in explain_lines(rules, stdin, egress):
        stdout.write(block + "\n")
    return 0

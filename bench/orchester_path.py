"""CPU µs per datapoint of the orchester's plaintext path, in process: parse, rules, placement, encoding.

Feeds ``bench/relay.py``'s workload (``--names`` distinct names, ``--rounds``
rounds of them) to the same objects the orchester runs for a plaintext
listener: :func:`dsat.graphite_wire.parse_plaintext` with one
:class:`~dsat.datapoint.Validator` (the datapoint rule and its path cache),
the bench's rewrite rule in a :class:`~dsat.rules.RuleSet`, then
:class:`~dsat.carbon.CarbonEgress` placement over ``--destinations`` and
plaintext encoding of each part.  No
sockets and no reactor, so the figure is CPU time (``time.process_time``) and
is not disturbed much by other work on the machine.  Each round is timed on
its own: the first is the cold path (every name new), the later ones show
what the caches keep.  ``--chunk`` is the bytes per batch (Twisted reads
64 KiB at a time from a busy connection; 20 lines are ~900 bytes).

    .venv/bin/python bench/orchester_path.py --names 1000000 --rounds 2 --destinations 4
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from relay import PATTERN, REPLACEMENT, Cell, workload  # noqa: E402

from dsat.carbon import CarbonEgress  # noqa: E402
from dsat.datapoint import Validator  # noqa: E402
from dsat.graphite_wire import encode_plaintext, parse_plaintext  # noqa: E402
from dsat.rules import RewriteRule, RuleSet  # noqa: E402


def chunks(data: bytes, size: int) -> list[bytes]:
    """*data* cut in pieces of about *size* bytes, each ending with a newline."""
    out, start = [], 0
    while start < len(data):
        end = data.find(b"\n", start + size)
        end = len(data) if end < 0 else end + 1
        out.append(data[start:end])
        start = end
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--destinations", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=65536, help="bytes per batch (65536)")
    args = parser.parse_args(argv)
    cell = Cell(args.names, args.rounds, 1, args.destinations)
    data = workload(cell)
    per_round = len(data) // args.rounds
    rounds = [chunks(data[i * per_round : (i + 1) * per_round], args.chunk) for i in range(args.rounds)]
    validator = Validator()
    rules = RuleSet(pre=[RewriteRule(PATTERN, REPLACEMENT)])
    egress = CarbonEgress(None, [("127.0.0.1", 2003 + i, f"c{i}") for i in range(args.destinations)])
    gc.collect()
    for number, pieces in enumerate(rounds, 1):
        points_total = 0
        begin = time.process_time()
        for piece in pieces:
            points, _, _ = parse_plaintext(piece, 0.0, validator=validator)
            kept, _ = rules.apply(points)
            for part in egress.placement.split(kept).values():
                encode_plaintext(part)
            points_total += len(points)
        spent = time.process_time() - begin
        each = spent / points_total * 1e6
        print(f"round {number}: {points_total:,} datapoints, {spent:.2f} s CPU, {each:.2f} µs each")
    return 0


if __name__ == "__main__":
    sys.exit(main())

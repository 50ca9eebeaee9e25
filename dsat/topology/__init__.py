"""The topology: one TOML file describing every step, loaded into frozen dataclasses.

``from dsat.topology import load, Topology`` is all most code needs.  The
package is cut by what each part reads:

* :mod:`~dsat.topology.model`: the dataclasses (:class:`Topology`,
  :class:`Step`, the tables' ``...Conf``) and what they answer; reads nothing.
* :mod:`~dsat.topology.schema`: the problems' form, what each key accepts,
  durations (:func:`parse_duration`).
* :mod:`~dsat.topology.tables`: one builder per table of the file.
* :mod:`~dsat.topology.links`: the tcp addresses of the links between hosts.
* :mod:`~dsat.topology.loading`: :func:`load` and :func:`loads`: the schema,
  then the graph, every problem at once; reads the topology file only.
* :mod:`~dsat.topology.preflight`: :func:`~dsat.topology.preflight.check`,
  what the topology needs of this machine (rule and TLS files, key files,
  folders, ports), run where a step or the stack starts or is validated.

A problem reads ``<file>: <key path>: <what is wrong>; <how to fix>``.  The
file format is documented in ``docs/topology.rst``.

``[orchester] host = ["a", "b"]`` makes the orchester (with its tracker) a
Binary Star pair (:mod:`dsat.binarystar`, ``docs/ha.rst``): the first host is
the primary, the second the backup; each runs both steps on its own tcp
addresses (:class:`Server`), and they beat on ``orchester.heartbeat``.
"""

from dsat.topology.loading import load, loads
from dsat.topology.model import (
    DEFAULT_WATCHDOG,
    HASHINGS,
    MAX_IPC_PATH,
    MIN_WATCHDOG,
    PATTERNS,
    PROTOCOLS,
    RESERVED,
    CarbonConf,
    Host,
    IngressConf,
    Link,
    OrchesterConf,
    RulesConf,
    Server,
    SpoolConf,
    Step,
    Topology,
    TrackerConf,
    jump_compare,
    placement_problems,
    ring_identity,
    valid_percentile,
)
from dsat.topology.schema import parse_duration
from dsat.topology.tables import parse_destination

__all__ = [
    "DEFAULT_WATCHDOG",
    "HASHINGS",
    "MAX_IPC_PATH",
    "MIN_WATCHDOG",
    "PATTERNS",
    "PROTOCOLS",
    "RESERVED",
    "CarbonConf",
    "Host",
    "IngressConf",
    "Link",
    "OrchesterConf",
    "RulesConf",
    "Server",
    "SpoolConf",
    "Step",
    "Topology",
    "TrackerConf",
    "jump_compare",
    "load",
    "loads",
    "parse_destination",
    "parse_duration",
    "placement_problems",
    "ring_identity",
    "valid_percentile",
]

#!/opt/dsat/bin/python
"""Container entry point of carbon-cache: render carbon_conf for this container, then run carbon in the foreground.

The same carbon_conf files and template as the local stack (dsat.tools.stack.LocalStack), with every state
directory under /var/lib/dsat and the receivers listening on all interfaces of the container.
"""

from __future__ import annotations

import os
from pathlib import Path

from dsat.tools.stack import LocalStack

stack = LocalStack(
    Path("/var/lib/dsat"),
    pickle_port=2004,
    interface="0.0.0.0",
    line_port=2003,
    query_port=7002,
    graphite_url="http://graphite-web:8080",  # compose.yaml's graphite-web: it holds the TagDB
)
stack.prepare_carbon()
command = stack.carbon_command()
os.execv(command[0], command)

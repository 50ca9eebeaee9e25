"""The local Graphite stack ``dsat demo`` runs beside a topology.

carbon-cache (from the ``carbon`` package) and graphite-web (from the
``graphite-web`` package, served by Twisted's WSGI container, see
:mod:`dsat.tools.graphite_web`) run as supervised processes next to the topology's own, from one
state directory: configuration rendered from ``dsat.carbon_conf``, the Whisper
tree, graphite-web's sqlite database and the logs.  carbon-cache listens for
pickle on the port of the topology's first carbon destination, and registers
the tagged series it creates in graphite-web's TagDB (``ENABLE_TAGS``).
"""

from __future__ import annotations

import secrets
import shutil
import socket
import string
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from dsat.errors import ConfigError


def free_port(interface: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((interface, 0))
        return int(sock.getsockname()[1])


def conf_text(name: str) -> str:
    return resources.files("dsat.carbon_conf").joinpath(name).read_text()


def render_carbon_conf(**fields: object) -> str:
    """carbon_conf/carbon.conf with its ``${NAME}`` fields filled; a missing field is an error."""
    try:
        return string.Template(conf_text("carbon.conf")).substitute({k: str(v) for k, v in fields.items()})
    except KeyError as exc:
        raise ConfigError(f"carbon_conf/carbon.conf: no value for ${{{exc.args[0]}}}") from None


@dataclass
class LocalStack:
    """carbon-cache + graphite-web on this machine, all state under *state_dir*."""

    state_dir: Path
    pickle_port: int
    http_port: int = 8080
    interface: str = "127.0.0.1"
    line_port: int = field(default=0)
    query_port: int = field(default=0)
    #: Where carbon-cache registers tagged series (graphite-web's TagDB); by default this stack's graphite-web.
    graphite_url: str = field(default="")

    def __post_init__(self) -> None:
        self.state_dir = self.state_dir.resolve()
        self.line_port = self.line_port or free_port(self.interface)
        self.query_port = self.query_port or free_port(self.interface)
        self.graphite_url = self.graphite_url or self.url.rstrip("/")

    @property
    def whisper_dir(self) -> Path:
        return self.state_dir / "whisper"

    @property
    def url(self) -> str:
        return f"http://{self.interface}:{self.http_port}/"

    def graphite_env(self) -> dict[str, str]:
        key_file = self.state_dir / "secret_key"
        if not key_file.exists():
            key_file.write_text(secrets.token_hex(32))
        return {
            "DJANGO_SETTINGS_MODULE": "graphite.settings",
            "GRAPHITE_SETTINGS_MODULE": "dsat.carbon_conf.local_settings",
            "GRAPHITE_STORAGE_DIR": str(self.state_dir / "graphite"),
            "DSAT_WHISPER_DIR": str(self.whisper_dir),
            "DSAT_CARBONLINK_HOSTS": f"{self.interface}:{self.query_port}:a",
            "DSAT_SECRET_KEY": key_file.read_text().strip(),
        }

    def prepare_carbon(self, schemas: str | None = None) -> None:
        """Write carbon-cache's configuration; *schemas* replaces carbon_conf's storage-schemas.conf."""
        conf_dir = self.state_dir / "conf"
        for sub in ("conf", "whisper", "log", "lists", "graphite/log"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        (conf_dir / "carbon.conf").write_text(
            render_carbon_conf(
                STORAGE_DIR=self.state_dir,
                WHISPER_DIR=self.whisper_dir,
                CONF_DIR=conf_dir,
                LOG_DIR=self.state_dir / "log",
                INTERFACE=self.interface,
                LINE_PORT=self.line_port,
                PICKLE_PORT=self.pickle_port,
                QUERY_PORT=self.query_port,
                GRAPHITE_URL=self.graphite_url,
            )
        )
        (conf_dir / "storage-schemas.conf").write_text(schemas or conf_text("storage-schemas.conf"))
        (conf_dir / "storage-aggregation.conf").write_text(conf_text("storage-aggregation.conf"))

    def carbon_command(self) -> list[str]:
        script = shutil.which("carbon-cache.py", path=str(Path(sys.executable).parent))
        if script is None:
            raise ConfigError("carbon-cache.py is not installed next to this Python; install dsat[graphite]")
        conf = self.state_dir / "conf" / "carbon.conf"
        return [sys.executable, script, f"--config={conf}", "--debug", "start"]

    def graphite_command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "dsat.tools.graphite_web",
            f"--port={self.http_port}",
            f"--interface={self.interface}",
        ]

    def add_to(self, supervisor: object) -> None:
        """Add carbon-cache and graphite-web to a :class:`dsat.supervisor.Supervisor`."""
        supervisor.add("carbon-cache", self.carbon_command())  # type: ignore[attr-defined]
        supervisor.add("graphite-web", self.graphite_command(), env=self.graphite_env())  # type: ignore[attr-defined]

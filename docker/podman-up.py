#!/usr/bin/env python3
"""Bring docker/compose.yaml up on podman, one dependency stage at a time, each once its dependencies are healthy.

``docker compose up`` needs none of this.  On podman (Debian's 4.3.1, with podman-compose) a plain
``podman-compose up -d`` is unreliable in two ways that this script works around without changing the
compose file:

* libpod's start-up dependency graph (``--requires``, which podman-compose adds for ``depends_on``)
  fails, non-deterministically, when a container's running dependencies have dependencies of their
  own: ``generating dependency graph for container …: container … depends on container … not found
  in input list`` (podman-compose issue #921; fixed in libpod in 2025).  Here every service is started
  with ``--no-deps``, so no ``--requires`` is made, and the order comes from this script instead;
* podman-compose before podman 4.6 ignores ``condition: service_healthy``, and podman without systemd
  never runs healthchecks by itself.  Here a stage starts only when every service it depends on passes
  its healthcheck (``podman healthcheck run``), so the start order is the one Docker keeps.

After the first stage with two containers it checks that the containers resolve each other's service
names (podman's CNI backend needs the dnsname plugin for that); without it the DSAT services crash in a
loop on ``tcp://tracker:…``, so it stops there and names the missing package.  When a service does not
become healthy it names the service and prints its last healthcheck output and its log.

Usage: ``python3 docker/podman-up.py [-f docker/compose.yaml] [-p PROJECT] [--build] [--timeout S]``.
The environment (``DSAT_*`` variables, ``CONTAINERS_CONF``) is passed on to podman-compose.  Needs
PyYAML, which podman-compose itself depends on.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

try:
    import yaml
except ImportError:  # podman-compose depends on PyYAML: run this with the Python it is installed in
    sys.exit("podman-up: needs PyYAML (Debian: python3-yaml; or run it with podman-compose's own Python)")

HERE = Path(__file__).resolve().parent
DNS_HELP = (
    "containers do not resolve each other's service names ({probe}): podman's network needs a DNS "
    "plugin. On Debian's podman 4.3 (CNI backend) install golang-github-containernetworking-plugin-dnsname "
    "(apt-get install golang-github-containernetworking-plugin-dnsname), or use the netavark backend with "
    "aardvark-dns, then run this again."
)


class StartError(Exception):
    """The stack could not be brought up; the message says which service and why."""


def stages(compose: dict) -> list[list[str]]:
    """The services in start order: each stage holds the services whose dependencies are all in earlier ones."""
    services = compose.get("services") or {}
    deps = {name: set(spec.get("depends_on") or ()) for name, spec in services.items()}
    unknown = {d for ds in deps.values() for d in ds} - set(services)
    if unknown:
        raise StartError(f"depends_on names services that do not exist: {sorted(unknown)}")
    done: set[str] = set()
    order: list[list[str]] = []
    while len(done) < len(services):
        ready = sorted(name for name in services if name not in done and deps[name] <= done)
        if not ready:
            raise StartError(f"depends_on has a cycle among {sorted(set(services) - done)}")
        order.append(ready)
        done.update(ready)
    return order


def run(*cmd: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


class Stack:
    """One compose project on podman."""

    def __init__(self, compose_file: Path, project: str, compose_bin: str) -> None:
        self.file = compose_file
        self.project = project
        self.compose_bin = compose_bin
        self.spec = yaml.safe_load(compose_file.read_text())

    def compose(self, *args: str, timeout: float = 900) -> None:
        done = run(self.compose_bin, "-p", self.project, "-f", str(self.file), *args, timeout=timeout)
        if done.returncode != 0:
            raise StartError(
                f"podman-compose {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
            )

    def containers(self) -> dict[str, str]:
        """Service name -> container name."""
        done = run(
            "podman", "ps", "-a", "--filter", f"label=io.podman.compose.project={self.project}",
            "--format", '{{.Names}} {{index .Labels "com.docker.compose.service"}}',
        )  # fmt: skip
        return {service: name for name, service in (line.split() for line in done.stdout.splitlines() if line.strip())}

    def healthy(self, container: str, service: str) -> tuple[bool, str]:
        """Whether the container passes its healthcheck now (is running, when it has none), and what it said."""
        if "healthcheck" not in self.spec["services"][service]:
            state = run("podman", "inspect", "--format", "{{.State.Status}}", container).stdout.strip()
            return state == "running", f"state {state}"
        done = run("podman", "healthcheck", "run", container, timeout=60)
        return done.returncode == 0, (done.stdout + done.stderr).strip()

    def wait_healthy(self, services: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(services)
        said: dict[str, str] = {}
        while True:
            names = self.containers()
            still = []
            for service in pending:
                ok, said[service] = (
                    self.healthy(names[service], service) if service in names else (False, "no container")
                )
                if not ok:
                    still.append(service)
            pending = still
            if not pending:
                return
            if time.monotonic() > deadline:
                raise StartError("\n".join(self.why(service, names.get(service), said[service]) for service in pending))
            time.sleep(3)

    def why(self, service: str, container: str | None, said: str) -> str:
        if container is None:
            return f"service {service} has no container"
        state = run("podman", "inspect", "--format", "{{.State.Status}} (exit {{.State.ExitCode}})", container)
        logs = run("podman", "logs", "--tail", "40", container)
        return (
            f"service {service} ({container}) is not healthy: {state.stdout.strip()}; healthcheck said: "
            f"{said or '(nothing)'}\n--- podman logs --tail 40 {container} ---\n{logs.stdout}{logs.stderr}"
        )

    def check_names_resolve(self) -> bool:
        """False until two containers run; then True if one resolves the other's service name, else StartError."""
        names = self.containers()
        if len(names) < 2:
            return False
        (first, container), (other, _) = sorted(names.items())[:2]
        done = run("podman", "exec", container, "getent", "hosts", other)
        if done.returncode != 0:
            raise StartError(DNS_HELP.format(probe=f"`getent hosts {other}` in {first} found nothing"))
        return True

    def up(self, timeout: float) -> None:
        resolved = False
        for stage in stages(self.spec):
            self.compose("up", "-d", "--no-build", "--no-deps", *stage)
            if not resolved:
                resolved = self.check_names_resolve()
            self.wait_healthy(stage, timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-f", "--file", type=Path, default=HERE / "compose.yaml")
    parser.add_argument("-p", "--project", default=None, help="compose project name (default: the file's folder)")
    parser.add_argument("--build", action="store_true", help="podman-compose build first")
    parser.add_argument("--timeout", type=float, default=240, help="seconds each stage may take to be healthy")
    args = parser.parse_args(argv)
    compose_bin = os.environ.get("PODMAN_COMPOSE") or shutil.which("podman-compose")
    if compose_bin is None:
        beside = Path(sys.executable).with_name("podman-compose")
        compose_bin = str(beside) if beside.exists() else None
    if compose_bin is None or shutil.which("podman") is None:
        print("podman-up: needs podman and podman-compose (pip install podman-compose)", file=sys.stderr)
        return 2
    stack = Stack(args.file.resolve(), args.project or args.file.resolve().parent.name, compose_bin)
    try:
        if args.build:
            stack.compose("build")
        stack.up(args.timeout)
    except StartError as exc:
        print(f"podman-up: {exc}", file=sys.stderr)
        print(
            f"podman-up: what did start is left as it is for a look; remove it with "
            f"podman-compose -p {stack.project} -f {stack.file} down",
            file=sys.stderr,
        )
        return 1
    print(f"podman-up: every service of {stack.project} is healthy")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""graphite-web served by Twisted: its WSGI application and its UI files.

``python -m dsat.graphite_web --port 8080`` runs graphite-web's Django
application in Twisted's WSGI container (a thread pool, not Django's
development server) and serves the UI files (``/static/...``) from where pip
installed them, with Twisted's static file resource.  Settings come from the
environment (``GRAPHITE_SETTINGS_MODULE=carbon_conf.local_settings``); see
:class:`dsat.stack.LocalStack`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from twisted.web.resource import Resource
from twisted.web.static import File
from twisted.web.wsgi import WSGIResource


def static_dir() -> Path:
    """graphite-web's UI files: pip puts them under ``<prefix>/webapp/content``."""
    return Path(os.environ.get("DSAT_GRAPHITE_STATIC") or Path(sys.prefix) / "webapp" / "content")


class GraphiteRoot(Resource):
    """``/static/*`` from disk, everything else to the WSGI application."""

    def __init__(self, wsgi: WSGIResource, static: File) -> None:
        super().__init__()
        self.wsgi = wsgi
        self.static = static

    def getChild(self, path: bytes, request: Any) -> Any:  # noqa: N802 (Twisted API)
        if path == b"static":
            return self.static
        # Give the whole path back to Django.
        request.prepath.pop()
        request.postpath.insert(0, path)
        return self.wsgi


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsat.graphite_web", description=__doc__)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--interface", default="127.0.0.1")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "graphite.settings")
    os.environ.setdefault("GRAPHITE_SETTINGS_MODULE", "carbon_conf.local_settings")
    from graphite.wsgi import application
    from twisted.internet import reactor
    from twisted.python.log import startLogging
    from twisted.web.server import Site

    startLogging(sys.stdout)
    r: Any = reactor
    root = GraphiteRoot(WSGIResource(r, r.getThreadPool(), application), File(str(static_dir())))
    r.listenTCP(args.port, Site(root), interface=args.interface)
    r.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

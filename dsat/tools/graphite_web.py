"""graphite-web served by Twisted: its WSGI application and its UI files.

``python -m dsat.tools.graphite_web --port 8080`` runs graphite-web's Django
application in Twisted's WSGI container (a thread pool, not Django's
development server) and serves the UI files (``/static/...``) from where pip
installed them, with Twisted's static file resource.  Settings come from the
environment (``GRAPHITE_SETTINGS_MODULE=dsat.carbon_conf.local_settings``); see
:class:`dsat.tools.stack.LocalStack`.

Before serving it says when the installed Django is without security support
(:func:`dsat.tools.django_compat.support_warning`), prepares graphite-web's database (creates or migrates it)
and installs the dashboards shipped in ``carbon_conf/dashboards/`` (the
``dsat`` dashboard of the demo) that the database does not have yet: a
dashboard saved under the same name in the UI is kept.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from twisted.web.resource import Resource
from twisted.web.static import File
from twisted.web.wsgi import WSGIResource

log = logging.getLogger(__name__)


def dashboards_dir() -> Path:
    """The shipped dashboards: graphite-web's own state format, as ``/dashboard/load/NAME`` returns it."""
    from importlib import resources

    return Path(str(resources.files("dsat.carbon_conf") / "dashboards")).resolve()


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


def prepare_database() -> list[str]:
    """Create or migrate graphite-web's database and install the missing dashboards; their names."""
    import django
    from django.conf import settings
    from django.core.management import call_command

    Path(settings.LOG_DIR).mkdir(parents=True, exist_ok=True)  # graphite-web's loggers open files there
    django.setup()
    call_command("migrate", run_syncdb=True, interactive=False, verbosity=0)
    from graphite.dashboard.models import Dashboard

    installed = []
    for path in sorted(dashboards_dir().glob("*.json")):
        state = json.loads(path.read_text())
        _, created = Dashboard.objects.get_or_create(name=state["name"], defaults={"state": json.dumps(state)})
        if created:
            installed.append(state["name"])
            log.info("installed dashboard %s from %s", state["name"], path)
    return installed


def warn_about_django(today: datetime.date) -> str | None:
    """Log a warning when the installed Django is past its security support on *today*; the warning."""
    import django

    from dsat.tools.django_compat import support_warning

    warning = support_warning(django.VERSION, today)
    if warning:
        log.warning("%s", warning)
    return warning


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsat.tools.graphite_web", description=__doc__)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--interface", default="127.0.0.1")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "graphite.settings")
    os.environ.setdefault("GRAPHITE_SETTINGS_MODULE", "dsat.carbon_conf.local_settings")
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warn_about_django(datetime.date.today())
    prepare_database()
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

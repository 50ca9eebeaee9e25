"""graphite-web settings for DSAT stacks (GRAPHITE_SETTINGS_MODULE=dsat.carbon_conf.local_settings).

Paths and peers come from the environment so one file serves the local
``make demo`` stack and the containers:

``GRAPHITE_STORAGE_DIR``  where the sqlite database, logs and index live
``DSAT_WHISPER_DIR``      the Whisper tree carbon-cache writes
``DSAT_WHISPER_DIRS``     comma-separated Whisper trees, one per carbon-cache (instead of the above)
``DSAT_CARBONLINK_HOSTS`` comma-separated ``host:port[:instance]`` of carbon-caches' query ports,
                          so points still in carbon's cache are visible
``DSAT_CLUSTER_SERVERS``  comma-separated ``host:port`` of other graphite-webs whose metrics this one reads
                          too (graphite-web's ``CLUSTER_SERVERS``; never this graphite-web itself)
``DSAT_SECRET_KEY``       Django's secret key (a random one is made when unset)
``DSAT_GRAPHITE_STATIC``  graphite-web's UI files (default: where pip puts them)
``DSAT_TIME_ZONE``        graphite-web's TIME_ZONE (default UTC)
"""

import os
import secrets
import sys

from dsat.tools import django_compat

# graphite-web 1.1.10 on Django 5.2: what Django removed since 3.2, put back before its applications load.
django_compat.install()

STORAGE_DIR = os.environ["GRAPHITE_STORAGE_DIR"]
WHISPER_DIR = os.environ.get("DSAT_WHISPER_DIR") or os.environ["DSAT_WHISPER_DIRS"].split(",")[0]
# Several carbon-caches' Whisper trees (the compose stack mounts one volume per cache).
STANDARD_DIRS = [d for d in os.environ.get("DSAT_WHISPER_DIRS", WHISPER_DIR).split(",") if d]
LOG_DIR = os.path.join(STORAGE_DIR, "log")
INDEX_FILE = os.path.join(STORAGE_DIR, "index")
# graphite.settings sets STATICFILES_DIRS to WEBAPP_DIR/content after reading this file; pointing
# WEBAPP_DIR at pip's install lets the dashboard find its theme CSS ("Invalid theme 'default'" otherwise).
# STATIC_ROOT (where collectstatic would copy them) stays graphite-web's: DSAT serves the files from where
# they are, and Django refuses a STATIC_ROOT inside STATICFILES_DIRS (staticfiles.E002).
WEBAPP_DIR = os.path.dirname(os.environ.get("DSAT_GRAPHITE_STATIC") or os.path.join(sys.prefix, "webapp", "content"))
DATABASES = {
    "default": {
        "NAME": os.path.join(STORAGE_DIR, "graphite.db"),
        "ENGINE": "django.db.backends.sqlite3",
    }
}
CARBONLINK_HOSTS = [h for h in os.environ.get("DSAT_CARBONLINK_HOSTS", "").split(",") if h]
CARBONLINK_TIMEOUT = 1.0
CLUSTER_SERVERS = [h for h in os.environ.get("DSAT_CLUSTER_SERVERS", "").split(",") if h]
SECRET_KEY = os.environ.get("DSAT_SECRET_KEY") or secrets.token_hex(32)
TIME_ZONE = os.environ.get("DSAT_TIME_ZONE", "UTC")
ALLOWED_HOSTS = ["*"]
# The key type graphite-web's migrations were written with (Django 3.2 added the setting and warns without it).
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
# Graphite 1.1 tags: carbon-cache registers every tagged series it creates here (GRAPHITE_URL in
# carbon.conf), seriesByTag() and /tags/* read it.  The tables live in the sqlite database above.
TAGDB = "graphite.tags.localdatabase.LocalDatabaseTagDB"
LOG_RENDERING_PERFORMANCE = False
LOG_CACHE_PERFORMANCE = False

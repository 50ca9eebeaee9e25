"""graphite-web settings for DSAT stacks (GRAPHITE_SETTINGS_MODULE=dsat.carbon_conf.local_settings).

Paths and peers come from the environment so one file serves the local
``make demo`` stack and the containers:

``GRAPHITE_STORAGE_DIR``  where the sqlite database, logs and index live
``DSAT_WHISPER_DIR``      the Whisper tree carbon-cache writes
``DSAT_WHISPER_DIRS``     comma-separated Whisper trees, one per carbon-cache (instead of the above)
``DSAT_CARBONLINK_HOSTS`` comma-separated ``host:port[:instance]`` of carbon-caches' query ports,
                          so points still in carbon's cache are visible
``DSAT_SECRET_KEY``       Django's secret key (a random one is made when unset)
``DSAT_GRAPHITE_STATIC``  graphite-web's UI files (default: where pip puts them)
"""

import os
import secrets
import sys

STORAGE_DIR = os.environ["GRAPHITE_STORAGE_DIR"]
WHISPER_DIR = os.environ.get("DSAT_WHISPER_DIR") or os.environ["DSAT_WHISPER_DIRS"].split(",")[0]
# Several carbon-caches' Whisper trees (the compose stack mounts one volume per cache).
STANDARD_DIRS = [d for d in os.environ.get("DSAT_WHISPER_DIRS", WHISPER_DIR).split(",") if d]
LOG_DIR = os.path.join(STORAGE_DIR, "log")
INDEX_FILE = os.path.join(STORAGE_DIR, "index")
STATIC_ROOT = os.environ.get("DSAT_GRAPHITE_STATIC") or os.path.join(sys.prefix, "webapp", "content")
# graphite.settings sets STATICFILES_DIRS to WEBAPP_DIR/content after reading this file; pointing
# WEBAPP_DIR at pip's install lets the dashboard find its theme CSS ("Invalid theme 'default'" otherwise).
WEBAPP_DIR = os.path.dirname(STATIC_ROOT)
DATABASES = {
    "default": {
        "NAME": os.path.join(STORAGE_DIR, "graphite.db"),
        "ENGINE": "django.db.backends.sqlite3",
    }
}
CARBONLINK_HOSTS = [h for h in os.environ.get("DSAT_CARBONLINK_HOSTS", "").split(",") if h]
CARBONLINK_TIMEOUT = 1.0
SECRET_KEY = os.environ.get("DSAT_SECRET_KEY") or secrets.token_hex(32)
TIME_ZONE = os.environ.get("DSAT_TIME_ZONE", "UTC")
ALLOWED_HOSTS = ["*"]
# Graphite 1.1 tags: carbon-cache registers every tagged series it creates here (GRAPHITE_URL in
# carbon.conf), seriesByTag() and /tags/* read it.  The tables live in the sqlite database above.
TAGDB = "graphite.tags.localdatabase.LocalDatabaseTagDB"
LOG_RENDERING_PERFORMANCE = False
LOG_CACHE_PERFORMANCE = False

#!/bin/sh
# Container entry point of graphite-web: create (or migrate) its sqlite database, then serve on :8080.
set -e
mkdir -p "$GRAPHITE_STORAGE_DIR/log"
python -m django migrate --run-syncdb --noinput -v 0
exec python -m dsat.graphite_web --interface 0.0.0.0 --port 8080

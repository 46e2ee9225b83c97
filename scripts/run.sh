#!/usr/bin/env bash
# Start a Celery worker (queues gpu and celery) in the background and the web server in
# the foreground; stopping the server stops the worker. Safe to run again.
set -euo pipefail
PY=${PY:-.venv/bin/python}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
mkdir -p var/log
if [[ -z ${MEDANNOT_MODEL:-} ]]; then
  # The offline demo model writes random words: keep its drafts short and quick.
  export MEDANNOT_MAX_NEW_TOKENS=${MEDANNOT_MAX_NEW_TOKENS:-96}
fi
pidfile=var/worker.pid
if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "stopping the worker left by an earlier run"
  kill "$(cat "$pidfile")" && sleep 2
fi
# -B: the beat that puts back drafts whose worker died runs inside this worker.
"$PY" -m celery -A medannot worker -Q gpu,celery --concurrency 1 --loglevel INFO \
  -n "local-gpu@%h" --logfile var/log/worker.log --pidfile "$pidfile" --detach \
  -B --schedule var/celerybeat-schedule
trap 'kill "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null || true' EXIT INT TERM
echo
echo "  MedAnnot is starting at http://$HOST:$PORT/  (worker log: var/log/worker.log)"
echo "  Demo logins are in var/demo-logins.txt. Stop with Ctrl+C."
echo
"$PY" manage.py runserver "$HOST:$PORT"

#!/usr/bin/env bash
# Start the Celery workers in the background (one on the `gpu` queue; one on `celery` with
# beat, so the sweeps run while a draft hangs) and the web server in the foreground.
# Stopping the server stops the workers (a hung one is killed after MEDANNOT_STOP_TIMEOUT s);
# running again replaces workers left by an earlier run.
set -euo pipefail
PY=${PY:-.venv/bin/python}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
mkdir -p var/log
if [[ -z ${MEDANNOT_MODEL:-} ]]; then
  # The offline demo model writes random words: keep its drafts short and quick.
  export MEDANNOT_MAX_NEW_TOKENS=${MEDANNOT_MAX_NEW_TOKENS:-96}
fi
# shellcheck source=scripts/workers.sh
source "$(dirname "$0")/workers.sh"
trap 'workers_stop' EXIT
trap 'exit 130' INT TERM
workers_start
echo
echo "  MedAnnot is starting at http://$HOST:$PORT/  (worker logs: var/log/worker-gpu.log, var/log/worker.log)"
echo "  Demo logins are in var/demo-logins.txt. Stop with Ctrl+C."
echo
"$PY" manage.py runserver "$HOST:$PORT"

#!/usr/bin/env bash
# The local Celery workers of `make run`: one for the `gpu` queue (drafting, one process) and
# a small one for the `celery` queue with beat (sweeps), so that a hung draft never stops
# the sweep. Stopping is bounded: TERM, wait MEDANNOT_STOP_TIMEOUT s (10), then KILL.
#
#   scripts/workers.sh start|stop        (or source it and call the functions)
PY=${PY:-.venv/bin/python}
RUN_DIR=${MEDANNOT_RUN_DIR:-var}
GPU_PIDFILE=$RUN_DIR/worker-gpu.pid
CELERY_PIDFILE=$RUN_DIR/worker.pid

# Alive and not a zombie.
pid_alive() {
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ -n $state && $state != Z* ]]
}

# Signal a worker's whole process group (its pool processes too) when it leads one.
signal_worker() {
  local sig=$1 pid=$2 pgid
  pgid=$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')
  if [[ $pgid == "$pid" ]]; then
    kill "-$sig" -- "-$pid" 2>/dev/null || true
  else
    kill "-$sig" "$pid" 2>/dev/null || true
  fi
}

# Wait up to $2 seconds for pid $1 to end.
wait_gone() {
  local pid=$1 ticks=$(($2 * 10))
  while ((ticks-- > 0)); do
    pid_alive "$pid" || return 0
    sleep 0.1
  done
  ! pid_alive "$pid"
}

# worker_stop PIDFILE: stop the worker of a pidfile; a stale pidfile is removed.
# Returns 1 (and says so) only if the process outlives SIGKILL.
worker_stop() {
  local pidfile=$1 pid timeout=${MEDANNOT_STOP_TIMEOUT:-10}
  [[ -f $pidfile ]] || return 0
  pid=$(tr -dc '0-9' <"$pidfile" 2>/dev/null)
  if [[ -z $pid ]] || ! pid_alive "$pid"; then
    rm -f "$pidfile"
    return 0
  fi
  if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q celery; then
    echo "$pidfile names pid $pid, which is not a Celery worker: removing the stale pidfile"
    rm -f "$pidfile"
    return 0
  fi
  echo "stopping the worker $pid ($pidfile), for up to ${timeout} s"
  signal_worker TERM "$pid"
  if ! wait_gone "$pid" "$timeout"; then
    echo "the worker $pid did not stop within ${timeout} s (a hung task?): killing it"
    signal_worker KILL "$pid"
    if ! wait_gone "$pid" 5; then
      echo "ERROR: the worker $pid ($pidfile) survives SIGKILL; stop it by hand" >&2
      return 1
    fi
  fi
  rm -f "$pidfile"
}

# worker_start PIDFILE COMMAND...: replace a leftover worker, then start COMMAND detached.
worker_start() {
  local pidfile=$1
  shift
  if ! worker_stop "$pidfile"; then
    echo "ERROR: a worker left by an earlier run is still running: not starting another" >&2
    return 1
  fi
  "$@" --pidfile "$pidfile" --detach
}

workers_start() {
  mkdir -p "$RUN_DIR/log"
  worker_start "$GPU_PIDFILE" "$PY" -m celery -A medannot worker -Q gpu --concurrency 1 \
    --loglevel INFO -n "local-gpu@%h" --logfile "$RUN_DIR/log/worker-gpu.log" || return 1
  # -B: beat (the sweeps) runs in this small worker, never behind a draft.
  worker_start "$CELERY_PIDFILE" "$PY" -m celery -A medannot worker -Q celery --concurrency 1 \
    --loglevel INFO -n "local-celery@%h" --logfile "$RUN_DIR/log/worker.log" \
    -B --schedule "$RUN_DIR/celerybeat-schedule" || return 1
}

workers_stop() {
  local status=0
  worker_stop "$GPU_PIDFILE" || status=1
  worker_stop "$CELERY_PIDFILE" || status=1
  return $status
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  case ${1:-} in
    start) workers_start ;;
    stop) workers_stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
  esac
fi

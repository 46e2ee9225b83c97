#!/usr/bin/env bash
# Start the PostgreSQL and Redis that the app needs when they run on this machine but are
# stopped: the installed ones (pg_ctlcluster, redis-server), or else compose.dev.yml.
# Touches only services that DATABASE_URL / REDIS_URL put on localhost. Then creates the two
# database roles and the database (scripts/db_roles.sh) on that local PostgreSQL. Never fails:
# `python -m medannot.preflight`, run next, explains whatever is still missing.
set -uo pipefail
cd "$(dirname "$0")/.."

WAIT=${MEDANNOT_SERVICES_WAIT:-30}
PG_ETC=${MEDANNOT_PG_ETC:-/etc/postgresql}

# Host and port of scheme://[user[:password]@]host[:port]/... (crude, on purpose).
url_host() {
  local rest=${1#*://}
  rest=${rest%%/*}
  rest=${rest##*@}
  echo "${rest%%:*}"
}
url_dbname() {
  local rest=${1#*://}
  rest=${rest#*/}
  echo "${rest%%\?*}"
}
url_port() {
  local rest=${1#*://}
  rest=${rest%%/*}
  rest=${rest##*@}
  [[ $rest == *:* ]] && echo "${rest##*:}" || echo "$2"
}
is_local() { [[ -z $1 || $1 == localhost || $1 == 127.0.0.1 || $1 == ::1 ]]; }
have() { command -v "$1" >/dev/null 2>&1; }

database_url=${DATABASE_URL:-postgresql://postgres@localhost:5432/medannot}
redis_url=${REDIS_URL:-redis://localhost:6379/0}
pg_port=$(url_port "$database_url" 5432)
redis_port=$(url_port "$redis_url" 6379)
pg_local=0 redis_local=0
is_local "$(url_host "$database_url")" && pg_local=1
is_local "$(url_host "$redis_url")" && redis_local=1

pg_up() { pg_isready -h localhost -p "$pg_port" -q >/dev/null 2>&1; }
redis_up() { redis-cli -h 127.0.0.1 -p "$redis_port" ping >/dev/null 2>&1; }

compose=()
if ((pg_local)) && ! pg_up; then
  if have pg_ctlcluster && [[ -d $PG_ETC ]] && [[ -n $(ls "$PG_ETC" 2>/dev/null) ]]; then
    version=$(ls "$PG_ETC" | sort -V | tail -n 1)
    echo "PostgreSQL does not answer: starting cluster $version/main"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  else
    compose+=(postgres)
  fi
fi
if ((redis_local)) && ! redis_up; then
  if have redis-server; then
    echo "Redis does not answer: starting redis-server on 127.0.0.1:$redis_port"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no ||
      true
  else
    compose+=(redis)
  fi
fi
if ((${#compose[@]})); then
  if have docker && docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    echo "starting ${compose[*]} with docker compose (compose.dev.yml)"
    docker compose -f compose.dev.yml up -d "${compose[@]}" || true
  fi
fi

# Wait for what we started (or what was starting anyway).
for ((i = 0; i < WAIT; i++)); do
  { ((!pg_local)) || pg_up; } && { ((!redis_local)) || redis_up; } && break
  sleep 1
done

# The owner and app roles and the database (idempotent), as the local superuser.
if ((pg_local)) && pg_up; then
  if have psql; then
    MEDANNOT_DB_ADMIN_URL=${MEDANNOT_DB_ADMIN_URL:-postgresql://postgres@localhost:$pg_port/postgres} \
      MEDANNOT_DB_NAME=${MEDANNOT_DB_NAME:-$(url_dbname "$database_url")} \
      bash scripts/db_roles.sh ||
      echo "could not create the database roles (scripts/db_roles.sh; README, 'Database roles')"
  elif [[ " ${compose[*]} " == *" postgres "* ]]; then
    # No client here: the script runs inside the compose.dev.yml container, on its psql.
    docker compose -f compose.dev.yml exec -T \
      -e MEDANNOT_DB_NAME="${MEDANNOT_DB_NAME:-$(url_dbname "$database_url")}" \
      postgres bash -s <scripts/db_roles.sh ||
      echo "could not create the database roles (scripts/db_roles.sh; README, 'Database roles')"
  else
    echo "psql is not installed: the database roles were not created (README, 'Database roles')"
  fi
fi
exit 0

"""Check the services MedAnnot needs and create its database if missing.

`python -m medannot.preflight` prints what is wrong and how to fix it, instead of a
traceback, and exits non-zero when a service does not answer.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "medannot.settings")

START_HINTS = {
    "postgres": (
        "Start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
        "(Debian), `brew services start postgresql` (macOS), or "
        "`docker compose -f compose.dev.yml up -d postgres`."
    ),
    "redis": (
        "Start it with `redis-server --daemonize yes --port 6379`, or "
        "`docker compose -f compose.dev.yml up -d redis`."
    ),
}


def check_postgres(db: dict) -> str | None:
    import psycopg
    from psycopg import sql

    where = f"{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}"
    params = dict(
        host=db["HOST"] or None,
        port=db["PORT"] or None,
        user=db["USER"] or None,
        password=db["PASSWORD"] or None,
        connect_timeout=3,
    )
    try:
        with psycopg.connect(dbname=db["NAME"], **params):
            return None
    except psycopg.OperationalError as exc:
        if f'database "{db["NAME"]}" does not exist' not in str(exc):
            hint = START_HINTS["postgres"]
            return f"PostgreSQL at {where} does not answer ({_first_line(exc)}). {hint}"
    try:
        with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db["NAME"])))
        print(f"created database {db['NAME']!r} on {where}")
        return None
    except psycopg.Error as exc:
        return f"Could not create database {db['NAME']!r} on {where}: {_first_line(exc)}"


def check_redis(url: str) -> str | None:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
        return None
    except redis.RedisError as exc:
        return f"Redis at {url} does not answer ({_first_line(exc)}). {START_HINTS['redis']}"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def main() -> int:
    from django.core.exceptions import ImproperlyConfigured

    try:
        from django.conf import settings

        db, redis_url = settings.DATABASES["default"], settings.REDIS_URL
    except ImproperlyConfigured as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 2
    problems = [p for p in (check_postgres(db), check_redis(redis_url)) if p]
    for problem in problems:
        print(f"ERROR: {problem}", file=sys.stderr)
    if not problems:
        print("PostgreSQL and Redis answer.")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

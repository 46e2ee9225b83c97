"""`make run` and `make test` first check the services: a clear message, not a traceback."""

import os
import subprocess
import sys


def preflight(**env):
    full = os.environ | {"DJANGO_SETTINGS_MODULE": "medannot.settings"} | env
    return subprocess.run(
        [sys.executable, "-m", "medannot.preflight"], env=full, capture_output=True, text=True
    )


def test_it_says_when_postgres_does_not_answer():
    result = preflight(DATABASE_URL="postgresql://postgres@127.0.0.1:1/medannot")
    assert result.returncode == 1
    assert "PostgreSQL at 127.0.0.1:1 does not answer" in result.stderr
    assert "pg_ctlcluster" in result.stderr and "compose.dev.yml up -d postgres" in result.stderr
    assert "Traceback" not in result.stderr


def test_it_says_when_redis_does_not_answer():
    result = preflight(REDIS_URL="redis://127.0.0.1:1/0")
    assert result.returncode == 1
    assert "Redis at redis://127.0.0.1:1/0 does not answer" in result.stderr
    assert "redis-server" in result.stderr and "Traceback" not in result.stderr


def test_it_creates_a_missing_database():
    import psycopg
    from django.conf import settings

    from tests.conftest import database_url

    db = settings.DATABASES["default"] | {"NAME": f"medannot_preflight_{os.getpid()}"}
    url = database_url(db)
    result = preflight(DATABASE_URL=url)
    try:
        assert result.returncode == 0, result.stderr
        assert f"created database '{db['NAME']}'" in result.stdout
        again = preflight(DATABASE_URL=url)
        assert again.returncode == 0 and "created" not in again.stdout
    finally:
        with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db["NAME"]}"')


def test_a_bad_setting_is_a_message_not_a_traceback():
    result = preflight(DATABASE_URL="mysql://x@localhost/db")
    assert result.returncode == 2
    assert "Configuration error: DATABASE_URL must start with postgresql://" in result.stderr

"""Least-privilege database access: the app role cannot rewrite the audit trail.

The web and the workers connect as the app role; these tests connect as it, to the test
database (migrated by the superuser, with migration 0019 granting to the app role), and try
what an intruder holding the app's password would try. scripts/services.sh (run by `make test`
and `.ci/run`) creates the roles before the test database exists.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from psycopg import errors

import medannot.settings as medannot_settings
from tests.test_deployment import environment
from tests.test_scripts import STUB, STUBS, TOOLS, services

ROOT = Path(__file__).resolve().parent.parent
AUDIT = "annotations_auditevent"
grants = importlib.import_module("annotations.migrations.0019_app_role_grants")


def _connect(user: str, password: str, dbname: str = "", **kwargs) -> psycopg.Connection:
    db = connection.settings_dict
    return psycopg.connect(
        dbname=dbname or db["NAME"],
        user=user,
        password=password or None,
        host=db["HOST"] or None,
        port=db["PORT"] or None,
        connect_timeout=5,
        **kwargs,
    )


def _as_tests(dbname: str = "", **kwargs) -> psycopg.Connection:
    """As the role the tests run as (the superuser that creates the test database)."""
    db = connection.settings_dict
    return _connect(db["USER"], db["PASSWORD"], dbname, **kwargs)


def _role_exists(name: str) -> bool:
    with _as_tests() as conn:
        return bool(conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone())


@pytest.fixture
def as_app(django_db_setup, django_db_blocker):
    """A connection to the test database as the app role, rolled back at the end."""
    role = settings.MEDANNOT_DB_APP_ROLE
    with django_db_blocker.unblock():
        if not _role_exists(role):
            pytest.skip(
                f"database role {role!r} does not exist on this server: run "
                "`bash scripts/services.sh` (or scripts/db_roles.sh), then --create-db"
            )
        conn = _connect(role, os.environ.get("MEDANNOT_DB_APP_PASSWORD", ""))
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()


@pytest.mark.parametrize(
    "statement",
    [
        f"UPDATE {AUDIT} SET reason = 'rewritten'",
        f"DELETE FROM {AUDIT}",
        f"TRUNCATE {AUDIT}",
        f"ALTER TABLE {AUDIT} ADD COLUMN forged text",
        f"ALTER TABLE {AUDIT} DISABLE TRIGGER ALL",
        f"ALTER TABLE {AUDIT} DISABLE TRIGGER annotations_auditevent_append_only",
        f"DROP TABLE {AUDIT}",
        f"CREATE TRIGGER forged BEFORE INSERT ON {AUDIT} "
        "FOR EACH ROW EXECUTE FUNCTION annotations_audit_append_only()",
    ],
    ids=["update", "delete", "truncate", "alter", "disable-all", "disable-one", "drop", "trigger"],
)
def test_the_app_role_cannot_rewrite_the_audit_trail(as_app, statement):
    # A permission error, not the append-only trigger: the statement never gets that far.
    with pytest.raises(errors.InsufficientPrivilege), as_app.transaction(force_rollback=True):
        as_app.execute(statement)


def test_the_app_role_cannot_create_tables(as_app):
    with pytest.raises(errors.InsufficientPrivilege), as_app.transaction(force_rollback=True):
        as_app.execute("CREATE TABLE forged_audit (id int)")


def test_the_app_role_reads_and_appends_to_the_audit_trail(as_app):
    with as_app.transaction(force_rollback=True):
        (row_id,) = as_app.execute(
            f"INSERT INTO {AUDIT} (at, action, reason) VALUES (now(), 'role-test', '') RETURNING id"
        ).fetchone()
        assert as_app.execute(f"SELECT action FROM {AUDIT} WHERE id = %s", [row_id]).fetchone()


def test_the_app_role_reads_and_writes_the_other_tables(as_app):
    with as_app.transaction(force_rollback=True):
        (user_id,) = as_app.execute(
            "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, "
            "email, is_staff, is_active, date_joined) "
            "VALUES ('!', false, 'role-test', '', '', '', false, true, now()) RETURNING id"
        ).fetchone()
        as_app.execute("UPDATE auth_user SET first_name = 'Ada' WHERE id = %s", [user_id])
        as_app.execute("SELECT count(*) FROM annotations_task").fetchone()
        as_app.execute("UPDATE annotations_task SET state = state WHERE id = -1")
        as_app.execute("DELETE FROM annotations_task WHERE id = -1")
        assert as_app.execute("DELETE FROM auth_user WHERE id = %s", [user_id]).rowcount == 1


def test_neither_role_is_a_superuser(as_app):
    names = [settings.MEDANNOT_DB_OWNER_ROLE, settings.MEDANNOT_DB_APP_ROLE]
    rows = as_app.execute(
        "SELECT rolname, rolsuper, rolcreaterole, rolbypassrls FROM pg_roles "
        "WHERE rolname = ANY(%s)",
        [names],
    ).fetchall()
    assert sorted(r[0] for r in rows) == sorted(names), "scripts/db_roles.sh creates both roles"
    assert [r for r in rows if any(r[1:])] == []


def test_tables_of_later_migrations_are_granted_to_the_app_role(as_app, django_db_blocker):
    """Default privileges: a table the migrating role creates after 0019 is the app's too."""
    table = f"later_{uuid.uuid4().hex[:8]}"
    with django_db_blocker.unblock(), _as_tests() as owner:
        owner.execute(f"CREATE TABLE {table} (id bigint GENERATED BY DEFAULT AS IDENTITY)")
        owner.commit()
        try:
            with as_app.transaction(force_rollback=True):
                as_app.execute(f"INSERT INTO {table} DEFAULT VALUES")
                as_app.execute(f"DELETE FROM {table}")
        finally:
            owner.execute(f"DROP TABLE {table}")
            owner.commit()


def test_the_grants_migration_is_a_logged_no_op_without_the_app_role(db, caplog, settings):
    settings.MEDANNOT_DB_APP_ROLE = "medannot_no_such_role"
    with caplog.at_level(logging.WARNING), connection.schema_editor() as editor:
        grants.grant(None, editor)
    assert "'medannot_no_such_role' does not exist: no grants made" in caplog.text


# ---------------------------------------------------------------------------- settings


def test_migrate_connects_as_the_owner_and_everything_else_as_the_app(monkeypatch):
    monkeypatch.setattr(medannot_settings, "DATABASE_URL", "postgresql://app:a@db:5432/annot")
    monkeypatch.setattr(
        medannot_settings, "MIGRATE_DATABASE_URL", "postgresql://owner:o@db:5432/annot"
    )
    choose = medannot_settings.database_for_command
    assert choose(["manage.py", "migrate", "--noinput"])["USER"] == "owner"
    for argv in (["manage.py", "runserver"], ["celery"], ["manage.py", "showmigrations"]):
        assert choose(argv)["USER"] == "app"


def test_migrate_refuses_an_owner_url_for_another_database(monkeypatch):
    monkeypatch.setattr(medannot_settings, "DATABASE_URL", "postgresql://app@db:5432/annot")
    monkeypatch.setattr(medannot_settings, "MIGRATE_DATABASE_URL", "postgresql://owner@db/other")
    with pytest.raises(ImproperlyConfigured, match="must name the same database"):
        medannot_settings.database_for_command(["manage.py", "migrate"])


def test_a_role_name_that_is_not_plain_fails_at_start():
    code = "import django; django.setup()"
    env = os.environ | {
        "DJANGO_SETTINGS_MODULE": "medannot.settings",
        "DEBUG": "true",
        "MEDANNOT_DB_APP_ROLE": 'app"; DROP TABLE x; --',
    }
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode != 0 and "is not a plain lower-case role name" in run.stderr


# ---------------------------------------------------------------------------- db_roles.sh


@pytest.mark.skipif(not shutil.which("psql"), reason="psql is not installed")
def test_the_role_script_hands_an_old_database_to_the_owner(django_db_setup, django_db_blocker):
    """A database made before the roles (by the superuser): the script, run twice, makes the
    owner own it and its tables, and leaves the app only SELECT and INSERT on the audit trail."""
    db = connection.settings_dict
    name = f"medannot_roles_{uuid.uuid4().hex[:8]}"
    owner_role, app_role = settings.MEDANNOT_DB_OWNER_ROLE, settings.MEDANNOT_DB_APP_ROLE
    with django_db_blocker.unblock():
        with _as_tests("postgres", autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        try:
            with _as_tests(name) as old:
                old.execute(f"CREATE TABLE {AUDIT} (id bigint GENERATED BY DEFAULT AS IDENTITY)")
                old.execute("CREATE TABLE annotations_task (id bigserial)")
            env = os.environ | {
                "MEDANNOT_DB_ADMIN_URL": _url(db, "postgres"),
                "MEDANNOT_DB_NAME": name,
                "MEDANNOT_DB_OWNER_ROLE": owner_role,
                "MEDANNOT_DB_APP_ROLE": app_role,
            }
            for _ in range(2):  # idempotent
                script = [shutil.which("bash"), str(ROOT / "scripts" / "db_roles.sh")]
                run = subprocess.run(script, env=env, capture_output=True, text=True)
                assert run.returncode == 0, run.stderr
            with _as_tests(name) as check:
                owners = check.execute(
                    "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class "
                    "WHERE relnamespace = 'public'::regnamespace"
                ).fetchall()
                assert owners == [(owner_role,)]
                (datowner,) = check.execute(
                    "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", [name]
                ).fetchone()
                assert datowner == owner_role
                may = "SELECT has_table_privilege(%s, %s, %s)"
                assert check.execute(may, [app_role, AUDIT, "INSERT"]).fetchone()[0]
                for privilege in ("UPDATE", "DELETE", "TRUNCATE", "TRIGGER"):
                    assert not check.execute(may, [app_role, AUDIT, privilege]).fetchone()[0]
                assert check.execute(may, [app_role, "annotations_task", "UPDATE"]).fetchone()[0]
        finally:
            with _as_tests("postgres", autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _url(db: dict, dbname: str) -> str:
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgresql://{auth}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{dbname}"


# ---------------------------------------------------------------------------- services.sh


def test_services_creates_the_roles_on_the_local_postgresql(tmp_path):
    bin_dir = _stub_bin(tmp_path)
    calls = services(tmp_path, bin_dir, "pg", "redis", DATABASE_URL=_APP_URL + "/medannot_x")
    psql = [c for c in calls if c.startswith("psql ")]
    assert len(psql) == 1 and psql[0].startswith("psql postgresql://postgres@localhost:5432/")
    assert "db=medannot_x" in psql[0] and "app=medannot_app" in psql[0]


def test_services_leaves_the_roles_of_a_remote_postgresql_alone(tmp_path):
    bin_dir = _stub_bin(tmp_path)
    url = "postgresql://medannot_app:pw@db.hospital.example:5432/medannot"
    assert not [c for c in services(tmp_path, bin_dir, "redis", DATABASE_URL=url) if "psql" in c]


_APP_URL = "postgresql://medannot_app@localhost:5432"


def _stub_bin(tmp_path: Path) -> Path:
    """test_scripts' stubs, with a psql that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in [("pg_isready", STUBS["pg_isready"]), ("redis-cli", STUBS["redis-cli"])]:
        (bin_dir / name).write_text(STUB + body + "\n")
    (bin_dir / "psql").write_text(STUB)
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    for tool in TOOLS:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    (tmp_path / "etc-postgresql" / "16").mkdir(parents=True)
    return bin_dir


# ---------------------------------------------------------------------------- compose


def test_compose_gives_the_owner_password_to_migrate_alone():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert "db_roles.sh" in " ".join(compose["db-roles"]["command"])
    migrate = environment(compose["migrate"])
    assert migrate["MIGRATE_DATABASE_URL"].startswith("postgresql://medannot_owner:")
    assert compose["migrate"]["depends_on"]["db-roles"]["condition"] == (
        "service_completed_successfully"
    )
    for name, service in compose.items():
        if name in {"migrate", "db-roles", "postgres"}:
            continue
        env = environment(service)
        assert not {"MIGRATE_DATABASE_URL", "POSTGRES_PASSWORD"} & set(env), name
        assert "OWNER" not in str(env) and "POSTGRES" not in str(env), name
        if "DATABASE_URL" in env:
            assert env["DATABASE_URL"].startswith("postgresql://medannot_app:"), name

"""Least privilege for the app role (README, "Database roles").

The web and the workers connect as the app role (settings.MEDANNOT_DB_APP_ROLE): it reads and
writes the app's tables, but may only read and append to the audit trail. Not owning the tables,
it can neither ALTER them nor disable their triggers. Default privileges grant the tables that
later migrations create (by the role running migrations, the owner) to it automatically.

A database without the app role (a developer's plain setup) migrates unchanged: this says so
in one log line. scripts/db_roles.sh creates the roles and grants the same on an existing
database.
"""

import logging

from django.conf import settings
from django.db import migrations

logger = logging.getLogger("annotations.migrations")

AUDIT_TABLE = "annotations_auditevent"


def _app_role(schema_editor) -> str | None:
    """The quoted app role, or None (logged) when the server has no such role."""
    role = settings.MEDANNOT_DB_APP_ROLE
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
        if cursor.fetchone() is None:
            logger.warning(
                "database role %r does not exist: no grants made (the app connects as the "
                "migrating role; README, 'Database roles', says how to create both roles)",
                role,
            )
            return None
    return schema_editor.quote_name(role)


def grant(apps, schema_editor):
    app = _app_role(schema_editor)
    if app is None:
        return
    statements = [
        f"GRANT USAGE ON SCHEMA public TO {app}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {app}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {app}",
        # Tables and sequences that the migrating role creates from now on.
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {app}",
        # The audit trail: read and append, nothing else.
        f"REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON {AUDIT_TABLE} FROM {app}",
        f"REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON {AUDIT_TABLE} FROM PUBLIC",
    ]
    with schema_editor.connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
    logger.info("granted the app's tables to %s (the audit trail: SELECT and INSERT only)", app)


def revoke(apps, schema_editor):
    app = _app_role(schema_editor)
    if app is None:
        return
    statements = [
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
        f"REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM {app}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE USAGE, SELECT ON SEQUENCES FROM {app}",
        f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {app}",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {app}",
    ]
    with schema_editor.connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("annotations", "0018_exportjob_zip")]

    operations = [migrations.RunPython(grant, revoke, elidable=False)]

"""Indexes of the task list (annotations.tasklist): file-name search and manifest fields.

The file-name search is `ILIKE '%term%'`: a trigram index serves it where pg_trgm can be
installed (it needs the database owner or a superuser); elsewhere a lower() btree serves
prefixes and the search still works, by a scan. `field:value` is JSON containment (`@>`),
served by a GIN index on the manifest.
"""

from django.db import migrations

TRIGRAM = """
DO $$
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE NOTICE 'pg_trgm not available: file-name search uses a lower() index';
    END;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        CREATE INDEX IF NOT EXISTS image_name_trgm
            ON annotations_image USING gin (original_name gin_trgm_ops);
    ELSE
        CREATE INDEX IF NOT EXISTS image_name_lower
            ON annotations_image (lower(original_name) text_pattern_ops);
    END IF;
END $$;
"""
# The extension stays: other database objects may use it by then.
UNDO_TRIGRAM = "DROP INDEX IF EXISTS image_name_trgm; DROP INDEX IF EXISTS image_name_lower;"

METADATA = (
    "CREATE INDEX IF NOT EXISTS task_metadata_path "
    "ON annotations_task USING gin (metadata jsonb_path_ops);"
)
# The list's default order within a project, and its seek: (project, id).
PROJECT_ID = "CREATE INDEX IF NOT EXISTS task_project_id ON annotations_task (project_id, id);"


class Migration(migrations.Migration):
    dependencies = [("annotations", "0022_audit_chain")]

    operations = [
        migrations.RunSQL(TRIGRAM, UNDO_TRIGRAM),
        migrations.RunSQL(METADATA, "DROP INDEX IF EXISTS task_metadata_path;"),
        migrations.RunSQL(PROJECT_ID, "DROP INDEX IF EXISTS task_project_id;"),
    ]

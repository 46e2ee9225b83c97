from django.db import migrations

APPEND_ONLY = """
CREATE OR REPLACE FUNCTION annotations_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER annotations_auditevent_append_only
    BEFORE UPDATE OR DELETE ON annotations_auditevent
    FOR EACH ROW EXECUTE FUNCTION annotations_audit_append_only();
"""

DROP = """
DROP TRIGGER IF EXISTS annotations_auditevent_append_only ON annotations_auditevent;
DROP FUNCTION IF EXISTS annotations_audit_append_only();
"""


def create_groups(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    for name in ("admin", "pathologist", "researcher"):
        Group.objects.get_or_create(name=name)


class Migration(migrations.Migration):
    dependencies = [
        ("annotations", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [
        migrations.RunSQL(APPEND_ONLY, DROP),
        migrations.RunPython(create_groups, migrations.RunPython.noop),
    ]

"""Roles belong to a project. The per-role global groups made any project admin an admin of
every project; they are removed with their memberships. Site-wide power is is_superuser."""

from django.db import migrations

ROLE_GROUPS = ("admin", "pathologist", "researcher")


def drop_role_groups(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.filter(name__in=ROLE_GROUPS).delete()  # user links go with them


class Migration(migrations.Migration):
    dependencies = [
        ("annotations", "0002_audit_append_only_and_groups"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [migrations.RunPython(drop_role_groups, migrations.RunPython.noop)]

"""Slide settings that the patch code refuses (the admin saved them unchecked before
Project.clean) made the settings page and every draft of the project fail. They go back to
the defaults; what they were stays in the audit trail."""

from django.db import migrations

from imaging.patches import PatchSettings


def reset_invalid(apps, schema_editor):
    Project = apps.get_model("annotations", "Project")
    AuditEvent = apps.get_model("annotations", "AuditEvent")
    for project in Project.objects.exclude(slide_settings={}):
        try:
            PatchSettings.from_dict(project.slide_settings)
        except ValueError as exc:
            AuditEvent.objects.create(
                action="project.slide_settings",
                project=project,
                before=project.slide_settings,
                after={},
                reason=f"reset to the defaults: {exc}",
            )
            project.slide_settings = {}
            project.save(update_fields=["slide_settings"])


class Migration(migrations.Migration):
    dependencies = [("annotations", "0005_forget_implausible_mpp")]

    operations = [migrations.RunPython(reset_invalid, migrations.RunPython.noop)]

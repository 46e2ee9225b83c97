"""Microns per pixel outside what microscopes produce (a 72-dpi TIFF reads as 352.8 µm/px)
were stored before imaging.inspect.plausible_mpp: they become unknown, as new imports do."""

from django.db import migrations

from imaging.inspect import plausible_mpp


def forget_implausible(apps, schema_editor):
    Image = apps.get_model("annotations", "Image")
    for field in ("mpp_x", "mpp_y"):
        stored = Image.objects.exclude(**{f"{field}__isnull": True})
        bad = [pk for pk, value in stored.values_list("pk", field) if plausible_mpp(value) is None]
        Image.objects.filter(pk__in=bad).update(**{field: None})


class Migration(migrations.Migration):
    dependencies = [("annotations", "0004_task_outbox_and_lost_attempts")]

    operations = [migrations.RunPython(forget_implausible, migrations.RunPython.noop)]

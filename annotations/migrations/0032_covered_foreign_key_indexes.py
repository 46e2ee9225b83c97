"""Foreign keys whose own index another index already covers (it starts with the same
column) lose it: one entry less to write per row, the same lookups. A decision renews the
claim on the task read ahead, which writes an entry in every index of the claim table; the
claim had two such indexes, and drafts, rollups, readings and exports one each."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('annotations', '0031_task_file_name'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name='agreementcell',
            name='project',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='agreement', to='annotations.project'),
        ),
        migrations.AlterField(
            model_name='armday',
            name='project',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='annotations.project'),
        ),
        migrations.AlterField(
            model_name='claim',
            name='reviewer',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='claims', to=settings.AUTH_USER_MODEL),
        ),
        migrations.AlterField(
            model_name='claim',
            name='task',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='claims', to='annotations.task'),
        ),
        migrations.AlterField(
            model_name='comparisondraft',
            name='comparison',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='drafts', to='annotations.comparison'),
        ),
        migrations.AlterField(
            model_name='comparisonreading',
            name='draft',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='readings', to='annotations.comparisondraft'),
        ),
        migrations.AlterField(
            model_name='draft',
            name='task',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='drafts', to='annotations.task'),
        ),
        migrations.AlterField(
            model_name='draftday',
            name='project',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='annotations.project'),
        ),
        migrations.AlterField(
            model_name='editautosave',
            name='task',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='autosaves', to='annotations.task'),
        ),
        migrations.AlterField(
            model_name='exportedtask',
            name='job',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='annotations.exportjob'),
        ),
        migrations.AlterField(
            model_name='exportedtask',
            name='task',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='exports', to='annotations.task'),
        ),
        migrations.AlterField(
            model_name='exportjob',
            name='project',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='export_jobs', to='annotations.project'),
        ),
        migrations.AlterField(
            model_name='membership',
            name='project',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='memberships', to='annotations.project'),
        ),
        migrations.AlterField(
            model_name='prompttemplate',
            name='project',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='prompt_templates', to='annotations.project'),
        ),
        migrations.AlterField(
            model_name='readercounters',
            name='project',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='reader_counters', to='annotations.project'),
        ),
        migrations.AlterField(
            model_name='reviewday',
            name='project',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='annotations.project'),
        ),
        migrations.AlterField(
            model_name='sentinelreading',
            name='sentinel',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='readings', to='annotations.sentinel'),
        ),
        migrations.AlterField(
            model_name='uploadbatch',
            name='project',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='upload_batches', to='annotations.project'),
        ),
    ]

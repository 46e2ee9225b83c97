"""An outbox for the comparison's candidate drafts, as a task's drafting has: a comparison
started while the broker was down left its drafts queued with no message, for good.
Drafts queued before this are marked pending: the sweep sends them (a duplicate of a message
still in the queue finds its draft drafted and does nothing)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('annotations', '0029_decision_write_lighter'),
    ]

    operations = [
        migrations.AddField(
            model_name='comparisondraft',
            name='message_pending',
            field=models.BooleanField(default=True),
        ),
        migrations.AddField(
            model_name='comparisondraft',
            name='sent_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]

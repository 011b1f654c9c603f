"""The caller's id of an event appended from outside a turn, unique per session."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('django_agent_session', '0003_stop_reasons_and_cost'),
    ]

    operations = [
        migrations.AddField(
            model_name='agentevent',
            name='key',
            field=models.CharField(blank=True, max_length=255, null=True),
        ),
        migrations.AddConstraint(
            model_name='agentevent',
            constraint=models.UniqueConstraint(condition=models.Q(('key__isnull', False)), fields=('session_id', 'key'), name='agent_event_unique_key'),
        ),
    ]

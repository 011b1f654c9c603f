"""Drop the index on ``session_type`` alone from runs, events and artifacts.

It holds one value per session model, and SQLite's planner (without ``ANALYZE`` statistics)
chose it over the ``session_id`` indexes for a turn's "is a run queued?" check, which then read
every run of that model. The index is dropped by name instead of through ``AlterField``, which
on SQLite would copy each table into a new one.
"""

from django.db import migrations, models

TABLES = ("agentrun", "agentevent", "artifact")


def _session_type_indexes(schema_editor, model):
    """Names of the plain indexes on the ``session_type_id`` column alone."""
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, model._meta.db_table)
    column = model._meta.get_field("session_type").column
    return [name for name, info in constraints.items()
            if info["index"] and not info["unique"] and not info["primary_key"]
            and info["columns"] == [column]]


def drop_indexes(apps, schema_editor):
    quote = schema_editor.quote_name
    for name in TABLES:
        model = apps.get_model("django_agent_session", name)
        for index in _session_type_indexes(schema_editor, model):
            schema_editor.execute(schema_editor.sql_delete_index % {
                "table": quote(model._meta.db_table), "name": quote(index)})


def create_indexes(apps, schema_editor):
    for name in TABLES:
        model = apps.get_model("django_agent_session", name)
        if not _session_type_indexes(schema_editor, model):
            schema_editor.add_index(model, models.Index(
                fields=["session_type"], name=f"{name}_session_type_idx"))


class Migration(migrations.Migration):

    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("django_agent_session", "0004_event_keys"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name=name,
                    name="session_type",
                    field=models.ForeignKey(db_index=False, on_delete=models.CASCADE,
                                            related_name="+", to="contenttypes.contenttype"),
                )
                for name in TABLES
            ],
            database_operations=[migrations.RunPython(drop_indexes, create_indexes)],
        ),
    ]

"""The task the ``"tasks"`` executor enqueues: drain one session's queue on a worker.

Needs Django's Tasks framework: ``django.tasks`` (Django 6) or the ``django-tasks`` backport
(``pip install django-agent-session[tasks]`` on Django 5.2).
"""

from __future__ import annotations

from asgiref.sync import async_to_sync
from django.apps import apps

try:
    from django.tasks import task  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # Django 5.2: the backport
    from django_tasks import task  # type: ignore[no-redef,unused-ignore]

from .drain import drain, sweep
from .executors import TaskExecutor


@task()
def run_queue(model_label: str, session_id: str) -> float | None:
    """Run the queued runs of one session, in order. Runs queued behind another executor's
    lease are looked at again, by a task deferred until that lease expires."""
    model = apps.get_model(model_label)
    retry_in = async_to_sync(drain)(model, session_id)
    if retry_in is not None:
        TaskExecutor().dispatch(model, session_id, after=retry_in)
    return retry_in


@task()
def sweep_queues() -> int:
    """Hand every stranded queue on (schedule it, or run ``agent_session_sweep``)."""
    return sweep()

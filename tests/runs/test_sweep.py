"""``manage.py agent_session_sweep`` hands a stranded queue to the executor, which runs it."""

from __future__ import annotations

import io
import time

import pytest
from django.core.management import call_command
from django.test import override_settings

from django_agent_session.models import AgentRun, RunStatus
from tests.helpers.loopback import loopback_settings
from tests.testapp.models import ChatAgent

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_sweep_command_runs_a_stranded_queue(loopback):
    loopback.enqueue("first answer")
    session = ChatAgent.objects.start_session("first", instruction_args={"company_name": "A"})
    with override_settings(AGENT_SESSION=loopback_settings(
            loopback, EXECUTOR="tests.helpers.executors.Recording")):
        stranded = ChatAgent.objects.continue_session(session.pk, "stranded", wait=False)
    loopback.enqueue("picked up")

    out = io.StringIO()
    call_command("agent_session_sweep", stdout=out)  # the inline executor: a drain thread

    assert out.getvalue().strip() == "Handed 1 stranded queue(s) to the executor."
    deadline = time.monotonic() + 10
    while AgentRun.objects.get(pk=stranded.pk).status != RunStatus.COMPLETED:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    call_command("agent_session_sweep", stdout=out)
    assert out.getvalue().strip().endswith("Handed 0 stranded queue(s) to the executor.")


class Broken:
    def dispatch(self, model, session_pk, *, after=None):
        raise ConnectionError("the task backend is down")


def test_a_failing_executor_does_not_fail_the_committed_submission(loopback, caplog):
    loopback.enqueue("first answer")
    session = ChatAgent.objects.start_session("first", instruction_args={"company_name": "A"})
    with override_settings(AGENT_SESSION=loopback_settings(
            loopback, EXECUTOR=f"{__name__}.Broken")):
        run = ChatAgent.objects.continue_session(session.pk, "kept", wait=False)
    assert AgentRun.objects.get(pk=run.pk).status == RunStatus.QUEUED  # committed, for the sweep
    assert "the task backend is down" in caplog.text

"""Model faults through the real SDK: each ends as its typed error, the context intact.

Every fault runs on the four turn paths (sync/async, plain/streamed). After the fault the
stored context is byte-for-byte what it was, the run is failed with the error's code, the lease
is free, and the next turn on the same session succeeds and appends exactly its two messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import override_settings

from django_agent_session import exceptions as exc
from django_agent_session.models import AgentRun, RunStatus
from django_agent_session.testing.loopback import Reply
from tests.helpers.loopback import loopback_settings
from tests.helpers.state import raw_context
from tests.testapp.models import ChatAgent, StructuredAgent

ARGS = {"company_name": "Acme"}


@dataclass(frozen=True)
class Fault:
    replies: tuple[Reply, ...]
    error: type[exc.AgentSessionError]
    model: type = ChatAgent
    stream_only: bool = False
    settings: tuple[tuple[str, Any], ...] = ()


FAULTS = {
    "timeout": Fault((Reply.stall(3, then="too late"),), exc.ModelTimeout,
                     settings=(("TIMEOUT", 0.3),)),
    "429": Fault((Reply.rate_limited(),), exc.ModelRateLimited),
    "500": Fault((Reply.server_error(),), exc.ModelUnavailable),
    "529": Fault((Reply.overloaded(),), exc.ModelOverloaded),
    "dropped-stream": Fault((Reply.text("one two three four five", chunk_size=3, drop_after=2),),
                            exc.ModelConnectionError),
    "error-event-mid-stream": Fault((Reply.text("one two three", chunk_size=3, error_after=1),),
                                    exc.ModelOverloaded, stream_only=True),
    "invalid-structured-output": Fault((Reply.text("not json"), Reply.text('{"content": 1}')),
                                       exc.InvalidModelOutput, model=StructuredAgent),
}
PATHS = ["plain", "streamed"]


def _good_reply(model: type, text: str) -> Reply:
    if model is StructuredAgent:
        return Reply.text(json.dumps({"content": text, "mood": "happy"}))
    return Reply.text(text)


def _prepare(server: Any, fault: Fault) -> tuple[Any, str, list[dict[str, Any]]]:
    server.enqueue(_good_reply(fault.model, "first answer"))
    session = fault.model.objects.start_session("first question", instruction_args=ARGS)
    server.enqueue(*fault.replies)
    return session, raw_context(fault.model, session.pk), session.get_context().messages


def _assert_intact_and_recovers(server: Any, fault: Fault, session: Any, raw: str,
                                messages: list[dict[str, Any]], error: BaseException) -> None:
    model = fault.model
    assert type(error) is fault.error
    assert raw_context(model, session.pk) == raw  # byte-for-byte
    row = model._base_manager.get(pk=session.pk)
    assert row.lease_token is None and row.lease_expires_at is None
    run = AgentRun.objects.filter(session_id=session.pk).order_by("-started_at").first()
    assert run.status == RunStatus.FAILED and run.error["code"] == fault.error.code
    assert session.events.filter(type="run.failed").count() == 1
    # the session is usable again: the next turn succeeds and appends exactly two messages
    server.enqueue(_good_reply(model, "recovered"))
    after = model.objects.continue_session(session.pk, "next question")
    stored = after.get_context().messages
    assert stored[:-2] == messages and len(stored) == len(messages) + 2
    assert stored[-2]["content"] == [{"type": "text", "text": "next question"}]
    assert model._base_manager.get(pk=session.pk).status == "idle"


def _settings(server: Any, fault: Fault) -> Any:
    return override_settings(AGENT_SESSION=loopback_settings(
        server, ANTHROPIC=dict(fault.settings)))


def _cases() -> list[Any]:
    return [pytest.param(name, path, id=f"{name}-{path}")
            for name, fault in FAULTS.items() for path in PATHS
            if path == "streamed" or not fault.stream_only]


@pytest.mark.django_db
@pytest.mark.parametrize("name, path", _cases())
def test_sync_fault(loopback, name, path):
    fault = FAULTS[name]
    session, raw, messages = _prepare(loopback, fault)
    progress = (lambda kind, data: None) if path == "streamed" else None
    with _settings(loopback, fault), pytest.raises(exc.AgentSessionError) as info:
        fault.model.objects.continue_session(session.pk, "faulty turn", on_progress=progress)
    _assert_intact_and_recovers(loopback, fault, session, raw, messages, info.value)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name, path", _cases())
async def test_async_fault(loopback, name, path):
    fault = FAULTS[name]
    session, raw, messages = await database_sync_to_async(_prepare)(loopback, fault)

    async def progress(kind: str, data: dict[str, Any]) -> None:
        pass

    with _settings(loopback, fault), pytest.raises(exc.AgentSessionError) as info:
        await fault.model.objects.acontinue_session(
            session.pk, "faulty turn", on_progress=progress if path == "streamed" else None)
    await database_sync_to_async(_assert_intact_and_recovers)(
        loopback, fault, session, raw, messages, info.value)

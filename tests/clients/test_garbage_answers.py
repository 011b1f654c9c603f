"""A 200 whose body is garbage (not the API's JSON, not its SSE) is a typed model error.

Found by the soak suite (``python -m benchmarks.soak``, model faults): the SDK's
``JSONDecodeError`` (plain call) and ``UnicodeDecodeError`` (stream) escaped the client's error
mapping and failed the turn as ``internal_error``. Now both are a ``ModelError``
(``model_error``); the context is untouched and the next turn succeeds.
"""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.test import override_settings

from django_agent_session import exceptions as exc
from django_agent_session.models import AgentRun, RunStatus
from django_agent_session.testing.loopback import LoopbackMessagesServer, Reply
from tests.helpers.loopback import loopback_settings
from tests.helpers.state import raw_context
from tests.testapp.models import ChatAgent

ARGS = {"company_name": "Acme"}
BODIES = [b"\x00\xff{\"type\": \"mess", b"not json at all", b"event: message_start\ndata: {"]


@pytest.fixture
def server(loopback):
    """The shared loopback server, with a short SDK timeout."""
    with override_settings(AGENT_SESSION=loopback_settings(loopback,
                                                           ANTHROPIC={"TIMEOUT": 5.0})):
        yield loopback


def _prepare(server):
    server.enqueue("first answer")
    session = ChatAgent.objects.start_session("hello", instruction_args=ARGS)
    return session, raw_context(ChatAgent, session.pk)


def _assert_typed_and_recovers(server, session, raw, error):
    assert type(error) is exc.ModelError and error.code == "model_error"
    assert raw_context(ChatAgent, session.pk) == raw
    run = AgentRun.objects.filter(session_id=session.pk).order_by("-started_at").first()
    assert run.status == RunStatus.FAILED and run.error["code"] == "model_error"
    server.enqueue("recovered")
    after = ChatAgent.objects.continue_session(session.pk, "again")
    assert after.get_context().messages[-1]["content"][0]["text"] == "recovered"


@pytest.mark.django_db
@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("body", BODIES)
def test_sync_garbage_is_a_model_error(server, streamed, body):
    session, raw = _prepare(server)
    server.enqueue(Reply.garbage(body))
    progress = (lambda kind, data: None) if streamed else None
    with pytest.raises(exc.AgentSessionError) as info:
        ChatAgent.objects.continue_session(session.pk, "garbage, please", on_progress=progress)
    _assert_typed_and_recovers(server, session, raw, info.value)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
async def test_async_garbage_is_a_model_error(server, streamed):
    session, raw = await database_sync_to_async(_prepare)(server)
    server.enqueue(Reply.garbage())

    async def progress(kind, data):
        pass

    with pytest.raises(exc.AgentSessionError) as info:
        await ChatAgent.objects.acontinue_session(session.pk, "garbage, please",
                                                  on_progress=progress if streamed else None)
    await database_sync_to_async(_assert_typed_and_recovers)(server, session, raw, info.value)


def test_hang_is_a_timeout():
    """``Reply.hang`` never answers: the client's timeout ends the call (typed)."""
    import anthropic

    with LoopbackMessagesServer([Reply.hang()]) as srv:
        client = anthropic.Anthropic(**srv.client_kwargs(max_retries=0, timeout=0.5))
        with pytest.raises(anthropic.APITimeoutError):
            client.messages.create(model="m", max_tokens=10,
                                   messages=[{"role": "user", "content": "hi"}])

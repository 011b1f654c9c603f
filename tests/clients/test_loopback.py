"""Tests for the loopback Messages API server, driven through the real ``anthropic`` SDK.

Only the standard library, the SDK and the module under test are imported, so
this file runs without Django (``pytest -p no:django tests/clients/test_loopback.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from django_agent_session.testing.loopback import (
    DEFAULT_SIGNATURE,
    LoopbackMessagesServer,
    RecordedRequest,
    Reply,
    anthropic_client_kwargs,
)

MODEL = "claude-test-model"
USER = [{"role": "user", "content": "Hello?"}]


def _loopback_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("loopback-messages-") and t.is_alive()]


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    yield
    assert _loopback_threads() == []


@pytest.fixture
def server() -> Iterator[LoopbackMessagesServer]:
    with LoopbackMessagesServer() as srv:
        yield srv


@pytest.fixture
def client(server: LoopbackMessagesServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(**server.client_kwargs(max_retries=0)) as c:
        yield c


def create(client: anthropic.Anthropic, **kwargs: Any) -> anthropic.types.Message:
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 256, "messages": USER, **kwargs}
    return client.messages.create(**params)


def stream(client: anthropic.Anthropic, **kwargs: Any) -> Any:
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 256, "messages": USER, **kwargs}
    return client.messages.stream(**params)


# -- JSON (non-streaming) -----------------------------------------------------------


def test_text_reply_as_json_message(server: LoopbackMessagesServer, client: anthropic.Anthropic) -> None:
    usage = {
        "input_tokens": 120,
        "output_tokens": 7,
        "cache_creation_input_tokens": 30,
        "cache_read_input_tokens": 90,
    }
    server.enqueue(Reply.text("Hi there, human.", usage=usage))

    message = create(client)

    assert isinstance(message, anthropic.types.Message)
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Hi there, human."
    assert message.id == "msg_loopback_1"
    assert message.model == MODEL
    assert message.role == "assistant"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 120
    assert message.usage.output_tokens == 7
    assert message.usage.cache_creation_input_tokens == 30
    assert message.usage.cache_read_input_tokens == 90
    assert message._request_id == "req_loopback_1"
    (request,) = server.requests
    assert request.method == "POST" and request.path == "/v1/messages"
    assert request.stream is False
    assert request.status == 200
    assert request.sent_events == []


def test_default_usage_is_deterministic_and_non_zero(
    server: LoopbackMessagesServer, client: anthropic.Anthropic
) -> None:
    server.enqueue(Reply.text("Same answer"), Reply.text("Same answer"))

    first, second = create(client), create(client)

    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    assert first.usage.cache_creation_input_tokens == 0
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.model_dump() == second.usage.model_dump()


def test_model_override_and_string_shorthand(server: LoopbackMessagesServer, client: anthropic.Anthropic) -> None:
    server.enqueue(Reply.text("a", model="claude-other"), "plain string")

    assert create(client).model == "claude-other"
    second = create(client)
    assert second.content[0].text == "plain string"
    assert second.id == "msg_loopback_2"


def test_structured_output_via_messages_parse(server: LoopbackMessagesServer, client: anthropic.Anthropic) -> None:
    @dataclasses.dataclass
    class Verdict:
        label: str
        score: float

    server.enqueue(Reply.json({"label": "spam", "score": 0.75}))

    parsed = client.messages.parse(model=MODEL, max_tokens=64, messages=USER, output_format=Verdict)

    assert parsed.parsed_output == Verdict(label="spam", score=0.75)
    sent_format = server.requests[0].body["output_config"]["format"]
    assert sent_format["type"] == "json_schema"


def test_tool_use_and_thinking_as_json(server: LoopbackMessagesServer, client: anthropic.Anthropic) -> None:
    server.enqueue(
        Reply.tool_use("lookup", {"q": "x"}, text="Checking.", thinking="Need data.", id="toolu_fixed"),
        Reply.tool_use("lookup", {"q": "y"}),
    )

    first = create(client)
    second = create(client)

    assert [b.type for b in first.content] == ["thinking", "text", "tool_use"]
    assert first.content[0].signature == DEFAULT_SIGNATURE
    assert first.content[2].id == "toolu_fixed"
    assert first.content[2].input == {"q": "x"}
    assert first.stop_reason == "tool_use"
    assert second.content[0].id == "toolu_loopback_1"


# -- streaming ----------------------------------------------------------------


def test_stream_text_deltas_in_order(server: LoopbackMessagesServer, client: anthropic.Anthropic) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    usage = {"input_tokens": 50, "output_tokens": 12, "cache_read_input_tokens": 40}
    server.enqueue(Reply.text(text, usage=usage))

    with stream(client) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
        assert s.request_id == "req_loopback_1"

    assert len(pieces) > 3
    assert "".join(pieces) == text
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (50, 12)
    assert final.usage.cache_read_input_tokens == 40
    assert final.usage.cache_creation_input_tokens == 0

    request = server.requests[0]
    assert request.stream is True
    names = [e.event for e in request.sent_events]
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        *["content_block_delta"] * len(pieces),
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = request.events("message_start")[0].data["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == 50 and start["usage"]["output_tokens"] == 1
    assert request.events("message_delta")[0].data["usage"]["output_tokens"] == 12


def test_stream_chunk_size(server: LoopbackMessagesServer, client: anthropic.Anthropic) -> None:
    server.enqueue(Reply.text("abcdefghij", chunk_size=3))

    with stream(client) as s:
        assert list(s.text_stream) == ["abc", "def", "ghi", "j"]


def test_stream_tool_use_assembles_input(server: LoopbackMessagesServer, client: anthropic.Anthropic) -> None:
    tool_input = {"city": "Paris", "days": 3, "units": ["celsius"], "nested": {"deep": True}}
    server.enqueue(Reply.tool_use("get_forecast", tool_input, text="Let me look that up."))

    with stream(client) as s:
        events = list(s)
        final = s.get_final_message()

    json_events = [e for e in events if e.type == "input_json"]
    assert len([e for e in json_events if e.partial_json]) > 1
    assert json_events[-1].snapshot == tool_input
    assert final.stop_reason == "tool_use"
    text_block, tool_block = final.content
    assert text_block.type == "text" and text_block.text == "Let me look that up."
    assert tool_block.type == "tool_use"
    assert tool_block.name == "get_forecast"
    assert tool_block.id == "toolu_loopback_1"
    assert tool_block.input == tool_input
    stop = [e for e in events if e.type == "content_block_stop"]
    assert stop[-1].content_block.input == tool_input


def test_stream_thinking_with_signature(server: LoopbackMessagesServer, client: anthropic.Anthropic) -> None:
    server.enqueue(Reply.thinking("First, consider the question.", "Answer: 42", signature="sig-abc"))

    with stream(client) as s:
        events = list(s)
        final = s.get_final_message()

    thinking, text = final.content
    assert thinking.type == "thinking"
    assert thinking.thinking == "First, consider the question."
    assert thinking.signature == "sig-abc"
    assert text.text == "Answer: 42"
    assert len([e for e in events if e.type == "thinking"]) > 1
    assert [e.signature for e in events if e.type == "signature"] == ["sig-abc"]


def test_stream_parallel_tool_calls_with_message(server: LoopbackMessagesServer, client: anthropic.Anthropic) -> None:
    server.enqueue(
        Reply.message(
            [
                {"type": "tool_use", "name": "a", "input": {}},
                {"type": "tool_use", "name": "b", "input": {"x": 1}},
            ],
            stop_reason="tool_use",
        )
    )

    with stream(client) as s:
        final = s.get_final_message()

    assert [(b.name, b.id, b.input) for b in final.content] == [
        ("a", "toolu_loopback_1", {}),
        ("b", "toolu_loopback_2", {"x": 1}),
    ]


def test_stream_is_incremental(server: LoopbackMessagesServer, client: anthropic.Anthropic) -> None:
    server.enqueue(Reply.text("one two three four five", delay=0.06))

    received: list[tuple[float, str]] = []
    with stream(client) as s:
        for piece in s.text_stream:
            received.append((time.monotonic(), piece))

    deltas = server.requests[0].events("content_block_delta")
    assert [piece for _, piece in received] == [e.data["delta"]["text"] for e in deltas]
    first_received_at = received[0][0]
    # The client had the first delta in hand before the server even started
    # writing the last one (which it only does after 4 more delays).
    assert first_received_at < deltas[-1].at
    assert deltas[-1].at - deltas[0].at >= 4 * 0.06 * 0.9


# -- errors and retries ---------------------------------------------------------------


def test_rate_limit_is_retried_by_the_sdk(server: LoopbackMessagesServer) -> None:
    server.enqueue(Reply.rate_limited(retry_after=0), Reply.text("after the retry"))

    with anthropic.Anthropic(**server.client_kwargs(max_retries=2)) as retrying_client:
        message = create(retrying_client)

    assert message.content[0].text == "after the retry"
    assert message._request_id == "req_loopback_2"
    first, second = server.requests
    assert first.status == 429 and second.status == 200
    assert first.headers["x-stainless-retry-count"] == "0"
    assert second.headers["x-stainless-retry-count"] == "1"
    assert first.body == second.body
    # retry-after-ms was honoured instead of the SDK's own backoff (0.375 s at least)
    assert second.received_at - first.received_at < 0.35
    server.assert_script_consumed()


def test_rate_limit_surfaces_when_retries_are_off(server: LoopbackMessagesServer, client: anthropic.Anthropic) -> None:
    server.enqueue(Reply.rate_limited(retry_after=3))

    with pytest.raises(anthropic.RateLimitError) as excinfo:
        create(client)

    assert excinfo.value.response.headers["retry-after"] == "3"
    assert excinfo.value.response.headers["retry-after-ms"] == "3000"


@pytest.mark.parametrize(
    ("reply", "exception", "status", "error_type"),
    [
        (Reply.server_error(), anthropic.InternalServerError, 500, "api_error"),
        (Reply.overloaded(), anthropic.OverloadedError, 529, "overloaded_error"),
        (Reply.bad_request("max_tokens: too big"), anthropic.BadRequestError, 400, "invalid_request_error"),
        (Reply.unauthorized(), anthropic.AuthenticationError, 401, "authentication_error"),
        (Reply.error(403), anthropic.PermissionDeniedError, 403, "permission_error"),
    ],
)
def test_error_replies_map_to_sdk_exceptions(
    server: LoopbackMessagesServer,
    client: anthropic.Anthropic,
    reply: Reply,
    exception: type[anthropic.APIStatusError],
    status: int,
    error_type: str,
) -> None:
    server.enqueue(reply)

    with pytest.raises(anthropic.APIStatusError) as excinfo:
        create(client)

    error = excinfo.value
    assert type(error) is exception
    assert error.status_code == status
    assert error.type == error_type
    assert error.request_id == "req_loopback_1"
    assert error.api_message == reply.error_message
    assert error.body == {
        "type": "error",
        "error": {"type": error_type, "message": reply.error_message},
        "request_id": "req_loopback_1",
    }
    assert len(server.requests) == 1


def test_error_reply_also_fails_a_stream(server: LoopbackMessagesServer, client: anthropic.Anthropic) -> None:
    server.enqueue(Reply.overloaded())

    with pytest.raises(anthropic.OverloadedError) as excinfo:
        with stream(client) as s:
            s.get_final_message()

    assert excinfo.value.request_id == "req_loopback_1"


def test_stall_times_out_and_stop_is_prompt() -> None:
    srv = LoopbackMessagesServer([Reply.stall(30)])
    srv.start()
    try:
        with anthropic.Anthropic(**srv.client_kwargs(max_retries=0, timeout=0.2)) as c:
            started = time.monotonic()
            with pytest.raises(anthropic.APITimeoutError):
                create(c)
            assert time.monotonic() - started < 2
        assert len(srv.requests) == 1
    finally:
        started = time.monotonic()
        srv.stop()
        stop_took = time.monotonic() - started
    assert stop_took < 1.0
    assert _loopback_threads() == []


def test_stall_then_answer(server: LoopbackMessagesServer, client: anthropic.Anthropic) -> None:
    server.enqueue(Reply.stall(0.1, then=Reply.text("late but fine")))

    started = time.monotonic()
    message = create(client)

    assert message.content[0].text == "late but fine"
    assert time.monotonic() - started >= 0.1


def test_a_held_stream_waits_after_its_deltas_until_released(
    server: LoopbackMessagesServer, client: anthropic.Anthropic
) -> None:
    released = threading.Event()
    server.enqueue(Reply.text("one two three four", delay=0.01).held_after(2, until=released))

    received: list[str] = []
    with stream(client) as s:
        pieces = iter(s.text_stream)
        received += [next(pieces), next(pieces)]
        time.sleep(0.3)  # held: nothing more is written, however long the test takes
        deltas = [e for e in server.requests[0].sent_events if e.event == "content_block_delta"]
        assert len(deltas) == 2
        released.set()
        received += list(pieces)

    assert received == ["one ", "two ", "three ", "four"]


def test_a_held_reply_without_streaming_answers_once_released(
    server: LoopbackMessagesServer, client: anthropic.Anthropic
) -> None:
    released = threading.Event()
    server.enqueue(Reply.text("later").held_after(0, until=released))
    threading.Timer(0.2, released.set).start()

    started = time.monotonic()
    assert create(client).content[0].text == "later"
    assert time.monotonic() - started >= 0.2


def test_stop_ends_a_held_stream() -> None:
    srv = LoopbackMessagesServer([Reply.text("one two").held_after(1, until=threading.Event())])
    srv.start()
    try:
        with anthropic.Anthropic(**srv.client_kwargs(max_retries=0)) as c:
            with stream(c) as s:
                pieces = iter(s.text_stream)
                assert next(pieces) == "one "
                started = time.monotonic()
                srv.stop()
                with pytest.raises(Exception) as excinfo:
                    list(pieces)
                dropped_stream_error(excinfo.value)
                assert time.monotonic() - started < 1.0
    finally:
        srv.stop()
    assert _loopback_threads() == []


def test_holds_add_up(server: LoopbackMessagesServer, client: anthropic.Anthropic) -> None:
    first, second = threading.Event(), threading.Event()
    server.enqueue(Reply.text("a b c d").held_after(1, until=first).held_after(3, until=second))

    def written() -> int:
        return len(server.requests[0].events("content_block_delta"))

    with stream(client) as s:
        pieces = iter(s.text_stream)
        assert next(pieces) == "a "
        time.sleep(0.2)
        assert written() == 1
        first.set()
        assert [next(pieces), next(pieces)] == ["b ", "c "]
        time.sleep(0.2)
        assert written() == 3
        second.set()
        assert list(pieces) == ["d"]


def test_a_hold_needs_a_count_and_a_threading_event() -> None:
    with pytest.raises(ValueError, match="negative"):
        Reply.text("x").held_after(-1, until=threading.Event())
    with pytest.raises(TypeError, match="threading.Event"):
        Reply.text("x").held_after(1, until=asyncio.Event())  # type: ignore[arg-type]


def dropped_stream_error(error: BaseException) -> BaseException:
    """httpx2's ``RemoteProtocolError`` for a stream cut mid-body, as the SDK surfaces it.

    anthropic up to 2.12 let it escape bare; 2.13 and later wrap it in ``APIConnectionError``
    (its ``__cause__``). The client maps both to ``ModelConnectionError``.
    """
    if isinstance(error, anthropic.APIConnectionError):
        assert error.__cause__ is not None
        error = error.__cause__
    else:
        assert not isinstance(error, anthropic.AnthropicError)
    assert type(error).__module__ == "httpx2"
    assert type(error).__name__ == "RemoteProtocolError"
    return error


def test_dropped_stream_raises_remote_protocol_error(
    server: LoopbackMessagesServer, client: anthropic.Anthropic
) -> None:
    server.enqueue(Reply.text("one two three four five", drop_after=2))

    received: list[str] = []
    with pytest.raises(Exception) as excinfo:
        with stream(client) as s:
            for piece in s.text_stream:
                received.append(piece)

    error = dropped_stream_error(excinfo.value)
    assert "incomplete chunked read" in str(error)
    assert received == ["one ", "two "]
    names = [e.event for e in server.requests[0].sent_events]
    assert names.count("content_block_delta") == 2
    assert "message_stop" not in names


def test_drop_without_streaming_is_a_connection_error(
    server: LoopbackMessagesServer, client: anthropic.Anthropic
) -> None:
    server.enqueue(Reply.text("never sent", drop_after=0))

    with pytest.raises(anthropic.APIConnectionError) as excinfo:
        create(client)

    assert not isinstance(excinfo.value, anthropic.APITimeoutError)


def test_mid_stream_error_event(server: LoopbackMessagesServer, client: anthropic.Anthropic) -> None:
    server.enqueue(Reply.text("one two three", error_after=1))

    with pytest.raises(anthropic.APIStatusError) as excinfo:
        with stream(client) as s:
            s.get_final_message()

    # An `event: error` arrives on a 200 response, so the SDK raises the base
    # APIStatusError (status 200) rather than OverloadedError.
    error = excinfo.value
    assert type(error) is anthropic.APIStatusError
    assert error.status_code == 200
    assert error.type == "overloaded_error"
    assert error.request_id == "req_loopback_1"


def test_script_exhausted_is_reported(server: LoopbackMessagesServer) -> None:
    server.enqueue(Reply.text("only one"))

    with anthropic.Anthropic(**server.client_kwargs(max_retries=2)) as c:
        create(c)
        with pytest.raises(anthropic.InternalServerError) as excinfo:
            create(c)

    assert "script exhausted" in str(excinfo.value.api_message)
    assert len(server.requests) == 2  # x-should-retry: false stopped the SDK from retrying
    assert server.exhausted == [server.requests[1]]
    with pytest.raises(AssertionError, match="exhausted"):
        server.assert_script_consumed()


def test_unused_replies_are_reported(server: LoopbackMessagesServer, client: anthropic.Anthropic) -> None:
    server.enqueue("one", "two")
    create(client)

    assert server.pending == 1
    with pytest.raises(AssertionError, match="never requested"):
        server.assert_script_consumed()


# -- responder and recording -----------------------------------------------------------


def test_responder_drives_an_agent_loop() -> None:
    weather_tool = {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    seen: list[RecordedRequest] = []

    def responder(request: RecordedRequest) -> Reply:
        seen.append(request)
        if request.tool_results:
            result = request.tool_results[0]["content"]
            return Reply.text(f"It is {result} in Paris.")
        if "weather" in request.user_text and request.tools:
            return Reply.tool_use("get_weather", {"city": "Paris"})
        return Reply.bad_request("unexpected request")

    with LoopbackMessagesServer(responder) as srv, anthropic.Anthropic(**anthropic_client_kwargs(srv)) as c:
        messages: list[dict[str, Any]] = [{"role": "user", "content": "What's the weather in Paris?"}]
        first = c.messages.create(
            model=MODEL, max_tokens=256, system="You are terse.", tools=[weather_tool], messages=messages
        )
        tool_call = first.content[0]
        assert tool_call.type == "tool_use" and tool_call.input == {"city": "Paris"}
        messages += [
            {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": tool_call.id, "content": "sunny"}],
            },
        ]
        with c.messages.stream(
            model=MODEL, max_tokens=256, system="You are terse.", tools=[weather_tool], messages=messages
        ) as s:
            final_text = s.get_final_text()

        assert final_text == "It is sunny in Paris."
        assert seen == srv.requests
        first_request, second_request = srv.requests
        assert first_request.system == "You are terse."
        assert first_request.tools == [weather_tool]
        assert first_request.messages == [{"role": "user", "content": "What's the weather in Paris?"}]
        assert first_request.model == MODEL
        assert first_request.body["max_tokens"] == 256
        assert first_request.headers["authorization"] == "Bearer test-key"
        assert json.loads(first_request.raw_body) == first_request.body
        assert second_request.stream is True
        assert second_request.messages[1]["content"][0]["id"] == tool_call.id
        assert second_request.tool_results[0]["tool_use_id"] == tool_call.id
        srv.assert_script_consumed()


def test_queued_replies_take_precedence_over_responder(server: LoopbackMessagesServer) -> None:
    server.responder = lambda request: Reply.text("from responder")
    server.enqueue(Reply.rate_limited(), "queued")

    with anthropic.Anthropic(**server.client_kwargs(max_retries=1)) as c:
        assert create(c).content[0].text == "queued"
        assert create(c).content[0].text == "from responder"


def test_responder_exception_becomes_500_and_is_recorded(
    server: LoopbackMessagesServer, client: anthropic.Anthropic
) -> None:
    def responder(request: RecordedRequest) -> Reply:
        raise LookupError("no canned answer")

    server.responder = responder

    with pytest.raises(anthropic.InternalServerError, match="no canned answer"):
        create(client)

    assert [type(e) for e in server.errors] == [LookupError]


def test_requests_are_served_concurrently(server: LoopbackMessagesServer) -> None:
    def responder(request: RecordedRequest) -> Reply:
        if request.user_text == "slow":
            return Reply.stall(0.5, then="slow done")
        return Reply.text("fast done")

    server.responder = responder
    finished: list[str] = []

    def ask(text: str) -> None:
        with anthropic.Anthropic(**server.client_kwargs(max_retries=0)) as c:
            message = create(c, messages=[{"role": "user", "content": text}])
        finished.append(message.content[0].text)

    slow = threading.Thread(target=ask, args=("slow",))
    slow.start()
    server.wait_for_requests(1)
    ask("fast")
    slow.join(5)

    assert finished == ["fast done", "slow done"]


def test_count_tokens_and_unknown_paths(server: LoopbackMessagesServer, client: anthropic.Anthropic) -> None:
    count = client.messages.count_tokens(model=MODEL, messages=USER)
    assert count.input_tokens > 0

    with pytest.raises(anthropic.NotFoundError) as excinfo:
        client.models.retrieve("claude-nope")
    assert excinfo.value.type == "not_found_error"

    assert [(r.method, r.path) for r in server.requests] == [
        ("POST", "/v1/messages/count_tokens"),
        ("GET", "/v1/models/claude-nope"),
    ]
    assert server.message_requests == []
    assert server.pending == 0 and server.exhausted == []


def test_beta_messages_are_served_too(server: LoopbackMessagesServer, client: anthropic.Anthropic) -> None:
    server.enqueue("beta hello")

    message = client.beta.messages.create(model=MODEL, max_tokens=10, messages=USER)

    assert message.content[0].text == "beta hello"
    assert server.requests[0].path == "/v1/messages"


# -- stop reasons ----------------------------------------------------------------------


def _answer(client: anthropic.Anthropic, streamed: bool) -> anthropic.types.Message:
    """One reply, as a JSON message or as the stream helper's final message."""
    if not streamed:
        return create(client)
    with stream(client) as s:
        return s.get_final_message()


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "stream"])
def test_stop_reason_constructors(server: LoopbackMessagesServer, client: anthropic.Anthropic, streamed: bool) -> None:
    search = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "anvils"}}
    server.enqueue(
        Reply.max_tokens("Cut off in the mid", chunk_size=4),
        Reply.refusal(),
        Reply.refusal("I can't help with"),
        Reply.pause_turn("Still searching"),
        Reply.pause_turn([search]),
        Reply.tool_use("write", {"path": "a.txt"}, text="Writing", stop_reason="max_tokens"),
    )

    cut, refused, refused_text, paused, paused_blocks, cut_call = [_answer(client, streamed) for _ in range(6)]

    assert (cut.stop_reason, cut.content[0].text) == ("max_tokens", "Cut off in the mid")
    assert (refused.stop_reason, refused.content) == ("refusal", [])
    assert (refused_text.stop_reason, refused_text.content[0].text) == ("refusal", "I can't help with")
    assert (paused.stop_reason, paused.content[0].text) == ("pause_turn", "Still searching")
    assert paused_blocks.stop_reason == "pause_turn"
    block = paused_blocks.content[0]
    assert (block.type, getattr(block, "id", None), getattr(block, "input", None)) == (
        "server_tool_use", "srvtoolu_1", {"query": "anvils"}
    )
    assert cut_call.stop_reason == "max_tokens"
    assert [b.type for b in cut_call.content] == ["text", "tool_use"]
    assert cut_call.content[1].input == {"path": "a.txt"}
    if streamed:  # the stop reason arrives in message_delta, after the content
        deltas = [r.events("message_delta")[0].data["delta"]["stop_reason"] for r in server.requests]
        assert deltas == ["max_tokens", "refusal", "refusal", "pause_turn", "pause_turn", "max_tokens"]
        assert [e.data["delta"]["text"] for e in server.requests[0].events("content_block_delta")] == [
            "Cut ", "off ", "in t", "he m", "id"
        ]


def test_stop_reason_constructors_take_the_message_knobs() -> None:
    usage = {"output_tokens": 4096}
    assert Reply.max_tokens("x", usage=usage, delay=0.5).usage == usage
    assert Reply.refusal(model="claude-other").model == "claude-other"
    assert Reply.pause_turn("x", headers={"x-a": "1"}).headers == (("x-a", "1"),)
    assert Reply.tool_use("t", {}).stop_reason == "tool_use"


# -- context window --------------------------------------------------------------------


def test_context_window_refuses_like_the_api_without_consuming_the_script() -> None:
    long = [{"role": "user", "content": "x" * 2000}]
    with LoopbackMessagesServer(["fits"], context_window=600) as server, anthropic.Anthropic(
        **server.client_kwargs(max_retries=0)
    ) as client:
        counted = client.messages.count_tokens(model=MODEL, messages=long).input_tokens
        with pytest.raises(anthropic.BadRequestError) as excinfo:
            create(client, messages=long, max_tokens=100)
        message = f"prompt is too long: {counted + 100} tokens > 600 maximum"
        assert excinfo.value.type == "invalid_request_error"
        assert excinfo.value.body["error"]["message"] == message
        assert server.pending == 1 and server.exhausted == []

        # the request's max_tokens counts too: one token over the window is refused, the window itself is not
        room = 600 - client.messages.count_tokens(model=MODEL, messages=USER).input_tokens
        with pytest.raises(anthropic.BadRequestError):
            create(client, max_tokens=room + 1)
        assert server.pending == 1
        assert create(client, max_tokens=room).content[0].text == "fits"

    refused = server.message_requests[0]
    assert refused.status == 400 and refused.body["messages"] == long
    assert refused.reply is not None and refused.reply.error_message == message
    assert [r.status for r in server.message_requests] == [400, 400, 200]


def test_context_window_counts_from_the_last_compaction_block() -> None:
    history = [
        {"role": "user", "content": "x" * 4000},
        {"role": "assistant", "content": [{"type": "compaction", "content": "Talk of x."}, {"type": "text", "text": "ok"}]},
        {"role": "user", "content": "next"},
    ]
    with LoopbackMessagesServer(["still fits"], context_window=200) as server, anthropic.Anthropic(
        **server.client_kwargs(max_retries=0)
    ) as client:
        counted = client.messages.count_tokens(model=MODEL, messages=history).input_tokens
        message = create(client, messages=history, max_tokens=100)
    assert counted < 50  # the 1,000 tokens before the block are not read
    assert message.content[0].text == "still fits"
    assert message.usage.input_tokens == counted


# -- prompt cache ------------------------------------------------------------------------

EPHEMERAL = {"type": "ephemeral"}
CACHED_TOOLS = [
    {
        "name": "lookup",
        "description": "Look a word up in the dictionary. " * 150,  # ~1,300 tokens
        "input_schema": {"type": "object", "properties": {"word": {"type": "string"}}},
        "cache_control": EPHEMERAL,
    }
]


def test_prompt_cache_turns_read_the_conversation_prefix(
    server: LoopbackMessagesServer, client: anthropic.Anthropic
) -> None:
    server.responder = lambda request: Reply.text(f"Answer {request.index}: " + "words " * 50)
    messages: list[dict[str, Any]] = []
    usages = []
    for turn in range(5):
        messages.append({"role": "user", "content": [{"type": "text", "text": f"Question {turn}?"}]})
        params: dict[str, Any] = {"tools": CACHED_TOOLS, "messages": messages, "cache_control": EPHEMERAL}
        message = _cached_call(client, streamed=turn % 2 == 1, **params)
        total = client.messages.count_tokens(model=MODEL, tools=CACHED_TOOLS, messages=messages).input_tokens
        usage = message.usage
        assert usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens == total
        usages.append(usage)
        messages.append({"role": "assistant", "content": [b.model_dump() for b in message.content]})

    first, *later = usages
    assert first.cache_read_input_tokens == 0 and first.cache_creation_input_tokens > 1024
    for previous, usage in zip(usages, later):
        # turn n reads all of turn n-1's prompt and writes only what was added since
        assert usage.cache_read_input_tokens == previous.cache_read_input_tokens + previous.cache_creation_input_tokens
        assert 0 < usage.cache_creation_input_tokens < 150
        assert usage.input_tokens <= first.input_tokens + 1 < 15  # only the cache_control markers are left over
    assert server.message_requests[1].events("message_start")[0].data["message"]["usage"][
        "cache_read_input_tokens"
    ] == later[0].cache_read_input_tokens

    server.clear_cache()
    cold = _cached_call(client, streamed=False, tools=CACHED_TOOLS, messages=messages[:-1], cache_control=EPHEMERAL)
    assert cold.usage.cache_read_input_tokens == 0 and cold.usage.cache_creation_input_tokens > 1024


def _cached_call(client: anthropic.Anthropic, *, streamed: bool, **params: Any) -> anthropic.types.Message:
    if streamed:
        with stream(client, **params) as s:
            return s.get_final_message()
    return create(client, **params)


def test_prompt_cache_breakpoints_in_system_and_messages_and_the_minimum() -> None:
    system = [{"type": "text", "text": "You are terse. " * 10, "cache_control": EPHEMERAL}]  # ~40 tokens
    turn = [{"role": "user", "content": [{"type": "text", "text": "Hi " * 40, "cache_control": EPHEMERAL}]}]
    with LoopbackMessagesServer(lambda r: Reply.text("ok"), cache_min_tokens=30) as server, anthropic.Anthropic(
        **server.client_kwargs(max_retries=0)
    ) as client:
        first = create(client, system=system, messages=turn).usage
        again = create(client, system=system, messages=turn).usage
        other = create(client, system=system, messages=[{"role": "user", "content": "Bye"}]).usage
        server.enqueue(Reply.text("scripted", usage={"cache_read_input_tokens": 7}))
        scripted = create(client, system=system, messages=turn).usage

    assert first.cache_read_input_tokens == 0 and first.cache_creation_input_tokens > 30
    assert (again.cache_read_input_tokens, again.cache_creation_input_tokens) == (first.cache_creation_input_tokens, 0)
    # the system prompt's own breakpoint is read; nothing new is marked, so nothing is written
    assert 30 <= other.cache_read_input_tokens < first.cache_creation_input_tokens
    assert other.cache_creation_input_tokens == 0
    assert scripted.cache_read_input_tokens == 7  # a key the reply sets wins over the simulation
    assert scripted.cache_creation_input_tokens == 0

    with LoopbackMessagesServer(lambda r: Reply.text("ok")) as server, anthropic.Anthropic(
        **server.client_kwargs(max_retries=0)
    ) as client:
        short = [create(client, system=system, messages=turn).usage for _ in range(2)]
    assert [(u.cache_read_input_tokens, u.cache_creation_input_tokens) for u in short] == [(0, 0), (0, 0)]


# -- server-side compaction ------------------------------------------------------------

COMPACT_BETA = ["compact-2026-01-12"]
COMPACT_EDIT = {"type": "compact_20260112", "trigger": {"type": "input_tokens", "value": 500}}
LONG = [{"role": "user", "content": "Tell me about anvils. " * 200}]  # ~1,100 tokens


def test_compaction_block_streams_as_the_api_streams_it(
    server: LoopbackMessagesServer, client: anthropic.Anthropic
) -> None:
    server.compaction_summary = "We discussed anvils."
    server.enqueue(Reply.text("Anvils are heavy."))

    with client.beta.messages.stream(
        model=MODEL, max_tokens=100, messages=LONG, betas=COMPACT_BETA, context_management={"edits": [COMPACT_EDIT]}
    ) as s:
        events = list(s)
        final = s.get_final_message()

    assert [b.type for b in final.content] == ["compaction", "text"]
    assert final.content[0].content == "We discussed anvils."
    assert [e.content for e in events if e.type == "compaction"] == ["We discussed anvils."]
    assert final.stop_reason == "end_turn"
    (iteration,) = final.usage.iterations or []
    assert iteration.type == "compaction"
    assert iteration.input_tokens == client.messages.count_tokens(model=MODEL, messages=LONG).input_tokens
    (request,) = server.requests[:1]
    assert request.headers["anthropic-beta"] == "compact-2026-01-12"
    first = [e.data for e in request.sent_events if e.data.get("index") == 0]
    assert first == [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "compaction", "content": None}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "compaction_delta", "content": "We discussed anvils."},
        },
        {"type": "content_block_stop", "index": 0},
    ]


def test_a_scripted_compaction_block_keeps_its_encrypted_content(
    server: LoopbackMessagesServer, client: anthropic.Anthropic
) -> None:
    block = {"type": "compaction", "content": "S", "encrypted_content": "opaque"}
    server.enqueue(Reply.message([block], stop_reason="compaction"))

    with client.beta.messages.stream(model=MODEL, max_tokens=100, messages=USER) as s:
        final = s.get_final_message()

    assert final.content[0].model_dump(exclude_none=True) == block
    assert final.stop_reason == "compaction"


def test_pause_after_compaction_keeps_the_reply_for_the_next_request(
    server: LoopbackMessagesServer, client: anthropic.Anthropic
) -> None:
    server.enqueue("After the pause.")
    edit = {**COMPACT_EDIT, "pause_after_compaction": True, "instructions": "Keep the names."}

    with client.beta.messages.stream(
        model=MODEL, max_tokens=100, messages=LONG, betas=COMPACT_BETA, context_management={"edits": [edit]}
    ) as s:
        paused = s.get_final_message()

    assert paused.stop_reason == "compaction"
    assert [b.type for b in paused.content] == ["compaction"]
    assert paused.content[0].content == "Summary of the 1 earlier messages (loopback)."
    assert server.pending == 1 and server.exhausted == []

    # sent back, the block replaces what it summarised: under the trigger, the turn goes on
    resumed_messages = [*LONG, {"role": "assistant", "content": [paused.content[0].model_dump(exclude_none=True)]}]
    resumed = client.beta.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=resumed_messages,
        betas=COMPACT_BETA,
        context_management={"edits": [edit]},
    )
    assert [b.type for b in resumed.content] == ["text"]
    assert resumed.content[0].text == "After the pause."
    assert resumed.usage.iterations is None
    assert resumed.usage.input_tokens < 50
    assert server.pending == 0


def test_no_compaction_below_the_trigger_or_without_the_edit(
    server: LoopbackMessagesServer, client: anthropic.Anthropic
) -> None:
    server.enqueue("short", "long but not asked")

    short = client.beta.messages.create(
        model=MODEL, max_tokens=100, messages=USER, betas=COMPACT_BETA, context_management={"edits": [COMPACT_EDIT]}
    )
    plain = client.beta.messages.create(model=MODEL, max_tokens=100, messages=LONG)

    assert [b.type for b in short.content] == [b.type for b in plain.content] == ["text"]
    assert short.usage.iterations is None and plain.usage.iterations is None


# -- async client ---------------------------------------------------------------


def test_async_client_json_and_stream(server: LoopbackMessagesServer) -> None:
    server.enqueue(
        Reply.text("async json", usage={"input_tokens": 3, "output_tokens": 2}),
        Reply.tool_use("act", {"n": 1}, text="streamed"),
        Reply.text("cut short", drop_after=1),
    )

    async def scenario() -> None:
        async with anthropic.AsyncAnthropic(**server.client_kwargs(max_retries=0)) as c:
            message = await c.messages.create(model=MODEL, max_tokens=10, messages=USER)
            assert message.content[0].text == "async json"
            assert (message.usage.input_tokens, message.usage.output_tokens) == (3, 2)
            assert message._request_id == "req_loopback_1"

            async with c.messages.stream(model=MODEL, max_tokens=10, messages=USER) as s:
                pieces = [piece async for piece in s.text_stream]
                final = await s.get_final_message()
            assert "".join(pieces) == "streamed"
            assert final.content[1].input == {"n": 1}

            with pytest.raises(Exception) as excinfo:
                async with c.messages.stream(model=MODEL, max_tokens=10, messages=USER) as s:
                    await s.get_final_message()
            dropped_stream_error(excinfo.value)

    asyncio.run(scenario())
    assert [r.stream for r in server.requests] == [False, True, True]


# -- lifecycle and validation ----------------------------------------------------------


def test_lifecycle() -> None:
    srv = LoopbackMessagesServer(["x"])
    with pytest.raises(RuntimeError):
        _ = srv.base_url
    srv.stop()  # stopping a server that never started is harmless

    srv = LoopbackMessagesServer()
    with srv:
        assert srv.running
        assert srv.base_url.startswith("http://127.0.0.1:")
        assert anthropic_client_kwargs(srv, max_retries=0) == {
            "base_url": srv.base_url,
            "api_key": "test-key",
            "max_retries": 0,
        }
        with pytest.raises(RuntimeError):
            srv.start()
    assert not srv.running
    srv.stop()


def test_stop_interrupts_a_slow_stream(server: LoopbackMessagesServer) -> None:
    server.enqueue(Reply.text("a b c d e f", delay=5))
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            with anthropic.Anthropic(**server.client_kwargs(max_retries=0)) as c, stream(c) as s:
                s.get_final_message()
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=consume)
    reader.start()
    server.wait_for_requests(1)
    time.sleep(0.05)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 1.0
    reader.join(5)
    assert not reader.is_alive()
    assert len(errors) == 1


def test_reply_validation() -> None:
    with pytest.raises(ValueError):
        Reply.error(200)
    with pytest.raises(ValueError):
        Reply.text("x", chunk_size=0)
    with pytest.raises(ValueError):
        Reply.text("x", delay=-1)
    with pytest.raises(ValueError):
        Reply.text("x", drop_after=-1)
    with pytest.raises(ValueError):
        Reply.message([{"text": "no type"}])
    with pytest.raises(TypeError):
        LoopbackMessagesServer(Reply.text("not in a list"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        LoopbackMessagesServer().enqueue(42)  # type: ignore[arg-type]


# -- connections ----------------------------------------------------------------------


def _handlers() -> list[str]:
    return sorted(t.name for t in _loopback_threads() if "-handler-" in t.name)


def test_by_default_every_request_has_a_connection_of_its_own(
        server: LoopbackMessagesServer, client: anthropic.Anthropic) -> None:
    server.enqueue(Reply.text("one"), Reply.text("two"))
    first = client.messages.with_raw_response.create(model=MODEL, max_tokens=256, messages=USER)
    assert first.headers["connection"] == "close"
    create(client)
    assert len(server.requests) == 2
    deadline = time.monotonic() + 5
    while _handlers() and time.monotonic() < deadline:  # each closed after its answer
        time.sleep(0.01)
    assert _handlers() == []


def test_keep_alive_serves_every_request_of_a_client_on_one_connection() -> None:
    with LoopbackMessagesServer(keep_alive=True) as server, \
            anthropic.Anthropic(**server.client_kwargs(max_retries=0)) as client:
        server.enqueue(Reply.text("one"), Reply.text("two", chunk_size=1), Reply.text("three"))
        first = client.messages.with_raw_response.create(model=MODEL, max_tokens=256,
                                                         messages=USER)
        assert "connection" not in first.headers
        with stream(client) as streamed:
            assert streamed.get_final_text() == "two"
        assert create(client).content[0].text == "three"
        assert len(server.requests) == 3
        assert len(_handlers()) == 1  # one connection, kept open between requests
    # stop() closed the idle connection: no_leaked_threads checks its thread ended

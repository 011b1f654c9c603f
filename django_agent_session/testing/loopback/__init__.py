"""A loopback HTTP server that speaks the Anthropic Messages API, for tests.

Point the real ``anthropic`` SDK at it through ``base_url`` and script what
"Claude" answers; nothing inside the SDK is patched, so retries, timeouts,
streaming, error mapping and request ids all go through the SDK's own code::

    import anthropic
    from django_agent_session.testing.loopback import LoopbackMessagesServer, Reply

    def test_agent_turn():
        with LoopbackMessagesServer([Reply.text("Hello!")]) as server:
            client = anthropic.Anthropic(**server.client_kwargs(max_retries=0))
            message = client.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=100,
                messages=[{"role": "user", "content": "Hi"}],
            )
            assert message.content[0].text == "Hello!"
            assert server.requests[0].messages[0]["content"] == "Hi"

What it serves, on ``127.0.0.1`` and a free port:

``POST /v1/messages``
    The next scripted :class:`Reply`.  A JSON ``Message`` when the request body
    has no ``"stream": true``; otherwise a Server-Sent Events stream with the
    real event sequence (``message_start``, ``ping``, then for each content
    block ``content_block_start`` / ``content_block_delta``... /
    ``content_block_stop``, then ``message_delta`` and ``message_stop``).  Every
    event is written and flushed on its own, in its own HTTP chunk, so the
    client really receives them one by one.
    Like the API, it reports prompt-cache reads and writes for requests with
    ``cache_control`` breakpoints (:mod:`.cache` simulates the cache, per
    server; ``server.clear_cache()`` empties it), answers
    ``400 prompt is too long`` past ``context_window=`` (when set), and, for a
    request with the beta ``compact_20260112`` context edit past its trigger,
    puts a ``compaction`` block before the reply (``stop_reason`` ``"compaction"``
    alone with ``pause_after_compaction``; streamed, its summary arrives in one
    ``compaction_delta``). Stop reasons are scripted with
    :meth:`Reply.max_tokens`, :meth:`Reply.refusal` and :meth:`Reply.pause_turn`.
``POST /v1/messages/count_tokens``
    ``{"input_tokens": <rough estimate>}``, counted as the API would (from the
    last ``compaction`` block on); does not consume the script.
Anything else
    A 404 ``not_found_error`` in the API's error shape.

Replies come from the *script*: a list of replies consumed one per
``/v1/messages`` request, then, once the list is empty, the *responder*
callable if one is set.  A request that finds neither is answered with a 500
``api_error`` explaining that the script is exhausted (with
``x-should-retry: false`` so the SDK does not retry it) and is recorded in
:attr:`LoopbackMessagesServer.exhausted`.

Every response carries a ``request-id`` header (``req_loopback_<n>``), so the
SDK's ``message._request_id``, ``stream.request_id`` and
``APIStatusError.request_id`` are populated.  Message ids are
``msg_loopback_<n>`` and tool-use ids ``toolu_loopback_<n>``; ``model`` echoes
the request's model unless the reply overrides it.

Only the standard library is used; nothing here needs Django or the SDK.

The package is split by concern, each module importing only those above it:
:mod:`.reply` (what to answer), :mod:`.recording` (what was received),
:mod:`.tokens` (usage estimates), :mod:`.cache` (the prompt cache, context
window and compaction rules), :mod:`.wire` (messages, SSE events and
errors as data), :mod:`.httpd` (the threaded HTTP listener), :mod:`.responses`
(writing an answer, with its scripted faults) and :mod:`.server` (the
:class:`LoopbackMessagesServer` tests hold).
"""

from __future__ import annotations

from .recording import RecordedRequest, Responder, SentEvent
from .reply import DEFAULT_SIGNATURE, Reply, ReplyLike
from .server import COUNT_TOKENS_PATH as COUNT_TOKENS_PATH
from .server import DEFAULT_MODEL, LoopbackMessagesServer, anthropic_client_kwargs
from .server import MESSAGES_PATH as MESSAGES_PATH

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_SIGNATURE",
    "LoopbackMessagesServer",
    "RecordedRequest",
    "Reply",
    "ReplyLike",
    "Responder",
    "SentEvent",
    "anthropic_client_kwargs",
]

"""The loopback server's simulated prompt cache, context window and server-side compaction,
through the real SDK."""

from __future__ import annotations

import anthropic
import pytest

from django_agent_session.testing.loopback import LoopbackMessagesServer, Reply
from django_agent_session.testing.loopback.cache import LOOKBACK, input_tokens

EPHEMERAL = {"type": "ephemeral"}
SYSTEM = [{"type": "text", "text": "Be precise. " * 500, "cache_control": EPHEMERAL}]  # ~1,500


def user(text, cached=False):
    block = {"type": "text", "text": text}
    if cached:
        block["cache_control"] = EPHEMERAL
    return {"role": "user", "content": [block]}


def assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


@pytest.fixture
def server():
    with LoopbackMessagesServer(lambda request: Reply.text("ok")) as server:
        yield server


@pytest.fixture
def sdk(server):
    client = anthropic.Anthropic(**server.client_kwargs(max_retries=0))
    yield client
    client.close()


def call(sdk, messages, **kwargs):
    return sdk.messages.create(model="claude-sonnet-4-5", max_tokens=100, system=SYSTEM,
                               messages=messages, **kwargs).usage


class TestPromptCache:
    def test_the_first_call_writes_and_the_next_reads_the_prefix(self, sdk, server):
        first = call(sdk, [user("Hi", cached=True)])
        assert first.cache_read_input_tokens == 0 and first.cache_creation_input_tokens > 1000
        second = call(sdk, [user("Hi"), assistant("Hello"), user("More", cached=True)])
        assert second.cache_read_input_tokens == first.cache_creation_input_tokens
        assert second.cache_creation_input_tokens > 0  # the new turn is written too
        # input_tokens counts only what was neither read nor written
        total = (second.input_tokens + second.cache_read_input_tokens
                 + second.cache_creation_input_tokens)
        assert total == input_tokens(server.message_requests[1].body)

    def test_a_changed_prefix_reads_only_what_is_the_same(self, sdk):
        first = call(sdk, [user("Hi " * 10, cached=True)])
        other = call(sdk, [user("Hello", cached=True)])
        # the system prompt carries its own breakpoint: that prefix is read, the rest written
        assert 0 < other.cache_read_input_tokens < first.cache_creation_input_tokens
        assert other.cache_creation_input_tokens > 0

    def test_the_lookback_is_twenty_blocks(self, sdk, server):
        call(sdk, [user("Hi", cached=True)])
        many = [user("Hi")]
        for i in range(LOOKBACK // 2 + 1):  # two blocks a round: > 20 blocks later
            many += [assistant(f"a{i}"), user(f"u{i}")]
        many[-1] = user("last", cached=True)
        far = call(sdk, many)
        # the turn's prefix is out of reach; the system prompt's own breakpoint is not
        system_only = call(sdk, [user("Different", cached=True)]).cache_read_input_tokens
        assert far.cache_read_input_tokens == system_only > 0

    def test_short_prefixes_and_unmarked_requests_are_not_cached(self, server, sdk):
        server.cache.min_tokens = 10**6
        assert call(sdk, [user("Hi", cached=True)]).cache_creation_input_tokens == 0
        server.cache.min_tokens = 1024
        plain = sdk.messages.create(model="m", max_tokens=10,
                                    messages=[user("Hi")]).usage
        assert plain.cache_read_input_tokens == plain.cache_creation_input_tokens == 0

    def test_top_level_cache_control_marks_the_last_block(self, sdk, server):
        call(sdk, [user("x" * 5000)], cache_control=EPHEMERAL)
        again = call(sdk, [user("x" * 5000), assistant("y"), user("z")],
                     cache_control=EPHEMERAL)
        assert again.cache_read_input_tokens > 1000
        server.clear_cache()
        assert call(sdk, [user("x" * 5000)], cache_control=EPHEMERAL
                    ).cache_read_input_tokens == 0


class TestContextWindow:
    def test_a_request_over_the_window_is_refused_like_the_api_does(self):
        with LoopbackMessagesServer([Reply.text("never sent")], context_window=500) as server:
            sdk = anthropic.Anthropic(**server.client_kwargs(max_retries=0))
            with pytest.raises(anthropic.BadRequestError, match="prompt is too long: "
                                                                r"\d+ tokens > 500 maximum"):
                sdk.messages.create(model="m", max_tokens=100, messages=[user("x" * 2000)])
            assert server.pending == 1  # the script was not consulted
            ok = sdk.messages.create(model="m", max_tokens=100, messages=[user("short")])
            assert ok.content[0].text == "never sent"


class TestServerSideCompaction:
    EDIT = {"edits": [{"type": "compact_20260112",
                       "trigger": {"type": "input_tokens", "value": 1000}}]}

    def create(self, sdk, messages, **kwargs):
        return sdk.beta.messages.create(model="claude-sonnet-4-6", max_tokens=100,
                                        messages=messages, betas=["compact-2026-01-12"],
                                        context_management=self.EDIT, **kwargs)

    def test_below_the_trigger_nothing_happens(self, sdk):
        reply = self.create(sdk, [user("short")])
        assert [b.type for b in reply.content] == ["text"]

    def test_past_the_trigger_a_compaction_block_comes_first(self, sdk, server):
        server.compaction_summary = "They talked about anvils."
        reply = self.create(sdk, [user("anvils " * 1000)])
        assert [b.type for b in reply.content] == ["compaction", "text"]
        assert reply.content[0].content == "They talked about anvils."
        (iteration,) = [i for i in reply.usage.iterations if i.type == "compaction"]
        assert iteration.input_tokens >= 1000

    def test_streamed_the_block_arrives_too(self, sdk, server):
        with sdk.beta.messages.stream(model="m", max_tokens=100,
                                      messages=[user("anvils " * 1000)],
                                      betas=["compact-2026-01-12"],
                                      context_management=self.EDIT) as stream:
            final = stream.get_final_message()
        assert [b.type for b in final.content] == ["compaction", "text"]
        assert final.content[0].content.startswith("Summary of the")

    def test_later_requests_are_counted_from_the_compaction_block(self, sdk, server):
        long = [user("anvils " * 1000)]
        before = input_tokens({"messages": long})
        after = [user("anvils " * 1000),
                 {"role": "assistant", "content": [{"type": "compaction", "content": "S"},
                                                   {"type": "text", "text": "ok"}]},
                 user("next")]
        assert input_tokens({"messages": after}) < before / 10
        reply = self.create(sdk, after)
        assert [b.type for b in reply.content] == ["text"]  # under the trigger again

    def test_pause_after_compaction(self, sdk, server):
        edit = {"edits": [{**self.EDIT["edits"][0], "pause_after_compaction": True}]}
        reply = sdk.beta.messages.create(model="m", max_tokens=100,
                                         messages=[user("anvils " * 1000)],
                                         betas=["compact-2026-01-12"],
                                         context_management=edit)
        assert reply.stop_reason == "compaction"
        assert [b.type for b in reply.content] == ["compaction"]

"""Prompt caching, turn by turn: does turn 2..N read the conversation prefix from the cache?

A multi-turn chat (a system prompt of a few thousand tokens, as real agents have, and
~200-character messages) runs through the real SDK against the loopback Messages API, which
simulates the API's prompt cache (breakpoints, prefix matching with the 20-block lookback, the
1,024-token minimum). The same chat runs twice in the same process: with ``Agent.cache`` on
(the library's breakpoints) and off (the reference), and the report gives, per turn, the share
of input tokens read from the cache and the cost of the whole chat with caching as a ratio of
the cost without it, both priced as Sonnet ($3 in, $15 out, $3.75 cache writes, $0.30 cache
reads per million tokens).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from .overhead import ARGS, REPLY, text_of

#: a system prompt long enough to be cached (the API caches nothing under 1,024 tokens)
SYSTEM_RULES = "\n".join(f"Rule {i}: answer politely, cite the order number, never guess "
                         f"delivery dates, and escalate refunds above {i * 10} dollars."
                         for i in range(1, 121))
PRICE = {"input": "3", "output": "15"}


def run_cache(turns: int) -> list[dict[str, Any]]:
    from django.test import override_settings

    from django_agent_session.engine.pricing import cache_hit_ratio
    from django_agent_session.models import AgentRun
    from django_agent_session.testing.loopback import LoopbackMessagesServer, Reply
    from tests.helpers.engine import declared
    from tests.testapp.models import ChatAgent

    rows = []
    for cache in (True, False):
        with LoopbackMessagesServer(keep_alive=True) as server, override_settings(AGENT_SESSION={
                "PRICES": {"claude-sonnet-5-5": PRICE},
                "ANTHROPIC": {"BASE_URL": server.base_url, "API_KEY": "bench",
                              "MAX_RETRIES": 0}}), \
                declared(ChatAgent, cache=cache, instruction=SYSTEM_RULES,
                         instruction_schema=None):
            server.responder = lambda request: Reply.text(REPLY)
            session = ChatAgent.objects.start_session(text_of(0, "user"))
            for i in range(1, turns):
                session = ChatAgent.objects.continue_session(session, text_of(i, "user"))
            runs = AgentRun.objects.filter(session_id=session.pk).order_by("started_at")
            per_turn = [cache_hit_ratio(run.usage) or 0.0 for run in runs]
            cost = sum((run.cost for run in runs), Decimal(0))
            tokens = {key: sum(getattr(run, key) for run in runs) for key in (
                "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                "output_tokens")}
            rows.append({"cache": cache, "turns": turns, "per_turn_hit_ratio": per_turn,
                         "hit_ratio": cache_hit_ratio(tokens), "tokens": tokens,
                         "cost": str(cost)})
    cached, reference = rows
    cached["cost_vs_uncached"] = round(float(Decimal(cached["cost"]) /
                                             Decimal(reference["cost"])), 3)
    return rows


__all__ = ["run_cache"]

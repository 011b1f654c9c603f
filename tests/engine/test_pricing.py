"""Prices, costs, weighted token budgets and the cache hit ratio, from the documented table."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import override_settings

from django_agent_session.engine.pricing import (
    PRICES,
    Price,
    add_cost,
    cache_hit_ratio,
    cost_of,
    price_of,
    weighted_tokens,
)

USAGE = {"input_tokens": 1000, "output_tokens": 200, "cache_creation_input_tokens": 5000,
         "cache_read_input_tokens": 20000}


def test_a_dated_model_id_is_priced_by_its_family():
    assert price_of("claude-haiku-4-5-20251001") == PRICES["claude-haiku-4-5"]
    assert price_of("claude-sonnet-4-5") == Price.of({"input": "3", "output": "15"})
    assert price_of("claude-no-such-model") is None


def test_cache_prices_default_to_what_anthropic_bills():
    price = Price.of({"input": "3", "output": "15"})
    assert price.cache_write == Decimal("3.75") and price.cache_read == Decimal("0.3")


def test_cost_of_cache_writes_and_reads_follows_the_table():
    # 1,000 x $3 + 200 x $15 + 5,000 x $3.75 + 20,000 x $0.30, per million tokens
    assert cost_of("claude-sonnet-4-5", USAGE) == Decimal("0.030750")
    assert cost_of("claude-opus-4-6", USAGE) == Decimal("0.051250")
    assert cost_of("claude-no-such-model", USAGE) is None


def test_settings_add_and_override_prices():
    with override_settings(AGENT_SESSION={"PRICES": {
            "claude-sonnet-5-5": {"input": "2", "output": "10", "cache_read": "0.5"},
            "claude-sonnet-4-5": None}}):
        assert cost_of("claude-sonnet-5-5", USAGE) == Decimal("0.026500")  # (2+2+12.5+10)/1000
        assert price_of("claude-sonnet-4-5") is None
        assert price_of("claude-sonnet-4-6") is not None  # other entries stay


def test_unknown_cost_is_contagious():
    assert add_cost(Decimal("1"), None) is None and add_cost(None, Decimal("1")) is None
    assert add_cost(Decimal("1.5"), Decimal("2")) == Decimal("3.5")


def test_token_budget_weights_cache_as_billed():
    assert weighted_tokens(USAGE) == 1000 + 200 + 6250 + 2000
    with override_settings(AGENT_SESSION={"TOKEN_BUDGET_WEIGHTS": {
            "cache_read_input_tokens": 1, "cache_creation_input_tokens": 1}}):
        assert weighted_tokens(USAGE) == 26200


@pytest.mark.parametrize("usage, ratio", [
    (USAGE, 0.7692),  # 20,000 of 26,000 input tokens came from the cache
    ({"input_tokens": 10}, 0.0),
    ({}, None),
])
def test_cache_hit_ratio(usage, ratio):
    assert cache_hit_ratio(usage) == ratio

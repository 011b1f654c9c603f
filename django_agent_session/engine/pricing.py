"""What tokens cost: a dated price table per model, and the cost of a usage dict in USD.

Prices are US dollars per million tokens, as Anthropic publishes them
(https://platform.claude.com/docs/en/about-claude/pricing), for the standard (non-batch)
API, prompts up to 200K tokens and the 5-minute cache. A model id is priced by the longest
table key it starts with, so dated ids (``claude-haiku-4-5-20251001``) find their family.
``AGENT_SESSION["PRICES"]`` adds or replaces entries (merged key by key over this table);
a model found in neither has no price, and its cost is ``None`` (unknown), never ``0``.

The table only lists models whose price was published when it was dated: the installed SDK
also names newer ids, which are priced once their price is known (add them in settings).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..conf import agent_settings

#: the date :data:`PRICES` was last checked against the published prices
PRICES_VERSION = "2026-12-05"

#: cost is stored with six decimals: a millionth of a dollar (one token costs at least that)
COST_PLACES = Decimal("0.000001")

_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Price:
    """USD per million tokens of each kind a response's ``usage`` counts."""

    input: Decimal
    output: Decimal
    cache_write: Decimal
    cache_read: Decimal

    @classmethod
    def of(cls, data: Mapping[str, Any] | Price) -> Price:
        """A price from a settings entry: ``input`` and ``output`` required; cache writes
        default to 1.25 × input and cache reads to 0.1 × input, as Anthropic bills them."""
        if isinstance(data, Price):
            return data
        try:
            base = Decimal(str(data["input"]))
            output = Decimal(str(data["output"]))
        except KeyError as missing:
            raise ValueError(f"a price needs 'input' and 'output', missing {missing}") from None
        write = data.get("cache_write")
        read = data.get("cache_read")
        return cls(input=base, output=output,
                   cache_write=Decimal(str(write)) if write is not None else base * Decimal("1.25"),
                   cache_read=Decimal(str(read)) if read is not None else base / 10)

    def cost(self, usage: Mapping[str, Any]) -> Decimal:
        """The cost of ``usage`` (the four token counts of a response) in USD."""
        total = (self.input * int(usage.get("input_tokens") or 0)
                 + self.output * int(usage.get("output_tokens") or 0)
                 + self.cache_write * int(usage.get("cache_creation_input_tokens") or 0)
                 + self.cache_read * int(usage.get("cache_read_input_tokens") or 0))
        return total / _MILLION


def _p(input: str, output: str) -> Price:
    return Price.of({"input": input, "output": output})


#: model id prefix -> price (USD per million tokens), as published on :data:`PRICES_VERSION`
PRICES: dict[str, Price] = {
    "claude-opus-4-6": _p("5", "25"),
    "claude-opus-4-5": _p("5", "25"),
    "claude-opus-4-1": _p("15", "75"),
    "claude-opus-4-0": _p("15", "75"),
    "claude-opus-4-2025": _p("15", "75"),
    "claude-sonnet-4-6": _p("3", "15"),
    "claude-sonnet-4-5": _p("3", "15"),
    "claude-sonnet-4-0": _p("3", "15"),
    "claude-sonnet-4-2025": _p("3", "15"),
    "claude-3-7-sonnet": _p("3", "15"),
    "claude-haiku-4-5": _p("1", "5"),
    "claude-3-5-haiku": _p("0.80", "4"),
    "claude-3-haiku": _p("0.25", "1.25"),
}


#: the table built for the settings dict it was built from (read every turn: built once)
_built: tuple[Any, dict[str, Price], dict[str, Price | None]] | None = None


def price_table() -> dict[str, Price]:
    """:data:`PRICES` with ``AGENT_SESSION["PRICES"]`` over it (a ``None`` entry removes one)."""
    return _table()[0]


def _table() -> tuple[dict[str, Price], dict[str, Price | None]]:
    """The table and a per-model cache of lookups, rebuilt when the settings change (the
    settings object hands out a new dict then; holding the old one keeps its identity)."""
    global _built
    overrides = agent_settings.PRICES
    if _built is None or _built[0] is not overrides:
        table = dict(PRICES)
        for model, entry in (overrides or {}).items():
            if entry is None:
                table.pop(model, None)
            else:
                table[model] = Price.of(entry)
        _built = (overrides, table, {})
    return _built[1], _built[2]


def price_of(model: str) -> Price | None:
    """The price of ``model`` (the longest table key it starts with), or None if unknown."""
    table, found = _table()
    if model not in found:
        best = max((key for key in table if model.startswith(key)), key=len, default=None)
        found[model] = table[best] if best is not None else None
    return found[model]


def cost_of(model: str, usage: Mapping[str, Any]) -> Decimal | None:
    """What ``usage`` of ``model`` cost in USD (six decimals), or None if its price is unknown."""
    price = price_of(model)
    if price is None:
        return None
    return price.cost(usage).quantize(COST_PLACES)


def add_cost(total: Decimal | None, extra: Decimal | None) -> Decimal | None:
    """Sum two costs where unknown (None) is contagious: a total with an unpriced part is
    unknown, not an understatement."""
    if total is None or extra is None:
        return None
    return total + extra


def weighted_tokens(usage: Mapping[str, Any]) -> int:
    """Tokens counted against ``Agent.token_budget``: each kind times its weight in
    ``AGENT_SESSION["TOKEN_BUDGET_WEIGHTS"]`` (by default as billed relative to input:
    cache writes 1.25, cache reads 0.1, input and output 1)."""
    weights = agent_settings.TOKEN_BUDGET_WEIGHTS
    total = sum((Decimal(str(weights.get(name, 1))) * int(usage.get(name) or 0)
                 for name in ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                              "cache_read_input_tokens")), Decimal(0))
    return int(total.to_integral_value())


def cache_hit_ratio(usage: Mapping[str, Any]) -> float | None:
    """Cache read tokens over all input tokens (uncached, written and read), or None when
    nothing was read at all. The API's ``input_tokens`` excludes cached tokens, so the
    denominator adds them back."""
    read = int(usage.get("cache_read_input_tokens") or 0)
    total = (int(usage.get("input_tokens") or 0)
             + int(usage.get("cache_creation_input_tokens") or 0) + read)
    return round(read / total, 4) if total else None


__all__ = ["COST_PLACES", "PRICES", "PRICES_VERSION", "Price", "add_cost", "cache_hit_ratio",
           "cost_of", "price_of", "price_table", "weighted_tokens"]

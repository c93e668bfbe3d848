"""Token and cost accounting: one `ModelCall` per model request, summed into `UsageTotals`.

Prices come from `AgentSettings.prices` in USD per million tokens, as
(input, output, cache write, cache read). The model name is looked up exactly, then by the longest
price key that prefixes it (so "claude-sonnet-4-5" prices "claude-sonnet-4-5-20250929"), then "default".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated

from anthropic.types import Usage
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ModelCall", "Price", "UsageTotals", "call_from_usage", "price_for", "total_of"]

Price = tuple[float, float, float, float]

_NonNeg = Annotated[int, Field(ge=0)]


class ModelCall(BaseModel):
    """Usage, latency and cost of one model request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    turn: int
    model: str
    input_tokens: _NonNeg = 0
    output_tokens: _NonNeg = 0
    cache_creation_input_tokens: _NonNeg = 0
    cache_read_input_tokens: _NonNeg = 0
    latency_seconds: Annotated[float, Field(ge=0)] = 0.0
    cost_usd: Annotated[float, Field(ge=0)] = 0.0
    price_key: str | None = None  # which price entry was used; None when the model had no price

    @property
    def budget_tokens(self) -> int:
        """Tokens counted against `Budgets.max_tokens`: every input token (cached or not) plus output."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens + self.output_tokens


class UsageTotals(BaseModel):
    """Per-run sums over every `ModelCall`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    calls: _NonNeg = 0
    input_tokens: _NonNeg = 0
    output_tokens: _NonNeg = 0
    cache_creation_input_tokens: _NonNeg = 0
    cache_read_input_tokens: _NonNeg = 0
    latency_seconds: Annotated[float, Field(ge=0)] = 0.0
    cost_usd: Annotated[float, Field(ge=0)] = 0.0

    @property
    def budget_tokens(self) -> int:
        """Tokens counted against `Budgets.max_tokens` (see `ModelCall.budget_tokens`)."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens + self.output_tokens


def price_for(model: str, prices: Mapping[str, Price]) -> tuple[str | None, Price]:
    """The price entry for `model`: exact name, longest prefix, then "default"; zeros when none match."""
    if model in prices:
        return model, prices[model]
    prefixes = [k for k in prices if k != "default" and model.startswith(k)]
    if prefixes:
        key = max(prefixes, key=len)
        return key, prices[key]
    if "default" in prices:
        return "default", prices["default"]
    return None, (0.0, 0.0, 0.0, 0.0)


def call_from_usage(
    *, turn: int, model: str, usage: Usage, latency_seconds: float, prices: Mapping[str, Price]
) -> ModelCall:
    """Account one response's `usage` block."""
    cache_write = usage.cache_creation_input_tokens or 0
    cache_read = usage.cache_read_input_tokens or 0
    key, (p_in, p_out, p_write, p_read) = price_for(model, prices)
    cost = (
        usage.input_tokens * p_in + usage.output_tokens * p_out + cache_write * p_write + cache_read * p_read
    ) / 1_000_000
    return ModelCall(
        turn=turn,
        model=model,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_creation_input_tokens=cache_write,
        cache_read_input_tokens=cache_read,
        latency_seconds=max(latency_seconds, 0.0),
        cost_usd=cost,
        price_key=key,
    )


def total_of(calls: Sequence[ModelCall]) -> UsageTotals:
    """Sum `calls` into one `UsageTotals`."""
    return UsageTotals(
        calls=len(calls),
        input_tokens=sum(c.input_tokens for c in calls),
        output_tokens=sum(c.output_tokens for c in calls),
        cache_creation_input_tokens=sum(c.cache_creation_input_tokens for c in calls),
        cache_read_input_tokens=sum(c.cache_read_input_tokens for c in calls),
        latency_seconds=sum(c.latency_seconds for c in calls),
        cost_usd=sum(c.cost_usd for c in calls),
    )

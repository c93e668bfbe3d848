"""Prompt caching: the breakpoints the loop sends, the simulated prefix cache, and what they cost."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from agent_helpers import GOOD_STEPS, run_on_fake_api

from agent.loop import AttemptOutcome
from agent.prompt_cache import LOOKBACK_BLOCKS, MAX_BREAKPOINTS, PrefixCache, with_breakpoints
from agent.transcript import usage_in
from agent.types import AttemptTask
from fixtures.fake_anthropic import FakeAnthropic, run_fake_anthropic
from policy.config import AgentSettings, Budgets

BIG = "x" * 8000  # 2,000 estimated tokens: above the minimum cacheable prefix


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _body(
    messages: list[dict[str, Any]], *, marks: bool = True, previous_last: int | None = None, model: str = "m"
) -> dict[str, Any]:
    tools = [{"name": "t", "description": "d", "input_schema": {"type": "object", "properties": {}}}]
    system = [_text("system " + BIG)]
    if marks:
        tools, system, messages = with_breakpoints(tools, system, messages, previous_last=previous_last)
    return {"model": model, "tools": tools, "system": system, "messages": messages}


def _conversation(turns: int, blocks_per_turn: int = 1) -> list[dict[str, Any]]:
    messages = [{"role": "user", "content": [_text("task")]}]
    for t in range(turns):
        messages.append(
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": f"u{t}_{k}", "name": "t", "input": {"k": k}}
                    for k in range(blocks_per_turn)
                ],
            }
        )
        messages.append(
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": f"u{t}_{k}",
                        "content": [_text(f"result {t} {k} " + "y" * 400)],
                    }
                    for k in range(blocks_per_turn)
                ],
            }
        )
    return messages


# -- the simulated cache -----------------------------------------------------------------------------------


def test_a_marked_prefix_is_written_once_then_read_and_only_the_new_turn_is_written() -> None:
    cache = PrefixCache()
    first = cache.usage(_body(_conversation(0)))
    assert first["cache_read_input_tokens"] == 0
    assert first["cache_creation_input_tokens"] > 2000 and first["input_tokens"] == 0

    second = cache.usage(_body(_conversation(1), previous_last=0))
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    assert 0 < second["cache_creation_input_tokens"] < 200 and second["input_tokens"] == 0


def test_without_breakpoints_nothing_is_cached() -> None:
    cache = PrefixCache()
    for turns in (0, 1, 2):
        usage = cache.usage(_body(_conversation(turns), marks=False))
        assert usage["cache_read_input_tokens"] == usage["cache_creation_input_tokens"] == 0
        assert usage["input_tokens"] > 2000


def test_a_prefix_below_the_minimum_is_not_cached() -> None:
    cache = PrefixCache(min_tokens=100_000)
    cache.usage(_body(_conversation(0)))
    usage = cache.usage(_body(_conversation(1), previous_last=0))
    assert usage["cache_read_input_tokens"] == usage["cache_creation_input_tokens"] == 0


def test_a_changed_earlier_block_is_a_miss_from_that_block_on() -> None:
    cache = PrefixCache()
    cache.usage(_body(_conversation(2), previous_last=2))
    changed = _conversation(3)
    changed[2]["content"][0]["content"] = [_text("[elided]")]
    usage = cache.usage(_body(changed, previous_last=4))
    tools_and_system = cache.usage(_body(_conversation(0)))["cache_read_input_tokens"]
    # Only the prefix before the changed block (tools, system, task, first tool call) is read.
    assert tools_and_system <= usage["cache_read_input_tokens"] < tools_and_system + 50
    assert usage["cache_creation_input_tokens"] > 0


def test_entries_expire_after_their_ttl_and_models_do_not_share_entries() -> None:
    now = [0.0]
    cache = PrefixCache(ttl_seconds=300, clock=lambda: now[0])
    cache.usage(_body(_conversation(0)))
    assert cache.usage(_body(_conversation(0), model="other"))["cache_read_input_tokens"] == 0
    now[0] = 299.0
    assert cache.usage(_body(_conversation(0)))["cache_read_input_tokens"] > 0  # a hit renews the entry
    now[0] = 598.0
    assert cache.usage(_body(_conversation(0)))["cache_read_input_tokens"] > 0
    now[0] = 1000.0
    assert cache.usage(_body(_conversation(0)))["cache_read_input_tokens"] == 0


def test_the_previous_requests_end_is_marked_so_many_parallel_tool_calls_still_hit() -> None:
    blocks = LOOKBACK_BLOCKS  # one turn adds 2 * blocks content blocks: beyond the API's lookback
    with_mark, without_mark = PrefixCache(), PrefixCache()
    for cache in (with_mark, without_mark):
        cache.usage(_body(_conversation(1, blocks), previous_last=0))
    hit = with_mark.usage(_body(_conversation(2, blocks), previous_last=2))
    miss = without_mark.usage(_body(_conversation(2, blocks), previous_last=None))
    assert hit["cache_read_input_tokens"] > miss["cache_read_input_tokens"]
    assert hit["cache_creation_input_tokens"] < miss["cache_creation_input_tokens"]


def test_with_breakpoints_marks_at_most_four_blocks_and_leaves_its_inputs_alone() -> None:
    messages = _conversation(3)
    before = json.dumps(messages, sort_keys=True)
    body = _body(messages, previous_last=4)
    assert json.dumps(messages, sort_keys=True) == before
    marked = [b for part in ("tools", "system") for b in body[part] if "cache_control" in b]
    marked += [b for m in body["messages"] for b in m["content"] if "cache_control" in b]
    assert len(marked) == MAX_BREAKPOINTS
    assert "cache_control" in body["tools"][-1] and "cache_control" in body["system"][-1]
    assert "cache_control" in body["messages"][-1]["content"][-1]
    assert "cache_control" in body["messages"][4]["content"][-1]


# -- the loop, through the real SDK and the fake API --------------------------------------------------------


async def _run(
    standin: Callable[[], Any], task: AttemptTask, settings: AgentSettings
) -> tuple[AttemptOutcome, FakeAnthropic]:
    return await run_on_fake_api(GOOD_STEPS, standin, task, settings, Budgets())


@pytest.mark.anyio
async def test_the_loop_reads_the_conversation_from_the_cache_and_pays_less(
    standin: Callable[[], Any], task: AttemptTask, settings: AgentSettings
) -> None:
    cached, _ = await _run(standin, task, settings)
    plain, plain_fake = await _run(standin, task, settings.model_copy(update={"prompt_caching": False}))

    assert cached.succeeded and plain.succeeded
    assert all(c.cache_read_input_tokens > 0 for c in cached.calls[1:])
    assert all(c.input_tokens < 50 for c in cached.calls)  # everything but the newest turn is cached or written
    assert plain.usage.cache_read_input_tokens == plain.usage.cache_creation_input_tokens == 0
    assert cached.usage.budget_tokens == pytest.approx(plain.usage.budget_tokens, rel=0.05)
    assert cached.cost_usd < 0.6 * plain.cost_usd
    assert "cache_control" not in json.dumps([r.body for r in plain_fake.message_requests])
    assert usage_in(json.dumps(cached.transcript)) == cached.usage  # what the demo reads back from the store


@pytest.mark.anyio
async def test_the_tools_are_sent_once_listed_in_one_sorted_order_and_the_marks_move_with_the_turn(
    standin: Callable[[], Any], task: AttemptTask, settings: AgentSettings
) -> None:
    _, fake = await _run(standin, task, settings)

    bodies = [r.body for r in fake.message_requests]
    names = [t["name"] for t in bodies[0]["tools"]]
    assert names == sorted(names)
    assert all(b["tools"] == bodies[0]["tools"] for b in bodies)
    assert "cache_control" in bodies[0]["tools"][-1] and "cache_control" in bodies[0]["system"][-1]
    for body in bodies:
        marked = [i for i, m in enumerate(body["messages"]) if "cache_control" in m["content"][-1]]
        last = len(body["messages"]) - 1
        assert marked[-1] == last and len(marked) <= 2


@pytest.mark.anyio
async def test_the_fake_api_rejects_more_than_four_breakpoints_like_the_real_one() -> None:
    import anthropic

    fake = FakeAnthropic([{"text": "never"}])
    marked = {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}
    async with run_fake_anthropic(fake) as url:
        client = anthropic.AsyncAnthropic(api_key=fake.api_key, base_url=url, max_retries=0)
        with pytest.raises(anthropic.BadRequestError, match="maximum of 4 blocks with cache_control"):
            await client.messages.create(
                model="m",
                max_tokens=10,
                system=[marked, marked],  # type: ignore[list-item]
                messages=[{"role": "user", "content": [marked, marked, marked]}],
            )  # type: ignore[list-item]
        await client.close()
    assert fake.remaining == 1

"""What the conversation keeps: a repeated read is not resent, large old results are elided in batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from agent_helpers import RUN_ID, StandInRepo, run_on_fake_api

from agent.context import ELIDE_BATCH_CHARS, KEEP_RECENT_TURNS
from agent.loop import AttemptOutcome
from agent.types import AttemptTask
from fixtures.fake_anthropic import FakeAnthropic
from policy.config import AgentSettings, Budgets

pytestmark = pytest.mark.anyio

BIG_FILES = {f"big_{i}.py": f"# file {i}\n" + "".join(f"value_{i}_{n} = {n}\n" for n in range(700)) for i in range(6)}


def _read(path: str) -> dict[str, Any]:
    return {"tool_use": {"name": "read_repo_file", "input": {"path": path}}}


async def _run(
    actions: Sequence[dict[str, Any]], standin: Callable[[], Any], task: AttemptTask, settings: AgentSettings
) -> tuple[AttemptOutcome, FakeAnthropic]:
    return await run_on_fake_api(actions, standin, task, settings, Budgets(max_turns=40, max_repeat_calls=5))


def _results(body: dict[str, Any]) -> list[str]:
    return [
        b["content"][0]["text"]
        for m in body["messages"]
        if m["role"] == "user"
        for b in m["content"]
        if b.get("type") == "tool_result"
    ]


def _plain(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**m, "content": [{k: v for k, v in b.items() if k != "cache_control"} for b in m["content"]]} for m in messages
    ]


async def test_a_repeated_read_with_the_same_answer_is_a_reference_not_a_second_copy(
    standin: Callable[[], Any], repo: StandInRepo, task: AttemptTask, settings: AgentSettings
) -> None:
    repo.files.update(BIG_FILES)
    actions = [
        {"tool_use": {"name": "get_job_logs", "input": {"run_id": RUN_ID}}},
        _read("big_0.py"),
        _read("big_0.py"),
        {"tool_use": {"name": "create_branch", "input": {}}},
        {"tool_use": {"name": "write_repo_file", "input": {"path": "big_0.py", "content": "x = 1\n" * 100}}},
        _read("big_0.py"),
        {"text": "done"},
    ]
    outcome, fake = await _run(actions, standin, task, settings)

    assert outcome.turns == len(actions), outcome.stop_detail
    results = _results(fake.message_requests[-1].body)
    assert "value_0_699" in results[1]
    assert results[2].startswith("Unchanged: this is the same result as your read_repo_file call in turn 2")
    assert "value_0_699" not in results[2]
    assert "x = 1" in results[5]  # the file changed: the new content is sent


async def test_large_old_results_are_elided_in_one_batch_and_the_failure_excerpt_stays(
    standin: Callable[[], Any], repo: StandInRepo, task: AttemptTask, settings: AgentSettings
) -> None:
    repo.files.update(BIG_FILES)
    actions = [{"tool_use": {"name": "get_job_logs", "input": {"run_id": RUN_ID}}}]
    actions += [_read(path) for path in BIG_FILES]
    actions += [{"tool_use": {"name": "get_project_info", "input": {}}}] * 2
    actions += [_read("big_0.py"), {"text": "done"}]
    assert 3 * len(BIG_FILES["big_0.py"]) < ELIDE_BATCH_CHARS  # the batch is not full at the third old read
    outcome, fake = await _run(actions, standin, task, settings)

    bodies = [r.body for r in fake.message_requests]
    elided_per_request = [sum(t.startswith("[Elided") for t in _results(b)) for b in bodies]
    first = next(i for i, n in enumerate(elided_per_request) if n)
    # The batch waits until the old results fill it, then elides them together; nothing changes between batches.
    assert elided_per_request[first] >= 4 and elided_per_request[first - 1] == 0
    assert first == 1 + 4 + KEEP_RECENT_TURNS  # request i is turn i + 1; the 4th read was in turn 5
    changed = [
        i
        for i in range(1, len(bodies))
        if _plain(bodies[i]["messages"][: len(bodies[i - 1]["messages"])]) != _plain(bodies[i - 1]["messages"])
    ]
    assert changed == [first]
    last = _results(bodies[-1])
    assert "FAILED tests/test_calc.py::test_add" in last[0]  # the failure excerpt is pinned
    assert "[Elided to keep the conversation short: the result of read_repo_file" in last[1]
    assert "value_0_699" in last[-1]  # reading an elided file again gives it in full, not a reference
    assert any(e["kind"] == "note" and "elided" in e["message"] for e in outcome.transcript)
    # The request after the batch is rewritten from the first elided result on; the ones after read it again.
    calls = outcome.calls
    before, at, after = calls[first - 1], calls[first], calls[first + 1]
    assert at.cache_read_input_tokens < before.cache_read_input_tokens / 4
    assert at.cache_creation_input_tokens > before.cache_creation_input_tokens
    assert at.budget_tokens < before.budget_tokens / 2  # the context shrank
    assert after.cache_read_input_tokens >= at.cache_read_input_tokens + at.cache_creation_input_tokens

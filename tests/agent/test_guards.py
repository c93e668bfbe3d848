"""Every guard ends a run with its own stop reason (real SDK against the fake API), plus the guard rules."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from agent_helpers import FIX, GOOD_STEPS, RUN_ID, StandInRepo

from agent.guards import Guards, GuardStop, canonical_call
from agent.loop import AttemptOutcome, run_attempt
from agent.models import AnthropicBackend
from agent.types import AttemptTask, StopReason
from fixtures.fake_anthropic import FakeAnthropic, run_fake_anthropic
from policy.config import AgentSettings, Budgets

ORIGINAL = "def add(a, b):\n    return a + b + 1\n"


async def _run(
    actions: Sequence[dict[str, Any]],
    standin: Callable[[], Any],
    task: AttemptTask,
    budgets: Budgets,
    settings: AgentSettings,
    *,
    api_key: str | None = None,
) -> tuple[AttemptOutcome, FakeAnthropic]:
    fake = FakeAnthropic(list(actions))
    async with (
        run_fake_anthropic(fake) as url,
        standin() as client,
        AnthropicBackend(settings, api_key=api_key or fake.api_key, base_url=url) as backend,
    ):
        outcome = await run_attempt(backend, client, task, budgets, settings=settings)
    return outcome, fake


def _read(path: str) -> dict[str, Any]:
    return {"tool_use": {"name": "read_repo_file", "input": {"path": path}}}


def _write(path: str, content: str) -> dict[str, Any]:
    return {"tool_use": {"name": "write_repo_file", "input": {"path": path, "content": content}}}


BRANCH = {"tool_use": {"name": "create_branch", "input": {}}}


@pytest.mark.anyio
async def test_max_turns_stops_the_run_when_the_model_keeps_going(
    standin: Callable[[], Any], task: AttemptTask, settings: AgentSettings
) -> None:
    budgets = Budgets(max_turns=2)
    outcome, fake = await _run(
        [_read("calc.py"), _read("tests/test_calc.py"), _read("x")], standin, task, budgets, settings
    )

    assert outcome.stop_reason is StopReason.MAX_TURNS
    assert outcome.turns == 2 and len(fake.message_requests) == 2
    assert outcome.report_markdown is not None and "max_turns" in outcome.report_markdown


@pytest.mark.anyio
async def test_token_budget_stops_the_run_before_the_expensive_response_is_acted_on(
    standin: Callable[[], Any], repo: StandInRepo, task: AttemptTask, settings: AgentSettings
) -> None:
    budgets = Budgets(max_tokens=200_000)
    heavy = {**_read("calc.py"), "usage": {"input_tokens": 150_000, "output_tokens": 60_000}}
    outcome, _ = await _run([heavy, _read("x")], standin, task, budgets, settings)

    assert outcome.stop_reason is StopReason.TOKEN_BUDGET
    assert outcome.usage.budget_tokens == 210_000
    assert repo.calls == []


@pytest.mark.anyio
async def test_wall_timeout_stops_a_slow_model_call(
    standin: Callable[[], Any], task: AttemptTask, settings: AgentSettings
) -> None:
    budgets = Budgets(wall_seconds=0.5)
    started = time.monotonic()
    outcome, _ = await _run([{"delay": 5, "text": "too late"}], standin, task, budgets, settings)

    assert outcome.stop_reason is StopReason.WALL_TIMEOUT
    assert "waiting for the model" in outcome.stop_detail
    assert time.monotonic() - started < 4


@pytest.mark.anyio
async def test_wall_timeout_stops_a_slow_tool_call(
    standin: Callable[[], Any], task: AttemptTask, settings: AgentSettings
) -> None:
    budgets = Budgets(wall_seconds=1.0)
    slow = {"tool_use": {"name": "list_job_runs", "input": {"job": "slow"}}}
    started = time.monotonic()
    outcome, _ = await _run([slow, {"text": "never reached"}], standin, task, budgets, settings)

    assert outcome.stop_reason is StopReason.WALL_TIMEOUT
    assert "calling list_job_runs" in outcome.stop_detail
    assert time.monotonic() - started < 5


@pytest.mark.anyio
async def test_repeated_call_stops_the_same_tool_with_the_same_arguments(
    standin: Callable[[], Any], repo: StandInRepo, task: AttemptTask, settings: AgentSettings
) -> None:
    budgets = Budgets(max_repeat_calls=3)
    again = {"tool_use": {"name": "get_job_logs", "input": {"run_id": RUN_ID}}}
    outcome, _ = await _run([again, _read("calc.py"), again, again, again], standin, task, budgets, settings)

    assert outcome.stop_reason is StopReason.REPEATED_CALL
    assert [c for c in repo.calls if c[0] == "get_job_logs"] == [("get_job_logs", {"run_id": RUN_ID})] * 2


@pytest.mark.anyio
async def test_flip_flop_stops_a_write_that_restores_the_content_read_earlier(
    standin: Callable[[], Any], repo: StandInRepo, task: AttemptTask, settings: AgentSettings
) -> None:
    actions = [_read("calc.py"), BRANCH, _write("calc.py", FIX), _write("calc.py", ORIGINAL), {"text": "x"}]
    outcome, _ = await _run(actions, standin, task, Budgets(), settings)

    assert outcome.stop_reason is StopReason.FLIP_FLOP
    assert repo.files["calc.py"] == FIX  # the flip-flop write never ran
    assert outcome.report_markdown is not None
    assert "| 2 | `calc.py` | refused: not run: flip_flop |" in outcome.report_markdown


@pytest.mark.anyio
async def test_flip_flop_stops_a_write_that_restores_an_earlier_write(
    standin: Callable[[], Any], repo: StandInRepo, task: AttemptTask, settings: AgentSettings
) -> None:
    actions = [BRANCH, _write("calc.py", "A\n"), _write("calc.py", "B\n"), _write("calc.py", "A\n"), {"text": "x"}]
    outcome, _ = await _run(actions, standin, task, Budgets(), settings)

    assert outcome.stop_reason is StopReason.FLIP_FLOP
    assert repo.files["calc.py"] == "B\n"


@pytest.mark.anyio
async def test_error_streak_stops_after_consecutive_tool_errors(
    standin: Callable[[], Any], task: AttemptTask, settings: AgentSettings
) -> None:
    budgets = Budgets(max_error_streak=4)
    actions = [_read(f"missing{i}.py") for i in range(6)]
    outcome, fake = await _run(actions, standin, task, budgets, settings)

    assert outcome.stop_reason is StopReason.ERROR_STREAK
    assert outcome.tool_errors == 4 and len(fake.message_requests) == 4


@pytest.mark.anyio
async def test_a_successful_tool_call_resets_the_error_streak(
    standin: Callable[[], Any], task: AttemptTask, settings: AgentSettings
) -> None:
    budgets = Budgets(max_error_streak=3)
    actions = [_read("a"), _read("b"), _read("calc.py"), _read("c"), _read("d"), {"text": "Cannot find it."}]
    outcome, _ = await _run(actions, standin, task, budgets, settings)

    assert outcome.stop_reason is StopReason.NO_FIX
    assert outcome.tool_errors == 4


@pytest.mark.anyio
async def test_no_fix_when_the_model_ends_its_turn_without_a_pull_request(
    standin: Callable[[], Any], task: AttemptTask, settings: AgentSettings
) -> None:
    outcome, _ = await _run(
        [{"text": "The workflow file is broken; a human must fix it."}], standin, task, Budgets(), settings
    )

    assert outcome.stop_reason is StopReason.NO_FIX
    assert outcome.pr_number is None and not outcome.succeeded


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("errors", "kind"),
    [
        pytest.param([{"error": 529}, {"error": 529}], "overloaded", id="overloaded"),
        pytest.param([{"error": 500}, {"error": 500}], "server_error", id="server-error"),
        pytest.param(
            [{"error": 429, "retry_after": 0.01}, {"error": 429, "retry_after": 0.01}],
            "rate_limited",
            id="rate-limited",
        ),
    ],
)
async def test_model_error_after_the_sdk_gives_up_retrying(
    errors: list[dict[str, Any]], kind: str, standin: Callable[[], Any], task: AttemptTask, settings: AgentSettings
) -> None:
    outcome, fake = await _run([*errors, {"text": "unreachable"}], standin, task, Budgets(), settings)

    assert outcome.stop_reason is StopReason.MODEL_ERROR
    assert kind in outcome.stop_detail
    assert len(fake.requests) == settings.max_retries + 1
    assert outcome.turns == 0


@pytest.mark.anyio
async def test_model_error_on_a_rejected_api_key_without_retrying(
    standin: Callable[[], Any], task: AttemptTask, settings: AgentSettings
) -> None:
    outcome, fake = await _run(
        [{"text": "unreachable"}], standin, task, Budgets(), settings, api_key="sk-ant-wrong-key-000000000000"
    )

    assert outcome.stop_reason is StopReason.MODEL_ERROR
    assert "auth" in outcome.stop_detail
    assert [r.status for r in fake.requests] == [401]


@pytest.mark.anyio
async def test_max_tokens_truncated_after_one_continuation(
    standin: Callable[[], Any], repo: StandInRepo, task: AttemptTask, settings: AgentSettings
) -> None:
    actions = [
        BRANCH,
        {**_write("calc.py", FIX), "truncate": True},
        {"text": "Let me write the whole file again and again", "truncate": True},
    ]
    outcome, fake = await _run(actions, standin, task, Budgets(), settings)

    assert outcome.stop_reason is StopReason.MAX_TOKENS_TRUNCATED
    assert repo.files["calc.py"] == ORIGINAL  # the cut-off write was never run
    continuation = fake.message_requests[2].body["messages"][-1]["content"][0]
    assert continuation["type"] == "tool_result" and continuation["is_error"] is True
    assert "cut off" in continuation["content"][0]["text"]


@pytest.mark.anyio
async def test_one_truncated_response_is_answered_and_the_run_goes_on(
    standin: Callable[[], Any], task: AttemptTask, settings: AgentSettings
) -> None:
    actions = [*GOOD_STEPS[:3], {**GOOD_STEPS[3], "truncate": True}, *GOOD_STEPS[3:]]
    outcome, _ = await _run(actions, standin, task, Budgets(), settings)

    assert outcome.stop_reason is StopReason.SUCCEEDED_PR


@pytest.mark.anyio
async def test_a_guard_after_the_pull_request_opened_still_counts_as_succeeded_pr(
    standin: Callable[[], Any], repo: StandInRepo, task: AttemptTask, settings: AgentSettings
) -> None:
    repo.allow_merge = False
    merge = {"tool_use": {"name": "merge_pull_request", "input": {}}}
    budgets = Budgets(max_repeat_calls=2)
    outcome, _ = await _run([*GOOD_STEPS[:6], merge, merge, {"text": "x"}], standin, task, budgets, settings)

    assert outcome.stop_reason is StopReason.SUCCEEDED_PR
    assert "repeated_call" in outcome.stop_detail
    assert outcome.pr_number == 7 and outcome.merged is False


@pytest.mark.anyio
async def test_merge_after_the_pull_request_is_recorded(
    standin: Callable[[], Any], repo: StandInRepo, task: AttemptTask, settings: AgentSettings
) -> None:
    merge = {"tool_use": {"name": "merge_pull_request", "input": {}}}
    outcome, _ = await _run([*GOOD_STEPS[:6], merge, {"text": "Merged."}], standin, task, Budgets(), settings)

    assert outcome.stop_reason is StopReason.SUCCEEDED_PR
    assert outcome.merged is True and repo.merged is True
    assert outcome.stop_detail == "pull request opened and merged"


@pytest.mark.anyio
async def test_a_merge_records_its_pull_request_number_when_the_create_reply_was_lost(
    standin: Callable[[], Any], repo: StandInRepo, task: AttemptTask, settings: AgentSettings
) -> None:
    repo.lose_pr_reply = True
    merge = {"tool_use": {"name": "merge_pull_request", "input": {}}}
    outcome, _ = await _run([*GOOD_STEPS[:6], merge, {"text": "Merged."}], standin, task, Budgets(), settings)

    assert outcome.merged is True and repo.merged is True
    assert outcome.pr_number == 7, "the merge result names the pull request"


# -- the rules themselves -------------------------------------------------------------------------------


def test_canonical_call_ignores_key_order_but_not_values() -> None:
    assert canonical_call("t", {"a": 1, "b": [1, 2]}) == canonical_call("t", {"b": [1, 2], "a": 1})
    assert canonical_call("t", {"a": 1}) != canonical_call("t", {"a": 2})
    assert canonical_call("t", {"a": 1}) != canonical_call("u", {"a": 1})


@pytest.mark.anyio
async def test_rewriting_the_current_content_is_not_a_flip_flop() -> None:
    guards = Guards(Budgets())
    guards.seen_content("f", "one")
    guards.before_write("f", "one")
    guards.seen_content("f", "two")
    guards.before_write("f", "three")
    with pytest.raises(GuardStop) as stop:
        guards.before_write("f", "one")
    assert stop.value.reason is StopReason.FLIP_FLOP
    guards.before_write("other", "one")


@pytest.mark.anyio
async def test_repeat_counting_is_per_exact_call() -> None:
    guards = Guards(Budgets(max_repeat_calls=2))
    guards.before_tool_call("read_repo_file", {"path": "a"})
    guards.before_tool_call("read_repo_file", {"path": "b"})
    with pytest.raises(GuardStop) as stop:
        guards.before_tool_call("read_repo_file", {"path": "a"})
    assert stop.value.reason is StopReason.REPEATED_CALL

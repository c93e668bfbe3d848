"""The model loop, driven by the real `anthropic` SDK against the local fake API over HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from agent_helpers import FIX, FORGE_TOKEN, GOOD_STEPS, RUN_ID, StandInRepo

from agent.loop import AttemptOutcome, run_attempt
from agent.models import AnthropicBackend
from agent.types import AttemptTask, StopReason
from fixtures.fake_anthropic import FakeAnthropic, run_fake_anthropic
from policy.config import AgentSettings, Budgets

pytestmark = pytest.mark.anyio

TEN_TOOLS = {
    "read_repo_file",
    "list_repo_files",
    "get_project_info",
    "list_job_runs",
    "get_job_logs",
    "create_branch",
    "write_repo_file",
    "commit_and_push",
    "create_pull_request",
    "merge_pull_request",
}


async def _run(
    actions: Sequence[dict[str, Any]],
    standin: Callable[[], Any],
    task: AttemptTask,
    budgets: Budgets,
    settings: AgentSettings,
) -> tuple[AttemptOutcome, FakeAnthropic]:
    fake = FakeAnthropic(list(actions))
    async with run_fake_anthropic(fake) as url, standin() as client:
        backend = AnthropicBackend(settings, api_key=fake.api_key, base_url=url)
        async with backend:
            outcome = await run_attempt(backend, client, task, budgets, settings=settings, secrets=[fake.api_key])
    return outcome, fake


def _tool_results(fake: FakeAnthropic) -> list[dict[str, Any]]:
    """Every tool_result block the loop sent, in order (from the last request, which holds them all)."""
    last = fake.message_requests[-1].body
    return [
        b
        for m in last["messages"]
        if m["role"] == "user" and isinstance(m["content"], list)
        for b in m["content"]
        if b.get("type") == "tool_result"
    ]


async def test_loop_fixes_the_failure_through_tools_and_stops_with_succeeded_pr(
    standin: Callable[[], Any], repo: StandInRepo, task: AttemptTask, budgets: Budgets, settings: AgentSettings
) -> None:
    outcome, fake = await _run(GOOD_STEPS, standin, task, budgets, settings)

    assert outcome.stop_reason is StopReason.SUCCEEDED_PR
    assert outcome.succeeded
    assert (outcome.pr_number, outcome.pr_url) == (7, "http://forge.test/acme/calc/pull/7")
    assert outcome.pushed_sha == repo.commits[-1]
    assert outcome.merged is False
    assert outcome.report_markdown is None
    assert repo.files["calc.py"] == FIX
    assert outcome.turns == 7 and outcome.tool_calls == 6 and outcome.tool_errors == 0
    assert fake.remaining == 0


async def test_loop_sends_mcp_tools_as_anthropic_tool_definitions_with_auth_headers(
    standin: Callable[[], Any], task: AttemptTask, budgets: Budgets, settings: AgentSettings
) -> None:
    _, fake = await _run(GOOD_STEPS, standin, task, budgets, settings)

    first = fake.message_requests[0]
    bearer = first.headers.get("authorization", "").removeprefix("Bearer ")
    assert fake.api_key in (first.headers.get("x-api-key"), bearer)
    assert first.headers["anthropic-version"]
    body = first.body
    assert {t["name"] for t in body["tools"]} == TEN_TOOLS
    read = next(t for t in body["tools"] if t["name"] == "read_repo_file")
    assert read["description"] == "Read one file of the repository."
    assert read["input_schema"]["type"] == "object" and read["input_schema"]["required"] == ["path"]
    assert body["model"] == "claude-test" and body["max_tokens"] == settings.max_output_tokens
    system = body["system"][0]["text"]
    assert "calc" in system and str(RUN_ID) in system and "untrusted" in system


async def test_every_tool_use_is_answered_by_a_matching_tool_result(
    standin: Callable[[], Any], task: AttemptTask, budgets: Budgets, settings: AgentSettings
) -> None:
    _, fake = await _run(GOOD_STEPS, standin, task, budgets, settings)

    messages = fake.message_requests[-1].body["messages"]
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        ids = [b["id"] for b in msg["content"] if b["type"] == "tool_use"]
        answered = [b["tool_use_id"] for b in messages[i + 1]["content"] if b["type"] == "tool_result"]
        assert answered == ids
    results = _tool_results(fake)
    assert [r["is_error"] for r in results] == [False] * 6
    assert "FAILED tests/test_calc.py::test_add" in results[0]["content"][0]["text"]


async def test_a_refused_tool_call_comes_back_as_an_is_error_tool_result(
    standin: Callable[[], Any], repo: StandInRepo, task: AttemptTask, budgets: Budgets, settings: AgentSettings
) -> None:
    actions = [
        {"tool_use": {"name": "create_branch", "input": {}}},
        {"tool_use": {"name": "write_repo_file", "input": {"path": ".github/workflows/ci.yml", "content": "x"}}},
        {"text": "The workflow is protected; a human must fix it."},
    ]
    outcome, fake = await _run(actions, standin, task, budgets, settings)

    refusal = _tool_results(fake)[-1]
    assert refusal["is_error"] is True
    assert "Access denied: path is protected" in refusal["content"][0]["text"]
    assert repo.files[".github/workflows/ci.yml"] == "name: ci\n"
    assert outcome.stop_reason is StopReason.NO_FIX
    assert outcome.tool_errors == 1


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        pytest.param(
            {"name": "delete_repository", "input": {}}, "Unknown tool: 'delete_repository'", id="unknown-tool"
        ),
        pytest.param({"name": "read_repo_file", "input": {}}, "missing required field(s): ['path']", id="missing-arg"),
        pytest.param({"name": "read_repo_file", "input": {"path": 5}}, "validation error", id="wrong-type"),
        pytest.param({"name": "get_job_logs", "input": {"run_id": "many"}}, "validation error", id="not-an-int"),
        pytest.param(
            {"name": "read_repo_file", "input": {"path": "../../etc/passwd"}}, "Access denied", id="traversal"
        ),
    ],
)
async def test_unknown_tools_and_malformed_arguments_are_answered_with_errors_not_crashes(
    call: dict[str, Any],
    expected: str,
    standin: Callable[[], Any],
    task: AttemptTask,
    budgets: Budgets,
    settings: AgentSettings,
) -> None:
    actions = [{"tool_use": call}, {"text": "Giving up."}]
    outcome, fake = await _run(actions, standin, task, budgets, settings)

    result = _tool_results(fake)[0]
    assert result["is_error"] is True
    assert expected in result["content"][0]["text"]
    assert outcome.stop_reason is StopReason.NO_FIX
    assert outcome.tool_errors == 1


async def test_several_tool_uses_in_one_response_are_all_answered_in_order(
    standin: Callable[[], Any], task: AttemptTask, budgets: Budgets, settings: AgentSettings
) -> None:
    actions = [
        {
            "tool_use": [
                {"name": "read_repo_file", "input": {"path": "calc.py"}},
                {"name": "read_repo_file", "input": {"path": "nope.py"}},
                {"name": "get_project_info", "input": {}},
            ]
        },
        {"text": "Done looking."},
    ]
    _, fake = await _run(actions, standin, task, budgets, settings)

    results = _tool_results(fake)
    assert [r["tool_use_id"] for r in results] == ["toolu_fake_0001_0", "toolu_fake_0001_1", "toolu_fake_0001_2"]
    assert [r["is_error"] for r in results] == [False, True, False]


async def test_the_sdk_retries_rate_limits_and_overload_then_the_run_continues(
    standin: Callable[[], Any], task: AttemptTask, budgets: Budgets, settings: AgentSettings
) -> None:
    actions = [{"error": 429, "retry_after": 0.05}, *GOOD_STEPS[:1], {"error": 529}, *GOOD_STEPS[1:]]
    outcome, fake = await _run(actions, standin, task, budgets, settings)

    assert outcome.stop_reason is StopReason.SUCCEEDED_PR
    assert [r.status for r in fake.requests].count(429) == 1
    assert [r.status for r in fake.requests].count(529) == 1
    assert outcome.turns == 7


async def test_a_huge_tool_result_is_cut_to_the_limit_keeping_the_tail(
    standin: Callable[[], Any], repo: StandInRepo, task: AttemptTask, budgets: Budgets, settings: AgentSettings
) -> None:
    repo.files["big.log"] = "x" * 200_000 + "\nTHE END"
    fake = FakeAnthropic([{"tool_use": {"name": "read_repo_file", "input": {"path": "big.log"}}}, {"text": "ok"}])
    async with (
        run_fake_anthropic(fake) as url,
        standin() as client,
        AnthropicBackend(settings, api_key=fake.api_key, base_url=url) as backend,
    ):
        await run_attempt(backend, client, task, budgets, settings=settings, max_tool_result_chars=10_000)

    text = _tool_results(fake)[0]["content"][0]["text"]
    assert len(text) < 10_200
    assert "characters omitted" in text
    assert "THE END" in text


async def test_tool_results_are_redacted_before_the_model_sees_them(
    standin: Callable[[], Any], task: AttemptTask, budgets: Budgets, settings: AgentSettings
) -> None:
    _, fake = await _run(GOOD_STEPS, standin, task, budgets, settings)

    log_text = _tool_results(fake)[0]["content"][0]["text"]
    assert "debug: using token" in log_text
    assert FORGE_TOKEN not in json.dumps([r.body for r in fake.requests])

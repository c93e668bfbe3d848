"""What a run leaves behind: accounting totals, a redacted transcript, the escalation report."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from agent_helpers import FORGE_TOKEN, GOOD_STEPS, RUN_ID

from agent.accounting import ModelCall, price_for, total_of
from agent.loop import AttemptOutcome, run_attempt
from agent.models import AnthropicBackend
from agent.report import WriteAttempt, render_report
from agent.types import AttemptTask, StopReason
from fixtures.fake_anthropic import FakeAnthropic, run_fake_anthropic
from policy.config import AgentSettings, Budgets

EXTRA_SECRET = "hunter2-extra-secret-value"


async def _run(
    actions: Sequence[dict[str, Any]], standin: Callable[[], Any], task: AttemptTask, settings: AgentSettings
) -> tuple[AttemptOutcome, FakeAnthropic]:
    fake = FakeAnthropic(list(actions))
    async with (
        run_fake_anthropic(fake) as url,
        standin() as client,
        AnthropicBackend(settings, api_key=fake.api_key, base_url=url) as backend,
    ):
        outcome = await run_attempt(
            backend, client, task, Budgets(), settings=settings, secrets=[fake.api_key, EXTRA_SECRET]
        )
    return outcome, fake


# -- accounting -----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_accounting_sums_every_call_and_prices_it_by_model(
    standin: Callable[[], Any], task: AttemptTask, settings: AgentSettings
) -> None:
    usage = [
        {"input_tokens": 1000, "output_tokens": 100, "cache_creation_input_tokens": 2000},
        {"input_tokens": 500, "output_tokens": 50, "cache_read_input_tokens": 2000},
    ]
    actions = [{**GOOD_STEPS[0], "usage": usage[0]}, {"text": "No idea.", "usage": usage[1]}]
    outcome, _ = await _run(actions, standin, task, settings)

    totals = outcome.usage
    assert (totals.calls, totals.input_tokens, totals.output_tokens) == (2, 1500, 150)
    assert (totals.cache_creation_input_tokens, totals.cache_read_input_tokens) == (2000, 2000)
    expected = (1500 * 3.0 + 150 * 15.0 + 2000 * 3.75 + 2000 * 0.30) / 1_000_000
    assert outcome.cost_usd == pytest.approx(expected)
    assert [c.price_key for c in outcome.calls] == ["claude-test", "claude-test"]
    assert all(c.latency_seconds > 0 for c in outcome.calls)


@pytest.mark.parametrize(
    ("model", "key"),
    [
        pytest.param("claude-sonnet-4-5", "claude-sonnet-4-5", id="exact"),
        pytest.param("claude-sonnet-4-5-20250929", "claude-sonnet-4-5", id="dated-prefix"),
        pytest.param("claude-sonnet-4-5-x", "claude-sonnet-4-5-x", id="longest-prefix"),
        pytest.param("claude-opus-9", "default", id="default"),
    ],
)
def test_price_lookup_is_exact_then_longest_prefix_then_default(model: str, key: str) -> None:
    prices = {
        "claude-sonnet-4-5": (3.0, 15.0, 3.75, 0.3),
        "claude-sonnet-4-5-x": (1.0, 1.0, 1.0, 1.0),
        "default": (9.0, 9.0, 9.0, 9.0),
    }
    assert price_for(model, prices)[0] == key


def test_a_model_without_any_price_costs_nothing_and_says_so() -> None:
    assert price_for("m", {"other": (1.0, 1.0, 1.0, 1.0)}) == (None, (0.0, 0.0, 0.0, 0.0))


def test_totals_of_no_calls_are_zero() -> None:
    assert total_of([]).budget_tokens == 0
    call = ModelCall(
        turn=1, model="m", input_tokens=1, output_tokens=2, cache_creation_input_tokens=3, cache_read_input_tokens=4
    )
    assert total_of([call, call]).budget_tokens == 20


# -- transcript -----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_transcript_records_requests_responses_and_tool_traffic_as_json(
    standin: Callable[[], Any], task: AttemptTask, settings: AgentSettings
) -> None:
    outcome, _ = await _run(GOOD_STEPS, standin, task, settings)

    events = json.loads(json.dumps(outcome.transcript))
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "setup" and kinds[-1] == "stop"
    assert kinds.count("request") == kinds.count("response") == 7
    assert kinds.count("tool_call") == kinds.count("tool_result") == 6
    assert events[-1]["reason"] == "succeeded_pr"
    setup = events[0]
    assert len(setup["tools"]) == 10 and "untrusted" in setup["system"]
    calls = [e["name"] for e in events if e["kind"] == "tool_call"]
    assert calls == [
        "get_job_logs",
        "read_repo_file",
        "create_branch",
        "write_repo_file",
        "commit_and_push",
        "create_pull_request",
    ]


@pytest.mark.anyio
async def test_transcript_and_report_contain_no_secret(
    standin: Callable[[], Any], task: AttemptTask, settings: AgentSettings
) -> None:
    leak = f"The token is {FORGE_TOKEN} and the password is {EXTRA_SECRET}."
    actions = [
        GOOD_STEPS[0],
        {"tool_use": {"name": "read_repo_file", "input": {"path": EXTRA_SECRET}}},
        {"text": leak},
    ]
    outcome, fake = await _run(actions, standin, task, settings)

    dumped = json.dumps(outcome.model_dump(mode="json"))
    for secret in (FORGE_TOKEN, EXTRA_SECRET, fake.api_key):
        assert secret not in dumped
    assert outcome.report_markdown is not None
    assert FORGE_TOKEN not in outcome.report_markdown and EXTRA_SECRET not in outcome.report_markdown
    assert "[REDACTED" in outcome.report_markdown


# -- escalation report ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_report_on_no_fix_names_the_failure_the_attempts_the_hypothesis_and_the_reason(
    standin: Callable[[], Any], task: AttemptTask, settings: AgentSettings
) -> None:
    actions = [
        GOOD_STEPS[0],
        {"tool_use": {"name": "create_branch", "input": {}}},
        {"tool_use": {"name": "write_repo_file", "input": {"path": ".github/workflows/ci.yml", "content": "x"}}},
        {"tool_use": {"name": "write_repo_file", "input": {"path": "calc.py", "content": "pass\n"}}},
        {"text": "The | workflow passes a bad flag.\nA human must edit ci.yml."},
    ]
    outcome, _ = await _run(actions, standin, task, settings)

    assert outcome.stop_reason is StopReason.NO_FIX
    report = outcome.report_markdown
    assert report is not None
    assert "`calc` / `test`" in report and f"Failing run: {RUN_ID}" in report and "abc123" in report
    assert "FAILED tests/test_calc.py::test_add" in report  # the log excerpt
    assert "| 1 | `.github/workflows/ci.yml` | refused: Error executing tool write_repo_file: Access denied" in report
    assert "| 2 | `calc.py` | written (5 characters) |" in report
    assert "> The | workflow passes a bad flag." in report
    assert "`no_fix`" in report


def test_report_escapes_table_cells_and_fences() -> None:
    task = AttemptTask(project="p", job="j", failing_run_id=1, head_sha="s")
    report = render_report(
        task=task,
        stop_reason=StopReason.ERROR_STREAK,
        stop_detail="5 tool errors in a row",
        first_log="line\n```\nboom",
        writes=[WriteAttempt(path="a|b\nc", result="x | y", refused=True)],
        hypothesis=None,
        turns=3,
        tokens=10,
        cost_usd=0.5,
    )
    assert "| 1 | `a\\|b c` | refused: x \\| y |" in report
    assert report.count("```") == 2
    assert "The model did not say." in report and "Turns: 3; tokens: 10; cost: $0.5000" in report


def test_report_lists_the_failing_tests_and_error_locations_from_the_excerpt_header() -> None:
    from mcp_server.log_excerpt import excerpt

    log = (
        "\n".join(
            [
                *[f"ok step {i}" for i in range(50)],
                "./commands.go:395:20: undefined: parseFlags",
                "--- FAIL: TestParse (0.00s)",
                "FAIL",
            ]
        )
        + "\n"
    )
    first_log = excerpt(log, budget_tokens=500).rendered
    task = AttemptTask(project="p", job="j", failing_run_id=1, head_sha="s")
    report = render_report(
        task=task,
        stop_reason=StopReason.NO_FIX,
        stop_detail="gave up",
        first_log=first_log,
        writes=[],
        hypothesis=None,
        turns=3,
        tokens=10,
        cost_usd=0.5,
    )
    assert "- Failing tests: TestParse" in report
    assert "- Error locations: ./commands.go:395:20" in report
    no_header = render_report(
        task=task,
        stop_reason=StopReason.NO_FIX,
        stop_detail="gave up",
        first_log="  1| boom\n",
        writes=[],
        hypothesis=None,
        turns=3,
        tokens=10,
        cost_usd=0.5,
    )
    assert "root cause first" not in no_header

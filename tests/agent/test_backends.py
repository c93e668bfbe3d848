"""Model back-ends: scripted replay, recording and replaying a session, and the fake API itself."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import pytest
from agent_helpers import FIX, GOOD_STEPS, RUN_ID, StandInRepo

from agent.errors import ModelError, ReplayMismatch, ScriptError
from agent.loop import run_attempt
from agent.models import AnthropicBackend, ModelRequest
from agent.recording import RecordingBackend, ReplayBackend
from agent.scripted import ScriptedBackend, load_script, substitute
from agent.types import AttemptTask, StopReason
from fixtures.fake_anthropic import FakeAnthropic, run_fake_anthropic
from policy.config import AgentSettings, Budgets

SCRIPTS = Path(__file__).resolve().parents[2] / "fixtures" / "scripts"

SCRIPT: dict[str, Any] = {
    "project": "calc",
    "steps": [
        {"tool": "get_job_logs", "input": {"run_id": "$FAILING_RUN_ID"}},
        {"tool": "read_repo_file", "input": {"path": "calc.py"}},
        {"tool": "create_branch", "input": {}},
        {"tool": "write_repo_file", "input": {"path": "calc.py", "content": FIX}},
        {"tool": "commit_and_push", "input": {"message": "calc: fix add (run $FAILING_RUN_ID)"}},
        {"tool": "create_pull_request", "input": {"title": "Fix add", "body": "Run $FAILING_RUN_ID failed."}},
    ],
    "final_message": "Fixed add().",
}


def _request(messages: list[dict[str, Any]] | None = None) -> ModelRequest:
    return ModelRequest(
        model="m",
        max_tokens=100,
        system=[{"type": "text", "text": "s"}],
        tools=[],
        messages=messages or [{"role": "user", "content": "go"}],
    )


# -- scripted -------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_scripted_backend_replays_a_script_through_the_loop(
    standin: Callable[[], Any], repo: StandInRepo, task: AttemptTask
) -> None:
    backend = ScriptedBackend(SCRIPT, {"FAILING_RUN_ID": RUN_ID})
    async with standin() as client:
        outcome = await run_attempt(backend, client, task, Budgets())

    assert outcome.stop_reason is StopReason.SUCCEEDED_PR
    assert ("get_job_logs", {"run_id": RUN_ID}) in repo.calls
    assert ("commit_and_push", {"message": f"calc: fix add (run {RUN_ID})"}) in repo.calls
    assert repo.files["calc.py"] == FIX
    assert outcome.turns == 7 and outcome.usage.input_tokens > 0 and outcome.usage.output_tokens > 0


@pytest.mark.anyio
async def test_scripted_responses_have_the_sdk_message_shape() -> None:
    backend = ScriptedBackend(SCRIPT, {"FAILING_RUN_ID": RUN_ID})
    first = await backend.create(_request())
    assert isinstance(first, anthropic.types.Message)
    assert first.stop_reason == "tool_use"
    block = first.content[0]
    assert isinstance(block, anthropic.types.ToolUseBlock)
    assert (block.name, block.input) == ("get_job_logs", {"run_id": RUN_ID})
    for _ in SCRIPT["steps"][1:]:
        await backend.create(_request())
    last = await backend.create(_request())
    assert last.stop_reason == "end_turn" and isinstance(last.content[0], anthropic.types.TextBlock)
    with pytest.raises(ScriptError):
        await backend.create(_request())


@pytest.mark.parametrize("path", sorted(SCRIPTS.glob("*.json")), ids=lambda p: p.stem)
def test_every_fixture_script_is_a_valid_script(path: Path) -> None:
    script = load_script(path)
    # `<project>.json`, or `<project>.revision-<n>.json` for a revision round (reconciler.runtime.scripted_backends)
    assert script.steps and script.project == path.stem.split(".revision-")[0]


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        pytest.param({"steps": [{"tool": ""}]}, "steps.0.tool", id="empty-tool"),
        pytest.param({"steps": [{"tool": "x", "input": []}]}, "steps.0.input", id="input-not-object"),
        pytest.param({"final_message": "x"}, "steps", id="no-steps"),
        pytest.param({"steps": [], "surprise": 1}, "surprise", id="unknown-key"),
    ],
)
def test_invalid_scripts_are_refused_with_the_offending_key(source: dict[str, Any], problem: str) -> None:
    with pytest.raises(ScriptError, match=problem):
        load_script(source)


def test_a_missing_script_file_is_a_script_error(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="cannot read script"):
        load_script(tmp_path / "nope.json")


def test_substitution_keeps_the_type_of_a_whole_placeholder_and_formats_embedded_ones() -> None:
    value = {"a": "$RUN", "b": ["run $RUN of $JOB", "$UNKNOWN"], "c": 3}
    assert substitute(value, {"RUN": 7, "JOB": "test"}) == {"a": 7, "b": ["run 7 of test", "$UNKNOWN"], "c": 3}


# -- recording and replay -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_recorded_session_replays_to_the_same_outcome_without_the_api(
    standin: Callable[[], Any], task: AttemptTask, settings: AgentSettings, tmp_path: Path
) -> None:
    path = tmp_path / "session.json"
    fake = FakeAnthropic(GOOD_STEPS)
    async with (
        run_fake_anthropic(fake) as url,
        standin() as client,
        AnthropicBackend(settings, api_key=fake.api_key, base_url=url) as real,
    ):
        recorded = await run_attempt(
            RecordingBackend(real, path, secrets=[fake.api_key]), client, task, Budgets(), settings=settings
        )

    assert fake.api_key not in path.read_text()
    assert len(json.loads(path.read_text())["exchanges"]) == 7

    async with standin() as client:
        replayed = await run_attempt(ReplayBackend(path), client, task, Budgets(), settings=settings)

    assert replayed.stop_reason is recorded.stop_reason is StopReason.SUCCEEDED_PR
    assert (replayed.turns, replayed.pr_number) == (recorded.turns, recorded.pr_number)
    assert replayed.usage == recorded.usage.model_copy(update={"latency_seconds": replayed.usage.latency_seconds})


@pytest.mark.anyio
async def test_a_recorded_model_error_replays_as_the_same_error(tmp_path: Path, settings: AgentSettings) -> None:
    path = tmp_path / "err.json"
    async with (
        run_fake_anthropic([{"error": 529}, {"error": 529}]) as url,
        AnthropicBackend(settings, api_key="sk-ant-fake-test-key-0123456789", base_url=url) as real,
    ):
        with pytest.raises(ModelError) as live:
            await RecordingBackend(real, path).create(_request())
    with pytest.raises(ModelError) as replayed:
        await ReplayBackend(path).create(_request())
    assert live.value.kind == replayed.value.kind == "overloaded"


@pytest.mark.anyio
async def test_replay_refuses_a_request_that_diverges_from_the_recording(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    await RecordingBackend(ScriptedBackend(SCRIPT), path).create(_request())
    with pytest.raises(ReplayMismatch):
        await ReplayBackend(path).create(
            _request([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
        )
    with pytest.raises(ReplayMismatch):
        await ReplayBackend(path, strict=True).create(_request([{"role": "user", "content": "other"}]))
    replay = ReplayBackend(path, strict=True)
    await replay.create(_request())
    with pytest.raises(ScriptError, match="only 1 exchange"):
        await replay.create(_request())


def test_a_file_that_is_not_a_recording_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"steps": []}')
    with pytest.raises(ScriptError, match="not a version-1 recording"):
        ReplayBackend(path)


# -- the fake API ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_fake_api_rejects_a_tool_use_left_without_a_tool_result() -> None:
    fake = FakeAnthropic([{"text": "a"}, {"text": "b"}])
    async with run_fake_anthropic(fake) as url:
        client = anthropic.AsyncAnthropic(api_key=fake.api_key, base_url=url, max_retries=0)
        messages: list[Any] = [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "x", "input": {}}]},
            {"role": "user", "content": "ignoring the tool"},
        ]
        with pytest.raises(anthropic.BadRequestError, match="tool_result"):
            await client.messages.create(model="m", max_tokens=10, messages=messages)
        await client.close()
    assert fake.remaining == 2


@pytest.mark.anyio
async def test_fake_api_requires_the_version_header_and_counts_tokens() -> None:
    fake = FakeAnthropic([])
    async with run_fake_anthropic(fake) as url:
        client = anthropic.AsyncAnthropic(api_key=fake.api_key, base_url=url, max_retries=0)
        count = await client.messages.count_tokens(model="m", messages=[{"role": "user", "content": "x" * 400}])
        assert count.input_tokens >= 100
        with pytest.raises(anthropic.BadRequestError, match="anthropic-version"):
            await client.messages.create(
                model="m",
                max_tokens=10,
                messages=[{"role": "user", "content": "x"}],
                extra_headers={"anthropic-version": ""},
            )
        with pytest.raises(anthropic.BadRequestError, match="exhausted"):
            await client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}])
        await client.close()

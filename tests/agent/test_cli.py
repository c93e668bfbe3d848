"""`greenloop agent run` as a library call, on the stand-in MCP server (the real one has its own test)."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import FIX, GOOD_STEPS, RUN_ID, StandInRepo

from agent.cli import agent_run_command
from fixtures.fake_anthropic import FakeAnthropic, run_fake_anthropic
from policy.config import AgentSettings, GreenloopConfig, ProjectConfig

pytestmark = pytest.mark.anyio

SCRIPT = {
    "project": "calc",
    "steps": [
        {"tool": "get_job_logs", "input": {"run_id": "$FAILING_RUN_ID"}},
        {"tool": "create_branch", "input": {}},
        {"tool": "write_repo_file", "input": {"path": "calc.py", "content": FIX}},
        {"tool": "commit_and_push", "input": {"message": "calc: fix add"}},
        {"tool": "create_pull_request", "input": {"title": "Fix add", "body": "add() added 1"}},
    ],
    "final_message": "Fixed.",
}


def _config(**agent: Any) -> GreenloopConfig:
    return GreenloopConfig(agent=AgentSettings(**agent), projects=(ProjectConfig(name="calc", repo="acme/calc"),))


def _opener(standin: Callable[[], Any], seen: list[tuple[str, str, str]]) -> Any:
    @asynccontextmanager
    async def open_session(project: str, job: str, attempt_id: str) -> AsyncIterator[Any]:
        seen.append((project, job, attempt_id))
        async with standin() as client:
            yield client

    return open_session


async def test_agent_run_with_a_scripted_model_finds_the_failed_run_and_opens_a_pr(
    standin: Callable[[], Any], repo: StandInRepo, tmp_path: Path
) -> None:
    script = tmp_path / "calc.json"
    script.write_text(json.dumps(SCRIPT))
    transcript = tmp_path / "t.json"
    out = io.StringIO()
    seen: list[tuple[str, str, str]] = []

    code = await agent_run_command(
        _config(),
        "calc",
        "test",
        f"scripted:{script}",
        transcript_path=transcript,
        open_session=_opener(standin, seen),
        env={},
        out=out,
    )

    text = out.getvalue()
    assert code == 0, text
    assert f"failing run {RUN_ID}" in text
    assert "stop reason: succeeded_pr" in text and "http://forge.test/acme/calc/pull/7" in text
    assert "cost:        $0.0" in text and "tokens:      input " in text
    assert ("get_job_logs", {"run_id": RUN_ID}) in repo.calls
    assert json.loads(transcript.read_text())[-1]["reason"] == "succeeded_pr"
    assert seen[0][:2] == ("calc", "test") and len(seen[0][2]) == 12


async def test_agent_run_against_the_api_prints_the_report_when_there_is_no_fix(
    standin: Callable[[], Any], tmp_path: Path
) -> None:
    fake = FakeAnthropic([GOOD_STEPS[0], {"text": "The runner image is broken; a human must look."}])
    out = io.StringIO()
    async with run_fake_anthropic(fake) as url:
        code = await agent_run_command(
            _config(base_url=url, max_retries=0),
            "calc",
            "test",
            "anthropic:claude-x",
            run_id=RUN_ID,
            open_session=_opener(standin, []),
            env={"ANTHROPIC_API_KEY": fake.api_key},
            out=out,
        )

    text = out.getvalue()
    assert code == 1
    assert "stop reason: no_fix" in text and "# greenloop could not fix" in text
    assert fake.message_requests[0].body["model"] == "claude-x"
    assert fake.api_key not in text


async def test_agent_run_says_there_is_nothing_to_fix_when_the_job_is_green(
    standin: Callable[[], Any], tmp_path: Path
) -> None:
    out = io.StringIO()
    code = await agent_run_command(
        _config(), "calc", "lint", "scripted:unused.json", open_session=_opener(standin, []), env={}, out=out
    )
    assert code == 0 and "nothing to fix" in out.getvalue()


@pytest.mark.parametrize(
    ("project", "spec", "env", "message"),
    [
        pytest.param("nope", "scripted:x.json", {}, "unknown project: 'nope'", id="unknown-project"),
        pytest.param("calc", "anthropic", {}, "needs an API key in $ANTHROPIC_API_KEY", id="no-api-key"),
        pytest.param("calc", "gpt:4", {}, "unknown model spec: 'gpt:4'", id="bad-spec"),
        pytest.param("calc", "scripted:/nonexistent/x.json", {}, "cannot read script", id="missing-script"),
        pytest.param(
            "calc",
            "record",
            {"ANTHROPIC_API_KEY": "sk-ant-x-000000000000000000"},
            "needs a file",
            id="record-without-file",
        ),
    ],
)
async def test_agent_run_refuses_what_it_cannot_do_with_exit_code_2(
    project: str, spec: str, env: dict[str, str], message: str, standin: Callable[[], Any]
) -> None:
    out = io.StringIO()
    code = await agent_run_command(
        _config(), project, "test", spec, run_id=RUN_ID, open_session=_opener(standin, []), env=env, out=out
    )
    assert code == 2
    assert message in out.getvalue()


async def test_agent_run_refuses_a_run_id_that_does_not_exist_before_calling_the_model(
    standin: Callable[[], Any], repo: StandInRepo
) -> None:
    fake = FakeAnthropic([GOOD_STEPS[0], {"text": "never reached"}])
    out = io.StringIO()
    async with run_fake_anthropic(fake) as url:
        code = await agent_run_command(
            _config(base_url=url, max_retries=0),
            "calc",
            "test",
            "anthropic:claude-x",
            run_id=123,
            open_session=_opener(standin, []),
            env={"ANTHROPIC_API_KEY": fake.api_key},
            out=out,
        )
    assert code == 2
    assert "run 123 of job 'test' cannot be read" in out.getvalue() and "no model call was made" in out.getvalue()
    assert fake.message_requests == []  # not one token spent
    assert repo.calls == [("get_job_logs", {"run_id": 123})]

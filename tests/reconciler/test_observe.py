"""Observation: who produced a run, as the circuit breaker sees it."""

from __future__ import annotations

from mcp_server.forge import Job, WorkflowRun
from policy.config import ProjectConfig
from reconciler.observe import _from_actions

PROJECT = ProjectConfig(name="p", repo="acme/p")
JOB = Job(id=1, run_id=7, name="test", status="completed", conclusion="failure")


def _run(attempt: int, actor: str, triggering: str) -> WorkflowRun:
    return WorkflowRun.model_validate(
        {
            "id": 7,
            "head_sha": "a" * 40,
            "status": "completed",
            "conclusion": "failure",
            "run_attempt": attempt,
            "actor": {"login": actor},
            "triggering_actor": {"login": triggering},
        }
    )


def test_a_rerun_the_bot_requested_is_attributed_to_the_original_actor() -> None:
    observed = _from_actions(PROJECT, _run(2, "octocat", "greenloop[bot]"), JOB)
    assert observed.triggered_by == "octocat"


def test_a_first_run_the_bot_triggered_is_the_bots() -> None:
    observed = _from_actions(PROJECT, _run(1, "greenloop[bot]", "greenloop[bot]"), JOB)
    assert observed.triggered_by == "greenloop[bot]"

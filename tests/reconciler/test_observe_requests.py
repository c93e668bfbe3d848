"""Observation reads only the job lists that can change its answer, and a 304 reuses the last observation."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from mcp_server.forge import ForgeClient, Job, RunsPage
from policy.config import ProjectConfig
from reconciler.context import JobFacts, JobKey
from reconciler.observe import observe_actions

pytestmark = pytest.mark.anyio

PROJECT = ProjectConfig(name="p", repo="acme/p")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
JOBS = ("lint", "test", "build", "docs")


def _run(run_id: int, workflow: int, sha: str, conclusion: str | None, age: int) -> dict[str, Any]:
    return {
        "id": run_id,
        "workflow_id": workflow,
        "path": f".github/workflows/w{workflow}.yml",
        "head_sha": sha * 40,
        "status": "completed" if conclusion else "in_progress",
        "conclusion": conclusion,
        "run_attempt": 1,
        "created_at": (T0 - timedelta(minutes=age)).isoformat(),
    }


class _Forge:
    """Serves one page of 30 runs (two workflows, newest first) and counts job-list requests."""

    def __init__(self, runs: list[dict[str, Any]]) -> None:
        self.runs = runs
        self.job_requests: list[int] = []
        self.calls = 0

    async def list_workflow_runs(self, repo: str, **_: Any) -> RunsPage:
        self.calls += 1
        body = json.dumps({"total_count": len(self.runs), "workflow_runs": self.runs})
        return RunsPage.of([body], not_modified=self.calls > 1)

    async def list_run_jobs(self, repo: str, run_id: int) -> list[Job]:
        self.job_requests.append(run_id)
        run = next(r for r in self.runs if r["id"] == run_id)
        status = run["status"]
        return [
            Job(
                id=run_id * 10 + i,
                run_id=run_id,
                name=f"w{run['workflow_id']}-{name}",
                status=status,
                conclusion=run["conclusion"],
            )
            for i, name in enumerate(JOBS)
        ]


def _page() -> list[dict[str, Any]]:
    # Newest first: workflow 1's newest is an in-progress run, then a red run on sha "c" that passed
    # before on "c" (run 28); workflow 2's newest completed run is green on "d". The rest are older history.
    runs = [
        _run(30, 1, "e", None, 0),
        _run(29, 1, "c", "failure", 1),
        _run(28, 1, "c", "success", 2),
        _run(27, 2, "d", "success", 3),
    ]
    runs += [_run(26 - i, 1 + i % 2, "0123456789ab"[i % 12], "success", 4 + i) for i in range(26)]
    return runs


async def test_a_page_of_30_runs_reads_only_the_job_lists_that_matter() -> None:
    forge = _Forge(_page())
    cache: dict[JobKey, JobFacts] = {}
    obs, changed = await observe_actions(cast(ForgeClient, forge), PROJECT, previous=None, job_cache=cache)
    assert changed
    # The in-progress newest run, workflow 1's newest completed run and its same-SHA predecessor, and
    # workflow 2's newest completed run: 4 job lists, not 30.
    assert sorted(forge.job_requests) == [27, 28, 29, 30]
    assert obs.latest["w1-test"].run_id == "29"
    assert obs.latest["w2-test"].run_id == "27"
    assert "w1-test" in obs.in_progress
    assert obs.passed_before(obs.latest["w1-test"])


async def test_an_unchanged_listing_reuses_the_previous_observation_object() -> None:
    forge = _Forge(_page())
    cache: dict[JobKey, JobFacts] = {}
    first, _ = await observe_actions(cast(ForgeClient, forge), PROJECT, previous=None, job_cache=cache)
    requests = len(forge.job_requests)
    again, changed = await observe_actions(cast(ForgeClient, forge), PROJECT, previous=first, job_cache=cache)
    assert again is first
    assert not changed
    assert len(forge.job_requests) == requests

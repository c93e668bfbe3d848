"""Rough edges of the HTTP API a new user hit: all-projects debug passes, numeric run ids, JSON errors."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from reconciler.context import ReconcilerContext
from reconciler.store.engine import SessionFactory
from reconciler.summary import RunSummary, Trigger

from test_api import _run, api_client, make_ctx  # isort: skip

pytestmark = pytest.mark.anyio


@pytest.fixture
def ctx(sessions: SessionFactory) -> ReconcilerContext:
    return make_ctx(sessions)


@pytest.mark.parametrize("body", [{"dry_run": True}, {"repos": None, "dry_run": True}])
async def test_a_debug_pass_without_repos_covers_every_project(ctx: ReconcilerContext, body: dict[str, object]) -> None:
    calls: list[object] = []

    async def every_project(
        ctx: ReconcilerContext, *, repos: Sequence[str] | None = None, trigger: Trigger = "cli", dry_run: bool = False
    ) -> RunSummary:
        calls.append((repos, trigger, dry_run))
        return RunSummary(trigger=trigger, dry_run=dry_run, started_at=datetime.now(UTC), projects_scanned=4)

    async with api_client(ctx, reconcile_fn=every_project) as http:
        r = await http.post("/debug/reconcile", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["projects_scanned"] == 4
    assert calls == [(None, "debug", True)]  # None: the pass takes every project


async def test_a_numeric_run_id_is_accepted_and_kept_as_its_text(ctx: ReconcilerContext) -> None:
    async with api_client(ctx) as http:
        first = await http.post("/runs", json=_run(run_id=9876543210))
        again = await http.post("/runs", json=_run(run_id="9876543210"))
    assert first.status_code == 201, first.text
    assert first.json()["run_id"] == "9876543210"
    assert (again.status_code, again.json()["created"]) == (200, False)  # the same run, whichever way it came


@pytest.mark.parametrize("content", [b'{"repos": ["alpha"]', b"{'repos': 1}", b"", b"\xff"])
async def test_malformed_json_says_what_is_wrong_once(ctx: ReconcilerContext, content: bytes) -> None:
    async with api_client(ctx) as http:
        r = await http.post("/debug/reconcile", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert detail.startswith("Invalid JSON: ") and detail.count("Invalid JSON") == 1
    assert "line 1 column" in detail

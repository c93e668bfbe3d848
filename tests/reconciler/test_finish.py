"""Finishing an attempt is one piece of bookkeeping, whoever finishes it: here the dispatcher escalates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from e2e_support import SCRIPTS_DIR, attempts_of, e2e_config, forge_for, settle, sqlite_url
from test_notify import _receiver, serve

from reconciler.runtime import open_runtime, scripted_backends

pytestmark = pytest.mark.anyio


async def test_an_escalation_by_the_agent_run_is_counted_logged_and_announced(tmp_path: Path) -> None:
    received: list[dict[str, Any]] = []
    async with serve(_receiver(received)) as base, forge_for(tmp_path / "forge", ["protected-workflow"]) as forge:
        config = e2e_config(
            forge,
            ["protected-workflow"],
            database_url=sqlite_url(tmp_path / "greenloop.db"),
            workspace_dir=tmp_path / "workspaces",
            server={"slack_webhook_url": f"{base}/services/T0/B0/secret"},
        )
        async with open_runtime(config, backend_for=scripted_backends(str(SCRIPTS_DIR)), heartbeat_seconds=1.0) as ctx:
            await settle(ctx, forge, deadline_seconds=60)
            [attempt] = await attempts_of(ctx.sessions, "protected-workflow")
            metrics = ctx.metrics.render()
    assert attempt.status == "escalated"  # set by the dispatcher when the agent stopped without a fix
    assert len(received) == 1
    text = json.dumps(received[0]["body"])
    assert "protected-workflow" in text and attempt.id in text
    assert 'greenloop_attempts_finished_total{outcome="escalated"} 1' in metrics

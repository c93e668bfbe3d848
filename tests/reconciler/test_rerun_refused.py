"""A re-run the forge refuses is an error of the pass, not a re-run done.

The App may not write Actions, so the re-run's token (this repository, `actions: write` only) is refused at
the exchange (422 "not granted to this installation", as on GitHub) before any re-run is asked for.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_support import APP_PERMISSIONS, e2e_config, sqlite_url

from fixtures.forge import run_forge
from reconciler.runner import reconcile
from reconciler.runtime import open_runtime

pytestmark = pytest.mark.anyio


async def test_a_refused_rerun_is_reported_and_not_counted(tmp_path: Path) -> None:
    read_only_actions = {**APP_PERMISSIONS, "actions": "read"}
    async with run_forge(tmp_path / "forge", projects=["flaky"], app_permissions=read_only_actions) as forge:
        await forge.wait_idle(60)
        config = e2e_config(
            forge, ["flaky"], database_url=sqlite_url(tmp_path / "g.db"), workspace_dir=tmp_path / "workspaces"
        )
        async with open_runtime(config, backend_for=None) as ctx:
            summary = await reconcile(ctx, trigger="cli")
            metrics = ctx.metrics.render()
    assert [(r.project, r.decision) for r in summary.red] == [("flaky", "rerun")]  # the pass decided to re-run
    assert summary.reruns == []  # ... but the forge refused, so none was requested
    assert "not granted" in summary.errors["flaky"]
    assert "greenloop_reconcile_reruns_total 0" in metrics
    assert "greenloop_reconcile_project_errors_total 1" in metrics

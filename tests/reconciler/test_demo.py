"""`greenloop demo --json`, run as a user runs it: every fixture project ends where its fixture.toml says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.projects.catalog import list_projects

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_json_reports_every_fixture_project_in_its_expected_state() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")}
    done = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "demo", "--json"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)

    assert result["ok"] is True and result["settled"] is True
    assert result["model"] == "scripted model"
    states = {p["name"]: p["state"] for p in result["projects"]}
    assert states == {f.name: f.expected for f in list_projects()}
    assert all(p["ok"] for p in result["projects"])
    by_name = {p["name"]: p for p in result["projects"]}
    assert by_name["protected-workflow"]["pr_url"] is None
    assert by_name["stale-import"]["pr_url"] and by_name["bug-lib"]["pr_url"]
    # The reconciler learned of the red runs by events: signed webhooks, and cron-report's reported run.
    assert result["webhooks"] > 0 and result["event_passes"] > 0
    assert by_name["cron-report"]["pr_url"]
    cron = [e["event"] for e in result["timeline"] if e["project"] == "cron-report"]
    assert any("greenloop report --job nightly" in e and "exited 1" in e for e in cron), cron
    assert any("start [woken by an event]" in e for e in cron), cron

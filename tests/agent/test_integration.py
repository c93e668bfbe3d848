"""`agent_run_command` end to end: the fixture scripts, the real in-process MCP server, the local forge."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from agent.cli import agent_run_command
from fixtures.forge.server import Forge, run_forge
from policy.config import GreenloopConfig, load_config_text

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SCRIPTS = Path(__file__).resolve().parents[2] / "fixtures" / "scripts"


def _config(forge: Forge, tmp_path: Path, name: str, autonomy: str) -> GreenloopConfig:
    text = (
        "\n".join(
            [
                "[server]",
                f'workspace_dir = "{tmp_path / "ws"}"',
                "[forge]",
                f'api_url = "{forge.api_url}"',
                f'git_url = "{forge.git_url}"',
                f'app_id = "{forge.app_id}"',
                f'installation_id = "{forge.installation_id}"',
                f'private_key_path = "{forge.private_key_path}"',
                "timeout_seconds = 30",
                "[[project]]",
                f'name = "{name}"',
                f'repo = "acme/{name}"',
                f'autonomy = "{autonomy}"',
                'jobs = ["test"]',
            ]
        )
        + "\n"
    )
    return load_config_text(text)


@pytest.mark.parametrize(
    ("project", "autonomy", "code", "stop", "state"),
    [
        pytest.param("stale-import", "propose", 0, "succeeded_pr", "open", id="propose-opens-a-pr"),
        # Merge only on green checks: the agent's merge meets the PR's pending run and is refused; the
        # reconciler merges later (tests/reconciler/test_after_pr.py).
        pytest.param("bug-lib", "auto_merge", 0, "succeeded_pr", "open", id="auto-merge-waits-for-checks"),
        pytest.param("protected-workflow", "auto_merge", 1, "no_fix", None, id="protected-path-escalates"),
    ],
)
async def test_agent_run_replays_the_fixture_script_against_the_real_server_and_forge(
    project: str, autonomy: str, code: int, stop: str, state: str | None, tmp_path: Path
) -> None:
    async with run_forge(tmp_path / "forge", projects=[project]) as forge:
        await forge.wait_idle(120)
        config = _config(forge, tmp_path, project, autonomy)
        out = io.StringIO()
        transcript = tmp_path / "transcript.json"

        got = await agent_run_command(
            config,
            project,
            "test",
            f"scripted:{SCRIPTS / f'{project}.json'}",
            transcript_path=transcript,
            env={},
            out=out,
        )

        text = out.getvalue()
        assert got == code, text
        assert f"stop reason: {stop}" in text
        repo = forge.state.repo("acme", project)
        assert repo is not None
        pulls = list(repo.pulls.values())
        if state is None:
            assert pulls == []
            assert "# greenloop could not fix" in text and "refused: " in text
            assert ".github/workflows/ci.yml" in text
            assert "unrecognized arguments: --fail-fast" in text and "\\n" not in text  # the log, unescaped
        else:
            assert len(pulls) == 1
            assert ("merged" if pulls[0].merged else pulls[0].state) == state
            assert f"/pull/{pulls[0].number}" in text
            assert pulls[0].head_ref.startswith("greenloop/fix/test-")
        events = json.loads(transcript.read_text())
        assert events[-1]["reason"] == stop
        assert forge.admin_token not in transcript.read_text() and forge.admin_token not in text

"""Every token is scoped to what it is for, and the strict forge holds it to that, as GitHub does.

An attempt's session acts with a token for exactly its one repository and `ATTEMPT_PERMISSIONS`: another
repository is 404 over REST and over git smart HTTP (clone and push), a permission it was not granted is 403.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from server_support import GIT, harness

from fixtures.forge import Forge, run_forge
from mcp_server.errors import ForgeAuthError, ForgeNotFound
from mcp_server.forge import ForgeClient
from mcp_server.github_app import GitHubApp
from mcp_server.scopes import ATTEMPT_PERMISSIONS, READ_PERMISSIONS
from mcp_server.session import Mode, SessionGrant, config_binding_factory, session_tokens
from policy.config import GreenloopConfig

pytestmark = pytest.mark.anyio

APP_PERMISSIONS = {**ATTEMPT_PERMISSIONS, "actions": "write", "issues": "write", "metadata": "read"}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class World:
    forge: Forge
    config: GreenloopConfig
    tmp: Path


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("scoped")
    # The App itself may re-run jobs and write issues: what the attempt's token lacks, it lacks by its scope.
    async with run_forge(tmp / "forge", projects=["bug-lib", "stale-import"], app_permissions=APP_PERMISSIONS) as forge:
        await forge.wait_idle()
        h = harness(forge, tmp, {"bug-lib": "auto_merge", "stale-import": "propose"})
        yield World(forge, h.config, tmp)


async def _git(args: list[str], cwd: Path, token: str) -> subprocess.CompletedProcess[str]:
    """Run git off the event loop (the forge serves from this loop)."""
    return await asyncio.to_thread(_git_sync, args, cwd, token)


def _git_sync(args: list[str], cwd: Path, token: str) -> subprocess.CompletedProcess[str]:
    credential = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": "/dev/null",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {credential}",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run([GIT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)


async def test_an_attempts_token_covers_exactly_its_repository_and_permissions(world: World) -> None:
    config = world.config
    grant = SessionGrant(project="bug-lib", mode=Mode.AGENT, attempt_id="scope001", job="test")
    async with GitHubApp.from_settings(config.forge) as app, ForgeClient(config.forge, app) as shared:
        tokens = session_tokens(app, grant, config.project("bug-lib"))
        forge = shared.with_auth(tokens)
        # Its own repository: reads work, and the token the forge issued has exactly the attempt's scope.
        assert (await forge.get_repo("acme/bug-lib")).full_name == "acme/bug-lib"
        await forge.list_workflow_runs("acme/bug-lib", branch="main")
        token = await tokens.token()
        record = world.forge.auth.lookup(token)
        assert record is not None
        assert record.repositories == frozenset({"acme/bug-lib"})
        assert dict(record.permissions or {}) == {**ATTEMPT_PERMISSIONS, "metadata": "read"}
        # Another repository of the same installation: 404, as if it did not exist.
        with pytest.raises(ForgeNotFound) as not_found:
            await forge.get_repo("acme/stale-import")
        assert not_found.value.status == 404
        with pytest.raises(ForgeNotFound):
            await forge.list_workflow_runs("acme/stale-import", branch="main")
        # Permissions it was not granted, on its own repository: 403.
        runs = await forge.list_workflow_runs("acme/bug-lib", branch="main")
        run_id = runs.runs[0].id
        with pytest.raises(ForgeAuthError) as no_actions_write:
            await forge.rerun_workflow("acme/bug-lib", run_id)
        assert no_actions_write.value.status == 403
        with pytest.raises(ForgeAuthError) as no_issues:
            await forge.create_issue("acme/bug-lib", title="x", body="y")
        assert no_issues.value.status == 403
        # The App's unscoped token could do both: the refusal is the scope's, not the App's.
        await shared.rerun_workflow("acme/bug-lib", run_id)
        # One forge client per process: the scoped client counts into the shared stats.
        before = shared.stats.requests
        await forge.get_repo("acme/bug-lib")
        assert shared.stats.requests == before + 1
        # The same scope is one cached token; a read-only session's scope is another.
        assert await session_tokens(app, grant, config.project("bug-lib")).token() == token
        reader = session_tokens(app, SessionGrant(project="bug-lib"), config.project("bug-lib"))
        read_token = await reader.token()
        assert read_token != token
        read_record = world.forge.auth.lookup(read_token)
        assert read_record is not None and dict(read_record.permissions or {}) == {
            **READ_PERMISSIONS,
            "metadata": "read",
        }
        await forge.aclose()  # a scoped client leaves the shared pool open
        await shared.get_repo("acme/bug-lib")


async def test_an_attempts_token_cannot_clone_or_push_another_repository(world: World) -> None:
    config = world.config
    grant = SessionGrant(project="bug-lib", mode=Mode.AGENT, attempt_id="scope002", job="test")
    work = world.tmp / "git-scope"
    work.mkdir()
    async with GitHubApp.from_settings(config.forge) as app:
        token = await session_tokens(app, grant, config.project("bug-lib")).token()
    own = f"{world.forge.git_url}/acme/bug-lib.git"
    other = f"{world.forge.git_url}/acme/stale-import.git"
    cloned = await _git(["clone", "--quiet", own, "repo"], work, token)
    assert cloned.returncode == 0, cloned.stderr
    repo = work / "repo"
    refused = await _git(["clone", "--quiet", other, "other"], work, token)
    assert refused.returncode != 0 and "not found" in refused.stderr.lower()
    (repo / "NOTE.md").write_text("scoped\n")
    assert (await _git(["add", "-A"], repo, token)).returncode == 0
    assert (await _git(["commit", "--quiet", "-m", "note"], repo, token)).returncode == 0
    pushed_elsewhere = await _git(
        ["push", "--quiet", other, "HEAD:refs/heads/greenloop/fix/test-scope002"], repo, token
    )
    assert pushed_elsewhere.returncode != 0
    assert "not found" in pushed_elsewhere.stderr.lower()
    assert world.forge.state.repo("acme", "stale-import") is not None
    # Its own repository takes the push (contents: write).
    pushed = await _git(["push", "--quiet", own, "HEAD:refs/heads/greenloop/fix/test-scope002"], repo, token)
    assert pushed.returncode == 0, pushed.stderr


async def test_a_session_binding_uses_the_attempts_scoped_token(world: World) -> None:
    config = world.config
    audit_events: list[object] = []

    class Sink:
        async def record(self, event: object) -> None:
            audit_events.append(event)

    factory = config_binding_factory(config, audit=Sink())
    binding = await factory(SessionGrant(project="bug-lib", mode=Mode.AGENT, attempt_id="scope003", job="test"))
    try:
        with pytest.raises(ForgeNotFound):
            await binding.forge.get_repo("acme/stale-import")
        token = await binding.workspace._token()
        record = world.forge.auth.lookup(token)
        assert record is not None and record.repositories == frozenset({"acme/bug-lib"})
    finally:
        await binding.aclose()


async def test_the_observation_token_is_read_only_and_survives_a_repository_outside_the_installation(
    world: World,
) -> None:
    import httpx2

    from mcp_server.github_app import ObserverTokens
    from mcp_server.scopes import OBSERVER_PERMISSIONS

    config = world.config
    async with GitHubApp.from_settings(config.forge) as app:
        named = ObserverTokens(app, repositories=["bug-lib", "stale-import"], permissions=OBSERVER_PERMISSIONS)
        record = world.forge.auth.lookup(await named.token())
        assert record is not None and record.repositories == frozenset({"acme/bug-lib", "acme/stale-import"})
        assert set((record.permissions or {}).values()) == {"read"}
        # A configured repository the App is not installed on: the named scope is refused (422), and the pass
        # still observes the others with the same read-only permissions over the installation.
        async with httpx2.AsyncClient(base_url=world.forge.api_url) as http:
            created = await http.post(
                "/_forge/repos",
                json={"full_name": "acme/not-installed", "installed": False},
                headers={"Authorization": f"token {world.forge.admin_token}"},
            )
        assert created.status_code == 201
        wide = ObserverTokens(app, repositories=["bug-lib", "not-installed"], permissions=OBSERVER_PERMISSIONS)
        record = world.forge.auth.lookup(await wide.token())
        assert record is not None and record.repositories is None
        assert set((record.permissions or {}).values()) == {"read"}

"""Workspace against the local forge: clone, read, list, the path wall, write limits, commit and push."""

from __future__ import annotations

import asyncio
import base64
import errno
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from secret_shapes import assert_nothing_shown, secret_files

from fixtures.forge.server import Forge, run_forge
from mcp_server import workspace as workspace_module
from mcp_server.errors import GitError, ToolRefused, WorkspaceError, WorkspaceRefused
from mcp_server.forge import ForgeClient
from mcp_server.github_app import GitHubApp
from mcp_server.workspace import ATTEMPT_TRAILER, Workspace, _GitResult
from policy.config import ForgeSettings, ProjectConfig, WriteRules

REPO = "acme/clean"
BRANCH = "greenloop/fix/test-abc123"
ATTEMPT = "abc123"
BOT = ("greenloop[bot]", "greenloop-bot@users.noreply.example")
LIMITS = {"max_bytes": 100_000, "max_files_changed": 10, "max_lines_changed": 400}


@dataclass(frozen=True)
class Spawned:
    argv: tuple[str, ...]
    env: Mapping[str, str]


class RecordingWorkspace(Workspace):
    """A Workspace that records every git command it spawns (argv and environment)."""

    spawned: list[Spawned]

    async def _spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, stdin: bytes | None) -> _GitResult:
        self.spawned.append(Spawned(tuple(argv), dict(env)))
        return await super()._spawn(argv, env, cwd, stdin)


@dataclass
class Env:
    forge: Forge
    app: GitHubApp
    tmp: Path

    def workspace(self, *, name: str = "ws", write: WriteRules | None = None) -> RecordingWorkspace:
        project = ProjectConfig(name="clean", repo=REPO, write=write or WriteRules())
        ws = RecordingWorkspace(
            root_dir=self.tmp / name / "clean",
            project=project,
            git_url=self.forge.git_url,
            token=self.app.token,
            bot_name=BOT[0],
            bot_email=BOT[1],
            timeout=60,
        )
        ws.spawned = []
        return ws

    async def admin_git(self, *args: str, cwd: Path) -> str:
        """Run git as the forge's admin (a human with push rights), token in the environment only."""
        credential = base64.b64encode(f"x-access-token:{self.forge.admin_token}".encode()).decode()
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.tmp),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": "The Octocat",
            "GIT_AUTHOR_EMAIL": "octocat@github.com",
            "GIT_COMMITTER_NAME": "The Octocat",
            "GIT_COMMITTER_EMAIL": "octocat@github.com",
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {credential}",
        }
        proc = await asyncio.create_subprocess_exec(
            "git", *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        return out.decode()

    async def admin_commit(self, branch: str, files: Mapping[str, str], symlinks: Mapping[str, str] = {}) -> str:
        """Commit files and symlinks on `branch` of the forge's repository as the admin; return the sha."""
        work = self.tmp / f"admin-{len(list(self.tmp.glob('admin-*')))}"
        await self.admin_git("clone", "--quiet", f"{self.forge.git_url}/{REPO}.git", str(work), cwd=self.tmp)
        await self.admin_git("checkout", "-B", branch, cwd=work)
        for rel, text in files.items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            (work / rel).write_text(text)
        for rel, target in symlinks.items():
            os.symlink(target, work / rel)
        await self.admin_git("add", "-A", cwd=work)
        await self.admin_git("commit", "--quiet", "-m", "admin change", cwd=work)
        await self.admin_git("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", cwd=work)
        return (await self.admin_git("rev-parse", "HEAD", cwd=work)).strip()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with (
        run_forge(tmp_path / "forge", projects=["clean"], actions_enabled=False) as forge,
        GitHubApp.from_settings(forge.forge_settings()) as app,
    ):
        yield Env(forge=forge, app=app, tmp=tmp_path)


async def cloned(env: Env, *, write: WriteRules | None = None) -> RecordingWorkspace:
    ws = env.workspace(write=write)
    await ws.ensure_clone()
    return ws


async def on_fix_branch(env: Env, *, write: WriteRules | None = None) -> RecordingWorkspace:
    ws = await cloned(env, write=write)
    await ws.create_branch(BRANCH)
    return ws


# ---------------------------------------------------------------------------------------------- clone


@pytest.mark.anyio
async def test_clone_checks_out_the_default_branch_of_the_forge_repository(env: Env) -> None:
    ws = await cloned(env)
    assert ws.current_branch() == "main"
    assert (ws.root / ".github" / "workflows" / "ci.yml").is_file()
    commits = await ws.recent_commits(5)
    assert commits and commits[0].sha == await ws.head_sha()


@pytest.mark.anyio
async def test_token_reaches_git_only_through_the_environment_of_network_commands(env: Env) -> None:
    ws = await on_fix_branch(env)
    await ws.write_file("notes.txt", "hello\n", **LIMITS)
    await ws.commit_and_push("Add notes", attempt_id=ATTEMPT, expected_branch=BRANCH)
    await ws.ensure_clone()
    secrets = env.app.secrets()
    assert secrets, "the app minted a token"
    encoded = [base64.b64encode(f"x-access-token:{s}".encode()).decode() for s in secrets]

    network = [s for s in ws.spawned if s.argv[1] in ("clone", "fetch", "push")]
    assert {s.argv[1] for s in network} == {"clone", "fetch", "push"}
    for spawned in ws.spawned:
        argv = " ".join(spawned.argv)
        assert not any(secret in argv for secret in (*secrets, *encoded)), spawned.argv
        assert "@" not in argv.split("://", 1)[-1].split("/", 1)[0], "no userinfo in a URL"
        env_text = " ".join(spawned.env.values())
        if spawned in network:
            assert spawned.env["GIT_CONFIG_KEY_0"] == "http.extraHeader"
            assert spawned.env["GIT_CONFIG_VALUE_0"].startswith("Authorization: Basic ")
            assert any(e in spawned.env["GIT_CONFIG_VALUE_0"] for e in encoded)
        else:
            assert not any(secret in env_text for secret in (*secrets, *encoded)), spawned.argv
        assert spawned.env["GIT_TERMINAL_PROMPT"] == "0"
        configured = {
            spawned.env[f"GIT_CONFIG_KEY_{i}"]: spawned.env[f"GIT_CONFIG_VALUE_{i}"]
            for i in range(int(spawned.env["GIT_CONFIG_COUNT"]))
        }
        assert configured["core.hooksPath"] == "/dev/null"
        assert configured["core.symlinks"] == "true"
        assert configured["protocol.file.allow"] == "never"

    config = (ws.root / ".git" / "config").read_text()
    assert f"{env.forge.git_url}/{REPO}.git" in config
    assert "extraheader" not in config.lower() and "authorization" not in config.lower()
    assert not any(secret in config for secret in (*secrets, *encoded))


@pytest.mark.anyio
async def test_hooks_committed_to_the_repository_never_run(env: Env) -> None:
    ws = await on_fix_branch(env)
    marker = env.tmp / "hook-ran"
    hooks = ws.root / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    for name in ("pre-commit", "commit-msg", "pre-push", "post-commit"):
        (hooks / name).write_text(f"#!/bin/sh\ntouch {marker}\n")
        (hooks / name).chmod(0o755)
    await ws.write_file("notes.txt", "hello\n", **LIMITS)
    await ws.commit_and_push("Add notes", attempt_id=ATTEMPT, expected_branch=BRANCH)
    assert not marker.exists()


@pytest.mark.anyio
async def test_ensure_clone_again_resets_the_default_branch_to_the_forge(env: Env) -> None:
    ws = await cloned(env)
    new_sha = await env.admin_commit("main", {"UPSTREAM.md": "new upstream commit\n"})
    (ws.root / "stray.txt").write_text("left behind")
    await ws.ensure_clone()
    assert await ws.head_sha() == new_sha
    assert not (ws.root / "stray.txt").exists()


@pytest.mark.anyio
async def test_ensure_clone_on_the_fix_branch_keeps_the_work(env: Env) -> None:
    ws = await on_fix_branch(env)
    await ws.write_file("notes.txt", "work in progress\n", **LIMITS)
    await ws.ensure_clone()
    assert ws.current_branch() == BRANCH
    assert (ws.root / "notes.txt").read_text() == "work in progress\n"


@pytest.mark.anyio
async def test_clone_failure_is_a_git_error_without_token_or_host_path(env: Env) -> None:
    ws = env.workspace(name="missing")
    ws._remote_url = f"{env.forge.git_url}/acme/does-not-exist.git"
    await env.app.token()
    with pytest.raises(GitError) as info:
        await ws.ensure_clone()
    message = str(info.value)
    assert message.startswith("Git failed: git clone")
    assert str(env.tmp) not in message
    assert not any(secret in message for secret in env.app.secrets())


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://x-access-token:ghs_secret@127.0.0.1:1/git", id="userinfo"),
        pytest.param("file:///srv/git", id="file-scheme"),
        pytest.param("ssh://git@host/x", id="ssh"),
        pytest.param("http://127.0.0.1:1/git?token=abc", id="query"),
    ],
)
def test_git_urls_that_could_carry_credentials_or_local_transports_are_refused(url: str) -> None:
    async def no_token() -> str:
        raise AssertionError("never called")

    with pytest.raises(WorkspaceError, match="git URL"):
        Workspace(
            root_dir=Path("/nonexistent"),
            project=ProjectConfig(name="x", repo=REPO),
            git_url=url,
            token=no_token,
            bot_name="b",
            bot_email="b@example.com",
        )


# ---------------------------------------------------------------------------------------------- read


@pytest.mark.anyio
async def test_read_file_returns_a_numbered_slice_and_how_to_continue(env: Env) -> None:
    ws = await cloned(env)
    (ws.root / "numbers.txt").write_text("".join(f"line {i}\n" for i in range(1, 11)))
    first = await ws.read_file("numbers.txt", max_lines=4)
    assert (first.start_line, first.end_line, first.total_lines) == (1, 4, 10)
    assert first.content == "line 1\nline 2\nline 3\nline 4\n"
    assert first.truncated and first.next_start_line == 5
    last = await ws.read_file("numbers.txt", start_line=9, max_lines=4)
    assert (last.end_line, last.truncated, last.next_start_line) == (10, False, None)
    assert last.path == "numbers.txt"


@pytest.mark.anyio
async def test_read_file_stops_at_the_byte_budget_on_a_line_boundary(env: Env) -> None:
    ws = await cloned(env)
    (ws.root / "wide.txt").write_text("a" * 60 + "\n" + "b" * 60 + "\n" + "c\n")
    got = await ws.read_file("wide.txt", max_bytes=100)
    assert got.content == "a" * 60 + "\n"
    assert got.next_start_line == 2


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        pytest.param("blob.bin", b"PK\x03\x04\x00\x00binary", "Binary file", id="nul-byte"),
        pytest.param("latin1.txt", b"caf\xe9\n", "Binary file", id="not-utf8"),
        pytest.param("missing.txt", None, "Not found", id="missing"),
    ],
)
@pytest.mark.anyio
async def test_read_file_refuses_what_it_cannot_show(env: Env, name: str, data: bytes | None, match: str) -> None:
    ws = await cloned(env)
    if data is not None:
        (ws.root / name).write_bytes(data)
    with pytest.raises(ToolRefused, match=match):
        await ws.read_file(name)


@pytest.mark.anyio
async def test_read_file_refuses_a_directory_and_a_start_past_the_end(env: Env) -> None:
    ws = await cloned(env)
    with pytest.raises(ToolRefused, match="directory"):
        await ws.read_file(".github/workflows")
    with pytest.raises(ToolRefused, match="Out of range"):
        await ws.read_file(".github/workflows/ci.yml", start_line=100_000)


# ---------------------------------------------------------------------------------------------- list


@pytest.mark.anyio
async def test_list_files_shows_tracked_and_untracked_files_but_never_git_internals(env: Env) -> None:
    ws = await cloned(env)
    (ws.root / "untracked.txt").write_text("new")
    listing = await ws.list_files()
    assert ".github/workflows/ci.yml" in listing.paths and "untracked.txt" in listing.paths
    assert not any(p == ".git" or p.startswith(".git/") for p in listing.paths)
    assert list(listing.paths) == sorted(listing.paths) and listing.total == len(listing.paths)


@pytest.mark.anyio
async def test_list_files_narrows_by_directory_glob_and_limit(env: Env) -> None:
    ws = await cloned(env)
    under = await ws.list_files(under=".github")
    assert under.paths == (".github/workflows/ci.yml",)
    python = await ws.list_files(glob="**/*.py")
    assert python.paths and all(p.endswith(".py") for p in python.paths)
    limited = await ws.list_files(limit=1)
    assert len(limited.paths) == 1 and limited.truncated and limited.total > 1


# ---------------------------------------------------------------------------------------------- the wall

HOSTILE_PATHS = [
    pytest.param("../outside.txt", "traversal", id="dotdot"),
    pytest.param("docs/../../outside.txt", "traversal", id="inner-dotdot"),
    pytest.param(".git/config", "git_dir", id="git-config"),
    pytest.param(".GIT/config", "git_dir", id="git-config-case"),
    pytest.param("/etc/passwd", "absolute", id="absolute"),
    pytest.param("escape/secret.txt", "outside_root", id="committed-dir-symlink-out"),
    pytest.param("escape-file", "outside_root", id="committed-file-symlink-out"),
    pytest.param("to-git/config", "git_dir", id="committed-symlink-into-git"),
]


async def with_hostile_symlinks(env: Env) -> RecordingWorkspace:
    outside = env.tmp / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.txt").write_text("host secret\n")
    await env.admin_commit(
        "main",
        {"README-links.md": "links\n"},
        symlinks={"escape": str(outside), "escape-file": str(outside / "secret.txt"), "to-git": ".git"},
    )
    ws = await cloned(env)
    assert (ws.root / "escape").is_symlink(), "the clone materialised the committed symlink"
    return ws


@pytest.mark.parametrize(("path", "reason"), HOSTILE_PATHS)
@pytest.mark.anyio
async def test_hostile_paths_are_refused_for_reading(env: Env, path: str, reason: str) -> None:
    ws = await with_hostile_symlinks(env)
    with pytest.raises(WorkspaceRefused) as info:
        await ws.read_file(path)
    assert info.value.reason == reason
    assert "host secret" not in str(info.value) and str(env.tmp) not in str(info.value)


@pytest.mark.parametrize(("path", "reason"), HOSTILE_PATHS)
@pytest.mark.anyio
async def test_hostile_paths_are_refused_for_writing_and_nothing_is_written(env: Env, path: str, reason: str) -> None:
    ws = await with_hostile_symlinks(env)
    await ws.create_branch(BRANCH)
    with pytest.raises(WorkspaceRefused) as info:
        await ws.write_file(path, "pwned\n", **LIMITS)
    assert info.value.reason == reason
    assert (env.tmp / "outside" / "secret.txt").read_text() == "host secret\n"
    assert "pwned" not in (ws.root / ".git" / "config").read_text()


@pytest.mark.anyio
async def test_hostile_directory_is_refused_for_listing(env: Env) -> None:
    ws = await with_hostile_symlinks(env)
    with pytest.raises(WorkspaceRefused):
        await ws.list_files(under="escape")
    for under in (".git", "..", "../..", "/"):
        with pytest.raises(WorkspaceRefused):
            await ws.list_files(under=under)


@pytest.mark.anyio
async def test_write_through_a_symlink_inside_the_repository_is_refused(env: Env) -> None:
    await env.admin_commit("main", {"real.txt": "real\n"}, symlinks={"alias.txt": "real.txt", "alias-dir": "docs"})
    ws = await on_fix_branch(env)
    for path in ("alias.txt", "alias-dir/usage.md"):
        with pytest.raises(WorkspaceRefused) as info:
            await ws.write_file(path, "changed\n", **LIMITS)
        assert info.value.reason == "symlink"
    assert (ws.root / "alias.txt").is_symlink() and (ws.root / "real.txt").read_text() == "real\n"


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(".github/workflows/ci.yml", id="workflow"),
        pytest.param(".github/workflows/new.yml", id="new-workflow"),
        pytest.param(".GitHub/Workflows/ci.yml", id="workflow-case"),
        pytest.param("CODEOWNERS", id="codeowners"),
        pytest.param("deploy/server.pem", id="pem"),
        pytest.param(".env", id="dotenv"),
    ],
)
@pytest.mark.anyio
async def test_protected_paths_are_refused_for_writing(env: Env, path: str) -> None:
    ws = await on_fix_branch(env)
    before = (ws.root / ".github/workflows/ci.yml").read_text()
    with pytest.raises(WorkspaceRefused) as info:
        await ws.write_file(path, "on: push\n", **LIMITS)
    assert info.value.reason == "denied_glob"
    assert (ws.root / ".github/workflows/ci.yml").read_text() == before


@pytest.mark.anyio
async def test_project_write_rules_limit_writes_to_the_allowed_globs(env: Env) -> None:
    ws = await on_fix_branch(env, write=WriteRules(allowed=("invoice/**",)))
    with pytest.raises(WorkspaceRefused) as info:
        await ws.write_file("tests/test_new.py", "x = 1\n", **LIMITS)
    assert info.value.reason == "not_allowed"
    written = await ws.write_file("invoice/new.py", "x = 1\n", **LIMITS)
    assert written.path == "invoice/new.py" and written.created


# ---------------------------------------------------------------------------------------------- write


@pytest.mark.anyio
async def test_write_on_the_default_branch_is_refused(env: Env) -> None:
    ws = await cloned(env)
    with pytest.raises(ToolRefused, match="not a fix branch"):
        await ws.write_file("notes.txt", "x\n", **LIMITS)
    assert not (ws.root / "notes.txt").exists()


@pytest.mark.anyio
async def test_write_creates_and_replaces_files_and_reports_the_change_size(env: Env) -> None:
    ws = await on_fix_branch(env)
    created = await ws.write_file("pkg/new_module.py", "a = 1\nb = 2\n", **LIMITS)
    assert created.created and created.bytes == len("a = 1\nb = 2\n")
    assert (created.files_changed_total, created.lines_changed_total) == (1, 2)
    replaced = await ws.write_file("pkg/new_module.py", "a = 1\nb = 3\n", **LIMITS)
    assert not replaced.created
    assert (replaced.files_changed_total, replaced.lines_changed_total) == (1, 2)
    assert (ws.root / "pkg/new_module.py").read_text() == "a = 1\nb = 3\n"
    assert not [p for p in (ws.root / "pkg").iterdir() if p.name.startswith(".greenloop-")]


@pytest.mark.anyio
async def test_write_keeps_an_executable_file_executable(env: Env) -> None:
    await env.admin_commit("main", {"run.sh": "#!/bin/sh\necho hi\n"})
    ws = await cloned(env)
    (ws.root / "run.sh").chmod(0o755)  # as committed with the x bit in a real repository
    await ws.create_branch(BRANCH)
    await ws.write_file("run.sh", "#!/bin/sh\necho bye\n", **LIMITS)
    assert os.stat(ws.root / "run.sh").st_mode & 0o111


@pytest.mark.anyio
async def test_oversized_write_is_refused(env: Env) -> None:
    ws = await on_fix_branch(env)
    with pytest.raises(ToolRefused, match="over the limit of 10"):
        await ws.write_file("big.txt", "x" * 11, max_bytes=10, max_files_changed=10, max_lines_changed=400)
    assert not (ws.root / "big.txt").exists()


@pytest.mark.anyio
async def test_changed_files_cap_counts_the_whole_change_against_the_default_branch(env: Env) -> None:
    ws = await on_fix_branch(env)
    caps = {"max_bytes": 1000, "max_files_changed": 2, "max_lines_changed": 400}
    await ws.write_file("one.txt", "1\n", **caps)
    await ws.commit_and_push("first", attempt_id=ATTEMPT, expected_branch=BRANCH)  # committed work still counts
    await ws.write_file("two.txt", "2\n", **caps)
    with pytest.raises(ToolRefused, match=r"3 file\(s\).*limits are 2 file\(s\)"):
        await ws.write_file("three.txt", "3\n", **caps)
    assert not (ws.root / "three.txt").exists()
    again = await ws.write_file("two.txt", "2 again\n", **caps)  # an already-changed file is not a new one
    assert again.files_changed_total == 2


@pytest.mark.anyio
async def test_changed_lines_cap_includes_the_new_content(env: Env) -> None:
    ws = await on_fix_branch(env)
    caps = {"max_bytes": 100_000, "max_files_changed": 10, "max_lines_changed": 5}
    await ws.write_file("a.txt", "1\n2\n3\n", **caps)
    with pytest.raises(ToolRefused, match=r"6 line\(s\)"):
        await ws.write_file("b.txt", "4\n5\n6\n", **caps)
    assert not (ws.root / "b.txt").exists()


# ---------------------------------------------------------------------------------------------- branches


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("main", id="default"),
        pytest.param("feature/x", id="other"),
        pytest.param("greenloop/fix/test-ABC123", id="uppercase"),
        pytest.param("greenloop/fix/../main-abc123", id="dotdot"),
        pytest.param("-f", id="option"),
    ],
)
@pytest.mark.anyio
async def test_create_branch_refuses_anything_but_a_fix_branch(env: Env, name: str) -> None:
    ws = await cloned(env)
    with pytest.raises(ToolRefused, match="not a fix branch"):
        await ws.create_branch(name)
    assert ws.current_branch() == "main"


@pytest.mark.anyio
async def test_create_branch_starts_at_the_default_head_and_is_idempotent(env: Env) -> None:
    ws = await cloned(env)
    base = await ws.head_sha()
    assert await ws.create_branch(BRANCH) == base
    assert ws.current_branch() == BRANCH
    assert await ws.create_branch(BRANCH) == base


# ---------------------------------------------------------------------------------------------- commit and push


@pytest.mark.anyio
async def test_commit_and_push_lands_on_the_forge_fix_branch_with_bot_identity_and_trailer(env: Env) -> None:
    ws = await on_fix_branch(env)
    base = await ws.head_sha()
    await ws.write_file("invoice/notes.md", "fixed\n", **LIMITS)
    pushed = await ws.commit_and_push(
        f"Fix the thing\n\n{ATTEMPT_TRAILER}: zzz999\n", attempt_id=ATTEMPT, expected_branch=BRANCH
    )
    assert pushed.branch == BRANCH and pushed.sha == await ws.head_sha() != base

    settings = ForgeSettings(api_url=env.forge.api_url)
    async with ForgeClient(settings, env.app) as client:
        commits = await client.list_commits(REPO, sha=BRANCH, per_page=2)
        main = await client.list_commits(REPO, sha="main", per_page=1)
    assert commits[0].sha == pushed.sha and commits[1].sha == base
    message = commits[0].commit.message
    assert message.startswith("Fix the thing")
    assert f"{ATTEMPT_TRAILER}: {ATTEMPT}" in message and "zzz999" not in message  # forged trailer stripped
    assert commits[0].commit.author is not None and commits[0].commit.author.email == BOT[1]
    assert main[0].sha == base  # the default branch did not move

    push = [s.argv for s in ws.spawned if s.argv[1] == "push"]
    assert push == [("git", "push", "--porcelain", "--no-verify", "origin", f"HEAD:refs/heads/{BRANCH}")]
    assert not any(arg in ("-f", "--force", "--force-with-lease", "--mirror") or arg.startswith("+") for arg in push[0])


@pytest.mark.anyio
async def test_push_never_forces_over_a_branch_that_moved_on_the_forge(env: Env) -> None:
    ws = await on_fix_branch(env)
    theirs = await env.admin_commit(BRANCH, {"someone-else.txt": "theirs\n"})
    await ws.write_file("mine.txt", "mine\n", **LIMITS)
    with pytest.raises(GitError, match=r"rejected|non-fast-forward|fetch first"):
        await ws.commit_and_push("mine", attempt_id=ATTEMPT, expected_branch=BRANCH)
    async with ForgeClient(ForgeSettings(api_url=env.forge.api_url), env.app) as client:
        head = await client.list_commits(REPO, sha=BRANCH, per_page=1)
    assert head[0].sha == theirs


@pytest.mark.anyio
async def test_commit_on_the_default_branch_is_refused(env: Env) -> None:
    ws = await cloned(env)
    (ws.root / "sneaky.txt").write_text("x")
    for expected in ("main", BRANCH):
        with pytest.raises(ToolRefused, match="Commit refused"):
            await ws.commit_and_push("sneak", attempt_id=ATTEMPT, expected_branch=expected)
    assert not [s for s in ws.spawned if s.argv[1] in ("commit", "push")]


@pytest.mark.anyio
async def test_commit_on_another_fix_branch_than_expected_is_refused(env: Env) -> None:
    ws = await on_fix_branch(env)
    await ws.write_file("x.txt", "x\n", **LIMITS)
    with pytest.raises(ToolRefused, match="Commit refused"):
        await ws.commit_and_push("x", attempt_id=ATTEMPT, expected_branch="greenloop/fix/other-def456")


@pytest.mark.anyio
async def test_nothing_to_commit_is_refused(env: Env) -> None:
    ws = await on_fix_branch(env)
    with pytest.raises(ToolRefused, match="Nothing to commit"):
        await ws.commit_and_push("empty", attempt_id=ATTEMPT, expected_branch=BRANCH)
    await ws.write_file("x.txt", "x\n", **LIMITS)
    await ws.commit_and_push("x", attempt_id=ATTEMPT, expected_branch=BRANCH)
    with pytest.raises(ToolRefused, match="Nothing to commit"):
        await ws.commit_and_push("again", attempt_id=ATTEMPT, expected_branch=BRANCH)


@pytest.mark.anyio
async def test_empty_message_is_refused(env: Env) -> None:
    ws = await on_fix_branch(env)
    await ws.write_file("x.txt", "x\n", **LIMITS)
    with pytest.raises(ToolRefused, match="message is empty"):
        await ws.commit_and_push(f"  \n{ATTEMPT_TRAILER}: abc123\n", attempt_id=ATTEMPT, expected_branch=BRANCH)


@pytest.mark.anyio
async def test_a_commit_whose_push_failed_is_pushed_by_the_next_call(env: Env) -> None:
    ws = await on_fix_branch(env)
    await ws.write_file("x.txt", "x\n", **LIMITS)
    env.forge.faults.add(path_regex="git-receive-pack", kind="500", count=5)
    with pytest.raises(GitError, match="git push"):
        await ws.commit_and_push("x", attempt_id=ATTEMPT, expected_branch=BRANCH)
    env.forge.faults.clear()
    pushed = await ws.commit_and_push("x", attempt_id=ATTEMPT, expected_branch=BRANCH)
    assert pushed.sha == await ws.head_sha()
    async with ForgeClient(ForgeSettings(api_url=env.forge.api_url), env.app) as client:
        assert (await client.list_commits(REPO, sha=BRANCH, per_page=1))[0].sha == pushed.sha


@pytest.mark.anyio
async def test_a_resumed_attempt_pushes_its_own_earlier_commit_instead_of_refusing(env: Env) -> None:
    first = await on_fix_branch(env)
    await first.write_file("x.txt", "x\n", **LIMITS)
    pushed = await first.commit_and_push("x", attempt_id=ATTEMPT, expected_branch=BRANCH)
    # The worker died here. A new workspace on the same directory resumes: its write changes nothing.
    resumed = env.workspace()
    await resumed.ensure_clone()
    await resumed.create_branch(BRANCH)
    await resumed.write_file("x.txt", "x\n", **LIMITS)
    again = await resumed.commit_and_push("x", attempt_id=ATTEMPT, expected_branch=BRANCH)
    assert again.sha == pushed.sha
    with pytest.raises(ToolRefused, match="Nothing to commit"):  # once pushed by this object, it is done
        await resumed.commit_and_push("x", attempt_id=ATTEMPT, expected_branch=BRANCH)
    with pytest.raises(ToolRefused, match="Nothing to commit"):  # another attempt's commit is not its own
        await env.workspace().commit_and_push("x", attempt_id="other123", expected_branch=BRANCH)


# ---------------------------------------------------------------------------------------------- windowed redaction


@pytest.mark.anyio
async def test_every_window_of_every_secret_shape_shows_no_secret(env: Env) -> None:
    """Issue 12: a window starting inside a PEM block used to return its raw base64 lines."""
    ws = await cloned(env)
    for name, (text, pieces) in secret_files().items():
        (ws.root / name).parent.mkdir(parents=True, exist_ok=True)
        (ws.root / name).write_text(text)
        whole = await ws.read_file(name)
        assert not whole.truncated
        total = whole.total_lines
        for start in range(1, total + 1):
            for count in range(1, total - start + 2):
                got = await ws.read_file(name, start_line=start, max_lines=count)
                assert_nothing_shown(got.content, pieces, f"{name} lines {start}+{count}")
                assert got.content.count("\n") == got.end_line - got.start_line + 1 or got.end_line == total
        for budget in range(20, len(text) + 40, 37):
            got = await ws.read_file(name, max_bytes=budget)
            assert_nothing_shown(got.content, pieces, f"{name} first {budget} bytes")


# ---------------------------------------------------------------------------------------------- filesystem errors


@pytest.mark.anyio
async def test_writing_or_reading_under_a_file_is_refused_naming_that_file(env: Env) -> None:
    """Issue 12: 'README.md/x' raised NotADirectoryError, which reached the model as "Internal error"."""
    ws = await on_fix_branch(env)
    (ws.root / "docs").mkdir(exist_ok=True)
    (ws.root / "docs" / "guide.md").write_text("guide\n")
    for path in ("docs/guide.md/x", "docs/guide.md/deeper/x.txt"):
        with pytest.raises(ToolRefused) as write:
            await ws.write_file(path, "x\n", **LIMITS)
        assert "'docs/guide.md' is a file, not a directory" in str(write.value)
        with pytest.raises(ToolRefused) as read:
            await ws.read_file(path)
        assert str(read.value).startswith(("Read refused: 'docs/guide.md' is a file", "Not found"))
    assert not (ws.root / "docs" / "guide.md").is_dir()


@pytest.mark.parametrize(
    ("code", "named"),
    [
        pytest.param(errno.ENOTDIR, "a component of the path is not a directory", id="NotADirectoryError"),
        pytest.param(errno.ENAMETOOLONG, "the name 'name.txt' is too long", id="name-too-long"),
        pytest.param(errno.ELOOP, "too many symbolic links", id="too-many-symlink-levels"),
        pytest.param(
            errno.EACCES, "permission denied on 'deep/dir/name.txt' or its directory 'deep/dir'", id="PermissionError"
        ),
        pytest.param(
            errno.EPERM,
            "permission denied on 'deep/dir/name.txt' or its directory 'deep/dir'",
            id="PermissionError-EPERM",
        ),
        pytest.param(errno.EROFS, "the workspace's filesystem is read-only", id="read-only-filesystem"),
        pytest.param(errno.EISDIR, "'deep/dir/name.txt' is a directory", id="IsADirectoryError"),
        pytest.param(errno.ENOSPC, "no space left", id="no-space"),
        pytest.param(errno.EIO, "the filesystem refused 'deep/dir/name.txt'", id="other-OSError"),
    ],
)
@pytest.mark.anyio
async def test_every_os_error_of_a_write_or_read_is_a_clear_refusal(
    env: Env, monkeypatch: pytest.MonkeyPatch, code: int, named: str
) -> None:
    ws = await on_fix_branch(env)
    (ws.root / "deep" / "dir").mkdir(parents=True)
    (ws.root / "deep" / "dir" / "name.txt").write_text("old\n")
    host = str(ws.root / "deep" / "dir" / "name.txt")

    def fail(*args: object) -> None:
        raise OSError(code, os.strerror(code), host)  # OSError(...) builds the errno's subclass

    monkeypatch.setattr(workspace_module, "_replace_file", fail)
    monkeypatch.setattr(workspace_module, "_read_text", fail)
    for action, call in (
        ("Write", ws.write_file("deep/dir/name.txt", "new\n", **LIMITS)),
        ("Read", ws.read_file("deep/dir/name.txt")),
    ):
        with pytest.raises(ToolRefused) as refused:
            await call
        message = str(refused.value)
        assert message.startswith(f"{action} refused: ") and named in message, message
        assert str(env.tmp) not in message  # never the host path the OS error carries
    assert (ws.root / "deep" / "dir" / "name.txt").read_text() == "old\n"


# ---------------------------------------------------------------------------------------------- listing index


def _ls_files_runs(ws: RecordingWorkspace) -> int:
    return sum(1 for s in ws.spawned if s.argv[1] == "ls-files")


@pytest.mark.anyio
async def test_listing_comes_from_an_index_that_follows_every_change_of_the_tree(env: Env) -> None:
    ws = await cloned(env)
    (ws.root / "notes.log").write_text("scratch")
    first = await ws.list_files()
    assert "notes.log" in first.paths
    again = await ws.list_files(under=".github")
    assert again.paths == (".github/workflows/ci.yml",)
    assert _ls_files_runs(ws) == 1  # the second listing (another directory) came from the index

    # The forge's default branch moves: fetch + reset bring the new file, and the listing shows it.
    await env.admin_commit("main", {"docs/added.md": "new\n"})
    await ws.ensure_clone()
    moved = await ws.list_files()
    assert "docs/added.md" in moved.paths and "notes.log" not in moved.paths  # `git clean` removed it
    (ws.root / "notes.log").write_text("scratch")  # an untracked file made by a build, listed too

    # A branch is created and checked out, a file written, .gitignore changed by a write: all listed at once.
    await ws.create_branch(BRANCH)
    await ws.write_file("src/fresh.py", "x = 1\n", **LIMITS)
    listed = await ws.list_files()
    assert "src/fresh.py" in listed.paths and "notes.log" in listed.paths
    await ws.write_file(".gitignore", "*.log\n", **LIMITS)
    assert "notes.log" not in (await ws.list_files()).paths

    # A commit (add -A) and push change nothing that is listed, and the listing stays right.
    await ws.commit_and_push("fix: add fresh", attempt_id=ATTEMPT, expected_branch=BRANCH)
    after = await ws.list_files()
    assert {"src/fresh.py", ".gitignore", "docs/added.md"} <= set(after.paths) and "notes.log" not in after.paths
    runs = _ls_files_runs(ws)
    await ws.list_files(glob="**/*.py")
    assert _ls_files_runs(ws) == runs  # unchanged tree: no new `git ls-files`


@pytest.mark.anyio
async def test_a_listing_made_while_the_tree_changed_is_not_kept(env: Env) -> None:
    ws = await on_fix_branch(env)
    real_spawn = Workspace._spawn_process

    async def write_during_ls_files(
        self: Workspace, argv: Sequence[str], env_: Mapping[str, str], cwd: Path, stdin: bytes | None
    ) -> _GitResult:
        result = await real_spawn(self, argv, env_, cwd, stdin)
        if argv[1] == "ls-files" and not (self.root / "late.py").exists():
            await self.write_file("late.py", "late = True\n", **LIMITS)  # lands after git listed the tree
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Workspace, "_spawn_process", write_during_ls_files)
        stale = await ws.list_files()
    assert "late.py" not in stale.paths  # this answer predates the write...
    assert "late.py" in (await ws.list_files()).paths  # ...and was not kept as the index


@pytest.mark.anyio
async def test_read_file_at_a_commit_of_the_default_branch_history_reads_that_version_only(env: Env) -> None:
    old = await env.admin_commit("main", {"notes.txt": "old text\npassword = hunter2-very-secret\n"})
    await env.admin_commit("main", {"notes.txt": "new text\n"})
    outside = await env.admin_commit("side", {"notes.txt": "side text\n"})
    ws = await cloned(env)
    (ws.root / "notes.txt").write_text("working tree\n")

    got = await ws.read_file("notes.txt", ref=old)
    assert got.content.startswith("old text\n") and "hunter2-very-secret" not in got.content  # redacted
    assert (await ws.read_file("./notes.txt", ref=old[:12])).path == "notes.txt"
    assert (await ws.read_file("notes.txt")).content == "working tree\n"  # without ref: the working copy

    with pytest.raises(ToolRefused, match="not a commit of this repository"):
        await ws.read_file("notes.txt", ref=outside)  # on another branch of the forge: never fetched
    await env.admin_git("checkout", "--quiet", "-b", BRANCH, cwd=ws.root)
    await env.admin_git("commit", "--quiet", "-am", "local work", cwd=ws.root)
    local = (await env.admin_git("rev-parse", "HEAD", cwd=ws.root)).strip()
    with pytest.raises(ToolRefused, match="not in the history of the default branch"):
        await ws.read_file("notes.txt", ref=local)  # a commit of the workspace, off the default branch
    for name in ("side", "main", "HEAD", "origin/main", "main~1", f"{old}^"):
        with pytest.raises(ToolRefused, match="ref must be a commit SHA"):
            await ws.read_file("notes.txt", ref=name)
    with pytest.raises(ToolRefused, match="not a commit of this repository"):
        await ws.read_file("notes.txt", ref="0" * 40)
    for path in ("../notes.txt", "/etc/passwd", ".git/config", "a/../../notes.txt"):
        with pytest.raises(WorkspaceRefused):
            await ws.read_file(path, ref=old)
    with pytest.raises(ToolRefused, match="Not found"):
        await ws.read_file("nope.txt", ref=old)
    with pytest.raises(ToolRefused, match="directory"):
        await ws.read_file(".github", ref=old)


@pytest.mark.anyio
async def test_read_file_at_a_commit_does_not_follow_a_symlink(env: Env) -> None:
    sha = await env.admin_commit("main", {}, symlinks={"link.txt": "/etc/passwd"})
    ws = await cloned(env)
    with pytest.raises(ToolRefused, match="symlink"):
        await ws.read_file("link.txt", ref=sha)

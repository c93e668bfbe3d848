"""The write tools settle their own outcome from the forge when a reply is lost after the forge acted.

The forge's `reply_lost` / `reply_cut` faults handle the request completely, then drop the reply: the push
lands, the pull request is created, the merge is made, and the client sees a broken connection. Each tool
reads the forge back (the fix branch's head, the branch's pull request, the pull request's merged state)
and reports what happened; it reports a failure only when the forge shows the write did not happen.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from server_support import Harness, harness
from test_server import FIX, REPO, ok, refused, session

from fixtures.forge import Forge, run_forge

pytestmark = pytest.mark.anyio

RECEIVE_PACK = r"^/git/acme/bug-lib\.git/git-receive-pack$"
PULLS = r"^/repos/acme/bug-lib/pulls$"
MERGE = r"^/repos/acme/bug-lib/pulls/\d+/merge$"
KINDS = ["reply_lost", "reply_cut"]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def forge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Forge]:
    async with run_forge(tmp_path_factory.mktemp("forge"), projects=["bug-lib"]) as running:
        yield running


@pytest.fixture
def h(forge: Forge, tmp_path: Path) -> Harness:
    forge.faults.clear()
    return harness(forge, tmp_path, {"bug-lib": "propose"})


async def _branch_head(forge: Forge, branch: str) -> str | None:
    repo = forge.state.repo("acme", "bug-lib")
    assert repo is not None
    proc = await asyncio.create_subprocess_exec(
        "git", "--git-dir", str(repo.git_dir), "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return out.decode().strip() or None


async def _write_fix(client: object) -> None:
    await ok(client, "create_branch")  # type: ignore[arg-type]
    content = FIX.read_text(encoding="utf-8")
    await ok(client, "write_repo_file", {"path": "pager/pagination.py", "content": content})  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_push_whose_reply_is_lost_is_read_back_as_pushed(forge: Forge, h: Harness, kind: str) -> None:
    async with session(h, attempt=f"push{kind.replace('_', '')}") as client:
        await _write_fix(client)
        forge.faults.add(path_regex=RECEIVE_PACK, kind=kind, method="POST")
        pushed = await ok(client, "commit_and_push", {"message": "pager: clamp stop"})
        assert forge.faults.list() == [], "the push went through the fault"
        assert await _branch_head(forge, pushed["branch"]) == pushed["sha"]
        pr = await ok(client, "create_pull_request", {"title": "Fix page_bounds", "body": "b"})
        assert pr["created"] is True and pr["head_sha"] == pushed["sha"]


async def test_a_push_that_did_not_land_is_reported_with_what_the_forge_shows(forge: Forge, h: Harness) -> None:
    async with session(h, attempt="pushfailed") as client:
        await _write_fix(client)
        forge.faults.add(path_regex=RECEIVE_PACK, kind="500", method="POST")
        text = await refused(client, "commit_and_push", {"message": "pager: clamp stop"})
        assert "read back: the forge has no such branch" in text
        pushed = await ok(client, "commit_and_push", {"message": "pager: clamp stop"})  # the commit is pushed now
        assert await _branch_head(forge, pushed["branch"]) == pushed["sha"]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_pull_request_whose_reply_is_lost_is_found_and_returned(forge: Forge, h: Harness, kind: str) -> None:
    async with session(h, attempt=f"pull{kind.replace('_', '')}") as client:
        await _write_fix(client)
        pushed = await ok(client, "commit_and_push", {"message": "pager: clamp stop"})
        forge.faults.add(path_regex=PULLS, kind=kind, method="POST")
        pr = await ok(client, "create_pull_request", {"title": "Fix page_bounds", "body": "b"})
        assert forge.faults.list() == [], "the create went through the fault"
        assert pr["created"] is True and pr["head_sha"] == pushed["sha"]
        repo = forge.state.repo("acme", "bug-lib")
        assert repo is not None
        assert [p.number for p in repo.pulls.values() if p.head_ref == pushed["branch"]] == [pr["number"]]


async def test_a_pull_request_the_forge_did_not_create_is_reported_as_such(forge: Forge, h: Harness) -> None:
    async with session(h, attempt="pullfailed") as client:
        await _write_fix(client)
        await ok(client, "commit_and_push", {"message": "pager: clamp stop"})
        forge.faults.add(path_regex=PULLS, kind="502", method="POST")
        text = await refused(client, "create_pull_request", {"title": "Fix page_bounds", "body": "b"})
        assert "Read back: the fix branch has no open pull request" in text


@pytest.mark.parametrize("kind", KINDS)
async def test_a_merge_whose_reply_is_lost_is_read_back_as_merged(tmp_path: Path, kind: str) -> None:
    async with run_forge(tmp_path / "forge", projects=["bug-lib"]) as forge:
        h = harness(forge, tmp_path, {"bug-lib": "auto_merge"})
        async with session(h, attempt="mergelost") as client:
            await _write_fix(client)
            pushed = await ok(client, "commit_and_push", {"message": "pager: clamp stop"})
            pr = await ok(client, "create_pull_request", {"title": "Fix page_bounds", "body": "b"})
            await forge.wait_idle(120)  # merge only on green checks: the PR's own run finishes first
            forge.faults.add(path_regex=MERGE, kind=kind, method="PUT")
            merged = await ok(client, "merge_pull_request")
            assert forge.faults.list() == [], "the merge went through the fault"
            now = await h.bindings[0].forge.get_pull_request(REPO, pr["number"])
            assert now.merged and now.head.sha == pushed["sha"]
            assert merged == {"number": pr["number"], "merged": True, "sha": now.merge_commit_sha}
            again = await ok(client, "create_pull_request", {"title": "Fix page_bounds", "body": "b"})
            assert (again["number"], again["state"], again["created"]) == (pr["number"], "merged", False)

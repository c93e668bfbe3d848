"""ForgeClient over `httpx2.MockTransport`: ETags, rate limits, retries, error mapping, log redirects."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import httpx2
import pytest

from mcp_server.errors import (
    ForgeAuthError,
    ForgeConflict,
    ForgeError,
    ForgeNotFound,
    ForgeRateLimited,
    ForgeUnavailable,
)
from mcp_server.forge import ForgeClient
from policy.config import ForgeSettings

API = "https://forge.test/api/v3"
REPO = "acme/widgets"
TOKEN = "ghs_testtoken0123456789abcdefghijklmnop"
NOW = 1_700_000_000.0


class Tokens:
    """A TokenSource handing out `ghs_...1`, `ghs_...2`, ... and recording invalidations."""

    def __init__(self) -> None:
        self.current = TOKEN + "1"
        self.issued = 1
        self.invalidated: list[str] = []

    async def token(self) -> str:
        return self.current

    def invalidate(self, token: str) -> None:
        self.invalidated.append(token)
        if token == self.current:
            self.issued += 1
            self.current = f"{TOKEN}{self.issued}"

    def secrets(self) -> tuple[str, ...]:
        return (self.current, *self.invalidated)


Handler = Callable[[httpx2.Request], httpx2.Response]


class Harness:
    def __init__(self, handler: Handler, **kwargs: Any) -> None:
        self.requests: list[httpx2.Request] = []
        self.sleeps: list[float] = []
        self.tokens = Tokens()

        def record(request: httpx2.Request) -> httpx2.Response:
            self.requests.append(request)
            return handler(request)

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        self.client = ForgeClient(
            ForgeSettings(api_url=API, timeout_seconds=7.5),
            self.tokens,
            transport=httpx2.MockTransport(record),
            sleep=sleep,
            clock=lambda: NOW,
            rng=random.Random(4),
            **kwargs,
        )


def run_json(run_id: int = 1, conclusion: str = "failure") -> dict[str, Any]:
    return {
        "id": run_id,
        "name": "ci",
        "head_branch": "main",
        "head_sha": "a" * 40,
        "status": "completed",
        "conclusion": conclusion,
        "event": "push",
        "run_number": run_id,
        "created_at": "2024-05-01T10:00:00Z",
        "unknown_field": {"ignored": True},
    }


def pr_json(number: int = 7, head: str = "greenloop/fix/ci-abc123") -> dict[str, Any]:
    return {
        "number": number,
        "state": "open",
        "title": "Fix ci",
        "body": None,
        "html_url": f"https://forge.test/{REPO}/pull/{number}",
        "head": {"ref": head, "sha": "b" * 40, "label": f"acme:{head}"},
        "base": {"ref": "main", "sha": "a" * 40},
        "merged": False,
    }


def runs_ok(request: httpx2.Request) -> httpx2.Response:
    if request.headers.get("if-none-match") == '"v1"':
        return httpx2.Response(304, headers={"etag": '"v1"', "x-ratelimit-remaining": "4999"})
    return httpx2.Response(
        200,
        json={"total_count": 1, "workflow_runs": [run_json()]},
        headers={"etag": '"v1"', "x-ratelimit-remaining": "4998", "x-ratelimit-reset": str(int(NOW) + 600)},
    )


@pytest.mark.anyio
async def test_second_identical_get_sends_if_none_match_and_returns_cached_body_on_304() -> None:
    h = Harness(runs_ok)
    first = await h.client.list_workflow_runs(REPO, branch="main")
    second = await h.client.list_workflow_runs(REPO, branch="main")

    assert not first.not_modified and second.not_modified
    assert second.runs == first.runs and second.runs[0].conclusion == "failure"
    assert "if-none-match" not in h.requests[0].headers
    assert h.requests[1].headers["if-none-match"] == '"v1"'
    assert (h.client.stats.requests, h.client.stats.not_modified) == (2, 1)
    assert h.client.stats.rate_remaining == 4999


@pytest.mark.anyio
async def test_etag_cache_is_keyed_by_query_so_other_branches_are_not_served_from_it() -> None:
    h = Harness(runs_ok)
    await h.client.list_workflow_runs(REPO, branch="main")
    await h.client.list_workflow_runs(REPO, branch="dev")
    assert "if-none-match" not in h.requests[1].headers
    assert h.requests[1].url.params["branch"] == "dev"


@pytest.mark.anyio
async def test_every_api_request_carries_the_token_version_header_and_the_configured_timeout() -> None:
    h = Harness(runs_ok)
    await h.client.list_workflow_runs(REPO)
    request = h.requests[0]
    assert request.headers["authorization"] == f"Bearer {TOKEN}1"
    assert request.headers["x-github-api-version"] == "2022-11-28"
    assert request.url.path == "/api/v3/repos/acme/widgets/actions/runs"
    assert request.extensions["timeout"] == {"connect": 7.5, "read": 7.5, "write": 7.5, "pool": 7.5}


def sequence(*responses: httpx2.Response | Exception) -> Handler:
    pending = list(responses)

    def handler(request: httpx2.Request) -> httpx2.Response:
        item = pending.pop(0) if len(pending) > 1 else pending[0]
        if isinstance(item, Exception):
            raise item
        return item

    return handler


@pytest.mark.anyio
async def test_get_is_retried_after_500_and_502_with_jittered_backoff_then_succeeds() -> None:
    h = Harness(sequence(httpx2.Response(500), httpx2.Response(502), httpx2.Response(200, json=run_json(9))))
    run = await h.client.get_workflow_run(REPO, 9)
    assert run.id == 9
    assert h.client.stats.retries == 2 and h.client.stats.requests == 3
    # base 0.5s doubling, each scaled by a jitter factor in [0.5, 1]
    assert 0.25 <= h.sleeps[0] <= 0.5 and 0.5 <= h.sleeps[1] <= 1.0


@pytest.mark.anyio
async def test_persistent_5xx_raises_forge_unavailable_after_bounded_retries() -> None:
    h = Harness(sequence(httpx2.Response(503)), max_retries=2)
    with pytest.raises(ForgeUnavailable, match="HTTP 503") as info:
        await h.client.get_repo(REPO)
    assert info.value.status == 503
    assert len(h.requests) == 3 and h.client.stats.retries == 2


@pytest.mark.anyio
async def test_connection_errors_are_retried_then_translated() -> None:
    h = Harness(sequence(httpx2.ConnectError("refused")), max_retries=1)
    with pytest.raises(ForgeUnavailable, match="ConnectError") as info:
        await h.client.get_repo(REPO)
    assert isinstance(info.value.__cause__, httpx2.ConnectError)
    assert len(h.requests) == 2


@pytest.mark.anyio
async def test_post_is_not_retried_after_a_5xx_because_it_may_have_taken_effect() -> None:
    h = Harness(sequence(httpx2.Response(500), httpx2.Response(201, json=pr_json())))
    with pytest.raises(ForgeUnavailable):
        await h.client.create_pull_request(REPO, head="greenloop/fix/ci-abc123", base="main", title="t", body="b")
    assert len(h.requests) == 1


@pytest.mark.anyio
async def test_429_waits_for_retry_after_then_succeeds() -> None:
    h = Harness(sequence(httpx2.Response(429, headers={"retry-after": "3"}), httpx2.Response(200, json=run_json())))
    await h.client.get_workflow_run(REPO, 1)
    assert h.sleeps == [3.0]
    assert h.client.stats.retries == 1


@pytest.mark.anyio
async def test_403_secondary_limit_without_headers_waits_a_minute_then_succeeds() -> None:
    limited = httpx2.Response(403, json={"message": "You have exceeded a secondary rate limit."})
    h = Harness(sequence(limited, httpx2.Response(200, json=run_json())))
    await h.client.get_workflow_run(REPO, 1)
    assert h.sleeps == [60.0]


@pytest.mark.anyio
async def test_403_with_exhausted_primary_limit_waits_until_the_reset() -> None:
    limited = httpx2.Response(
        403, json={"message": "API rate limit exceeded"},
        headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) + 20)},
    )  # fmt: skip
    h = Harness(sequence(limited, httpx2.Response(200, json=run_json(), headers={"x-ratelimit-remaining": "5000"})))
    await h.client.get_workflow_run(REPO, 1)
    assert h.sleeps == [20.0]
    assert h.client.stats.rate_remaining == 5000


@pytest.mark.anyio
async def test_rate_limit_that_persists_raises_forge_rate_limited_with_retry_after() -> None:
    h = Harness(sequence(httpx2.Response(429, headers={"retry-after": "5"})), max_retries=2)
    with pytest.raises(ForgeRateLimited) as info:
        await h.client.get_repo(REPO)
    assert info.value.retry_after == 5.0
    assert len(h.requests) == 3 and h.sleeps == [5.0, 5.0]


@pytest.mark.anyio
async def test_retry_after_longer_than_the_bound_raises_at_once_without_sleeping() -> None:
    h = Harness(sequence(httpx2.Response(429, headers={"retry-after": "3600"})))
    with pytest.raises(ForgeRateLimited) as info:
        await h.client.get_repo(REPO)
    assert info.value.retry_after == 3600.0
    assert h.sleeps == [] and len(h.requests) == 1


@pytest.mark.anyio
async def test_exhausted_primary_budget_is_respected_before_sending_the_next_request() -> None:
    drained = httpx2.Response(
        200, json=run_json(), headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) + 900)}
    )
    h = Harness(sequence(drained))
    await h.client.get_workflow_run(REPO, 1)
    with pytest.raises(ForgeRateLimited) as info:
        await h.client.get_workflow_run(REPO, 1)
    assert info.value.retry_after == pytest.approx(900.0)
    assert len(h.requests) == 1


@pytest.mark.anyio
async def test_401_invalidates_the_token_and_retries_once_with_a_fresh_one() -> None:
    h = Harness(sequence(httpx2.Response(401), httpx2.Response(200, json=run_json())))
    await h.client.get_workflow_run(REPO, 1)
    assert h.tokens.invalidated == [f"{TOKEN}1"]
    assert [r.headers["authorization"] for r in h.requests] == [f"Bearer {TOKEN}1", f"Bearer {TOKEN}2"]


@pytest.mark.anyio
async def test_second_401_raises_forge_auth_error() -> None:
    h = Harness(sequence(httpx2.Response(401, json={"message": "Bad credentials"})))
    with pytest.raises(ForgeAuthError, match="HTTP 401"):
        await h.client.get_repo(REPO)
    assert len(h.requests) == 2


@pytest.mark.parametrize(
    ("status", "error"),
    [
        pytest.param(404, ForgeNotFound, id="404-not-found"),
        pytest.param(403, ForgeAuthError, id="403-permission"),
        pytest.param(409, ForgeConflict, id="409-conflict"),
        pytest.param(422, ForgeConflict, id="422-validation"),
        pytest.param(418, ForgeError, id="418-other"),
    ],
)
@pytest.mark.anyio
async def test_error_statuses_map_to_typed_errors_without_retries(status: int, error: type[ForgeError]) -> None:
    h = Harness(sequence(httpx2.Response(status, json={"message": "Resource not accessible by integration"})))
    with pytest.raises(error) as info:
        await h.client.get_repo(REPO)
    assert type(info.value) is error and info.value.status == status
    assert len(h.requests) == 1 and h.sleeps == []


@pytest.mark.anyio
async def test_error_messages_never_contain_the_token_even_when_the_forge_echoes_it() -> None:
    h = Harness(sequence(httpx2.Response(404, json={"message": f"no such thing for token {TOKEN}1"})))
    with pytest.raises(ForgeNotFound) as info:
        await h.client.get_repo(REPO)
    assert TOKEN not in str(info.value)
    assert "REDACTED" in str(info.value)


@pytest.mark.parametrize(
    "repo",
    [
        pytest.param("acme/../admin", id="traversal"),
        pytest.param("acme", id="no-slash"),
        pytest.param("acme/widgets/pulls", id="extra-segment"),
        pytest.param("acme/widgets?x=1", id="query"),
        pytest.param("acme/..", id="dotdot-name"),
    ],
)
@pytest.mark.anyio
async def test_hostile_repository_names_are_refused_before_any_request(repo: str) -> None:
    h = Harness(runs_ok)
    with pytest.raises(ForgeError, match="not a repository name"):
        await h.client.get_repo(repo)
    assert h.requests == []


def logs_handler(body: bytes) -> Handler:
    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.host == "forge.test":
            assert request.url.path == "/api/v3/repos/acme/widgets/actions/jobs/55/logs"
            return httpx2.Response(302, headers={"location": "https://blobs.example/logs/55?sig=abc"})
        assert request.url.host == "blobs.example"
        return httpx2.Response(200, content=body, headers={"content-type": "text/plain"})

    return handler


@pytest.mark.anyio
async def test_job_logs_follow_the_redirect_without_sending_the_authorization_header() -> None:
    h = Harness(logs_handler(b"step 1\nError: boom\n"))
    text = await h.client.download_job_logs(REPO, 55)
    assert text == "step 1\nError: boom\n"
    api, blob = h.requests
    assert api.headers["authorization"].startswith("Bearer ")
    assert "authorization" not in blob.headers
    assert all(TOKEN not in value for value in blob.headers.values())
    assert str(blob.url) == "https://blobs.example/logs/55?sig=abc"


@pytest.mark.anyio
async def test_job_logs_are_capped_keeping_the_tail() -> None:
    body = b"".join(f"line {i}\n".encode() for i in range(1000)) + b"Error: the real failure\n"
    h = Harness(logs_handler(body), max_log_bytes=200)
    text = await h.client.download_job_logs(REPO, 55)
    assert text.endswith("Error: the real failure\n")
    assert text.startswith("[greenloop: the first ")
    assert len(text.split("\n", 1)[1].encode()) <= 200


@pytest.mark.anyio
async def test_expired_log_url_is_not_found() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.host == "forge.test":
            return httpx2.Response(302, headers={"location": "https://blobs.example/x"})
        return httpx2.Response(410)

    h = Harness(handler)
    with pytest.raises(ForgeNotFound, match="HTTP 410"):
        await h.client.download_job_logs(REPO, 55)


@pytest.mark.anyio
async def test_find_pull_request_filters_by_owner_and_branch_and_returns_none_when_absent() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        head = request.url.params["head"]
        pulls = [pr_json(3, "greenloop/fix/ci-abc123")] if head == "acme:greenloop/fix/ci-abc123" else []
        return httpx2.Response(200, json=pulls)

    h = Harness(handler)
    found = await h.client.find_pull_request(REPO, "greenloop/fix/ci-abc123")
    missing = await h.client.find_pull_request(REPO, "greenloop/fix/ci-zzz999")
    assert found is not None and found.number == 3 and found.head.ref == "greenloop/fix/ci-abc123"
    assert missing is None
    assert h.requests[0].url.params["state"] == "all"


@pytest.mark.anyio
async def test_the_etag_cache_keeps_only_the_fields_greenloop_reads_and_a_304_gives_the_same_runs() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.headers.get("if-none-match") == '"v1"':
            return httpx2.Response(304, headers={"etag": '"v1"'})
        bulky = {**run_json(), "repository": {"full_name": REPO, "description": "x" * 5000}, "pull_requests": []}
        return httpx2.Response(200, json={"total_count": 1, "workflow_runs": [bulky]}, headers={"etag": '"v1"'})

    h = Harness(handler)
    first = await h.client.list_workflow_runs(REPO, branch="main")
    [entry] = h.client._etags.values()
    assert "unknown_field" not in entry.text and "repository" not in entry.text and len(entry.text) < 1000
    second = await h.client.list_workflow_runs(REPO, branch="main")
    assert second.not_modified and second.runs == first.runs


@pytest.mark.anyio
async def test_a_next_page_link_to_another_host_is_refused_and_never_sent_the_token() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        link = '<https://evil.example/repositories/1/actions/runs?page=2>; rel="next"'
        return httpx2.Response(200, json={"total_count": 2, "workflow_runs": [run_json(1)]}, headers={"link": link})

    h = Harness(handler)
    with pytest.raises(ForgeError, match="outside its API root"):
        await h.client.list_workflow_runs(REPO)
    assert [r.url.host for r in h.requests] == ["forge.test"]


@pytest.mark.anyio
async def test_a_listed_pull_request_is_merged_when_it_has_merged_at_though_lists_carry_no_merged() -> None:
    merged_item = {k: v for k, v in pr_json(4).items() if k != "merged"} | {
        "state": "closed",
        "merged_at": "2024-05-01T11:00:00Z",
        "merge_commit_sha": "c" * 40,
    }
    h = Harness(lambda request: httpx2.Response(200, json=[merged_item]))
    found = await h.client.find_pull_request(REPO, "greenloop/fix/ci-abc123")
    assert found is not None and found.merged and found.merge_commit_sha == "c" * 40
    closed = {**merged_item, "merged_at": None, "merge_commit_sha": None}
    h = Harness(lambda request: httpx2.Response(200, json=[closed]))
    found = await h.client.find_pull_request(REPO, "greenloop/fix/ci-abc123")
    assert found is not None and found.state == "closed" and not found.merged


@pytest.mark.anyio
async def test_merge_pull_request_squashes_at_the_given_sha_and_returns_the_merge_sha() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.method == "PUT" and request.url.path.endswith("/pulls/7/merge")
        body = json.loads(request.content)
        assert body == {"sha": "b" * 40, "commit_title": "T", "commit_message": "M", "merge_method": "squash"}
        return httpx2.Response(200, json={"sha": "c" * 40, "merged": True, "message": "Pull Request merged"})

    h = Harness(handler)
    assert await h.client.merge_pull_request(REPO, 7, sha="b" * 40, title="T", message="M") == "c" * 40


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(httpx2.Response(405, json={"message": "Pull Request is not mergeable"}), id="405"),
        pytest.param(httpx2.Response(409, json={"message": "Head branch was modified"}), id="409"),
        pytest.param(httpx2.Response(200, json={"merged": False, "message": "nope"}), id="merged-false"),
    ],
)
@pytest.mark.anyio
async def test_merge_that_does_not_happen_is_a_conflict(response: httpx2.Response) -> None:
    h = Harness(sequence(response))
    with pytest.raises(ForgeConflict):
        await h.client.merge_pull_request(REPO, 7, sha="b" * 40, title="T", message="M")


@pytest.mark.anyio
async def test_create_close_and_rerun_send_the_documented_requests() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.method == "POST" and request.url.path.endswith("/pulls"):
            return httpx2.Response(201, json=pr_json())
        if request.method == "PATCH":
            return httpx2.Response(200, json={**pr_json(), "state": "closed"})
        return httpx2.Response(201)

    h = Harness(handler)
    pr = await h.client.create_pull_request(REPO, head="greenloop/fix/ci-abc123", base="main", title="t", body="b")
    closed = await h.client.close_pull_request(REPO, pr.number)
    await h.client.rerun_workflow(REPO, 42)
    create, close, rerun = h.requests
    assert json.loads(create.content) == {"head": "greenloop/fix/ci-abc123", "base": "main", "title": "t", "body": "b"}
    assert json.loads(close.content) == {"state": "closed"} and closed.state == "closed"
    assert rerun.method == "POST" and rerun.url.path.endswith("/actions/runs/42/rerun")


@pytest.mark.anyio
async def test_unexpected_body_is_a_forge_error_not_a_validation_error() -> None:
    h = Harness(sequence(httpx2.Response(200, json={"nothing": "useful"})))
    with pytest.raises(ForgeError, match="unexpected body"):
        await h.client.get_repo(REPO)


# ---------------------------------------------------------------------------------------------- local forge


@pytest.fixture
async def local_forge(tmp_path: Any) -> Any:
    from fixtures.forge.server import run_forge
    from mcp_server.github_app import GitHubApp

    async with (
        run_forge(tmp_path / "forge", projects=["clean", "bug-lib"], actions_enabled=False) as forge,
        GitHubApp.from_settings(forge.forge_settings()) as app,
    ):
        sleeps: list[float] = []

        async def sleep(seconds: float) -> None:
            sleeps.append(seconds)

        async with ForgeClient(ForgeSettings(api_url=forge.api_url), app, sleep=sleep) as client:
            yield forge, client, sleeps


@pytest.mark.anyio
async def test_local_forge_answers_a_repeated_query_with_304_and_the_cached_runs(local_forge: Any) -> None:
    _, client, _ = local_forge
    first = await client.list_workflow_runs("acme/clean", branch="main")
    second = await client.list_workflow_runs("acme/clean", branch="main")
    assert not first.not_modified and second.not_modified and second.runs == first.runs
    assert client.stats.not_modified == 1
    assert client.stats.rate_remaining is not None and client.stats.rate_remaining > 0


@pytest.mark.parametrize(
    ("kinds", "expected_sleeps"),
    [
        pytest.param(("500", "502"), None, id="500-then-502"),
        pytest.param(("429",), [2.0], id="429-retry-after"),
        pytest.param(("403_secondary",), [2.0], id="403-secondary"),
        # GitHub: a secondary limit without retry-after means "wait at least a minute".
        pytest.param(("429_bare",), [60.0], id="429-secondary-without-retry-after"),
        pytest.param(("403_secondary_bare",), [60.0], id="403-secondary-without-retry-after"),
    ],
)
@pytest.mark.anyio
async def test_local_forge_injected_faults_are_retried_then_succeed(
    local_forge: Any, kinds: tuple[str, ...], expected_sleeps: list[float] | None
) -> None:
    forge, client, sleeps = local_forge
    for kind in kinds:
        forge.faults.add(path_regex=r"^/repos/acme/clean$", kind=kind, retry_after=2)
    repo = await client.get_repo("acme/clean")
    assert repo.full_name == "acme/clean" and repo.default_branch == "main"
    assert client.stats.retries == len(kinds)
    if expected_sleeps is not None:
        assert sleeps == expected_sleeps


@pytest.mark.anyio
async def test_a_304_whose_cache_entry_was_evicted_in_flight_still_answers_from_the_cache() -> None:
    import anyio

    async def slow_304(request: httpx2.Request) -> httpx2.Response:
        if request.headers.get("if-none-match"):
            await anyio.sleep(0.2)  # the others answer and fill the cache meanwhile
        return runs_ok(request)

    client = ForgeClient(
        ForgeSettings(api_url=API, timeout_seconds=7.5),
        Tokens(),
        transport=httpx2.MockTransport(slow_304),
        etag_entries=1,
    )
    repos = [f"acme/r{i}" for i in range(6)]
    for repo in repos:  # warm: each listing evicts the previous one from the one-entry cache
        await client.list_workflow_runs(repo, branch="main")
    pages: list[Any] = []

    async def one(repo: str) -> None:
        pages.append(await client.list_workflow_runs(repo, branch="main"))

    # Only the last repo's entry is cached; the others' 200s evict it while its 304 is in flight.
    async with anyio.create_task_group() as tg:
        for repo in [repos[-1], *repos[:-1]]:
            tg.start_soon(one, repo)
    await client.aclose()
    assert len(pages) == len(repos)
    assert sum(p.not_modified for p in pages) == 1
    assert all(p.runs[0].conclusion == "failure" for p in pages)


@pytest.mark.anyio
async def test_branch_head_and_delete_branch_touch_fix_branches_only() -> None:
    branches = {"greenloop/fix/ci-abc123": "d" * 40}

    def handler(request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if request.method == "GET" and "/branches/" in path:
            name = path.split("/branches/", 1)[1]
            if name not in branches:
                return httpx2.Response(404, json={"message": "Branch not found"})
            return httpx2.Response(200, json={"name": name, "commit": {"sha": branches[name]}})
        assert request.method == "DELETE" and "/git/refs/heads/" in path
        if branches.pop(path.split("/git/refs/heads/", 1)[1], None) is None:
            return httpx2.Response(422, json={"message": "Reference does not exist"})
        return httpx2.Response(204)

    h = Harness(handler)
    assert await h.client.branch_head(REPO, "greenloop/fix/ci-abc123") == "d" * 40
    assert await h.client.delete_branch(REPO, "greenloop/fix/ci-abc123") is True
    assert await h.client.branch_head(REPO, "greenloop/fix/ci-abc123") is None
    assert await h.client.delete_branch(REPO, "greenloop/fix/ci-abc123") is False, "already gone"
    sent = len(h.requests)
    for name in ("main", "greenloop/fix/../../main"):
        with pytest.raises(ForgeError, match="not a fix branch"):
            await h.client.delete_branch(REPO, name)
    assert len(h.requests) == sent, "a branch that is not a fix branch is never sent"


@pytest.mark.parametrize("kind", ["403_primary", "429_primary"])
@pytest.mark.anyio
async def test_local_forge_primary_limit_is_waited_out_until_its_reset(local_forge: Any, kind: str) -> None:
    forge, client, sleeps = local_forge
    forge.faults.add(path_regex=r"^/repos/acme/clean$", kind=kind, retry_after=2)
    assert (await client.get_repo("acme/clean")).full_name == "acme/clean"
    assert len(sleeps) == 1 and 1.0 <= sleeps[0] <= 2.0  # until x-ratelimit-reset, not a blind minute


@pytest.mark.anyio
async def test_local_forge_exhausted_budget_answered_429_is_not_retried_for_an_hour(local_forge: Any) -> None:
    forge, client, sleeps = local_forge
    await client.get_repo("acme/clean")
    forge.limiter.reset(1, exhausted_status=429)
    # Another worker of the same installation spends the last request of the hour.
    other = forge.auth.issue_installation_token(permissions=None, repositories=None).token
    async with httpx2.AsyncClient(base_url=forge.api_url) as http:
        spent = await http.get("/repos/acme/clean", headers={"Authorization": f"Bearer {other}"})
    assert spent.status_code == 200 and spent.headers["x-ratelimit-remaining"] == "0"
    with pytest.raises(ForgeRateLimited) as info:
        await client.get_repo("acme/clean")
    assert info.value.status == 429 and info.value.retry_after is not None and info.value.retry_after > 3000
    assert sleeps == []


@pytest.mark.anyio
async def test_compare_on_the_local_forge_gives_the_commits_between_and_the_changed_files(local_forge: Any) -> None:
    _, client, _ = local_forge
    commits = await client.list_commits("acme/bug-lib", sha="main")
    assert len(commits) >= 2
    head, base = commits[0].sha, commits[-1].sha
    comparison = await client.compare("acme/bug-lib", base, head)
    assert comparison.status == "ahead" and comparison.ahead_by == len(commits) - 1
    assert [c.sha for c in comparison.commits] == [c.sha for c in reversed(commits[:-1])]  # oldest first
    assert comparison.files and all(f.filename and f.status for f in comparison.files)
    with pytest.raises(ForgeNotFound):
        await client.compare("acme/bug-lib", "0" * 40, head)

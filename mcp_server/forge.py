"""The forge client: GitHub REST over one `httpx2.AsyncClient`, with ETags, rate limits and bounded retries.

Every call has a timeout (`ForgeSettings.timeout_seconds`). GETs send `If-None-Match` when a previous
answer carried an ETag; a 304 returns the cached body and is counted in `ForgeStats.not_modified` (GitHub
does not charge 304s against the rate limit, so an idle pass costs nothing). Rate limits:

- `x-ratelimit-remaining` / `x-ratelimit-reset` are tracked; with none left, the client waits for the reset
  when it is near, else raises `ForgeRateLimited` without sending.
- 429, or 403 with `retry-after`, `x-ratelimit-remaining: 0` or a secondary-limit message, is retried after
  the advised wait (bounded by `max_rate_wait`), at most `max_retries` times.
- 5xx and transport errors are retried with exponential backoff and jitter, at most `max_retries` times, for
  idempotent methods; a POST is retried only when it was never sent (connect errors).

Lists follow GitHub's `Link: <...>; rel="next"` (its URLs have the `/repositories/{id}/...` form) with
`per_page=100`, up to a bounded number of pages; hitting the bound is logged (`forge_page_cap_hit`). A next
link to another origin than the API's is refused: the token never leaves the API host.
See https://docs.github.com/rest/using-the-rest-api/using-pagination-in-the-rest-api

API GETs (every read but log downloads) go over `mcp_server.conditional_get.ConditionalGetClient`, a lean
keep-alive HTTP/1.1 client: an unchanged pass is one 304 per project, and under `httpx2` the client's request
path was most of that pass's CPU (docs/benchmarks.md, figure 1). Writes and log downloads use `httpx2`; so
does everything when a test injects an `httpx2` transport. Both paths share the retry, rate-limit, token and
ETag logic below.

All `httpx2` exceptions are translated here; nothing above this module sees them. Error messages name the
method, the API path and the status, never the token.
"""

from __future__ import annotations

import asyncio
import copy
import json as json_module
import logging
import random
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import httpx2
from pydantic import BaseModel, ConfigDict, ValidationError

from infra.jsonlog import log_event
from mcp_server.conditional_get import ConditionalGetClient, LeanHTTPError
from mcp_server.errors import (
    ForgeAuthError,
    ForgeConflict,
    ForgeError,
    ForgeNotFound,
    ForgeRateLimited,
    ForgeUnavailable,
)
from mcp_server.github_app import API_VERSION, TokenSource
from policy.branches import is_fix_branch
from policy.config import REPO_NAME_RE, ForgeSettings
from policy.redaction import redact

__all__ = [
    "API_VERSION",
    "Actor",
    "CheckRun",
    "Commit",
    "CommitAuthor",
    "CommitDetail",
    "CommitStatus",
    "Comparison",
    "DiffEntry",
    "ForgeClient",
    "ForgeStats",
    "HeadCommit",
    "Issue",
    "IssueComment",
    "Job",
    "JobStep",
    "PullRequest",
    "PullRequestRef",
    "Repo",
    "RunsPage",
    "WorkflowRun",
]

_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE"})
_SECONDARY_DEFAULT_WAIT = 60.0  # GitHub: without retry-after, wait at least a minute after a secondary limit
_MAX_LOG_REDIRECTS = 3
_PER_PAGE = 100  # GitHub's maximum page size for every list greenloop reads
RUN_PAGES = 3  # newest 300 runs: a weekly job's latest run outlives a busy week of CI runs on the branch
JOB_PAGES = 10  # 1,000 jobs: more than a matrix can produce (256 jobs per matrix)
_LINK_RE = re.compile(r'<([^>]+)>\s*;\s*rel="([^"]+)"')
logger = logging.getLogger("greenloop.mcp.forge")


# ---------------------------------------------------------------------------------------------- models


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Repo(_Model):
    """A repository (`repos/get`)."""

    full_name: str
    default_branch: str
    private: bool = False
    html_url: str | None = None


class CommitAuthor(_Model):
    """Name, email and date of a commit's author or committer."""

    name: str | None = None
    email: str | None = None
    date: datetime | None = None


class CommitDetail(_Model):
    """The git part of a commit: message and identities."""

    message: str
    author: CommitAuthor | None = None
    committer: CommitAuthor | None = None


class Commit(_Model):
    """One commit of `repos/list-commits`."""

    sha: str
    commit: CommitDetail
    html_url: str | None = None


class Actor(_Model):
    """A user or bot as GitHub shows it in runs and pull requests."""

    login: str


class HeadCommit(_Model):
    """The commit a workflow run ran on, as embedded in the run."""

    id: str | None = None
    message: str | None = None


class WorkflowRun(_Model):
    """One workflow run (`actions/get-workflow-run`)."""

    id: int
    name: str | None = None
    display_title: str | None = None
    head_branch: str | None = None
    head_sha: str
    status: str | None = None
    conclusion: str | None = None
    event: str | None = None
    run_number: int | None = None
    run_attempt: int = 1
    workflow_id: int | None = None
    path: str | None = None
    html_url: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    actor: Actor | None = None
    triggering_actor: Actor | None = None
    head_commit: HeadCommit | None = None

    @property
    def triggering_login(self) -> str | None:
        """Who triggered this run (attempt): the circuit breaker compares it with the bot's login."""
        who = self.triggering_actor or self.actor
        return who.login if who is not None else None

    @property
    def head_commit_message(self) -> str | None:
        """The message of the commit the run ran on (it may carry the attempt trailer)."""
        return self.head_commit.message if self.head_commit is not None else None


class JobStep(_Model):
    """One step of a job."""

    number: int
    name: str
    status: str | None = None
    conclusion: str | None = None


class Job(_Model):
    """One job of a workflow run (`actions/list-jobs-for-workflow-run`)."""

    id: int
    run_id: int
    name: str
    status: str | None = None
    conclusion: str | None = None
    head_sha: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    html_url: str | None = None
    steps: tuple[JobStep, ...] = ()


class PullRequestRef(_Model):
    """The head or base of a pull request."""

    ref: str
    sha: str
    label: str | None = None


class PullRequest(_Model):
    """A pull request (`pulls/get`, or an item of `pulls/list`).

    Merged-ness is `merged_at`: GitHub's list items have no `merged` field at all (only the single-PR
    endpoint has it, and it is true exactly when `merged_at` is set), so `merged` is derived, never read.
    """

    number: int
    state: str
    title: str
    body: str | None = None
    html_url: str | None = None
    head: PullRequestRef
    base: PullRequestRef
    draft: bool = False
    merged_at: datetime | None = None
    merge_commit_sha: str | None = None

    @property
    def merged(self) -> bool:
        """Whether the pull request was merged (from `merged_at`, which list items carry too)."""
        return self.merged_at is not None


class _RunsBody(_Model):
    total_count: int = 0
    workflow_runs: tuple[WorkflowRun, ...] = ()


class RunsPage:
    """A page of workflow runs, newest first. `not_modified` is True when the forge answered 304.

    An unchanged page is often not read at all (the pass reuses its previous observation), so the runs of
    pages answered 304 are parsed from the cache only when `runs` or `total_count` is first read. A plain
    class, not a model: it is built once per project per pass, and it holds bodies already validated.
    """

    __slots__ = ("_pages", "_parsed", "not_modified")

    def __init__(self, not_modified: bool = False) -> None:
        self.not_modified = not_modified
        self._pages: tuple[_RunsBody | str, ...] = ()
        self._parsed: tuple[tuple[WorkflowRun, ...], int] | None = None

    @classmethod
    def of(cls, pages: Sequence[_RunsBody | str], *, not_modified: bool = False) -> RunsPage:
        """A page made of parsed bodies and/or cached JSON texts (parsed on first use)."""
        page = cls(not_modified=not_modified)
        page._pages = tuple(pages)
        return page

    def _parse(self) -> tuple[tuple[WorkflowRun, ...], int]:
        if self._parsed is None:
            bodies = [p if isinstance(p, _RunsBody) else _RunsBody.model_validate_json(p) for p in self._pages]
            unique = {run.id: run for body in bodies for run in body.workflow_runs}  # a new run shifts pages
            self._parsed = (tuple(unique.values()), bodies[-1].total_count if bodies else 0)
            self._pages = ()
        return self._parsed

    @property
    def runs(self) -> tuple[WorkflowRun, ...]:
        """The runs, newest first."""
        return self._parse()[0]

    @property
    def total_count(self) -> int:
        """How many runs the forge has in all (not only on these pages)."""
        return self._parse()[1]

    def __repr__(self) -> str:
        return f"RunsPage(not_modified={self.not_modified})"


class _JobsBody(_Model):
    total_count: int = 0
    jobs: tuple[Job, ...] = ()


class CheckRun(_Model):
    """One check run on a commit (`checks/list-for-ref`); every Actions job is one."""

    id: int
    name: str
    status: str
    conclusion: str | None = None
    head_sha: str | None = None
    html_url: str | None = None
    details_url: str | None = None


class CommitStatus(_Model):
    """One commit status (the newest of its context, as the combined status lists them)."""

    context: str
    state: str
    target_url: str | None = None
    description: str | None = None


class _CheckRunsBody(_Model):
    total_count: int = 0
    check_runs: tuple[CheckRun, ...] = ()


class _CombinedStatusBody(_Model):
    state: str | None = None
    total_count: int = 0
    statuses: tuple[CommitStatus, ...] = ()


class _RequiredStatusChecks(_Model):
    contexts: tuple[str, ...] = ()


class _Protection(_Model):
    enabled: bool = False
    required_status_checks: _RequiredStatusChecks | None = None


class _BranchCommit(_Model):
    sha: str


class _BranchBody(_Model):
    name: str
    commit: _BranchCommit
    protected: bool = False
    protection: _Protection | None = None


class Issue(_Model):
    """An issue (`issues/get`); pull requests are issues too (`pull_request` is set on those)."""

    number: int
    title: str
    state: str
    body: str | None = None
    html_url: str | None = None
    pull_request: dict[str, Any] | None = None


class IssueComment(_Model):
    """A comment on an issue or a pull request's conversation."""

    id: int
    body: str | None = None
    html_url: str | None = None
    user: Actor | None = None


class DiffEntry(_Model):
    """One changed file of a comparison; `patch` is absent for binary or very large diffs."""

    filename: str
    status: str
    additions: int = 0
    deletions: int = 0
    patch: str | None = None


class Comparison(_Model):
    """`repos/compare-commits-with-basehead`: the commits of `base..head`, oldest first, and the changed files."""

    status: str
    ahead_by: int
    total_commits: int
    commits: list[Commit] = []
    files: list[DiffEntry] = []


class _MergeBody(_Model):
    sha: str | None = None
    merged: bool = False
    message: str | None = None


_M = TypeVar("_M", bound=BaseModel)


def _cache_key(path: str, params: Mapping[str, str | int] | None) -> str:
    """The ETag cache key of a GET: its path and sorted query (no request object built; remembered)."""
    if not params:
        return path
    memo = (path, tuple(params.items()))
    key = _CACHE_KEYS.get(memo)
    if key is None:
        key = path + "?" + "&".join(f"{k}={params[k]}" for k in sorted(params))
        if len(_CACHE_KEYS) >= _MAX_CACHE_KEYS:
            _CACHE_KEYS.clear()
        _CACHE_KEYS[memo] = key
    return key


_CACHE_KEYS: dict[tuple[str, tuple[tuple[str, str | int], ...]], str] = {}
_MAX_CACHE_KEYS = 100_000  # a pass asks for the same lists every time: one key a project and list


# ---------------------------------------------------------------------------------------------- client


@dataclass
class ForgeStats:
    """Counters since the client was built: HTTP requests sent, 304s, retries, last known rate budget."""

    requests: int = 0
    not_modified: int = 0
    rate_remaining: int | None = None
    retries: int = 0
    rate_reset: float | None = None  # epoch seconds at which `rate_remaining` refills


@dataclass(slots=True)
class _Reply:
    status: int
    body: Any
    not_modified: bool
    links: str | None = None
    text: str | None = None  # a 304's cached body, unparsed (`lazy` requests)


class _Answer(Protocol):
    """What the retry and error logic reads of an answer (an `httpx2.Response` or a `LeanResponse`)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...

    def json(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class _CacheEntry:
    etag: str
    text: str  # the body reduced to the fields the caller's model reads, as JSON
    links: str | None = None


class ForgeClient:
    """GitHub REST client for the endpoints greenloop uses. Holds no credential itself: `auth` does.

    Every method raises a `ForgeError` subclass on failure:
    `ForgeNotFound` (404), `ForgeAuthError` (401 after one token refresh, 403), `ForgeConflict`
    (405/409/422), `ForgeRateLimited` (limits still hit after bounded waits), `ForgeUnavailable` (5xx,
    timeouts, connection errors after bounded retries), plain `ForgeError` for anything else.

    `lean_gets`: send API GETs over `ConditionalGetClient` (default: yes, unless `transport` is given, which
    then carries every request).
    """

    def __init__(
        self,
        settings: ForgeSettings,
        auth: TokenSource,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        max_retries: int = 3,
        max_rate_wait: float = 60.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        max_log_bytes: int = 2_000_000,
        etag_entries: int = 512,
        lean_gets: bool | None = None,
    ) -> None:
        self._auth = auth
        self._timeout = httpx2.Timeout(settings.timeout_seconds)
        # Security: no `auth=` and no Authorization default header: the token is added per API request, so
        # nothing else this client sends (log redirects) can carry it.
        self._http = httpx2.AsyncClient(
            base_url=settings.api_url.rstrip("/") + "/",
            timeout=self._timeout,
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            headers={
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": "greenloop",
            },
        )
        # API GETs over the lean client, unless a test injected an httpx2 transport (it sees every request).
        self._gets: ConditionalGetClient | None = None
        if lean_gets if lean_gets is not None else transport is None:
            self._gets = ConditionalGetClient(
                str(self._http.base_url),
                headers={k: self._http.headers[k] for k in ("Accept", "X-GitHub-Api-Version", "User-Agent")},
                timeout=settings.timeout_seconds,
            )
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._max_retries = max_retries
        self._max_rate_wait = max_rate_wait
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._max_log_bytes = max_log_bytes
        self._etag_entries = etag_entries
        self._etags: OrderedDict[str, _CacheEntry] = OrderedDict()
        self.stats = ForgeStats()
        self._owns_http = True

    @property
    def token_source(self) -> TokenSource:
        """Where this client's bearer token comes from (what it may do is that token's scope)."""
        return self._auth

    def with_auth(self, auth: TokenSource) -> ForgeClient:
        """A client acting with `auth` (a down-scoped token) that shares this one's connection pool and
        rate-limit stats: still one forge client per process for pool and budget, a token per purpose.

        It has its own ETag cache (GitHub's ETags vary with the token), and closing it leaves the pool open.
        """
        scoped = copy.copy(self)
        scoped._auth = auth
        scoped._etags = OrderedDict()
        scoped._owns_http = False
        return scoped

    async def __aenter__(self) -> ForgeClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the underlying HTTP clients (a `with_auth` client leaves the shared ones open)."""
        if self._owns_http:
            if self._gets is not None:
                await self._gets.aclose()
            await self._http.aclose()

    # ------------------------------------------------------------------------------------------ API

    async def get_repo(self, repo: str) -> Repo:
        """The repository `owner/name`."""
        reply = await self._json("GET", f"repos/{_repo(repo)}", keep=Repo)
        return _parse(Repo, reply.body, f"repos/{repo}")

    async def list_commits(self, repo: str, *, sha: str, per_page: int = 30) -> list[Commit]:
        """The newest commits reachable from `sha` (a branch name or commit), newest first."""
        reply = await self._json(
            "GET", f"repos/{_repo(repo)}/commits", params={"sha": sha, "per_page": per_page}, keep=Commit
        )
        return [_parse(Commit, item, f"repos/{repo}/commits") for item in _as_list(reply.body)]

    async def compare(self, repo: str, base: str, head: str, *, per_page: int = 100) -> Comparison:
        """The commits from `base` to `head` (oldest first, the first `per_page`) and the files they change."""
        path = f"repos/{_repo(repo)}/compare/{quote(base, safe='')}...{quote(head, safe='')}"
        reply = await self._json("GET", path, params={"per_page": per_page})
        return _parse(Comparison, reply.body, path)

    async def list_workflow_runs(
        self, repo: str, *, branch: str | None = None, per_page: int = _PER_PAGE, max_pages: int = RUN_PAGES
    ) -> RunsPage:
        """The newest workflow runs (optionally of one branch), following `Link: rel="next"` up to `max_pages`.

        `not_modified` is set when the first page answered 304: nothing newer exists, so the older pages come
        from the cache without a request (an idle pass costs one conditional request a project).
        """
        params: dict[str, str | int] = {"per_page": per_page}
        if branch is not None:
            params["branch"] = branch
        path = f"repos/{_repo(repo)}/actions/runs"
        pages: list[_RunsBody | str] = []
        not_modified: bool | None = None
        for reply in await self._pages(path, params, max_pages=max_pages, keep=_RunsBody, lazy=True):
            if not_modified is None:
                not_modified = reply.not_modified
            pages.append(reply.text if reply.text is not None else _parse(_RunsBody, reply.body, path))
        return RunsPage.of(pages, not_modified=bool(not_modified))

    async def get_workflow_run(self, repo: str, run_id: int) -> WorkflowRun:
        """One workflow run."""
        reply = await self._json("GET", f"repos/{_repo(repo)}/actions/runs/{int(run_id)}", keep=WorkflowRun)
        return _parse(WorkflowRun, reply.body, f"repos/{repo}/actions/runs/{run_id}")

    async def list_run_jobs(self, repo: str, run_id: int, *, max_pages: int = JOB_PAGES) -> list[Job]:
        """The jobs of one workflow run (its latest attempt), every page up to `max_pages` of 100.

        Only a listing with unfinished jobs is ETag-cached: a finished run's jobs never change (a re-run is a
        new attempt the caller keys apart), so the next pass does not ask for them and they'd only evict the
        run listings it does ask for.
        """
        path = f"repos/{_repo(repo)}/actions/runs/{int(run_id)}/jobs"
        jobs: dict[int, Job] = {}
        pages = self._pages(path, {"per_page": _PER_PAGE}, max_pages=max_pages, keep=_JobsBody, cache_if=_unfinished)
        for reply in await pages:
            for job in _parse(_JobsBody, reply.body, path).jobs:
                jobs[job.id] = job
        return list(jobs.values())

    async def download_job_logs(self, repo: str, job_id: int) -> str:
        """The plain-text log of one job, at most `max_log_bytes` (the tail is kept: failures are at the end).

        The API answers 302 with a short-lived URL; that URL is fetched WITHOUT the Authorization header.
        """
        path = f"repos/{_repo(repo)}/actions/jobs/{int(job_id)}/logs"
        response = await self._send("GET", path, redirect_ok=True)
        if response.status_code in (301, 302, 303, 307, 308):
            return await self._fetch_log_redirect(path, response.headers.get("location"))
        return _tail_text(response.content, self._max_log_bytes)

    async def rerun_workflow(self, repo: str, run_id: int) -> None:
        """Ask the forge to re-run every job of a workflow run (used for known-flaky jobs)."""
        await self._json("POST", f"repos/{_repo(repo)}/actions/runs/{int(run_id)}/rerun")

    async def find_pull_request(self, repo: str, head_branch: str, state: str = "all") -> PullRequest | None:
        """The newest pull request whose head is `head_branch` of this repository, or None."""
        name = _repo(repo)
        owner = name.split("/", 1)[0]
        reply = await self._json(
            "GET",
            f"repos/{name}/pulls",
            params={"head": f"{owner}:{head_branch}", "state": state, "per_page": 10},
            keep=PullRequest,
        )
        pulls = [_parse(PullRequest, item, f"repos/{repo}/pulls") for item in _as_list(reply.body)]
        # Security: only an exact head match counts, whatever the forge's filter did.
        matching = [p for p in pulls if p.head.ref == head_branch]
        return max(matching, key=lambda p: p.number) if matching else None

    async def create_pull_request(self, repo: str, *, head: str, base: str, title: str, body: str) -> PullRequest:
        """Open a pull request from `head` into `base`.

        Raises:
            ForgeConflict: one already exists for this head, or the branches have nothing to compare.
        """
        reply = await self._json(
            "POST", f"repos/{_repo(repo)}/pulls", json={"head": head, "base": base, "title": title, "body": body}
        )
        return _parse(PullRequest, reply.body, f"repos/{repo}/pulls")

    async def get_pull_request(self, repo: str, number: int) -> PullRequest:
        """One pull request."""
        reply = await self._json("GET", f"repos/{_repo(repo)}/pulls/{int(number)}", keep=PullRequest)
        return _parse(PullRequest, reply.body, f"repos/{repo}/pulls/{number}")

    async def merge_pull_request(self, repo: str, number: int, *, sha: str, title: str, message: str) -> str:
        """Squash-merge a pull request whose head is exactly `sha`; returns the merge commit's sha.

        Raises:
            ForgeConflict: the head moved, the pull request is not mergeable, or the forge didn't merge it.
        """
        path = f"repos/{_repo(repo)}/pulls/{int(number)}/merge"
        reply = await self._json(
            "PUT",
            path,
            json={"sha": sha, "commit_title": title, "commit_message": message, "merge_method": "squash"},
        )
        result = _parse(_MergeBody, reply.body, path)
        if not result.merged or not result.sha:
            raise ForgeConflict(f"Forge did not merge the pull request: PUT /{path}: {result.message or ''!r}.")
        return result.sha

    async def list_check_runs(self, repo: str, ref: str, *, max_pages: int = JOB_PAGES) -> list[CheckRun]:
        """The latest check run of each name on `ref` (a SHA or branch), newest first, every page."""
        path = f"repos/{_repo(repo)}/commits/{quote(ref, safe='')}/check-runs"
        runs: list[CheckRun] = []
        pages = self._pages(path, {"per_page": _PER_PAGE, "filter": "latest"}, max_pages=max_pages, keep=_CheckRunsBody)
        for reply in await pages:
            runs.extend(_parse(_CheckRunsBody, reply.body, path).check_runs)
        return runs

    async def list_commit_statuses(self, repo: str, ref: str) -> list[CommitStatus]:
        """The newest commit status of each context on `ref` (`repos/get-combined-status-for-ref`)."""
        path = f"repos/{_repo(repo)}/commits/{quote(ref, safe='')}/status"
        statuses: list[CommitStatus] = []
        for reply in await self._pages(path, {"per_page": _PER_PAGE}, max_pages=JOB_PAGES, keep=_CombinedStatusBody):
            statuses.extend(_parse(_CombinedStatusBody, reply.body, path).statuses)
        return statuses

    async def required_status_checks(self, repo: str, branch: str) -> tuple[str, ...]:
        """The contexts branch protection requires on `branch` before a merge (empty when it requires none).

        Read from `repos/get-branch` (contents:read), whose `protection` carries them; the protection
        endpoints themselves need administration rights the App does not have.
        """
        path = f"repos/{_repo(repo)}/branches/{quote(branch, safe='')}"
        body = _parse(_BranchBody, (await self._json("GET", path, keep=_BranchBody)).body, path)
        protection = body.protection
        if not body.protected or protection is None or protection.required_status_checks is None:
            return ()
        return protection.required_status_checks.contexts

    async def open_issues(self, repo: str, *, max_pages: int = RUN_PAGES) -> list[Issue]:
        """The repository's open issues (not pull requests), newest first, up to `max_pages` of 100."""
        path = f"repos/{_repo(repo)}/issues"
        found: list[Issue] = []
        for reply in await self._pages(path, {"state": "open", "per_page": _PER_PAGE}, max_pages=max_pages, keep=Issue):
            found += [_parse(Issue, item, path) for item in _as_list(reply.body)]
        return [i for i in found if i.pull_request is None]

    async def create_issue(self, repo: str, *, title: str, body: str, assignees: Sequence[str] = ()) -> Issue:
        """Open an issue (logins that may not be assigned are dropped by the forge, not refused)."""
        payload: dict[str, Any] = {"title": title, "body": body}
        if assignees:
            payload["assignees"] = list(assignees)
        path = f"repos/{_repo(repo)}/issues"
        return _parse(Issue, (await self._json("POST", path, json=payload)).body, path)

    async def update_issue(self, repo: str, number: int, *, body: str, state: str | None = None) -> Issue:
        """Replace an issue's body (and optionally open or close it)."""
        payload: dict[str, Any] = {"body": body} if state is None else {"body": body, "state": state}
        path = f"repos/{_repo(repo)}/issues/{int(number)}"
        return _parse(Issue, (await self._json("PATCH", path, json=payload)).body, path)

    async def issue_comments(self, repo: str, number: int, *, max_pages: int = RUN_PAGES) -> list[IssueComment]:
        """The comments of an issue or a pull request's conversation, oldest first."""
        path = f"repos/{_repo(repo)}/issues/{int(number)}/comments"
        found: list[IssueComment] = []
        for reply in await self._pages(path, {"per_page": _PER_PAGE}, max_pages=max_pages, keep=IssueComment):
            found += [_parse(IssueComment, item, path) for item in _as_list(reply.body)]
        return found

    async def comment(self, repo: str, number: int, body: str) -> IssueComment:
        """Comment on an issue or a pull request."""
        path = f"repos/{_repo(repo)}/issues/{int(number)}/comments"
        return _parse(IssueComment, (await self._json("POST", path, json={"body": body})).body, path)

    async def update_comment(self, repo: str, comment_id: int, body: str) -> IssueComment:
        """Replace a comment's body."""
        path = f"repos/{_repo(repo)}/issues/comments/{int(comment_id)}"
        return _parse(IssueComment, (await self._json("PATCH", path, json={"body": body})).body, path)

    async def add_assignees(self, repo: str, number: int, logins: Sequence[str]) -> None:
        """Assign users to an issue or pull request (the forge drops those who may not be assigned)."""
        await self._json(
            "POST", f"repos/{_repo(repo)}/issues/{int(number)}/assignees", json={"assignees": list(logins)}
        )

    async def request_reviewers(self, repo: str, number: int, logins: Sequence[str]) -> None:
        """Ask users to review a pull request.

        Raises:
            ForgeConflict: (422) a login has no push access to the repository, or wrote the pull request.
        """
        path = f"repos/{_repo(repo)}/pulls/{int(number)}/requested_reviewers"
        await self._json("POST", path, json={"reviewers": list(logins)})

    async def close_pull_request(self, repo: str, number: int) -> PullRequest:
        """Close a pull request without merging it."""
        reply = await self._json("PATCH", f"repos/{_repo(repo)}/pulls/{int(number)}", json={"state": "closed"})
        return _parse(PullRequest, reply.body, f"repos/{repo}/pulls/{number}")

    async def branch_head(self, repo: str, branch: str) -> str | None:
        """The commit a branch points at, or None when the forge has no such branch."""
        path = f"repos/{_repo(repo)}/branches/{_fix_branch(branch)}"
        try:
            reply = await self._json("GET", path)
        except ForgeNotFound:
            return None
        return _parse(_BranchBody, reply.body, path).commit.sha

    async def delete_branch(self, repo: str, branch: str) -> bool:
        """Delete a fix branch (its open pull requests close with it); False when it was already gone."""
        try:
            await self._json("DELETE", f"repos/{_repo(repo)}/git/refs/heads/{_fix_branch(branch)}")
        except ForgeConflict as exc:
            if exc.status == 422:  # GitHub: "Reference does not exist"
                return False
            raise
        return True

    # ------------------------------------------------------------------------------------------ core

    async def _pages(
        self,
        path: str,
        params: Mapping[str, str | int],
        *,
        max_pages: int,
        keep: type[BaseModel],
        cache_if: Callable[[Any], bool] | None = None,
        lazy: bool = False,
    ) -> list[_Reply]:
        """GET `path` and each `rel="next"` page after it, at most `max_pages` (the cap hit is logged).

        A list, not an async generator: most listings are one page, and a pass asks for one per project.
        """
        replies: list[_Reply] = []
        target: str | None = path
        query: Mapping[str, str | int] | None = params
        unchanged = False
        for _ in range(max(1, max_pages)):
            if target is None:
                return replies
            cached = self._etags.get(target) if unchanged else None
            if cached is not None:  # page 1 unchanged: the older pages are the ones read last time
                reply = _cached_reply(cached, lazy=lazy)
            else:
                reply = await self._json("GET", target, params=query, keep=keep, cache_if=cache_if, lazy=lazy)
            if query is not None:  # the first page decides whether the others are read again
                unchanged = reply.not_modified
            replies.append(reply)
            target, query = self._next_page(path, reply.links), None
        if target is not None:
            log_event(logger, "forge_page_cap_hit", level=logging.WARNING, path=path, max_pages=max_pages)
        return replies

    def _next_page(self, path: str, links: str | None) -> str | None:
        """The API-relative path of the `rel="next"` link, or None on the last page.

        Raises:
            ForgeError: the link points outside the API root (the token is never sent elsewhere).
        """
        if not links:
            return None
        for url, rel in _LINK_RE.findall(links):
            if "next" not in rel.split():
                continue
            base = str(self._http.base_url)
            if not url.startswith(base):
                raise ForgeError(f"Forge paginated outside its API root: GET /{path}: {url[:120]!r}.")
            return str(url[len(base) :])
        return None

    async def _json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        keep: type[BaseModel] | None = None,
        cache_if: Callable[[Any], bool] | None = None,
        lazy: bool = False,
    ) -> _Reply:
        """Send one API request and decode its JSON body; GETs use and fill the ETag cache.

        The cache holds the ETag and, of the body, only the fields of `keep` (the model the caller reads,
        as compact JSON text): a page of 30 GitHub runs is ~600 KiB parsed, its `WorkflowRun` fields ~20 KiB.
        A GET without `keep` is not cached, nor one whose body `cache_if` refuses. With `lazy`, a 304's
        body is left as the cached text (`_Reply.text`) for the caller to parse if it needs it.
        """
        key = _cache_key(path, params) if method == "GET" and keep is not None else None
        cached = self._etags.get(key) if key is not None else None
        response = await self._send(
            method, path, params=params, json=json, if_none_match=cached.etag if cached else None
        )
        if response.status_code == 304 and cached is not None and key is not None:
            self.stats.not_modified += 1
            etags = self._etags
            if key in etags:
                etags.move_to_end(key)
            else:  # evicted by concurrent requests while this one was in flight: put it back
                etags[key] = cached
                self._evict()
            return _cached_reply(cached, lazy=lazy)
        try:
            body = response.json() if response.content else None
        except ValueError as exc:
            raise ForgeError(f"Forge returned a body that is not JSON: {method} /{path}.") from exc
        etag = response.headers.get("etag")
        links = response.headers.get("link")
        if key is not None and etag and keep is not None and (cache_if is None or cache_if(body)):
            text = json_module.dumps(_slim(body, keep), separators=(",", ":"))
            self._etags[key] = _CacheEntry(etag=etag, text=text, links=links)
            self._etags.move_to_end(key)
            self._evict()
        return _Reply(status=response.status_code, body=body, not_modified=False, links=links)

    def _evict(self) -> None:
        while len(self._etags) > self._etag_entries:
            self._etags.popitem(last=False)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        if_none_match: str | None = None,
        redirect_ok: bool = False,
    ) -> _Answer:
        """Send with auth, rate-limit waits and bounded retries; return a 2xx/304 (or 3xx) response."""
        retries = 0
        refreshed = False
        lean = self._gets if method == "GET" and not redirect_ok else None
        while True:
            if self.stats.rate_remaining == 0:  # else nothing to wait for (checked here: one await less a request)
                await self._wait_for_primary_limit(method, path)
            token = await self._auth.token()
            headers = {"Authorization": f"Bearer {token}"}
            if if_none_match:
                headers["If-None-Match"] = if_none_match
            response: _Answer
            try:
                if lean is not None:
                    response = await lean.get(path, params=params, headers=headers)
                else:
                    response = await self._http.request(
                        method, path, params=params, json=json, headers=headers, timeout=self._timeout
                    )
            except (httpx2.HTTPError, LeanHTTPError) as exc:
                if isinstance(exc, LeanHTTPError):
                    never_sent, timed_out = not exc.sent, exc.timeout
                else:
                    never_sent = isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout | httpx2.PoolTimeout)
                    timed_out = isinstance(exc, httpx2.TimeoutException)
                if retries < self._max_retries and (method in _IDEMPOTENT or never_sent):
                    retries += 1
                    await self._retry_wait(self._backoff(retries))
                    continue
                what = "timed out" if timed_out else exc.__class__.__name__
                raise ForgeUnavailable(f"Forge unavailable: {method} /{path}: {what}.") from exc
            self.stats.requests += 1
            self._track_rate(response.headers)
            status = response.status_code
            if 200 <= status < 300 or (status == 304 and if_none_match):
                return response
            if redirect_ok and status in (301, 302, 303, 307, 308):
                return response
            if status == 401 and not refreshed:
                # The installation token may have been revoked or expired early: refresh once, then give up.
                self._auth.invalidate(token)
                refreshed = True
                continue
            if self._is_rate_limited(response):
                wait = self._rate_wait(response)
                if retries < self._max_retries and wait <= self._max_rate_wait:
                    retries += 1
                    await self._retry_wait(wait)
                    self.stats.rate_remaining = None  # waited out; the next response says what is left
                    continue
                raise ForgeRateLimited(
                    f"Forge rate limit: {method} /{path}: HTTP {status}; retry after {wait:.0f}s.",
                    retry_after=wait,
                    status=status,
                )
            if status >= 500:
                if retries < self._max_retries and method in _IDEMPOTENT:
                    retries += 1
                    await self._retry_wait(self._backoff(retries))
                    continue
                raise ForgeUnavailable(f"Forge unavailable: {method} /{path}: HTTP {status}.", status=status)
            raise self._error(method, path, response)

    async def _fetch_log_redirect(self, path: str, location: str | None) -> str:
        """Follow the log download redirect(s) without credentials and read at most the cap (the tail)."""
        url = self._http.base_url.join(path)
        for _ in range(_MAX_LOG_REDIRECTS):
            if not location:
                raise ForgeError(f"Forge redirected without a location: GET /{path}.")
            target = url.join(location)
            if target.scheme not in ("http", "https"):
                raise ForgeError(f"Forge redirected the log download to an unsupported scheme: {target.scheme!r}.")
            try:
                # Security: a fresh request to an absolute URL with only the client's default headers, which
                # hold no Authorization: the log host (often a blob store) never sees the installation token.
                async with self._http.stream("GET", target, timeout=self._timeout) as response:
                    self.stats.requests += 1
                    if response.status_code in (301, 302, 303, 307, 308):
                        location, url = response.headers.get("location"), target
                        continue
                    if response.status_code in (403, 404, 410):
                        raise ForgeNotFound(
                            f"Forge log download expired or missing: GET /{path}: HTTP {response.status_code}.",
                            status=response.status_code,
                        )
                    if response.status_code >= 400:
                        raise ForgeUnavailable(
                            f"Forge log download failed: GET /{path}: HTTP {response.status_code}.",
                            status=response.status_code,
                        )
                    return await _read_tail(response, self._max_log_bytes)
            except httpx2.HTTPError as exc:
                raise ForgeUnavailable(f"Forge log download failed: GET /{path}: {exc.__class__.__name__}.") from exc
        raise ForgeError(f"Forge redirected the log download too many times: GET /{path}.")

    async def _wait_for_primary_limit(self, method: str, path: str) -> None:
        """With no requests left until a known reset, wait for it if it is near, else refuse to send."""
        if self.stats.rate_remaining != 0 or self.stats.rate_reset is None:
            return
        wait = self.stats.rate_reset - self._clock()
        if wait <= 0:
            return
        if wait > self._max_rate_wait:
            raise ForgeRateLimited(
                f"Forge rate limit exhausted: {method} /{path}: resets in {wait:.0f}s.", retry_after=wait
            )
        await self._sleep(wait)
        self.stats.rate_remaining = None  # unknown until the next response says

    def _track_rate(self, headers: Mapping[str, str]) -> None:
        remaining = headers.get("x-ratelimit-remaining")
        reset = headers.get("x-ratelimit-reset")
        if remaining is not None and remaining.strip().isdigit():
            self.stats.rate_remaining = int(remaining)
        if reset is not None and reset.strip().isdigit():
            self.stats.rate_reset = float(reset)

    @staticmethod
    def _is_rate_limited(response: _Answer) -> bool:
        if response.status_code == 429:
            return True
        if response.status_code != 403:
            return False
        headers = response.headers
        if "retry-after" in headers or headers.get("x-ratelimit-remaining", "").strip() == "0":
            return True
        # GitHub documents no header for some secondary limits; its message is the only signal then.
        return "rate limit" in _forge_message(response).lower()

    def _rate_wait(self, response: _Answer) -> float:
        """Seconds to wait before retrying a rate-limited request, per the forge's headers."""
        retry_after = response.headers.get("retry-after", "").strip()
        if retry_after.isdigit():
            return float(retry_after)
        reset = response.headers.get("x-ratelimit-reset", "").strip()
        if response.headers.get("x-ratelimit-remaining", "").strip() == "0" and reset.isdigit():
            return max(1.0, float(reset) - self._clock())
        return _SECONDARY_DEFAULT_WAIT

    def _backoff(self, retry: int) -> float:
        """Exponential backoff with jitter: base * 2**(retry-1), capped, times a factor in [0.5, 1]."""
        delay: float = min(self._backoff_cap, self._backoff_base * 2 ** (retry - 1))
        return delay * self._rng.uniform(0.5, 1.0)

    async def _retry_wait(self, seconds: float) -> None:
        self.stats.retries += 1
        await self._sleep(seconds)

    def _error(self, method: str, path: str, response: _Answer) -> ForgeError:
        status = response.status_code
        message = redact(_forge_message(response), extra_secrets=self._auth.secrets())
        text = f"{method} /{path}: HTTP {status}" + (f": {message!r}" if message else "")
        if status == 404:
            return ForgeNotFound(f"Forge: not found: {text}.", status=status)
        if status in (401, 403):
            return ForgeAuthError(f"Forge refused the request: {text}.", status=status)
        if status in (405, 409, 422):
            return ForgeConflict(f"Forge conflict: {text}.", status=status)
        return ForgeError(f"Forge error: {text}.", status=status)


# ---------------------------------------------------------------------------------------------- helpers


def _repo(repo: str) -> str:
    # Security: the repository name becomes part of a URL path; refuse anything that could change the path.
    if repo in _CHECKED_REPOS:
        return repo
    if not REPO_NAME_RE.match(repo) or any(part in (".", "..") for part in repo.split("/")):
        raise ForgeError(f"Forge: not a repository name: {repo!r}.")
    if len(_CHECKED_REPOS) < _MAX_CHECKED_REPOS:
        _CHECKED_REPOS.add(repo)
    return repo


_CHECKED_REPOS: set[str] = set()  # names `_repo` accepted: a pass asks for the same ones every time
_MAX_CHECKED_REPOS = 100_000


def _fix_branch(branch: str) -> str:
    # Security: branches are read and deleted only when they are greenloop fix branches (never the default).
    if not is_fix_branch(branch):
        raise ForgeError(f"Forge: not a fix branch: {branch!r}.")
    return branch


def _parse(model: type[_M], body: Any, what: str) -> _M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ForgeError(f"Forge returned an unexpected body: /{what}.") from exc


def _cached_reply(entry: _CacheEntry, *, lazy: bool) -> _Reply:
    """A 304 answered from the cache: the body parsed, or (`lazy`) its text."""
    if lazy:
        return _Reply(status=304, body=None, not_modified=True, links=entry.links, text=entry.text)
    return _Reply(status=304, body=json_module.loads(entry.text), not_modified=True, links=entry.links)


def _unfinished(body: Any) -> bool:
    """Whether a jobs listing has a job that is not completed yet."""
    jobs = body.get("jobs") if isinstance(body, dict) else None
    return isinstance(jobs, list) and any(isinstance(j, dict) and j.get("status") != "completed" for j in jobs)


def _slim(body: Any, keep: type[BaseModel]) -> Any:
    """`body` (an object or a list of them) reduced to the fields of `keep`; unchanged if it doesn't fit."""
    try:
        if isinstance(body, list):
            return [keep.model_validate(item).model_dump(mode="json", exclude_none=True) for item in body]
        return keep.model_validate(body).model_dump(mode="json", exclude_none=True)
    except ValidationError:
        return body  # the caller's own parse reports it


def _as_list(body: Any) -> list[Any]:
    if not isinstance(body, list):
        raise ForgeError("Forge returned an unexpected body: expected a list.")
    return body


def _forge_message(response: _Answer) -> str:
    """The `message` field of a GitHub error body, shortened; empty when there is none."""
    try:
        body = response.json()
    except ValueError:
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    return message[:200] if isinstance(message, str) else ""


def _tail_text(data: bytes, cap: int) -> str:
    if len(data) <= cap:
        return data.decode("utf-8", errors="replace")
    return _dropped_note(len(data) - cap) + data[-cap:].decode("utf-8", errors="replace")


def _dropped_note(dropped: int) -> str:
    return f"[greenloop: the first {dropped} bytes of this log were dropped]\n"


async def _read_tail(response: httpx2.Response, cap: int) -> str:
    """Stream a body, keeping only its last `cap` bytes."""
    buffer = bytearray()
    dropped = 0
    async for chunk in response.aiter_bytes():
        buffer += chunk
        if len(buffer) > cap:
            excess = len(buffer) - cap
            dropped += excess
            del buffer[:excess]
    text = buffer.decode("utf-8", errors="replace")
    return _dropped_note(dropped) + text if dropped else text

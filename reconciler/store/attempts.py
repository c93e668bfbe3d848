"""Remediation attempts: start one (the database is the lock), move it through its states, read it back.

Concurrency rules live in the schema (see `models`): a second active attempt for a project, or a second
attempt for a failure fingerprint, is refused by the database itself. This module only inserts, catches the
refusal, and looks up which rule refused it. Every status change is a compare-and-set on the current status
and leaves a `reconciler_transition` row.

Every function takes the session factory (`engine.make_sessionmaker`) and owns its own unit of work.
Driver exceptions are translated here into `reconciler.errors` types.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import aliased

from policy.types import ACTIVE_STATUSES, TERMINAL_STATUSES, AttemptStatus, FailureClass
from reconciler.errors import StoreBusy, StoreError, TransitionRefused, UnknownProject
from reconciler.store.engine import SessionFactory
from reconciler.store.models import Attempt, McpToolCall, Project, Transition, utcnow
from reconciler.store.names import narrowed
from reconciler.store.one_row import one_row
from reconciler.store.translate import TRIES, ConstraintRefused, backoff, fetch_all, rowcount, translated, with_retry

__all__ = [
    "RESUMED",
    "SETTABLE_FIELDS",
    "EarlierAttemptRow",
    "ResumeClaim",
    "StartOutcome",
    "StartReason",
    "active_attempts",
    "active_by_project",
    "attempt_history",
    "attempt_transitions",
    "can_transition",
    "claim_resume",
    "earlier_on_job",
    "get_attempt",
    "heartbeat",
    "last_failures",
    "list_attempts",
    "mark_stale_announced",
    "new_attempt_id",
    "pr_open_since",
    "reopen_from_forge",
    "start_attempt",
    "transition",
    "window_costs",
]

StartReason = Literal["started", "already_active", "already_handled", "busy"]
ResumeClaim = Literal["resumed", "exhausted", "lost"]

RESUMED: Final = "resumed_after_worker_died"
"""The reason of the transition row (status unchanged) that records an attempt's one resume."""

# Columns callers may set through `transition` / `heartbeat`; identity, status and timestamps are the store's.
SETTABLE_FIELDS: Final[frozenset[str]] = frozenset(
    {
        "branch",
        "pr_number",
        "pr_url",
        "pushed_sha",
        "merged_sha",
        "stop_reason",
        "report",
        "input_tokens",
        "output_tokens",
        "cache_tokens",
        "cost_usd",
        "turns",
        "agent_seconds",
        "transcript",
        "trace_id",
        "checks",
        "revisions",
        "stale_announced_at",
        "failure_class",
    }
)

# The happy path, in order; `succeeded` is reachable only from `verifying` (the fix was seen green).
_FORWARD: Final = (
    AttemptStatus.PENDING,
    AttemptStatus.RUNNING,
    AttemptStatus.PR_OPEN,
    AttemptStatus.VERIFYING,
    AttemptStatus.SUCCEEDED,
)
_ABORTS: Final = frozenset({AttemptStatus.FAILED, AttemptStatus.CANCELLED, AttemptStatus.ESCALATED})
_FAILURES: Final = (AttemptStatus.FAILED, AttemptStatus.ESCALATED)


@dataclass(frozen=True, slots=True)
class StartOutcome:
    """What `start_attempt` did.

    `attempt_id` is the new attempt when `started`; for `already_active` the project's active attempt; for
    `already_handled` the attempt that owns the fingerprint; None for `busy`.
    """

    started: bool
    attempt_id: str | None
    reason: StartReason


@dataclass(frozen=True, slots=True)
class EarlierAttemptRow:
    """An earlier attempt on a job, with the files its successful `write_repo_file` calls wrote."""

    attempt_id: str
    status: str
    stop_reason: str | None
    pr_number: int | None
    pr_url: str | None
    created_at: datetime
    files: tuple[str, ...]


def new_attempt_id() -> str:
    """A short random attempt id (12 hex digits)."""
    return uuid.uuid4().hex[:12]


def can_transition(current: AttemptStatus, to: AttemptStatus) -> bool:
    """Whether the state machine allows `current -> to`.

    Forward along pending -> running -> pr_open -> verifying (steps may be skipped), `succeeded` only from
    `verifying`, `failed` / `cancelled` / `escalated` from any active state, and one step back: `pr_open ->
    running`, a revision round (the PR's checks failed; the agent works on the same branch again). Terminal
    states are final.
    """
    if current in TERMINAL_STATUSES:
        return False
    if to in _ABORTS:
        return True
    if (current, to) == (AttemptStatus.PR_OPEN, AttemptStatus.RUNNING):
        return True
    if to is AttemptStatus.SUCCEEDED:
        return current is AttemptStatus.VERIFYING
    return _FORWARD.index(to) > _FORWARD.index(current)


async def start_attempt(
    session_factory: SessionFactory,
    *,
    project: str,
    job: str,
    fingerprint: str,
    run_id: str,
    head_sha: str,
    trace_id: str | None = None,
    attempt_id: str | None = None,
    model: str | None = None,
    max_transient_retries: int = 3,
) -> StartOutcome:
    """Insert a `pending` attempt unless a rule refuses it: checked with a read first, enforced by the database.

    `attempt_id` is the id to give it (a manual run has opened its MCP session with it already); default a
    new one.

    A failure's first attempt is generation 0. Another attempt at the same failure takes the next generation,
    and only when the newest one ended and either failed `transient` (at most `max_transient_retries` such
    failures since the project's last reset) or was started before an operator reset; the unique
    `(fingerprint, generation)` constraint refuses a second attempt of one generation, so two racing passes
    start one.

    Returns `started`, `already_active` (the project has an active attempt), `already_handled` (this failure
    has an attempt that is still going, or one that no rule above lets follow) or `busy` (the database stayed
    locked through every bounded retry: try again on a later pass).

    Raises:
        UnknownProject: no `reconciler_project` row named `project`.
        StoreError: any other database failure (including a refusal by neither rule, tries after tries).
    """

    async def refusal_now(*, check_project: bool) -> StartOutcome | int | None:
        try:
            return await _refusal(
                session_factory,
                project=project,
                fingerprint=fingerprint,
                max_transient_retries=max_transient_retries,
                check_project=check_project,
            )
        except StoreBusy:
            return None  # unknown: the insert below decides

    chosen_id = attempt_id
    refused: ConstraintRefused | None = None
    for n in range(TRIES):
        # Read first: most starts are refused (one attempt per project and per fingerprint), and a read takes no
        # write lock. Only when no rule refuses now does the insert run; the unique indexes stay the wall for
        # two starts racing past this read.
        refusal = await refusal_now(check_project=False)  # a missing project: the insert's foreign key says so
        if isinstance(refusal, StartOutcome):
            return refusal
        generation = refusal or 0  # unknown (busy): generation 0, and the unique constraint decides
        new_id = chosen_id or new_attempt_id()
        try:
            async with translated(), session_factory() as session, session.begin():
                now = utcnow()
                session.add(
                    Attempt(
                        id=new_id,
                        project=project,
                        job=job,
                        fingerprint=fingerprint,
                        run_id=run_id,
                        head_sha=head_sha,
                        status=AttemptStatus.PENDING.value,
                        generation=generation,
                        trace_id=trace_id,
                        model=model,
                        created_at=now,
                        updated_at=now,
                    )
                )
                await session.flush()  # the attempt row first: the transition row references it
                session.add(
                    Transition(
                        attempt_id=new_id,
                        from_status=None,
                        to_status=AttemptStatus.PENDING.value,
                        reason="started" if generation == 0 else f"started: generation {generation}",
                        at=now,
                    )
                )
            return StartOutcome(True, new_id, "started")
        except ConstraintRefused as exc:
            refused = exc
            # Which rule refused it? Ask the database, never the error text.
            refusal = await refusal_now(check_project=True)
            if isinstance(refusal, StartOutcome):
                return refusal
            # Neither rule holds any more (the blocking attempt just finished) or an id collided: try again.
        except StoreBusy:
            refused = None
        await asyncio.sleep(backoff(n))
    if refused is not None:
        cause = refused.__cause__
        raise StoreError(f"Store error: attempt refused by the database: {cause!r}") from cause
    return StartOutcome(False, None, "busy")


async def transition(
    session_factory: SessionFactory,
    attempt_id: str,
    to: AttemptStatus,
    *,
    reason: str | None,
    expected: AttemptStatus | None = None,
    expected_revisions: int | None = None,
    **fields: Any,
) -> bool:
    """Move an attempt to `to` if it is still in `expected` (default: the status read just before) and, with
    `expected_revisions`, still in that revision round (a pass that read an earlier round starts no second one).

    A compare-and-set: returns False, changing nothing, when the attempt does not exist, is already terminal
    or was changed concurrently. On success it also sets `fields` (names in `SETTABLE_FIELDS`),
    `updated_at`, `finished_at` for a terminal `to`, and records a `reconciler_transition` row.

    Raises:
        TypeError: a name in `fields` that is not in `SETTABLE_FIELDS`.
        TransitionRefused: the state machine does not allow the change (see `can_transition`).
        StoreBusy: the database stayed locked through every bounded retry.
        StoreError: any other database failure.
    """
    _check_fields(fields)
    to = AttemptStatus(to)

    async def _once() -> bool:
        current = expected
        if current is None:
            async with session_factory() as session:
                status = await session.scalar(sa.select(Attempt.status).where(Attempt.id == attempt_id))
            if status is None:
                return False
            current = AttemptStatus(status)
            if current in TERMINAL_STATUSES:
                return False  # someone else finished it first
        if not can_transition(current, to):
            raise TransitionRefused(
                f"Transition refused: {current.value!r} -> {to.value!r} is not allowed: {attempt_id!r}.",
                from_status=current.value,
                to_status=to.value,
            )
        now = utcnow()
        values: dict[str, Any] = {**fields, "status": to.value, "updated_at": now}
        if to in TERMINAL_STATUSES:
            values["finished_at"] = now
        if to is AttemptStatus.RUNNING:
            values["heartbeat_at"] = now  # a worker starts now: a pass must not take the last run's beat for it
        async with session_factory() as session, session.begin():
            # The write transaction starts with the UPDATE, so SQLite takes its write lock at once.
            result = await session.execute(
                sa.update(Attempt)
                .where(Attempt.id == attempt_id, Attempt.status == current.value)
                .where(sa.true() if expected_revisions is None else Attempt.revisions == expected_revisions)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if rowcount(result) != 1:
                return False
            session.add(
                Transition(attempt_id=attempt_id, from_status=current.value, to_status=to.value, reason=reason, at=now)
            )
        return True

    return await with_retry(_once)


async def reopen_from_forge(
    session_factory: SessionFactory,
    attempt_id: str,
    to: AttemptStatus,
    *,
    expected: AttemptStatus,
    reason: str,
    **fields: Any,
) -> bool:
    """Move a final attempt back to `pr_open` or `verifying` because the forge shows its pull request open or
    merged: the one way out of a terminal state, for an end recorded wrongly (a reply lost after the forge
    acted). A compare-and-set on `expected`; `finished_at` is cleared and a transition row recorded.

    Returns False, changing nothing, when the attempt changed since it was read, or when the project has
    another active attempt (the one-active-attempt index refuses: a later pass tries again).

    Raises:
        ValueError: `to` is not `pr_open`/`verifying`, or `expected` is not terminal.
        TypeError: a name in `fields` that is not in `SETTABLE_FIELDS`.
        StoreBusy: the database stayed locked through every bounded retry.
        StoreError: any other database failure.
    """
    _check_fields(fields)
    to, expected = AttemptStatus(to), AttemptStatus(expected)
    if to not in (AttemptStatus.PR_OPEN, AttemptStatus.VERIFYING) or expected not in TERMINAL_STATUSES:
        raise ValueError(f"Invalid reopen: {expected.value!r} -> {to.value!r}.")

    async def _once() -> bool:
        now = utcnow()
        values: dict[str, Any] = {**fields, "status": to.value, "updated_at": now, "finished_at": None}
        try:
            async with translated(), session_factory() as session, session.begin():
                result = await session.execute(
                    sa.update(Attempt)
                    .where(Attempt.id == attempt_id, Attempt.status == expected.value)
                    .values(**values)
                    .execution_options(synchronize_session=False)
                )
                if rowcount(result) != 1:
                    return False
                session.add(
                    Transition(
                        attempt_id=attempt_id, from_status=expected.value, to_status=to.value, reason=reason, at=now
                    )
                )
        except ConstraintRefused:
            return False
        return True

    return await with_retry(_once)


async def heartbeat(
    session_factory: SessionFactory, attempt_id: str, *, expected: AttemptStatus | None = None, **fields: Any
) -> bool:
    """Refresh `heartbeat_at` (and optionally progress `fields`) of an active attempt.

    With `expected`, only while the attempt is still in that status (a compare-and-set: a pass that read the
    attempt before another moved it writes nothing). Returns False when the attempt does not exist, is
    terminal, or is no longer `expected`.

    Raises:
        TypeError: a name in `fields` that is not in `SETTABLE_FIELDS`.
        StoreBusy: the database stayed locked through every bounded retry.
        StoreError: any other database failure.
    """
    _check_fields(fields)
    statuses = _values(ACTIVE_STATUSES) if expected is None else [expected.value]

    async def _once() -> bool:
        now = utcnow()
        async with session_factory() as session, session.begin():
            result = await session.execute(
                sa.update(Attempt)
                .where(Attempt.id == attempt_id, Attempt.status.in_(statuses))
                .values(**fields, heartbeat_at=now, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            return rowcount(result) == 1

    return await with_retry(_once)


async def get_attempt(session_factory: SessionFactory, attempt_id: str) -> Attempt | None:
    """The attempt with this id, or None.

    Raises:
        StoreError: the database failed.
    """
    async with translated(), session_factory() as session:
        return await session.get(Attempt, attempt_id)


async def active_attempts(session_factory: SessionFactory, project: str | None = None) -> list[Attempt]:
    """Attempts not yet terminal (at most one per project), oldest first; all projects when `project` is None.

    Raises:
        StoreError: the database failed.
    """
    query = sa.select(Attempt).where(Attempt.status.in_(_values(ACTIVE_STATUSES)))
    if project is not None:
        query = query.where(Attempt.project == project)
    return await fetch_all(session_factory, query.order_by(Attempt.created_at, Attempt.id))


async def active_by_project(session_factory: SessionFactory, projects: Iterable[str]) -> dict[str, Attempt]:
    """The active attempt of each of `projects` that has one (the index allows at most one per project).

    Raises:
        StoreError: the database failed.
    """
    names = set(projects)
    query = narrowed(sa.select(Attempt).where(Attempt.status.in_(_values(ACTIVE_STATUSES))), Attempt.project, names)
    return {a.project: a for a in await fetch_all(session_factory, query) if a.project in names}


async def last_failures(session_factory: SessionFactory, projects: Iterable[str]) -> dict[str, datetime]:
    """When each of `projects` last had an attempt end failed or escalated (projects without one are absent).

    Raises:
        StoreError: the database failed.
    """
    names = set(projects)
    query = narrowed(
        sa.select(Attempt.project, sa.func.max(Attempt.finished_at)).where(Attempt.status.in_(_values(_FAILURES))),
        Attempt.project,
        names,
    ).group_by(Attempt.project)
    async with translated(), session_factory() as session:
        return {name: at for name, at in await session.execute(query) if at is not None and name in names}


async def ended_without_pull_request(
    session_factory: SessionFactory, projects: Iterable[str], *, since: datetime, limit: int
) -> list[Attempt]:
    """The projects' attempts that ended since `since` naming a fix branch but no pull request, newest first
    (at most `limit`): one statement, whatever the number of projects.

    A long list of names is not sent (`narrowed`): the newest `limit` such attempts of every project are read
    and the asked ones kept. That is the answer unless the limit cut rows and some of those read were other
    projects' (a pass over part of the fleet); only then a second statement reads with the names in SQL.
    """
    names = set(projects)
    query = (
        sa.select(Attempt)
        .where(
            Attempt.status.in_(_values(TERMINAL_STATUSES)),
            Attempt.pr_number.is_(None),
            Attempt.branch.is_not(None),
            Attempt.finished_at >= since,
        )
        .order_by(Attempt.finished_at.desc())
        .limit(limit)
    )
    rows = await fetch_all(session_factory, narrowed(query, Attempt.project, names))
    kept = [a for a in rows if a.project in names]
    if len(rows) < limit or len(kept) == len(rows):
        return kept
    return await fetch_all(session_factory, query.where(Attempt.project.in_(list(names))))


async def claim_resume(
    session_factory: SessionFactory, attempt_id: str, status: AttemptStatus, *, timeout: timedelta
) -> ResumeClaim:
    """Claim a dead worker's attempt to run it again, at most once per attempt; the database decides.

    One compare-and-set: the attempt is still in `status`, its last sign of life is still older than
    `timeout`, and no earlier resume is recorded; it sets a fresh heartbeat and records a transition row
    (`status -> status`, reason `RESUMED`). `exhausted`: it was resumed once already and is stale again;
    `lost`: it changed since it was read (another replica's pass claimed it, or its worker beat again).

    Raises:
        StoreBusy, StoreError: the database stayed busy or failed.
    """
    earlier = sa.exists().where(Transition.attempt_id == attempt_id, Transition.reason == RESUMED)
    last_sign = sa.func.coalesce(Attempt.heartbeat_at, Attempt.updated_at, Attempt.created_at)

    async def _once() -> ResumeClaim:
        now = utcnow()
        async with session_factory() as session, session.begin():
            # The write transaction starts with the UPDATE, so SQLite takes its write lock at once.
            result = await session.execute(
                sa.update(Attempt)
                .where(Attempt.id == attempt_id, Attempt.status == status.value, last_sign < now - timeout, ~earlier)
                .values(heartbeat_at=now, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            if rowcount(result) == 1:
                session.add(
                    Transition(
                        attempt_id=attempt_id, from_status=status.value, to_status=status.value, reason=RESUMED, at=now
                    )
                )
                return "resumed"
            still_stale = await session.scalar(
                sa.select(sa.func.count())
                .select_from(Attempt)
                .where(Attempt.id == attempt_id, Attempt.status == status.value, last_sign < now - timeout, earlier)
            )
            return "exhausted" if still_stale else "lost"

    return await with_retry(_once)


async def pr_open_since(session_factory: SessionFactory, attempt_ids: Iterable[str]) -> dict[str, datetime]:
    """When each attempt last entered `pr_open` (its newest transition there), in one query; attempts that
    never did are absent.

    Raises:
        StoreError: the database failed.
    """
    ids = list(attempt_ids)
    if not ids:
        return {}
    query = (
        sa.select(Transition.attempt_id, sa.func.max(Transition.at))
        .where(Transition.attempt_id.in_(ids), Transition.to_status == AttemptStatus.PR_OPEN.value)
        .group_by(Transition.attempt_id)
    )
    async with translated(), session_factory() as session:
        return {attempt_id: at for attempt_id, at in await session.execute(query) if at is not None}


async def mark_stale_announced(session_factory: SessionFactory, attempt_id: str, *, since: datetime) -> bool:
    """Claim the one stale notice of an attempt whose pull request is open since `since`: a compare-and-set
    that holds only while it is `pr_open` and not announced since then. True: the caller announces it.

    Raises:
        StoreBusy, StoreError: the database stayed busy or failed.
    """

    async def _once() -> bool:
        async with session_factory() as session, session.begin():
            result = await session.execute(
                sa.update(Attempt)
                .where(
                    Attempt.id == attempt_id,
                    Attempt.status == AttemptStatus.PR_OPEN.value,
                    sa.or_(Attempt.stale_announced_at.is_(None), Attempt.stale_announced_at < since),
                )
                .values(stale_announced_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            return rowcount(result) == 1

    return await with_retry(_once)


async def attempt_history(session_factory: SessionFactory, project: str, *, limit: int = 50) -> list[Attempt]:
    """A project's attempts, newest first (for backoff, the failure cap and the API).

    Raises:
        StoreError: the database failed.
    """
    return await list_attempts(session_factory, project=project, limit=limit)


async def window_costs(
    session_factory: SessionFactory, *, day_start: datetime, month_start: datetime
) -> dict[str, tuple[float, float]]:
    """Cost (USD) of the attempts started since `day_start` and since `month_start`, per project (one query).

    `day_start` is within the month (`policy.spend.spend_windows`); projects without an attempt this month are
    absent.

    Raises:
        StoreError: the database failed.
    """
    today = sa.func.coalesce(sa.func.sum(sa.case((Attempt.created_at >= day_start, Attempt.cost_usd), else_=0.0)), 0.0)
    month = sa.func.coalesce(sa.func.sum(Attempt.cost_usd), 0.0)
    query = sa.select(Attempt.project, today, month).where(Attempt.created_at >= month_start).group_by(Attempt.project)
    async with translated(), session_factory() as session:
        rows = (await session.execute(query)).all()
    return {str(r[0]): (float(r[1]), float(r[2])) for r in rows}


async def earlier_on_job(
    session_factory: SessionFactory, project: str, job: str, *, exclude: str, limit: int = 5
) -> list[EarlierAttemptRow]:
    """The newest `limit` attempts on `project`'s `job` other than `exclude`, newest first, each with the paths
    it wrote (from the audit rows of its successful `write_repo_file` calls): one query.

    Raises:
        StoreError: the database failed.
    """
    recent = (
        sa.select(Attempt.id)
        .where(Attempt.project == project, Attempt.job == job, Attempt.id != exclude)
        .order_by(Attempt.created_at.desc())
        .limit(limit)
    )
    async with translated(), session_factory() as session:
        arguments: sa.ColumnElement[Any] = McpToolCall.arguments.expression
        if session.get_bind().dialect.name == "postgresql":
            arguments = sa.cast(arguments, sa.JSON)  # a text column: JSON operators need json
        path = sa.type_coerce(arguments, sa.JSON)["path"].as_string()
        query = (
            sa.select(Attempt, path)
            .outerjoin(
                McpToolCall,
                sa.and_(
                    McpToolCall.attempt_id == Attempt.id,
                    McpToolCall.tool == "write_repo_file",
                    McpToolCall.outcome == "ok",
                ),
            )
            .where(Attempt.id.in_(recent))
            .order_by(Attempt.created_at.desc(), Attempt.id, McpToolCall.id)
        )
        rows = (await session.execute(query)).all()
    out: dict[str, tuple[Attempt, list[str]]] = {}
    for attempt, written in rows:
        files = out.setdefault(attempt.id, (attempt, []))[1]
        if isinstance(written, str) and written not in files:
            files.append(written)
    return [
        EarlierAttemptRow(
            attempt_id=a.id,
            status=a.status,
            stop_reason=a.stop_reason,
            pr_number=a.pr_number,
            pr_url=a.pr_url,
            created_at=a.created_at,
            files=tuple(files),
        )
        for a, files in out.values()
    ]


async def list_attempts(
    session_factory: SessionFactory,
    *,
    project: str | None = None,
    statuses: Iterable[AttemptStatus] | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Attempt]:
    """Attempts newest first, optionally of one project and/or in some statuses.

    Raises:
        StoreError: the database failed.
    """
    query = sa.select(Attempt)
    if project is not None:
        query = query.where(Attempt.project == project)
    if statuses is not None:
        query = query.where(Attempt.status.in_(_values(statuses)))
    query = query.order_by(Attempt.created_at.desc(), Attempt.id.desc()).limit(limit).offset(offset)
    return await fetch_all(session_factory, query)


async def attempt_transitions(session_factory: SessionFactory, attempt_id: str) -> list[Transition]:
    """The audit trail of one attempt's status changes, oldest first (the first has `from_status` None).

    Raises:
        StoreError: the database failed.
    """
    query = sa.select(Transition).where(Transition.attempt_id == attempt_id).order_by(Transition.id)
    return await fetch_all(session_factory, query)


# --- internals ---------------------------------------------------------------------------------------------


async def _refusal(
    session_factory: SessionFactory,
    *,
    project: str,
    fingerprint: str,
    max_transient_retries: int,
    check_project: bool = True,
) -> StartOutcome | int:
    """The rule that refuses (or refused) starting this attempt, or the generation the new attempt takes when
    neither holds now: the failure's newest attempt first, then the project's active one, then, with
    `check_project`, whether the project exists.

    One SELECT answers all of it (`_refusal_query`), on a connection rather than an ORM session: most start
    calls end here, refused, so this read is the hot path of many starters racing (a statement on SQLite is a
    round of thread hops through aiosqlite; one statement is also one consistent snapshot).

    Raises:
        UnknownProject: `check_project` and no such project (what a refused foreign key meant).
    """
    async with translated():
        row = _RefusalRow._make(
            await one_row(
                session_factory.kw["bind"], _refusal_query(), {"project": project, "fingerprint": fingerprint}
            )
        )
    generation = 0
    if row.newest_id is not None:
        if not _may_follow(row, max_transient_retries):
            return StartOutcome(False, row.newest_id, "already_handled")
        generation = int(row.newest_generation or 0) + 1
    if row.active_id is not None:
        return StartOutcome(False, row.active_id, "already_active")
    if check_project and not row.known:
        raise UnknownProject(f"Unknown project: no reconciler_project row: {project!r}.", project=project)
    return generation


class _RefusalRow(NamedTuple):
    """`_refusal_query`'s row: plain driver values (see `one_row`); booleans may be 0/1."""

    newest_id: str | None
    newest_generation: int | None
    newest_status: str | None
    newest_failure_class: str | None
    reset_after_newest: bool | int | None
    transient_failures: int | None
    active_id: str | None
    known: bool | int


@functools.cache
def _refusal_query() -> sa.Select[Any]:
    """One row (`_RefusalRow`): the failure's newest attempt (NULLs when it has none), whether the project's
    escalation reset came after that attempt started, the failure's transient failures since the reset, the
    project's active attempt, and whether the project exists. Built once; bound per call with `project` and
    `fingerprint`. Plain values only, for `one_row`: timestamps are compared in SQL, statuses are listed as
    equalities (no expanding IN)."""
    project = sa.bindparam("project", type_=sa.String())
    fingerprint = sa.bindparam("fingerprint", type_=sa.String())
    newest = aliased(Attempt, name="newest")
    other = aliased(Attempt, name="other")
    newest_id = (
        sa.select(other.id)
        .where(other.fingerprint == fingerprint)
        .order_by(other.generation.desc())
        .limit(1)
        .scalar_subquery()
    )
    reset_at = sa.select(Project.escalation_reset_at).where(Project.name == project).scalar_subquery()
    active_id = (
        sa.select(other.id)
        .where(other.project == project, sa.or_(*(other.status == status for status in _values(ACTIVE_STATUSES))))
        .limit(1)
        .scalar_subquery()
    )
    transient = (
        sa.select(sa.func.count())
        .select_from(other)
        .where(
            other.fingerprint == fingerprint,
            other.status == AttemptStatus.FAILED.value,
            other.failure_class == FailureClass.TRANSIENT.value,
            sa.or_(reset_at.is_(None), other.created_at > reset_at),
        )
        .scalar_subquery()
    )
    one = sa.select(sa.literal(1).label("one")).subquery("one")
    return (
        sa.select(
            newest.id.label("newest_id"),
            newest.generation.label("newest_generation"),
            newest.status.label("newest_status"),
            newest.failure_class.label("newest_failure_class"),
            sa.case((newest.created_at <= reset_at, True), else_=False).label("reset_after_newest"),
            sa.case((newest.id.is_(None), 0), else_=transient).label("transient_failures"),
            active_id.label("active_id"),
            sa.exists().where(Project.name == project).label("known"),
        )
        .select_from(one)
        .outerjoin(newest, newest.id == newest_id)
    )


def _may_follow(row: _RefusalRow, max_transient_retries: int) -> bool:
    """Whether a failure's newest attempt lets another one start: it ended, and an operator reset came after
    it, or it failed transient with at most `max_transient_retries` transient failures since the reset."""
    if AttemptStatus(str(row.newest_status)) not in TERMINAL_STATUSES:
        return False
    if row.reset_after_newest:
        return True
    if row.newest_status != AttemptStatus.FAILED.value or row.newest_failure_class != FailureClass.TRANSIENT.value:
        return False
    return int(row.transient_failures or 0) <= max_transient_retries


def _check_fields(fields: dict[str, Any]) -> None:
    unknown = sorted(set(fields) - SETTABLE_FIELDS)
    if unknown:
        raise TypeError(f"Attempt fields not settable: {', '.join(unknown)}.")


def _values(statuses: Iterable[AttemptStatus]) -> list[str]:
    return sorted(AttemptStatus(s).value for s in statuses)

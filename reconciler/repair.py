"""Repairing what a lost reply left behind: the forge's word on an attempt's fix branch wins over the store's.

A reply lost after the forge acted can leave the store behind the forge: an attempt recorded `failed`
although its pull request is open (or merged), or a fix branch pushed and never given a pull request. Once
per pass, `repair_ended_attempts` asks the forge about the recently ended attempts that the store has no
pull request for (`pr_number` unset, a fix branch named):

- the fix branch has an open or merged pull request: the attempt is brought in line. It is reopened as
  `pr_open` (merged: `verifying`) with the PR's number, and the pass follows the PR to its end like any
  other. The one-active-attempt index still holds: with another attempt active, it waits for a later pass.
- the fix branch exists without a pull request (an orphan: the push landed, no PR came): it is reported,
  and since the attempt is final, deleted through the forge, so no stray branch is left (with contents
  write on the reconciler's App; a read-only observer App leaves it, reported, for a human).

Active attempts are not touched here: the dispatcher reads the forge back when its agent stops, and the
pass follows `pr_open`/`verifying` attempts by branch. One query per pass finds the attempts that ended
within `REPAIR_WINDOW` (at most `REPAIR_LIMIT`, newest first); each is asked about once per process once
the forge answered (`PassCaches.repair_checked`), so an idle pass costs one statement and no request.
"""

from __future__ import annotations

__all__ = ["REOPENED", "REPAIR_LIMIT", "REPAIR_WINDOW", "repair_ended_attempts"]

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

from infra.jsonlog import bind_context, log_event
from mcp_server.errors import ForgeAuthError, ForgeError
from mcp_server.forge import ForgeClient
from policy.config import ProjectConfig
from policy.types import AttemptStatus
from reconciler.context import ReconcilerContext
from reconciler.dispatch import is_merged, pull_request_fields
from reconciler.errors import ReconcilerError
from reconciler.store import attempts as store
from reconciler.store.models import Attempt
from reconciler.summary import RunSummary, TransitionNote

logger = logging.getLogger("greenloop.repair")

REPAIR_WINDOW: Final = timedelta(days=1)
"""How long after an attempt ended the pass still checks the forge for what a lost reply left."""

REPAIR_LIMIT: Final = 50
"""At most this many of the newest ended attempts are looked at per pass (each asked about once)."""

REOPENED: Final = "pull_request_found_on_forge"
"""The reason of the transition that brings a wrongly ended attempt back in line with its pull request."""


async def repair_ended_attempts(
    ctx: ReconcilerContext, projects: Sequence[ProjectConfig], *, summary: RunSummary, dry_run: bool = False
) -> None:
    """Bring the projects' recently ended attempts in line with their fix branches on the forge.

    Never raises for the forge or the store: what could not be checked now is checked on the next pass.
    """
    forge = ctx.forge
    if forge is None or dry_run or not projects:
        return
    repos = {p.name: p.repo for p in projects}
    try:
        for attempt in await store.ended_without_pull_request(
            ctx.sessions, list(repos), since=datetime.now(UTC) - REPAIR_WINDOW, limit=REPAIR_LIMIT
        ):
            if attempt.branch is None or attempt.id in ctx.caches.repair_checked:
                continue
            with bind_context(project=attempt.project):
                await _repair_attempt(ctx, forge, repos[attempt.project], attempt, attempt.branch, summary)
            ctx.caches.repair_checked.add(attempt.id)
    except (ForgeError, ReconcilerError) as exc:
        log_event(logger, "repair_deferred", level=logging.WARNING, error=str(exc))


async def _repair_attempt(
    ctx: ReconcilerContext, forge: ForgeClient, repo: str, attempt: Attempt, branch: str, summary: RunSummary
) -> None:
    pr = await forge.find_pull_request(repo, branch)
    if pr is not None and (pr.state == "open" or is_merged(pr)):
        to = AttemptStatus.VERIFYING if is_merged(pr) else AttemptStatus.PR_OPEN
        reopened = await store.reopen_from_forge(
            ctx.sessions,
            attempt.id,
            to,
            expected=AttemptStatus(attempt.status),
            reason=REOPENED,
            **pull_request_fields(pr),
        )
        log_event(
            logger,
            "attempt_repaired" if reopened else "attempt_repair_waits",
            level=logging.WARNING,
            attempt_id=attempt.id,
            was=attempt.status,
            to=to.value,
            pr_number=pr.number,
        )
        if reopened:
            note = TransitionNote(
                attempt_id=attempt.id, project=attempt.project, from_status=attempt.status, to_status=to.value,
                reason=REOPENED,
            )  # fmt: skip
            summary.transitions.append(note)
        return
    if pr is not None:
        return  # closed without merging: a human declined it, and its branch is theirs to keep or delete
    head = await forge.branch_head(repo, branch)
    if head is None:
        return
    # An orphan: pushed, never proposed. The attempt is final, so nothing will open its PR: clean it up.
    log_event(logger, "orphan_fix_branch", level=logging.WARNING, attempt_id=attempt.id, head_sha=head)
    try:
        if ctx.operator is None:
            raise ForgeAuthError("no operator surface: this process cannot delete branches")
        deleted = await ctx.operator.delete_branch(attempt.project, branch, attempt_id=attempt.id)
    except ForgeAuthError as exc:  # no operator, or the forge refused: reported, left for a human
        log_event(logger, "orphan_fix_branch_kept", level=logging.WARNING, attempt_id=attempt.id, error=str(exc))
        return
    log_event(logger, "orphan_fix_branch_deleted", attempt_id=attempt.id, deleted=deleted)

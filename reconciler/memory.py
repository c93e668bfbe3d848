"""Memory across attempts: what earlier attempts on the same job did, for the next attempt's first message.

The store gives the newest `MAX_EARLIER` attempts on the job with the files each wrote (one query,
`reconciler.store.attempts.earlier_on_job`); for one whose pull request was closed without merging, the
forge gives the human's words: the last comment on that pull request not written by greenloop's bot. All of
it is redacted and bounded here (and the first message bounds the section again, `agent.prompt`), then
handed to the agent in its task by the dispatcher: the agent never reads the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.types import EarlierAttempt
from infra.jsonlog import log_event
from mcp_server.errors import ForgeError
from mcp_server.forge import ForgeClient
from policy.types import AttemptStatus
from reconciler.store.attempts import earlier_on_job
from reconciler.store.engine import SessionFactory

__all__ = ["MAX_COMMENT_CHARS", "MAX_EARLIER", "earlier_attempts"]

logger = logging.getLogger("greenloop.memory")

MAX_EARLIER = 5
MAX_COMMENT_CHARS = 1_000
_MAX_FILES = 20


async def _human_words(forge: ForgeClient | None, repo: str, pr_number: int, bots: frozenset[str]) -> str | None:
    """The last comment on the pull request written by someone other than the bot, or None."""
    if forge is None:
        return None
    try:
        comments = await forge.issue_comments(repo, pr_number, max_pages=1)
    except ForgeError as exc:
        log_event(logger, "earlier_comment_read_failed", level=logging.WARNING, error=str(exc), pr_number=pr_number)
        return None
    for comment in reversed(comments):
        login = comment.user.login.lower() if comment.user is not None else None
        if comment.body and comment.body.strip() and login is not None and login not in bots:
            return comment.body.strip()
    return None


async def earlier_attempts(
    sessions: SessionFactory,
    forge: ForgeClient | None,
    *,
    project: str,
    repo: str,
    job: str,
    attempt_id: str,
    bots: frozenset[str],
    redact_text: Callable[[str], str],
) -> tuple[EarlierAttempt, ...]:
    """The earlier attempts on `project`'s `job` (not `attempt_id`), newest first, redacted and bounded.

    Raises:
        StoreError: the store failed.
    """
    rows = await earlier_on_job(sessions, project, job, exclude=attempt_id, limit=MAX_EARLIER)
    out: list[EarlierAttempt] = []
    for row in rows:
        comment = None
        if row.status == AttemptStatus.CANCELLED.value and row.pr_number is not None:
            words = await _human_words(forge, repo, row.pr_number, bots)
            if words is not None:
                comment = redact_text(words)[:MAX_COMMENT_CHARS]
        out.append(
            EarlierAttempt(
                attempt_id=row.attempt_id,
                status=row.status,
                stop_reason=redact_text(row.stop_reason)[:200] if row.stop_reason else None,
                files=tuple(redact_text(f) for f in row.files[:_MAX_FILES]),
                pr_url=row.pr_url,
                human_comment=comment,
            )
        )
    return tuple(out)

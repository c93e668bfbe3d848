"""Where an escalation reaches a human on the forge: the fix pull request, or one issue per failure.

With a pull request, the report is a comment on it (updated, not repeated, when the same failure escalates
again: the comment carries a hidden marker) and the project's owners are requested as reviewers (assigned
where the forge refuses the request, e.g. an owner who wrote the PR). Without one, the report is the body
of one open issue per project and failure, found again by the same marker and updated rather than
duplicated, with the owners assigned.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from infra.jsonlog import log_event
from mcp_server.errors import ForgeConflict
from mcp_server.forge import ForgeClient

__all__ = ["EscalationPosted", "escalation_marker", "post_escalation"]

logger = logging.getLogger("greenloop.escalation")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:/@-]")


def escalation_marker(project: str, failure: str) -> str:
    """The hidden HTML comment that finds a failure's comment or issue again."""
    return f"<!-- greenloop:escalation project={_UNSAFE.sub('_', project)} failure={_UNSAFE.sub('_', failure)} -->"


@dataclass(frozen=True)
class EscalationPosted:
    """Where the report landed: a `comment` on the PR or an `issue`, `created` or updated, and its link."""

    kind: Literal["comment", "issue"]
    number: int
    url: str | None
    created: bool


async def post_escalation(
    forge: ForgeClient,
    repo: str,
    *,
    marker: str,
    title: str,
    report: str,
    pr_number: int | None,
    owners: Sequence[str],
) -> EscalationPosted:
    """Post (or update) the report and bring the owners in; raises ForgeError when the forge refuses."""
    body = f"{marker}\n{report}"
    if pr_number is not None:
        existing = next((c for c in await forge.issue_comments(repo, pr_number) if marker in (c.body or "")), None)
        if existing is not None:
            comment = await forge.update_comment(repo, existing.id, body)
        else:
            comment = await forge.comment(repo, pr_number, body)
        if owners:
            try:
                await forge.request_reviewers(repo, pr_number, owners)
            except ForgeConflict as exc:  # an owner without push access, or the PR's author: assign instead
                log_event(logger, "review_request_refused", level=logging.WARNING, repo=repo, reason=str(exc))
                await forge.add_assignees(repo, pr_number, owners)
        return EscalationPosted("comment", pr_number, comment.html_url, existing is None)
    issue = next((i for i in await forge.open_issues(repo) if marker in (i.body or "")), None)
    if issue is not None:
        updated = await forge.update_issue(repo, issue.number, body=body)
        if owners:
            await forge.add_assignees(repo, issue.number, owners)
        return EscalationPosted("issue", updated.number, updated.html_url, False)
    created = await forge.create_issue(repo, title=title, body=body, assignees=owners)
    return EscalationPosted("issue", created.number, created.html_url, True)

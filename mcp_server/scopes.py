"""What each token greenloop mints may do: one GitHub App, a down-scoped installation token per purpose.

Every token is asked for with `repositories` and `permissions` in the exchange body, and the forge enforces
both (404 for a repository outside the token, 403 for a permission it lacks). The App's own permissions are
the union of these (`APP_PERMISSIONS`); see docs/operations.md "Creating the GitHub App".
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = [
    "APP_PERMISSIONS",
    "ATTEMPT_PERMISSIONS",
    "MAX_TOKEN_REPOSITORIES",
    "OBSERVER_PERMISSIONS",
    "OPERATION_PERMISSIONS",
    "OPERATOR_PERMISSIONS",
    "READ_PERMISSIONS",
    "observer_repositories",
    "repository_name",
]

ATTEMPT_PERMISSIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "contents": "write",  # clone, push the fix branch (branch protection keeps the default branch)
        "pull_requests": "write",  # open the fix PR; merge it under auto_merge
        "actions": "read",  # list runs, read job logs
        "checks": "read",  # the merge tool reads the PR head's check runs
        "statuses": "read",  # ... and its commit statuses
    }
)
"""An attempt's session: exactly its one repository. No issues, no actions: write, no workflows."""

READ_PERMISSIONS: Final[Mapping[str, str]] = MappingProxyType(
    {"contents": "read", "pull_requests": "read", "actions": "read", "checks": "read", "statuses": "read"}
)
"""A read-only MCP session (the five read tools): its one repository."""

OBSERVER_PERMISSIONS: Final[Mapping[str, str]] = MappingProxyType(
    {"actions": "read", "contents": "read", "pull_requests": "read", "checks": "read", "statuses": "read"}
)
"""The reconciler's observation token: every watched repository, read only."""

OPERATOR_PERMISSIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "actions": "write",  # re-run a flaky job
        "contents": "write",  # delete an orphan fix branch; the merge
        "pull_requests": "write",  # merge on green checks, close a cancelled attempt's PR, comment, request review
        "checks": "read",  # the merge re-reads the head's checks
        "statuses": "read",
        "issues": "write",  # the escalation issue when there is no PR
    }
)
"""Everything the reconciler's writes through the MCP server's operator surface may need (documentation; each
call asks only for its operation's part, `OPERATION_PERMISSIONS`)."""

OPERATION_PERMISSIONS: Final[Mapping[str, Mapping[str, str]]] = MappingProxyType(
    {
        "rerun_workflow": MappingProxyType({"actions": "write"}),
        "merge_when_green": MappingProxyType(
            {"contents": "write", "pull_requests": "write", "checks": "read", "statuses": "read"}
        ),
        "close_pull_request": MappingProxyType({"pull_requests": "write"}),
        "post_escalation": MappingProxyType({"issues": "write", "pull_requests": "write"}),
        "delete_branch": MappingProxyType({"contents": "write"}),
    }
)
"""Each operator call's token: its one repository, only the permissions of that operation."""

APP_PERMISSIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "actions": "write",
        "checks": "read",
        "contents": "write",
        "issues": "write",
        "metadata": "read",
        "pull_requests": "write",
        "statuses": "read",
    }
)
"""The one App's permissions: the union of the scopes above (metadata: read comes with every App)."""


def repository_name(repo: str) -> str:
    """The name the token exchange takes (`owner/name` -> `name`)."""
    return repo.rsplit("/", 1)[-1]


MAX_TOKEN_REPOSITORIES: Final = 500
"""GitHub's limit on the repositories one installation token may name."""


def observer_repositories(repos: list[str] | tuple[str, ...]) -> list[str] | None:
    """The repositories of the observation token: every watched one by name, or None (all the installation
    covers, still read-only) beyond GitHub's limit of names per token."""
    names = sorted({repository_name(r) for r in repos})
    return names if len(names) <= MAX_TOKEN_REPOSITORIES else None

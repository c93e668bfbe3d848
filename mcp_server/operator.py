"""The operator surface: the reconciler's writes to the forge, made by the MCP server, never by the model.

Re-running a flaky job, merging a fix PR once its checks passed, closing a cancelled attempt's PR, posting an
escalation and deleting an orphan fix branch are not MCP tools (the agent keeps exactly its ten). They are
the methods of one `Operator`. `OperatorActions` runs them where the GitHub App's key is: in-process in the
single-process layout, behind the sidecar's authenticated loopback routes (`mcp_server/operator_http.py`) in
the sidecar layout. Each call acts on one configured project's repository with a token scoped to that
repository and only the permissions of that operation (`mcp_server/scopes.py::OPERATION_PERMISSIONS`), and
each is audited like a tool call (an `AuditEvent` with the tool `operator.<name>`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from mcp_server.audit import AuditEvent, AuditSink, Outcome
from mcp_server.checks import merge_when_green
from mcp_server.errors import ForgeAuthError, ForgeError, ToolRefused
from mcp_server.escalation import EscalationPosted, post_escalation
from mcp_server.forge import ForgeClient
from mcp_server.github_app import GitHubApp
from mcp_server.scopes import OPERATION_PERMISSIONS, repository_name
from policy.config import GreenloopConfig, ProjectConfig
from policy.redaction import redact, redact_obj

__all__ = ["Operator", "OperatorActions"]

_T = TypeVar("_T")


class Operator(Protocol):
    """The reconciler's one interface for its writes; each names a configured project, never a repository.

    Every method raises `ToolRefused` when a wall refuses it and a `ForgeError` subclass when the forge does.
    """

    async def rerun_workflow(self, project: str, run_id: int) -> None:
        """Re-run a known-flaky job's workflow run."""
        ...

    async def merge_when_green(
        self, project: str, number: int, *, pushed_sha: str, title: str, message: str, attempt_id: str | None = None
    ) -> str:
        """Squash-merge the attempt's PR at `pushed_sha` once its checks passed; the merge commit's sha."""
        ...

    async def close_pull_request(self, project: str, number: int, *, attempt_id: str | None = None) -> None:
        """Close a cancelled attempt's pull request unmerged."""
        ...

    async def post_escalation(
        self,
        project: str,
        *,
        marker: str,
        title: str,
        report: str,
        pr_number: int | None,
        owners: Sequence[str],
        attempt_id: str | None = None,
    ) -> EscalationPosted:
        """Post (or update) an escalation report and bring the owners in."""
        ...

    async def delete_branch(self, project: str, branch: str, *, attempt_id: str | None = None) -> bool:
        """Delete an orphan fix branch; False when it was already gone."""
        ...


class OperatorActions:
    """`Operator` where the App's key is: each call with its own scoped token, audited.

    `projects` (default: every configured one) limits the projects it acts on (`serve-http --project`).
    `forge` is the process's one forge client: each call uses `forge.with_auth(<scoped token>)`, sharing its
    connection pool and rate-limit view.
    """

    def __init__(
        self,
        config: GreenloopConfig,
        *,
        app: GitHubApp,
        forge: ForgeClient,
        audit: AuditSink,
        client: str,
        projects: Collection[str] | None = None,
    ) -> None:
        self._config = config
        self._projects = frozenset(projects) if projects is not None else None
        self._app = app
        self._forge = forge
        self._audit = audit
        self._client = client

    def _project(self, name: str) -> ProjectConfig:
        # A project this server does not act for is refused like a forge 403, so every call site handles it
        # as it handles the forge refusing a write (recorded, logged, left for a human), never as a crash.
        if self._projects is not None and name not in self._projects:
            raise ForgeAuthError(f"Operator refused: this MCP server does not serve project {name!r}.", status=403)
        try:
            return self._config.project(name)
        except KeyError:
            raise ForgeAuthError(f"Operator refused: unknown project: {name!r}.", status=403) from None

    def _scoped(self, project: ProjectConfig, operation: str) -> ForgeClient:
        tokens = self._app.scoped(
            repositories=[repository_name(project.repo)], permissions=OPERATION_PERMISSIONS[operation]
        )
        return self._forge.with_auth(tokens)

    async def _audited(
        self,
        operation: str,
        project: str,
        arguments: Mapping[str, Any],
        act: Callable[[ProjectConfig, ForgeClient], Awaitable[_T]],
        attempt_id: str | None = None,
    ) -> _T:
        started = time.perf_counter()
        outcome: Outcome = "ok"
        message: str | None = None
        try:
            config = self._project(project)
            return await act(config, self._scoped(config, operation))
        except ToolRefused as exc:
            outcome, message = "refused", str(exc)
            raise
        except ForgeError as exc:
            outcome, message = "error", str(exc)
            raise
        finally:
            secrets = self._app.secrets()
            await self._audit.record(
                AuditEvent(
                    project=project,
                    client=self._client,
                    tool=f"operator.{operation}",
                    arguments=redact_obj(dict(arguments), extra_secrets=secrets),
                    outcome=outcome,
                    message=redact(message, extra_secrets=secrets) if message else None,
                    result_bytes=0,
                    duration_ms=(time.perf_counter() - started) * 1000,
                    attempt_id=attempt_id,
                )
            )

    async def rerun_workflow(self, project: str, run_id: int) -> None:
        """See `Operator.rerun_workflow`."""

        async def act(config: ProjectConfig, forge: ForgeClient) -> None:
            await forge.rerun_workflow(config.repo, run_id)

        await self._audited("rerun_workflow", project, {"run_id": run_id}, act)

    async def merge_when_green(
        self, project: str, number: int, *, pushed_sha: str, title: str, message: str, attempt_id: str | None = None
    ) -> str:
        """See `Operator.merge_when_green`: the PR is read again with this call's token, then the same walls
        as the merge tool (`mcp_server/checks.py::merge_when_green`)."""

        async def act(config: ProjectConfig, forge: ForgeClient) -> str:
            pr = await forge.get_pull_request(config.repo, number)
            return await merge_when_green(forge, config, pr, pushed_sha=pushed_sha, title=title, message=message)

        return await self._audited(
            "merge_when_green",
            project,
            {"number": number, "pushed_sha": pushed_sha, "title": title},
            act,
            attempt_id,
        )

    async def close_pull_request(self, project: str, number: int, *, attempt_id: str | None = None) -> None:
        """See `Operator.close_pull_request`."""

        async def act(config: ProjectConfig, forge: ForgeClient) -> None:
            await forge.close_pull_request(config.repo, number)

        await self._audited("close_pull_request", project, {"number": number}, act, attempt_id)

    async def post_escalation(
        self,
        project: str,
        *,
        marker: str,
        title: str,
        report: str,
        pr_number: int | None,
        owners: Sequence[str],
        attempt_id: str | None = None,
    ) -> EscalationPosted:
        """See `Operator.post_escalation`."""

        async def act(config: ProjectConfig, forge: ForgeClient) -> EscalationPosted:
            return await post_escalation(
                forge, config.repo, marker=marker, title=title, report=report, pr_number=pr_number, owners=owners
            )

        arguments = {"title": title, "pr_number": pr_number, "owners": list(owners), "report_chars": len(report)}
        return await self._audited("post_escalation", project, arguments, act, attempt_id)

    async def delete_branch(self, project: str, branch: str, *, attempt_id: str | None = None) -> bool:
        """See `Operator.delete_branch` (only fix branches: `ForgeClient.delete_branch` refuses others)."""

        async def act(config: ProjectConfig, forge: ForgeClient) -> bool:
            return await forge.delete_branch(config.repo, branch)

        return await self._audited("delete_branch", project, {"branch": branch}, act, attempt_id)

"""The per-session binding: which project, attempt, job and mode a session may act for, and its resources.

An MCP session never names a repository. It is bound, once, to a `SessionGrant` (from the command line for
stdio, from the bearer token for HTTP), and a `BindingFactory` turns the grant into a `SessionBinding`
holding the project's configuration, the forge client, the git workspace, the audit sink and the live
secrets to redact. The tools read everything from the binding.
"""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable, Container, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio

from mcp_server.audit import AuditSink
from mcp_server.errors import ToolRefused
from mcp_server.forge import ForgeClient
from mcp_server.github_app import GitHubApp, StaticToken, TokenSource
from mcp_server.reported_runs import ReportedRunSource
from mcp_server.scopes import ATTEMPT_PERMISSIONS, READ_PERMISSIONS, repository_name
from mcp_server.workspace import Workspace
from policy.branches import fix_branch_name
from policy.config import ForgeSettings, GreenloopConfig, ProjectConfig
from policy.redaction import redact, redact_obj

__all__ = [
    "BindingFactory",
    "KnownClean",
    "Mode",
    "SessionBinding",
    "SessionGrant",
    "config_binding_factory",
    "session_tokens",
]


class Mode(StrEnum):
    """What a session may do: read only (five tools) or act as the remediation agent (all ten)."""

    READ_ONLY = "read-only"
    AGENT = "agent"


@dataclass(frozen=True)
class SessionGrant:
    """Who a session is for. Agent grants name the attempt and the failing job."""

    project: str
    mode: Mode = Mode.READ_ONLY
    attempt_id: str | None = None
    job: str | None = None
    client: str = "stdio"

    def __post_init__(self) -> None:
        if self.mode is Mode.AGENT and (not self.attempt_id or not self.job):
            raise ValueError("Invalid session grant: agent mode needs an attempt id and a job.")
        if self.attempt_id is not None:
            fix_branch_name(self.job or "job", self.attempt_id)  # validates the attempt id's shape


class KnownClean:
    """Short texts (keys, paths, names) known to show nothing to mask under the live secrets in force.

    A result carries the same keys and paths call after call; each is redacted once per set of live secrets,
    then shown as it is. Redaction is a function of the text and the secrets alone, so this changes no output,
    only how often the same short text is redacted. A new set of secrets (a rotated token) starts afresh.
    Safe from a worker thread: the (secrets, texts) pair is replaced whole, never mixed.
    """

    MAX_CHARS = 512  # longer texts (file contents, logs) are not remembered
    MAX_TEXTS = 8192

    def __init__(self) -> None:
        self._memo: tuple[tuple[str, ...], set[str]] = ((), set())

    def holds(self, text: str, secrets: tuple[str, ...]) -> bool:
        """Whether `text` is a short text that redacting under `secrets` leaves as it is (the answer is remembered).
        A long text is never taken as known: False, so its caller redacts it."""
        if self.remembered(text, secrets):
            return True
        if len(text) > self.MAX_CHARS or redact(text, extra_secrets=secrets) != text:
            return False
        self.remember(text, secrets)
        return True

    def remembered(self, text: str, secrets: tuple[str, ...]) -> bool:
        """Whether `text` is known to hold nothing to mask under `secrets` (a look-up, no redaction)."""
        memo = self._memo
        return memo[0] == secrets and text in memo[1]

    def remember(self, text: str, secrets: tuple[str, ...]) -> None:
        """Note that `text` holds nothing to mask under `secrets` (its redaction left it as it is)."""
        if len(text) > self.MAX_CHARS:
            return
        memo = self._memo
        if memo[0] != secrets:
            memo = (secrets, set())
            self._memo = memo
        if len(memo[1]) < self.MAX_TEXTS:
            memo[1].add(text)

    def container(self, secrets: tuple[str, ...], also: Container[str] = ()) -> Container[str]:
        """`redact_obj`'s `clean`: the texts in `also`, and the short texts that hold nothing to mask."""
        return _CleanTexts(self, secrets, also)


class _CleanTexts(Container[str]):
    def __init__(self, known: KnownClean, secrets: tuple[str, ...], also: Container[str]) -> None:
        self._known, self._secrets, self._also = known, secrets, also

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and (text in self._also or self._known.holds(text, self._secrets))


@dataclass
class SessionBinding:
    """Everything one session's tools act on. Mutable state (`pushed_sha`) is guarded by `lock`."""

    grant: SessionGrant
    project: ProjectConfig
    workspace: Workspace
    forge: ForgeClient
    audit: AuditSink
    secrets: Callable[[], Sequence[str]] = tuple
    # Runs reported from outside Actions, with their logs (the reconciler's store); None: Actions only.
    reported: ReportedRunSource | None = None
    pushed_sha: str | None = None
    lock: anyio.Lock = field(default_factory=lambda: anyio.Lock(fast_acquire=True))  # no yield when free
    resources: AsyncExitStack = field(default_factory=AsyncExitStack)
    known_clean: KnownClean = field(default_factory=KnownClean, repr=False, compare=False)
    _cloned: bool = False

    @property
    def mode(self) -> Mode:
        """The session's mode."""
        return self.grant.mode

    @property
    def attempt_id(self) -> str | None:
        """The attempt this session acts for (agent sessions)."""
        return self.grant.attempt_id

    @property
    def job(self) -> str | None:
        """The failing job this session's attempt is about (agent sessions)."""
        return self.grant.job

    @property
    def fix_branch(self) -> str | None:
        """The one branch this session may create and push to (agent sessions)."""
        if self.grant.attempt_id is None:
            return None
        return fix_branch_name(self.grant.job or "job", self.grant.attempt_id)

    def require_agent(self) -> tuple[str, str, str]:
        """The (attempt id, job, fix branch) of an agent session.

        Raises:
            ToolRefused: the session is read-only.
        """
        branch = self.fix_branch
        if self.grant.mode is not Mode.AGENT or self.grant.attempt_id is None or branch is None:
            raise ToolRefused("Access denied: this session is read-only; write tools need an agent session.")
        return self.grant.attempt_id, self.grant.job or "job", branch

    def live_secrets(self) -> tuple[str, ...]:
        """The secrets in force right now (installation tokens), to redact from everything shown."""
        return tuple(s for s in self.secrets() if s)

    def redact(self, text: str) -> str:
        """`text` with every known secret pattern and every live secret masked."""
        return redact(text, extra_secrets=self.live_secrets())

    def redact_obj(self, value: Any) -> Any:
        """`value` (JSON-like) with every string redacted."""
        secrets = self.live_secrets()
        return redact_obj(value, extra_secrets=secrets, clean=self.known_clean.container(secrets))

    async def ready_workspace(self) -> Workspace:
        """The workspace, cloned on first use."""
        if not self._cloned:
            await self.workspace.ensure_clone()
            self._cloned = True
        return self.workspace

    async def aclose(self) -> None:
        """Release the binding's resources (HTTP clients, temporary directories)."""
        await self.resources.aclose()


BindingFactory = Callable[[SessionGrant], Awaitable[SessionBinding]]
"""Turns a grant into a live binding. Called once per grant; the server caches the result."""


def _git_url(settings: ForgeSettings) -> str:
    """The forge's git root: `[forge] git_url`, else the web host of `api_url` (api.github.com -> github.com)."""
    if settings.git_url:
        return settings.git_url
    parts = urlsplit(settings.api_url)
    host = parts.netloc.removeprefix("api.") if parts.netloc.startswith("api.") else parts.netloc
    path = parts.path.rstrip("/").removesuffix("/api/v3")
    return f"{parts.scheme}://{host}{path}"


def session_tokens(app: GitHubApp, grant: SessionGrant, project: ProjectConfig) -> TokenSource:
    """The token a session acts with: exactly the project's repository, with the permissions of its mode
    (an attempt: `ATTEMPT_PERMISSIONS`; read-only: `READ_PERMISSIONS`). Cached per scope by the App."""
    permissions = ATTEMPT_PERMISSIONS if grant.mode is Mode.AGENT else READ_PERMISSIONS
    return app.scoped(repositories=[repository_name(project.repo)], permissions=permissions)


def config_binding_factory(
    config: GreenloopConfig,
    *,
    audit: AuditSink,
    app: GitHubApp | None = None,
    forge: ForgeClient | None = None,
    reported: ReportedRunSource | None = None,
    personal_token: StaticToken | None = None,
) -> BindingFactory:
    """A `BindingFactory` building each binding from `greenloop.toml`: GitHub App, forge client, workspace,
    and `reported` (runs reported from outside Actions, when the caller has a store of them).

    `app` and `forge` (both or neither): the process's one GitHub App and forge client, shared by every
    session (the process's owner opens and closes them), so one rate-limit view and one token cache see
    all the traffic. Without them each session opens its own (a stdio server serving alone). Either way a
    session's forge client and git push use a token scoped to its one repository (`session_tokens`).

    `personal_token`: a person's own GitHub token (`greenloop-mcp --token-env`): no App key is read, and the
    forge judges every request as that person (read-only sessions only).

    Agent sessions clone into `<workspace_dir>/attempt-<id>`; read-only sessions into a temporary directory
    removed when the session ends.

    Raises:
        ValueError: only one of `app` and `forge` was given.
    """
    if (app is None) != (forge is None):
        raise ValueError("config_binding_factory: pass both the shared GitHub App and its forge client, or neither")
    if personal_token is not None and app is not None:
        raise ValueError("config_binding_factory: a personal token or the GitHub App, not both")

    async def factory(grant: SessionGrant) -> SessionBinding:
        try:
            project = config.project(grant.project)
        except KeyError:
            raise ToolRefused(f"Access denied: unknown project: {grant.project!r}.") from None
        stack = AsyncExitStack()
        try:
            tokens: TokenSource
            if personal_token is not None:
                if grant.mode is not Mode.READ_ONLY:
                    raise ToolRefused("Access denied: a personal token serves read-only sessions only.")
                tokens = personal_token
                session_forge = await stack.enter_async_context(ForgeClient(config.forge, tokens))
            else:
                if app is not None and forge is not None:
                    shared_app, shared_forge = app, forge
                else:
                    shared_app = await stack.enter_async_context(GitHubApp.from_settings(config.forge))
                    shared_forge = await stack.enter_async_context(ForgeClient(config.forge, shared_app))
                tokens = session_tokens(shared_app, grant, project)
                session_forge = shared_forge.with_auth(tokens)
            if grant.attempt_id is not None:
                root = Path(config.server.workspace_dir) / f"attempt-{grant.attempt_id}"
            else:
                root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="greenloop-ro-")))
            workspace = Workspace(
                root_dir=root,
                project=project,
                git_url=_git_url(config.forge),
                token=tokens.token,
                invalidate=tokens.invalidate,
                bot_name=config.forge.bot_login,
                bot_email=config.forge.bot_email,
            )
        except BaseException:
            await stack.aclose()
            raise
        return SessionBinding(
            grant=grant,
            project=project,
            workspace=workspace,
            forge=session_forge,
            audit=audit,
            secrets=tokens.secrets,
            reported=reported,
            resources=stack,
        )

    return factory

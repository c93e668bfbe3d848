"""The configuration model: `greenloop.toml` parsed into pydantic models, with env overrides.

Parsing text into models is pure; reading the file is the caller's job (`load_config_text` takes the text
and the file name used in messages). Every invalid value fails at load with one line naming the file, the
key and what is wrong (`ConfigError`).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from policy.errors import ConfigError
from policy.types import Autonomy

__all__ = [
    "DEFAULT_DENIED_GLOBS",
    "ENV_PREFIX",
    "REPO_NAME_RE",
    "AgentSettings",
    "Backoff",
    "Budgets",
    "ForgeSettings",
    "GreenloopConfig",
    "ProjectConfig",
    "ServerSettings",
    "WriteRules",
    "load_config_text",
]

ENV_PREFIX = "GREENLOOP_"

# Security: paths the agent may never write, whatever a project's config adds.
DEFAULT_DENIED_GLOBS: tuple[str, ...] = (
    ".git/**",
    ".github/workflows/**",
    "CODEOWNERS",
    ".github/CODEOWNERS",
    "docs/CODEOWNERS",
    "**/*.pem",
    "**/*.key",
    "**/id_rsa*",
    "**/id_ed25519*",
    "**/.env",
    "**/.env.*",
    "**/*.p12",
    "**/*.pfx",
)

REPO_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}/[A-Za-z0-9_.][A-Za-z0-9_.-]{0,99}$")
"""An `owner/name` repository (the shape GitHub allows); the one definition, used by the forge client too."""
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_LOGIN_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}$")  # GitHub login rules


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Budgets(_Model):
    """Per-attempt limits; every guard in the agent reads its default from here."""

    max_turns: Annotated[int, Field(ge=1, le=500)] = 30
    max_tokens: Annotated[int, Field(ge=1_000, le=10_000_000)] = 400_000
    wall_seconds: Annotated[float, Field(gt=0, le=86_400)] = 600.0
    max_files_changed: Annotated[int, Field(ge=1, le=1_000)] = 10
    max_lines_changed: Annotated[int, Field(ge=1, le=100_000)] = 400
    max_file_bytes: Annotated[int, Field(ge=1, le=10_000_000)] = 200_000
    max_repeat_calls: Annotated[int, Field(ge=2, le=50)] = 3
    max_error_streak: Annotated[int, Field(ge=1, le=50)] = 5


class Backoff(_Model):
    """Wait between failed attempts on one project: base * factor**(failures-1), capped."""

    base_seconds: Annotated[float, Field(ge=0)] = 300.0
    factor: Annotated[float, Field(ge=1)] = 2.0
    max_seconds: Annotated[float, Field(ge=0)] = 6 * 3600.0


class WriteRules(_Model):
    """Which paths the agent may write. Denied always wins; the defaults can't be removed."""

    allowed: tuple[str, ...] = ("**",)
    denied: tuple[str, ...] = ()

    @property
    def effective_denied(self) -> tuple[str, ...]:
        """The project's denied globs plus the built-in ones."""
        return DEFAULT_DENIED_GLOBS + tuple(g for g in self.denied if g not in DEFAULT_DENIED_GLOBS)


class ProjectConfig(_Model):
    """One watched repository."""

    name: str
    repo: str
    default_branch: str = "main"
    jobs: tuple[str, ...] = ()  # empty: every job of the repository matters
    flaky_jobs: tuple[str, ...] = ()
    autonomy: Autonomy = Autonomy.PROPOSE
    paused: bool = False
    write: WriteRules = WriteRules()
    budgets: Budgets = Budgets()
    max_consecutive_failures: Annotated[int, Field(ge=1, le=100)] = 3
    backoff: Backoff = Backoff()
    # After the pull request: revision rounds when its checks fail, when an open PR counts as stale, how
    # often a failure stopped by the outside (model API, forge) may start again, and who hears of escalations.
    stale_pr_hours: Annotated[float, Field(gt=0, le=8760)] = 72.0  # an open fix PR older than this is announced
    max_transient_retries: Annotated[int, Field(ge=0, le=20)] = 3  # new attempts after a failure stopped by the outside
    owners: tuple[str, ...] = ()  # GitHub logins requested as reviewers / assigned when a human is needed
    # Times a fix PR whose checks fail goes back to the agent (same attempt, same branch) before escalating.
    max_revisions: Annotated[int, Field(ge=0, le=10)] = 2
    # Cost: a daily limit in USD (UTC day; None: none), and models overriding [agent] (policy/spend.py).
    daily_cost_usd: Annotated[float | None, Field(gt=0)] = None
    model: str | None = None
    fallback_model: str | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("must be lowercase letters, digits, '-' or '_' (at most 63 characters)")
        return v

    @field_validator("repo")
    @classmethod
    def _check_repo(cls, v: str) -> str:
        if not REPO_NAME_RE.match(v) or v.endswith(".git"):
            raise ValueError("must look like 'owner/name'")
        return v

    @field_validator("default_branch")
    @classmethod
    def _check_branch(cls, v: str) -> str:
        if not v or v.startswith(("-", "/")) or ".." in v or any(c in v for c in " ~^:?*[\\\x00"):
            raise ValueError("is not a valid branch name")
        return v

    @field_validator("owners")
    @classmethod
    def _check_owners(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [o for o in v if not _LOGIN_RE.match(o)]
        if bad:
            raise ValueError(f"not GitHub logins: {', '.join(repr(b) for b in bad)}")
        return tuple(dict.fromkeys(v))

    def watches(self, job: str) -> bool:
        """True when `job` is one of the jobs that matter for this project."""
        return not self.jobs or job in self.jobs


class ForgeSettings(_Model):
    """Where the forge is and how the GitHub App authenticates. Only the MCP server reads the key."""

    api_url: str = "https://api.github.com"
    git_url: str | None = None  # defaults to the web host of api_url
    app_id: str | None = None
    installation_id: str | None = None
    private_key_path: str | None = None
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 20.0
    bot_login: str = "greenloop[bot]"
    bot_email: str = "greenloop[bot]@users.noreply.github.com"
    # The GitHub App's webhook secret: `POST /webhooks/github` accepts only deliveries whose
    # X-Hub-Signature-256 is the HMAC-SHA256 of the body with it (unset: the route refuses every delivery).
    webhook_secret: SecretStr | None = None

    @field_validator("webhook_secret")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("too short: use at least 16 random characters")
        return value


class AgentSettings(_Model):
    """The model the agent talks to."""

    model: str = "claude-sonnet-4-6"
    base_url: str | None = None
    max_output_tokens: Annotated[int, Field(ge=256, le=64_000)] = 4096
    timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 120.0
    max_retries: Annotated[int, Field(ge=0, le=10)] = 2
    # Cache breakpoints on the tools, the system prompt and the conversation's last turn (agent.prompt_cache).
    prompt_caching: bool = True
    # A cheaper model used once spending passes the notice share of a cost limit (policy/spend.py).
    fallback_model: str | None = None
    # USD per million tokens: input, output, cache write, cache read.
    prices: Mapping[str, tuple[float, float, float, float]] = Field(
        default_factory=lambda: {"default": (3.0, 15.0, 3.75, 0.30)}
    )


_DATABASE_DRIVERS: dict[str, str] = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}


class ServerSettings(_Model):
    """The reconciler's schedule, HTTP API and store."""

    database_url: str = "sqlite+aiosqlite:///greenloop.db"
    interval_seconds: Annotated[float, Field(gt=0)] = 300.0
    concurrency: Annotated[int, Field(ge=1, le=256)] = 8
    attempt_timeout_seconds: Annotated[float, Field(gt=0)] = 1800.0
    http_host: str = "127.0.0.1"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8080
    api_token: str | None = None
    kill_switch: bool = False
    workspace_dir: str = ".greenloop/workspaces"
    slack_webhook_url: str | None = None
    # An MCP sidecar (streamable HTTP) instead of the in-process server; the reconciler mints each attempt a
    # short-lived token signed with mcp_token_secret (shared with the sidecar, at least 32 characters).
    mcp_url: str | None = None
    mcp_token_secret: str | None = None
    # Below this many forge API requests left in the rate-limit window, only projects with an attempt in
    # flight are observed until the window resets.
    rate_limit_reserve: Annotated[int, Field(ge=0, le=100_000)] = 100
    # How long one full periodic resync of every project may take, spread over that time
    # (reconciler.pacing). None: an hour when webhooks are on (forge.webhook_secret set), else interval_seconds.
    resync_interval_seconds: Annotated[float | None, Field(gt=0)] = None

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, v: str) -> str:
        # The store runs on SQLite (aiosqlite) or PostgreSQL (asyncpg) only; say so at `config check`, not at the
        # first connection. The URL itself is never echoed: it may hold a password.
        scheme, sep, _ = v.partition("://")
        backend, _, driver = scheme.lower().partition("+")
        backend = "postgresql" if backend == "postgres" else backend
        drivers = _DATABASE_DRIVERS.get(backend)
        if not sep or drivers is None:
            raise ValueError(
                f"unsupported database {backend or v[:20]!r}: use sqlite+aiosqlite:///path or "
                "postgresql+asyncpg://user@host/db"
            )
        if driver and driver != drivers:
            raise ValueError(f"unsupported driver {driver!r} for {backend}: use {backend}+{drivers}")
        return v


class SpendLimits(_Model):
    """Fleet-wide cost limits in USD (UTC day and month; None: no limit), and when to give notice."""

    daily_usd: Annotated[float | None, Field(gt=0)] = None
    monthly_usd: Annotated[float | None, Field(gt=0)] = None
    notice_share: Annotated[float, Field(gt=0, lt=1)] = 0.8


class GreenloopConfig(_Model):
    """The whole `greenloop.toml`."""

    server: ServerSettings = ServerSettings()
    forge: ForgeSettings = ForgeSettings()
    agent: AgentSettings = AgentSettings()
    spend: SpendLimits = SpendLimits()
    projects: tuple[ProjectConfig, ...] = ()
    # An index of `projects` by name, for `project()` (a pass looks up every project: a scan would be O(N^2)).
    # Kept with the tuple it indexes, so a copy with other projects never answers from a stale index.
    _index: tuple[tuple[ProjectConfig, ...], dict[str, ProjectConfig]] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _unique_projects(self) -> GreenloopConfig:
        seen: set[str] = set()
        for p in self.projects:
            if p.name in seen:
                raise ValueError(f"duplicate project name {p.name!r}")
            seen.add(p.name)
        return self

    def project(self, name: str) -> ProjectConfig:
        """The project called `name`.

        Raises:
            KeyError: no such project.
        """
        index = self._index
        if index is None or index[0] is not self.projects:
            index = self._index = (self.projects, {p.name: p for p in self.projects})
        return index[1][name]


def _loc(loc: tuple[int | str, ...], data: Mapping[str, Any]) -> str:
    """Turn a pydantic error location into a TOML-ish key: projects[0].budgets.max_turns -> project 'x'."""
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int):
            name = None
            if isinstance(node, list | tuple) and item < len(node) and isinstance(node[item], Mapping):
                name = node[item].get("name")
            parts[-1] = f"{parts[-1]}[{item}]" + (f" ({name!r})" if name else "") if parts else f"[{item}]"
            node = node[item] if isinstance(node, list | tuple) and item < len(node) else None
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, Mapping) else None
    return ".".join(parts) or "(top level)"


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, str], str]]:
    """Overlay `GREENLOOP_<SECTION>__<KEY>=value` variables on the [server], [forge] and [agent] tables.

    Returns the data and, for each (section, key) a variable set, the variable's name (errors name it).
    """
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    origins: dict[tuple[str, str], str] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        section, _, field = key[len(ENV_PREFIX) :].lower().partition("__")
        if section not in ("server", "forge", "agent") or not field:
            continue
        table = out.setdefault(section, {})
        if isinstance(table, dict):
            table[field] = value
            origins[(section, field)] = key
    return out, origins


def load_config_text(
    text: str, *, source: str = "greenloop.toml", env: Mapping[str, str] | None = None
) -> GreenloopConfig:
    """Parse and validate a `greenloop.toml` text, overlaid with `GREENLOOP_SECTION__KEY` env values.

    Raises:
        ConfigError: one line naming `source`, the key and what is wrong.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    if "project" in data and "projects" not in data:
        data["projects"] = data.pop("project")
    data, from_env = _apply_env(data, env or {})
    try:
        return GreenloopConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _loc(tuple(err["loc"]), data)
        variable = from_env.get((str(err["loc"][0]), str(err["loc"][1]))) if len(err["loc"]) >= 2 else None
        if variable is not None:
            source = f"environment variable {variable}"  # the value came from there, not from the file
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise ConfigError(f"{source}: {key}: {msg}{more}") from None

"""Building a running reconciler from the configuration: store, forge client, MCP sessions, dispatcher.

`open_runtime` is the one lifespan every entry point uses (`greenloop run`, `greenloop reconcile`, the
demo): it migrates the store (`migrate_store`: one replica at a time), syncs nothing else, and closes
everything on exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Final

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from agent.cli import open_in_process_session
from agent.loop import ToolSession
from agent.models import AnthropicBackend, ModelBackend
from agent.scripted import ScriptedBackend
from mcp_server.audit import FanOutAuditSink, SqlAuditSink
from mcp_server.forge import ForgeClient
from mcp_server.github_app import GitHubApp
from mcp_server.jsonlog import log_event
from policy.config import GreenloopConfig, ProjectConfig
from policy.errors import ConfigError
from reconciler.context import ReconcilerContext
from reconciler.dispatch import AgentDispatcher, BackendFactory
from reconciler.errors import StoreError
from reconciler.metrics import Metrics, MetricsAuditSink
from reconciler.store.engine import make_engine, make_sessionmaker, redact_url
from reconciler.store.migrate import upgrade_async
from reconciler.store.models import Attempt

__all__ = [
    "MIGRATION_LOCK_KEY",
    "backend_from_env",
    "forge_client",
    "migrate_store",
    "open_runtime",
    "scripted_backends",
]

logger = logging.getLogger("greenloop.runtime")

MIGRATION_LOCK_KEY: Final = 0x67726E6C6F6F70  # "grnloop": the PostgreSQL advisory lock key of migrations


async def migrate_store(engine: AsyncEngine, *, timeout_seconds: float = 300.0) -> None:
    """Apply pending migrations; on PostgreSQL under an advisory lock, so replicas starting together take turns.

    The lock is a session lock (`pg_advisory_lock`) on a dedicated connection, held around `upgrade_async`:
    the second replica waits, then finds the schema at head and does nothing. SQLite needs no lock (one
    process owns the file, and its write lock serialises the rest). A replica that dies mid-migration
    releases the lock with its connection.

    Raises:
        StoreError: the lock was not had within `timeout_seconds`, or the migration failed.
    """
    if engine.dialect.name != "postgresql":
        await upgrade_async(engine)
        return
    key = {"key": MIGRATION_LOCK_KEY}
    try:
        async with engine.connect() as raw:
            lock = await raw.execution_options(isolation_level="AUTOCOMMIT")  # no transaction held while waiting
            async with asyncio.timeout(timeout_seconds):
                await lock.execute(sa.text("SELECT pg_advisory_lock(:key)"), key)
            try:
                log_event(logger, "migration_lock_acquired")
                await upgrade_async(engine)
            finally:
                await lock.execute(sa.text("SELECT pg_advisory_unlock(:key)"), key)
    except TimeoutError:
        raise StoreError(
            f"Store error: the migration lock was held by another replica for over {timeout_seconds:g} seconds: "
            f"{redact_url(engine.url)!r}."
        ) from None
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"Store error: could not take the migration lock: {exc.__class__.__name__}.") from exc


def scripted_backends(scripts_dir: str) -> BackendFactory:
    """Each attempt replays `<scripts_dir>/<project>.json` (the demo and tests; no API key needed)."""

    def make(attempt: Attempt, project: ProjectConfig) -> ModelBackend:
        return ScriptedBackend(
            os.path.join(scripts_dir, f"{project.name}.json"), substitutions={"FAILING_RUN_ID": attempt.run_id}
        )

    return make


def backend_from_env(config: GreenloopConfig) -> tuple[BackendFactory, tuple[str, ...]]:
    """The real model when ANTHROPIC_API_KEY is set; returns (factory, secrets to redact).

    Raises:
        ConfigError: no API key and no scripted model configured.
    """
    api_key = os.environ.get("ANTHROPIC_API_KEY", "")
    if not api_key:
        raise ConfigError("agent: ANTHROPIC_API_KEY is not set (the demo uses a scripted model instead)")
    settings = config.agent

    def make(_attempt: Attempt, _project: ProjectConfig) -> ModelBackend:
        return AnthropicBackend(settings, api_key=api_key, base_url=settings.base_url)

    return make, (api_key,)


def _http_opener(config: GreenloopConfig) -> Callable[[Attempt], AbstractAsyncContextManager[ToolSession]]:
    """Sessions on an MCP sidecar over streamable HTTP, each with its own minted, short-lived token."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    from mcp_server.auth import mint_token
    from mcp_server.session import Mode

    url, secret = config.server.mcp_url, config.server.mcp_token_secret
    if not url or not secret:
        raise ConfigError("server.mcp_url needs server.mcp_token_secret (the secret the sidecar verifies)")

    @asynccontextmanager
    async def open_session(attempt: Attempt) -> AsyncIterator[ToolSession]:
        import httpx2

        project = config.project(attempt.project)
        token = mint_token(
            secret,
            project=attempt.project,
            attempt_id=attempt.id,
            job=attempt.job,
            mode=Mode.AGENT,
            ttl_seconds=int(project.budgets.wall_seconds) + 300,
        )
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            yield client

    return open_session


def forge_client(config: GreenloopConfig, app: GitHubApp) -> ForgeClient:
    """The reconciler's forge client: its ETag cache holds one run listing per project (plus job listings of
    running runs), so an unchanged pass over every project is answered with 304s."""
    return ForgeClient(config.forge, app, etag_entries=max(512, 2 * len(config.projects) + 64))


@asynccontextmanager
async def open_runtime(
    config: GreenloopConfig,
    *,
    backend_for: BackendFactory | None,
    secrets: tuple[str, ...] = (),
    heartbeat_seconds: float = 5.0,
    with_dispatcher: bool = True,
) -> AsyncIterator[ReconcilerContext]:
    """A ready `ReconcilerContext` (store migrated, forge client open, dispatcher running), closed on exit."""
    async with AsyncExitStack() as stack:
        engine = make_engine(config.server.database_url)
        stack.push_async_callback(engine.dispose)
        await migrate_store(engine)
        sessions = make_sessionmaker(engine)
        metrics = Metrics()
        forge: ForgeClient | None = None
        if config.forge.app_id and config.forge.installation_id and config.forge.private_key_path:
            app = await stack.enter_async_context(GitHubApp.from_settings(config.forge))
            forge = await stack.enter_async_context(forge_client(config, app))
        else:
            logger.warning(
                "no GitHub App configured ([forge] app_id, installation_id, private_key_path): "
                "only runs reported to POST /runs are observed"
            )
        dispatcher: AgentDispatcher | None = None
        if with_dispatcher and backend_for is not None:
            if config.server.mcp_url:
                opener = _http_opener(config)
            else:
                audit = FanOutAuditSink([SqlAuditSink(engine), MetricsAuditSink(metrics)])
                in_process = open_in_process_session(config, audit=audit)

                def opener(attempt: Attempt) -> AbstractAsyncContextManager[ToolSession]:
                    return in_process(attempt.project, attempt.job, attempt.id)

            dispatcher = AgentDispatcher(
                config,
                sessions,
                open_session=opener,
                backend_for=backend_for,
                metrics=metrics,
                heartbeat_seconds=heartbeat_seconds,
                secrets=secrets,
                forge=forge,
            )
            stack.push_async_callback(dispatcher.aclose)
        yield ReconcilerContext(
            config=config,
            sessions=sessions,
            forge=forge,
            dispatcher=dispatcher,
            metrics=metrics,
            bot_logins=frozenset({config.forge.bot_login}),
            rate_limit_reserve=config.server.rate_limit_reserve,
        )

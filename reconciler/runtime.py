"""Building a running reconciler from the configuration: store, forge client, MCP sessions, dispatcher.

`open_runtime` is the one lifespan every entry point uses (`greenloop run`, `greenloop reconcile`, the
demo): it migrates the store (`migrate_store`: one replica at a time), syncs nothing else, and closes
everything on exit.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from agent.loop import ToolSession
from agent.models import AnthropicBackend, ModelBackend
from agent.scripted import ScriptedBackend
from mcp_server.audit import FanOutAuditSink
from mcp_server.forge import ForgeClient
from mcp_server.github_app import GitHubApp, ObserverTokens, TokenSource
from mcp_server.in_process import open_in_process_session
from mcp_server.operator import Operator, OperatorActions
from mcp_server.operator_http import HttpOperator, RemoteTokens, operator_base_url
from mcp_server.scopes import OBSERVER_PERMISSIONS, observer_repositories
from policy.config import GreenloopConfig, ProjectConfig
from policy.errors import ConfigError
from reconciler.context import ReconcilerContext
from reconciler.dispatch import AgentDispatcher, BackendFactory
from reconciler.metrics import Metrics, MetricsAuditSink
from reconciler.store.audit import StoreAuditSink
from reconciler.store.engine import make_engine, make_sessionmaker
from reconciler.store.migrate import migrate_store
from reconciler.store.models import Attempt
from reconciler.store.runs import StoreReportedRuns

__all__ = [
    "backend_from_env",
    "forge_client",
    "open_runtime",
    "scripted_backends",
]

logger = logging.getLogger("greenloop.runtime")


def scripted_backends(scripts_dir: str) -> BackendFactory:
    """Each attempt replays `<scripts_dir>/<project>.json` (the demo and tests; no API key needed); revision
    round n replays `<project>.revision-<n>.json` where that file exists."""

    def make(attempt: Attempt, project: ProjectConfig) -> ModelBackend:
        path = os.path.join(scripts_dir, f"{project.name}.json")
        revision = os.path.join(scripts_dir, f"{project.name}.revision-{attempt.revisions}.json")
        if attempt.revisions > 0 and os.path.isfile(revision):
            path = revision
        return ScriptedBackend(path, substitutions={"FAILING_RUN_ID": attempt.run_id})

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


def forge_client(config: GreenloopConfig, app: TokenSource) -> ForgeClient:
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
        audit = FanOutAuditSink([StoreAuditSink(engine), MetricsAuditSink(metrics)])
        # One GitHub App and one forge client per process: the pass and every in-process MCP session share
        # the client's pool and rate-limit view, each with a token scoped to what it is for. The pass reads
        # with the read-only observation token; its writes go through the operator surface.
        app: GitHubApp | None = None
        shared: ForgeClient | None = None
        forge: ForgeClient | None = None
        operator: Operator | None = None
        if config.server.mcp_url:
            # The sidecar layout: the App key is in the sidecar only. This process gets the observation token
            # and makes its writes over the sidecar's authenticated loopback routes.
            if not config.server.mcp_token_secret:
                raise ConfigError("server.mcp_url needs server.mcp_token_secret (the secret the sidecar verifies)")
            remote = HttpOperator(operator_base_url(config.server.mcp_url), config.server.mcp_token_secret)
            stack.push_async_callback(remote.aclose)
            operator = remote
            forge = await stack.enter_async_context(forge_client(config, RemoteTokens(remote.observer_token)))
        elif config.forge.app_id and config.forge.installation_id and config.forge.private_key_path:
            app = await stack.enter_async_context(GitHubApp.from_settings(config.forge))
            shared = await stack.enter_async_context(forge_client(config, app))
            observer = ObserverTokens(
                app,
                repositories=observer_repositories([p.repo for p in config.projects]),
                permissions=OBSERVER_PERMISSIONS,
            )
            forge = shared.with_auth(observer)
            operator = OperatorActions(config, app=app, forge=shared, audit=audit, client="reconciler")
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
                in_process = open_in_process_session(
                    config, audit=audit, app=app, forge=shared, reported=StoreReportedRuns(sessions)
                )

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
                operator=operator,
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
            operator=operator,
        )

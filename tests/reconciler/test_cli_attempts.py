"""`greenloop attempts|projects`: through a running server's HTTP API, and on the database when none runs."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from fixtures.operators_page import TOKEN, config, seed, serve
from reconciler.cli import main
from reconciler.cli_attempts import format_table, printable
from reconciler.store import attempts as attempt_store
from reconciler.store import projects as project_store
from reconciler.store.engine import make_engine, make_sessionmaker
from reconciler.store.migrate import upgrade_async


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: nothing listens there


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, dict[str, str]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'greenloop.db'}"

    async def prepare() -> dict[str, str]:
        engine = make_engine(url)
        try:
            await upgrade_async(engine)
            return await seed(make_sessionmaker(engine))
        finally:
            await engine.dispose()

    return url, asyncio.run(prepare())


@pytest.fixture
def config_file(tmp_path: Path, store: tuple[str, dict[str, str]]) -> Path:
    url, _ids = store
    lines = ["[server]", f'database_url = "{url}"', f"http_port = {_free_port()}", ""]
    for p in config().projects:
        lines += ["[[project]]", f'name = "{p.name}"', f'repo = "{p.repo}"', ""]
    path = tmp_path / "greenloop.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _no_ambient_server(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GREENLOOP_URL", "GREENLOOP_API_TOKEN", "GREENLOOP_SERVER__API_TOKEN", "GREENLOOP_CONFIG"):
        monkeypatch.delenv(name, raising=False)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _db(url: str, query: str, *args: str) -> object:
    async def go() -> object:
        engine = make_engine(url)
        try:
            sessions = make_sessionmaker(engine)
            if query == "attempt":
                return await attempt_store.get_attempt(sessions, args[0])
            return await project_store.get_project(sessions, args[0])
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_format_table_aligns_columns_and_right_aligns_numbers() -> None:
    text = format_table(("NAME", "COUNT"), [("a", 5), ("longer name", 1234), ("x\ny", None)])
    lines = text.splitlines()
    assert lines[0] == "NAME         COUNT"
    assert lines[1] == "a                5"
    assert lines[2] == "longer name   1234"
    assert lines[3] == "x y              -"  # one line per row, whatever a value holds


def test_control_characters_never_reach_the_terminal() -> None:
    hostile = "ok\x1b]0;owned\x07 \x1b[2J\x9b31m done\nnext\tcol"
    assert printable(hostile) == "ok\ufffd]0;owned\ufffd \ufffd[2J\ufffd31m done\nnext\tcol"
    assert "\x1b" not in format_table(("A",), [(hostile,)])


def test_without_a_server_the_verbs_use_the_database(config_file: Path, store: tuple[str, dict[str, str]]) -> None:
    url, ids = store
    code, out, err = run("attempts", "list", "--config", str(config_file))
    assert code == 0, err
    assert "no server at http://127.0.0.1:" in err and "using the database directly" in err
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "PROJECT", "JOB", "STATUS", "CREATED", "TOKENS", "COST", "PULL", "REQUEST"]
    assert {line.split()[0] for line in lines[1:]} == set(ids.values())
    status_column = lines[0].index("STATUS")
    assert all(line[status_column - 2 : status_column] == "  " for line in lines[1:])  # aligned

    code, out, _ = run("--config", str(config_file), "attempts", "list", "--status", "escalated", "--json")
    assert code == 0
    assert [a["id"] for a in json.loads(out)["attempts"]] == [ids["escalated"]]

    code, out, _ = run("attempts", "show", ids["succeeded"], "--config", str(config_file))
    assert code == 0
    assert "verifying" in out and "checks passed; squash-merged" in out  # the timeline
    assert "create_pull_request" in out and "path refused" in out  # tool calls from the audit
    assert "48210 in, 3904 out, 31000 cache, 6 turns" in out and "$0.2135" in out
    assert "http://127.0.0.1:8001/acme/payments-api/pull/42" in out
    assert "## What failed" in out  # the report

    code, out, _ = run("attempts", "cancel", ids["stale"], "--reason", "worker gone", "--config", str(config_file))
    assert (code, out.strip()) == (0, f"attempt {ids['stale']} (docs-site): cancelled")
    cancelled = _db(url, "attempt", ids["stale"])
    assert getattr(cancelled, "status") == "cancelled"  # noqa: B009
    code, _, err = run("attempts", "cancel", ids["stale"], "--config", str(config_file))
    assert code == 1 and "already finished" in err

    code, out, _ = run("projects", "pause", "docs-site", "--config", str(config_file))
    assert code == 0 and "operator" in out
    assert getattr(_db(url, "project", "docs-site"), "paused") is True  # noqa: B009
    code, out, _ = run("projects", "list", "--json", "--config", str(config_file))
    states = {p["name"]: p for p in json.loads(out)["projects"]}
    assert states["docs-site"]["paused_by_operator"] is True and states["payments-api"]["paused"] is False
    code, out, _ = run("projects", "resume", "docs-site", "--config", str(config_file))
    assert code == 0 and getattr(_db(url, "project", "docs-site"), "paused") is False  # noqa: B009
    code, _, err = run("projects", "reset", "nope", "--config", str(config_file))
    assert code == 2 and "Unknown project: 'nope'" in err
    code, _, err = run("attempts", "show", "zzz", "--config", str(config_file))
    assert code == 2 and "Unknown attempt: 'zzz'" in err


@pytest.fixture
def server(store: tuple[str, dict[str, str]]) -> Iterator[str]:
    url, _ids = store
    with serve(url) as base:
        yield base


def test_with_a_server_the_verbs_call_its_api_with_the_token_from_the_environment(
    server: str, store: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ids = store
    code, _, err = run("attempts", "list", "--url", server)
    assert code == 1 and "GREENLOOP_API_TOKEN" in err  # no token: 401, and what to set
    monkeypatch.setenv("GREENLOOP_API_TOKEN", TOKEN)
    code, out, err = run("attempts", "list", "--url", server, "--project", "payments-api", "--json")
    assert code == 0, err
    assert err == ""  # no fallback note: the server answered
    assert [a["id"] for a in json.loads(out)["attempts"]] == [ids["succeeded"]]
    monkeypatch.setenv("GREENLOOP_URL", server)
    code, out, _ = run("attempts", "cancel", ids["stale"])
    assert code == 0 and "cancelled" in out
    assert getattr(_db(url, "attempt", ids["stale"]), "status") == "cancelled"  # noqa: B009
    code, out, _ = run("projects", "list")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["NAME", "REPO", "PAUSED"]


def test_an_explicit_url_with_no_server_is_an_error_not_a_fallback(config_file: Path) -> None:
    port = _free_port()
    code, out, err = run("attempts", "list", "--url", f"http://127.0.0.1:{port}", "--config", str(config_file))
    assert code == 1 and out == ""
    assert f"no greenloop server answers at http://127.0.0.1:{port}" in err


def test_agent_run_by_hand_is_refused_while_the_project_has_an_active_attempt(
    config_file: Path, store: tuple[str, dict[str, str]]
) -> None:
    _url, ids = store
    code, out, err = run("agent", "run", "--project", "docs-site", "--job", "build", "--config", str(config_file))
    assert (code, out) == (2, "")
    assert f"project 'docs-site' has an active attempt {ids['stale']} (running, job 'build')" in err
    assert f"greenloop attempts cancel {ids['stale']}" in err


def test_the_active_attempt_check_needs_no_store_that_does_not_exist(tmp_path: Path) -> None:
    from policy.config import GreenloopConfig, ServerSettings
    from reconciler.cli_attempts import active_attempt_refusal

    missing = tmp_path / "nope.db"
    cfg = GreenloopConfig(server=ServerSettings(database_url=f"sqlite+aiosqlite:///{missing}"))
    assert asyncio.run(active_attempt_refusal(cfg, "docs-site")) is None
    assert not missing.exists()  # the check does not create it

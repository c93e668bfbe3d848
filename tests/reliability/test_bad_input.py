"""Bad input at every door: the API's POST bodies generated from its own OpenAPI schemas, a malformed
greenloop.toml on the command line, hostile repositories (thousands of files, a symlink farm, non-UTF-8 file
names, binary files) and hostile job logs (100 MB, binary) through the MCP tools.

Every case must end in a clear 4xx or tool error, in bounded memory, with nothing lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from fixtures.forge import Forge, run_forge
from mcp_server.server import build_server
from mcp_server.session import Mode, SessionGrant
from policy.config import GreenloopConfig, ProjectConfig
from reconciler.api import build_api
from reconciler.api_models import openapi_document
from reconciler.context import ReconcilerContext
from reconciler.metrics import Metrics
from reconciler.store.engine import make_engine, make_sessionmaker
from reconciler.store.migrate import upgrade
from reconciler.store.models import JobRun
from reconciler.summary import RunSummary, Trigger

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mcp_server"))
from server_support import Harness, Symlink, harness, human_push, result_text

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "reliability-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON_TYPE = {"content-type": "application/json"}
NAMES = ("alpha", "beta", "gamma")
REPO = "acme/bug-lib"


# ==============================================================================================================
# The API: bodies generated from the OpenAPI document's own schemas


_DOC = openapi_document()
_SCHEMAS: dict[str, Any] = _DOC["components"]["schemas"]


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    return _resolve(_SCHEMAS[ref.rsplit("/", 1)[-1]])


def _string(schema: dict[str, Any], name: str) -> st.SearchStrategy[Any]:
    lo = int(schema.get("minLength", 0))
    hi = int(schema.get("maxLength", 300))
    hi = min(hi, 300)  # long enough to cross every limit that matters here, short enough to be quick
    if name == "project":
        base: st.SearchStrategy[str] = st.sampled_from([*NAMES, *(f"acme/{n}" for n in NAMES)]) | st.text(max_size=12)
    elif schema.get("format") == "date-time":
        base = st.datetimes(
            min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.sampled_from([UTC, None])
        ).map(lambda d: d.isoformat()) | st.text(max_size=30)
    elif "pattern" in schema:
        base = st.from_regex(schema["pattern"], fullmatch=True).map(lambda s: s[:hi])
    elif name == "log_url":
        base = st.sampled_from(["https://logs.example/1", "http://x", "file:///etc/passwd", "ftp://a/b", "", "x"])
    else:
        base = st.text(max_size=hi)
    if name == "log_text":
        # A fake credential in some logs: it must be redacted before it is stored.
        base = base | st.just("step 3 failed\ntoken ghs_" + "A" * 36 + "\nAssertionError")
    return base.filter(lambda s: len(s) >= lo) if lo else base


def from_schema(schema: dict[str, Any], name: str = "") -> st.SearchStrategy[Any]:
    """Values that mostly satisfy a JSON schema (a subset: the constructs pydantic emits for our requests)."""
    schema = _resolve(schema)
    if "anyOf" in schema:
        return st.one_of([from_schema(s, name) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum", -(2**31)) - 2, max_value=schema.get("maximum", 2**31) + 2)
    if kind == "string":
        return _string(schema, name)
    if kind == "array":
        items = from_schema(schema.get("items", {}), name)
        return st.lists(items, min_size=max(0, int(schema.get("minItems", 0)) - 1), max_size=4)
    if kind == "object":
        props: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))

        @st.composite
        def build(draw: st.DrawFn) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for key, sub in props.items():
                if key in required or draw(st.booleans()):
                    out[key] = draw(from_schema(sub, key))
            return out

        return build()
    return _ANY_JSON


_ANY_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=16),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


@st.composite
def _request_body(draw: st.DrawFn, path: str) -> dict[str, Any] | Any:
    """A body for `path` from its schema, then (sometimes) broken: a field dropped, retyped or added."""
    schema = _DOC["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    body = draw(from_schema(schema))
    how = draw(st.sampled_from(["schema", "schema", "schema", "drop", "retype", "extra", "whole"]))
    if how == "drop" and body:
        body.pop(draw(st.sampled_from(sorted(body))))
    elif how == "retype" and body:
        body[draw(st.sampled_from(sorted(body)))] = draw(_ANY_JSON)
    elif how == "extra":
        body[draw(st.text(min_size=1, max_size=8))] = draw(_ANY_JSON)
    elif how == "whole":
        return draw(_ANY_JSON)
    return body


_CASES = st.one_of(
    st.tuples(st.just("/runs"), _request_body("/runs")),
    st.tuples(st.just("/debug/reconcile"), _request_body("/debug/reconcile")),
)


async def _empty_pass(
    ctx: ReconcilerContext, *, repos: Sequence[str] | None = None, trigger: Trigger = "cli", dry_run: bool = False
) -> RunSummary:
    return RunSummary(trigger=trigger, dry_run=dry_run, started_at=datetime.now(UTC), projects_scanned=len(repos or []))


@pytest.fixture(scope="module")
def api_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('api') / 'greenloop.db'}"
    upgrade(url)
    return url


async def _post_twice(url: str, path: str, body: Any) -> tuple[httpx2.Response, httpx2.Response | None, int]:
    """Post `body`; when it was stored, post it again. Returns both answers and the stored copies of it."""
    engine = make_engine(url)
    try:
        sessions = make_sessionmaker(engine)
        config = GreenloopConfig(projects=tuple(ProjectConfig(name=n, repo=f"acme/{n}") for n in NAMES))
        ctx = ReconcilerContext(config=config, sessions=sessions, forge=None, dispatcher=None, metrics=Metrics())
        app = build_api(ctx, api_token=TOKEN, reconcile_fn=_empty_pass)
        transport = httpx2.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx2.AsyncClient(transport=transport, base_url="http://testserver", headers=AUTH) as http:
            first = await http.post(path, content=json.dumps(body).encode(), headers=JSON_TYPE)
            if path != "/runs" or first.status_code not in (200, 201):
                return first, None, 0
            again = await http.post(path, content=json.dumps(body).encode(), headers=JSON_TYPE)
            stored = first.json()
            async with sessions() as session:
                rows = (
                    await session.scalars(
                        sa.select(JobRun).where(
                            JobRun.project == stored["project"],
                            JobRun.source == "reported",
                            JobRun.run_id == stored["run_id"],
                            JobRun.run_attempt == stored["run_attempt"],
                        )
                    )
                ).all()
            for row in rows:
                assert "ghs_" + "A" * 36 not in (row.log_text or "")
            return first, again, len(rows)
    finally:
        await engine.dispose()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(case=_CASES)
def test_schema_generated_bodies_never_cause_a_server_error_and_valid_runs_are_stored_once(
    api_db: str, case: tuple[str, Any]
) -> None:
    path, body = case
    first, again, copies = asyncio.run(_post_twice(api_db, path, body))
    assert first.status_code < 500, (path, body, first.text)
    if first.status_code >= 400:
        assert first.json()["detail"], first.text
    if again is not None:
        assert again.status_code == 200 and again.json()["created"] is False, again.text
        assert again.json()["id"] == first.json()["id"]
        assert copies == 1


def test_schema_strategy_produces_valid_runs() -> None:
    """The generator is not all noise: a good share of its /runs bodies are accepted (else the test above
    would only ever exercise refusals)."""
    accepted = 0
    seen = 0

    @settings(max_examples=60, deadline=None, database=None)
    @given(body=from_schema({"$ref": "#/components/schemas/ReportedRun"}))
    def count(body: dict[str, Any]) -> None:
        nonlocal accepted, seen
        from reconciler.api_models import ReportedRun

        seen += 1
        try:
            ReportedRun.model_validate(body)
        except ValueError:
            return
        accepted += 1

    count()
    assert seen and accepted >= seen // 10, (accepted, seen)


async def test_a_100_mb_run_report_is_refused_413_in_bounded_memory(api_db: str) -> None:
    head = b'{"project": "alpha", "job": "nightly", "run_id": "big", "status": "completed", '
    head += b'"conclusion": "failure", "head_sha": "abcdef1", "log_text": "'

    async def body() -> AsyncIterator[bytes]:
        yield head
        chunk = b"x" * (1024 * 1024)
        for _ in range(100):
            yield chunk
        yield b'"}'

    engine = make_engine(api_db)
    try:
        sessions = make_sessionmaker(engine)
        config = GreenloopConfig(projects=tuple(ProjectConfig(name=n, repo=f"acme/{n}") for n in NAMES))
        ctx = ReconcilerContext(config=config, sessions=sessions, forge=None, dispatcher=None, metrics=Metrics())
        transport = httpx2.ASGITransport(app=build_api(ctx, api_token=TOKEN), client=("127.0.0.1", 50000))
        async with httpx2.AsyncClient(transport=transport, base_url="http://testserver", headers=AUTH) as http:
            tracemalloc.start()
            try:
                r = await http.post("/runs", content=body(), headers=JSON_TYPE)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        async with sessions() as session:
            stored = await session.scalar(sa.select(sa.func.count()).select_from(JobRun).where(JobRun.run_id == "big"))
    finally:
        await engine.dispose()
    assert r.status_code == 413 and r.json()["detail"], r.text
    assert peak < 40_000_000, peak  # the body is capped while it is read, never held whole
    assert stored == 0


# ==============================================================================================================
# The CLI: a malformed greenloop.toml


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[server\nworkspace_dir = 1\n", id="toml-syntax"),
        pytest.param('[[project]]\nname = "a"\n', id="missing-repo"),
        pytest.param('[[project]]\nname = "a"\nrepo = "acme/a"\nautonomy = "yolo"\n', id="bad-enum"),
        pytest.param("[nonsense]\nx = 1\n", id="unknown-table"),
        pytest.param("\udcff\udcfe", id="not-utf8"),
        pytest.param('[server]\ninterval_seconds = "soon"\n', id="wrong-type"),
        pytest.param("[server]\nconcurrency = 1\nconcurrency = 2\n", id="duplicate-key"),
        pytest.param("\x00\x01\x02PK\x03\x04", id="binary"),
    ],
)
def test_cli_on_a_malformed_config_prints_one_line_and_exits_2(tmp_path: Path, text: str) -> None:
    path = tmp_path / "greenloop.toml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENLOOP_")}
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "greenloop"), "--config", str(path), "config", "check"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_cli_on_a_missing_config_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "greenloop"), "--config", str(tmp_path / "nope.toml"), "config", "check"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("GREENLOOP_")},
        check=False,
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


# ==============================================================================================================
# The MCP tools on a hostile repository


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


MANY_FILES = 3000
OUTSIDE_MARKER = "OUTSIDE-MARKER-5c1d"
BAD_NAME = "data/caf\udce9.txt"  # the byte 0xE9 alone: Latin-1 'é', not UTF-8
BINARY = "data/blob.bin"


def _symlink_farm() -> dict[str, str | Symlink]:
    files: dict[str, str | Symlink] = {"farm/target.txt": "inside the repository\n"}
    for i in range(40):  # a chain of 40 links ending at a file inside the repository
        files[f"farm/chain{i}"] = Symlink(f"chain{i + 1}" if i < 39 else "target.txt")
    files["farm/loop-a"] = Symlink("loop-b")
    files["farm/loop-b"] = Symlink("loop-a")
    files["farm/self"] = Symlink("self")
    files["farm/dangling"] = Symlink("does-not-exist")
    files["farm/passwd"] = Symlink("/etc/passwd")
    files["farm/environ"] = Symlink("/proc/self/environ")
    files["farm/up"] = Symlink("../..")
    files["farm/outside"] = Symlink("../../OUTSIDE-MARKER.txt")
    files["farm/git"] = Symlink("../.git")
    files["farm/dot"] = Symlink(".")
    for i in range(150):  # many links, half of them pointing out, some through the directory loop
        files[f"farm/many/l{i}"] = Symlink("../../.." if i % 2 else f"../{'dot/' * (i % 7)}target.txt")
    return files


@dataclass
class Hostile:
    forge: Forge
    tmp: Path
    h: Harness
    client: Client
    failed_run: int


@asynccontextmanager
async def _reader(h: Harness) -> AsyncIterator[Client]:
    grant = SessionGrant(project="bug-lib", mode=Mode.READ_ONLY)
    async with Client(build_server(h.factory, mode=Mode.READ_ONLY, grant=grant)) as client:
        yield client


@pytest.fixture(scope="module")
async def hostile(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hostile]:
    tmp = tmp_path_factory.mktemp("hostile")
    async with run_forge(tmp / "forge", projects=["bug-lib"]) as forge:
        files: dict[str, str | Symlink] = {f"many/d{i % 30:02d}/f{i:04d}.txt": f"{i}\n" for i in range(MANY_FILES)}
        files.update(_symlink_farm())
        files[BAD_NAME] = "latin-1 name\n"
        files["data/ok.txt"] = "fine\n"
        files[BINARY] = "PK\x03\x04\x00\x00\x01\x02binary\x00\xff"
        await human_push(forge, REPO, "main", files, "chore: a hostile tree", tmp / "human")
        await forge.wait_idle()
        h = harness(forge, tmp, {"bug-lib": "propose"})
        (tmp / "workspaces").mkdir(parents=True, exist_ok=True)
        (tmp / "OUTSIDE-MARKER.txt").write_text(OUTSIDE_MARKER, encoding="utf-8")
        (tmp / "workspaces" / "OUTSIDE-MARKER.txt").write_text(OUTSIDE_MARKER, encoding="utf-8")
        async with _reader(h) as client:
            runs = (await client.call_tool("list_job_runs", {"limit": 20})).structured_content
            failed = next(r["run_id"] for r in runs["runs"] if r["conclusion"] == "failure")
            yield Hostile(forge=forge, tmp=tmp, h=h, client=client, failed_run=int(failed))


async def _call(client: Client, tool: str, args: dict[str, Any]) -> Any:
    with anyio.fail_after(60):  # no hang, whatever the tree holds
        return await client.call_tool(tool, args)


def _no_leak(text: str, tmp: Path) -> None:
    assert OUTSIDE_MARKER not in text
    assert "root:x:0" not in text
    assert "repositoryformatversion" not in text
    assert str(tmp) not in text


async def test_listing_thousands_of_files_is_capped_and_flagged(hostile: Hostile) -> None:
    result = await _call(hostile.client, "list_repo_files", {})
    assert not result.is_error, result_text(result)
    listing = result.structured_content
    assert listing["truncated"] is True and listing["total"] > MANY_FILES
    assert 0 < len(listing["files"]) < MANY_FILES
    under = (await _call(hostile.client, "list_repo_files", {"under": "many", "limit": 1000})).structured_content
    assert under["total"] == MANY_FILES and len(under["files"]) == 1000 and under["truncated"] is True


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("farm/loop-a", id="loop"),
        pytest.param("farm/self", id="self-loop"),
        pytest.param("farm/dangling", id="dangling"),
        pytest.param("farm/passwd", id="etc-passwd"),
        pytest.param("farm/environ", id="proc-environ"),
        pytest.param("farm/up/OUTSIDE-MARKER.txt", id="dir-link-out"),
        pytest.param("farm/outside", id="file-link-out"),
        pytest.param("farm/git/config", id="into-git"),
        pytest.param("farm/many/l1/OUTSIDE-MARKER.txt", id="farm-link-out"),
        pytest.param("farm/dot/dot/dot/dot/loop-a", id="dir-loop-then-loop"),
        pytest.param("farm/dot", id="dir-itself"),
    ],
)
async def test_symlink_farm_reads_are_refused_without_leaking_or_hanging(hostile: Hostile, path: str) -> None:
    result = await _call(hostile.client, "read_repo_file", {"path": path})
    text = result_text(result)
    assert result.is_error, text
    _no_leak(text, hostile.tmp)
    assert text.strip()


@pytest.mark.parametrize("path", ["farm/chain0", "farm/many/l0", "farm/many/l6", "farm/dot/dot/target.txt"])
async def test_symlinks_that_stay_inside_the_repository_are_confined_reads(hostile: Hostile, path: str) -> None:
    result = await _call(hostile.client, "read_repo_file", {"path": path})
    assert not result.is_error, result_text(result)
    assert result.structured_content["content"] == "inside the repository\n"
    assert result.structured_content["path"] == "farm/target.txt"  # the real path, inside the workspace


async def test_listing_a_symlink_farm_shows_links_never_targets(hostile: Hostile) -> None:
    for under in ("farm", "farm/many"):
        result = await _call(hostile.client, "list_repo_files", {"under": under, "limit": 1000})
        assert not result.is_error, result_text(result)
        _no_leak(json.dumps(result.structured_content), hostile.tmp)
    refused = await _call(hostile.client, "list_repo_files", {"under": "farm/up"})
    assert refused.is_error
    _no_leak(result_text(refused), hostile.tmp)


async def test_non_utf8_file_names_are_listed_and_refused_clearly(hostile: Hostile) -> None:
    result = await _call(hostile.client, "list_repo_files", {"under": "data"})
    assert not result.is_error, result_text(result)
    files = result.structured_content["files"]
    assert "data/ok.txt" in files and len(files) == 3  # ok.txt, blob.bin and the Latin-1 name, however shown
    json.dumps(result.structured_content)  # what the model sees is valid JSON text
    for shown in files:
        if shown in ("data/ok.txt", BINARY):
            continue
        read = await _call(hostile.client, "read_repo_file", {"path": shown})
        assert read.is_error, result_text(read)
        assert "Access denied" in result_text(read) or "Not found" in result_text(read)
    ok = await _call(hostile.client, "read_repo_file", {"path": "data/ok.txt"})
    assert not ok.is_error and ok.structured_content["content"] == "fine\n"


async def test_binary_file_read_is_refused_with_a_clear_error(hostile: Hostile) -> None:
    result = await _call(hostile.client, "read_repo_file", {"path": BINARY})
    assert result.is_error and "Binary file" in result_text(result)


# --- job logs: 100 MB and binary, streamed by the log host ------------------------------------------------------


def _job_id(forge: Forge, run_id: int) -> int:
    jobs = list(forge.state.runs[run_id].jobs)
    failed = [j for j in jobs if j.conclusion == "failure"]
    return (failed or jobs)[0].id


def _hundred_mb() -> Iterator[bytes]:
    line = b"2026-01-01T00:00:00.0000000Z Collecting package==1.0 (cached) ...................................\n"
    chunk = line * (1024 * 1024 // len(line))
    for _ in range(100):
        yield chunk
    yield b"2026-01-01T00:00:01.0000000Z FAILED tests/test_pager.py::test_last_page - AssertionError: 9 != 10\n"
    yield b"2026-01-01T00:00:01.0000000Z ##[error]Process completed with exit code 1.\n"


def _binary() -> Iterator[bytes]:
    rng = random.Random(7)
    for _ in range(4):
        yield bytes(rng.getrandbits(8) for _ in range(256 * 1024))


@asynccontextmanager
async def _streamed_log(forge: Forge, job_id: int, body: Iterator[bytes]) -> AsyncIterator[None]:
    """Serve job `job_id`'s log as a stream from the forge's log host (the real one builds it in memory)."""
    server = forge._blob_server
    assert server is not None
    app = server.config.app
    path = f"/_forge/logs/jobs/{job_id}"

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for chunk in body:
                yield chunk
                await asyncio.sleep(0)

        return StreamingResponse(chunks(), media_type="text/plain; charset=utf-8")

    route = Route(path, stream, methods=["GET"])
    app.router.routes.insert(0, route)
    try:
        yield
    finally:
        app.router.routes.remove(route)


async def _logs_in_bounded_memory(hostile: Hostile, body: Iterator[bytes]) -> tuple[Any, int]:
    job_id = _job_id(hostile.forge, hostile.failed_run)
    async with _streamed_log(hostile.forge, job_id, body):
        tracemalloc.start()
        try:
            result = await _call(hostile.client, "get_job_logs", {"run_id": hostile.failed_run})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    return result, peak


async def test_a_100_mb_job_log_is_read_in_bounded_memory_with_a_note(hostile: Hostile) -> None:
    result, peak = await _logs_in_bounded_memory(hostile, _hundred_mb())
    text = result_text(result)
    assert not result.is_error, text
    assert peak < 64_000_000, peak  # the client keeps a 2 MB tail; the 100 MB body is never held
    logs = result.structured_content
    assert "AssertionError: 9 != 10" in logs["excerpt"]
    assert "were dropped" in logs["excerpt"] or logs["truncated"], logs["excerpt"][:500]


async def test_a_binary_job_log_is_answered_with_text_in_bounded_memory(hostile: Hostile) -> None:
    result, peak = await _logs_in_bounded_memory(hostile, _binary())
    text = result_text(result)
    assert peak < 64_000_000, peak
    if result.is_error:
        assert "binary" in text.lower(), text
        return
    excerpt = result.structured_content["excerpt"]
    json.dumps(result.structured_content)
    assert "\x00" not in excerpt
    assert len(excerpt) < 64_000

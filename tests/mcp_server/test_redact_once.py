"""Issue 20: what a tool call shows is redacted once - the file's text once, not again as the result (which
carries it twice) - and every copy the model or the audit trail sees is masked all the same."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pydantic_core
import pytest
from mcp import Client
from server_support import Harness, harness, human_push, result_text

from fixtures.forge import run_forge
from mcp_server.server import build_server
from mcp_server.session import KnownClean, Mode, SessionGrant
from policy import redaction

pytestmark = pytest.mark.anyio

TOKEN = "ghp_" + "R" * 36
MARKER = "settings for the redact-once test"
SETTINGS = f"# {MARKER}\nGITHUB_TOKEN={TOKEN}\nname = 'app'\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def reader(tmp_path: Path) -> AsyncIterator[tuple[Harness, Client]]:
    async with run_forge(tmp_path / "forge", projects=["bug-lib"]) as forge:
        await human_push(forge, "acme/bug-lib", "main", {"conf/app.env": SETTINGS}, "conf", tmp_path / "human")
        await forge.wait_idle()
        h = harness(forge, tmp_path, {"bug-lib": "propose"})
        grant = SessionGrant(project="bug-lib", mode=Mode.READ_ONLY)
        server = build_server(h.factory, mode=Mode.READ_ONLY, grant=grant)
        async with Client(server) as client:
            yield h, client


async def test_a_read_redacts_the_file_once_and_masks_every_copy_of_it(
    reader: tuple[Harness, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    h, client = reader
    await client.call_tool("list_repo_files", {})  # the session is ready (cloned) before counting
    seen: list[str] = []
    real = redaction._replace_known  # the first step of every redaction of a text

    def counting(text: str, variants: tuple[str, ...]) -> str:
        seen.append(text)
        return real(text, variants)

    monkeypatch.setattr(redaction, "_replace_known", counting)
    # A window (lines 1-2 of 3): cut from the redacted text, it is not itself a redaction's output.
    result = await client.call_tool("read_repo_file", {"path": "conf/app.env", "max_lines": 2})
    assert not result.is_error, result_text(result)
    assert sum(1 for text in seen if MARKER in text) == 1  # the file's text, once; not the result's two copies

    structured = result.structured_content
    assert structured is not None and "GITHUB_TOKEN=[REDACTED:github_token]" in structured["content"]
    text = "".join(getattr(block, "text", "") for block in result.content)
    assert TOKEN not in text and TOKEN not in json.dumps(structured)
    # The text block is still the JSON of the (masked) structured content, as the SDK writes it.
    assert text == pydantic_core.to_json(structured, indent=2).decode()
    event = h.audit.events[-1]
    assert (event.tool, event.outcome, event.arguments["path"]) == ("read_repo_file", "ok", "conf/app.env")


async def test_what_the_model_supplies_is_masked_in_the_result_and_the_audit_event(
    reader: tuple[Harness, Client],
) -> None:
    h, client = reader
    result = await client.call_tool("read_repo_file", {"path": f"conf/{TOKEN}.env"})
    assert result.is_error and TOKEN not in result_text(result)
    unknown = await client.call_tool(f"steal_{TOKEN}", {})
    assert unknown.is_error and TOKEN not in result_text(unknown)
    for event in h.audit.events:
        line = json.dumps(event.as_dict())
        assert TOKEN not in line, line
    assert any(e.tool.startswith("steal_") for e in h.audit.events)


def test_a_short_text_known_clean_is_masked_once_a_live_secret_it_holds_is_in_force() -> None:
    # A live secret no built-in pattern knows: only the live-secret list can mask it.
    live = "live-install-value-" + "q7" * 12
    path = f"conf/{live}.env"
    known = KnownClean()
    assert known.holds(path, ()) and known.remembered(path, ())  # clean while that secret is not in force
    # The token rotates: what was clean under the old secrets is judged again under the new ones.
    assert not known.remembered(path, (live,))
    assert not known.holds(path, (live,))
    masked = redaction.redact_obj({"files": [path]}, extra_secrets=(live,), clean=known.container((live,)))
    assert live not in json.dumps(masked)
    # Long texts (file contents) are never taken as known: each call redacts them (once, per call).
    long_text = "x" * (KnownClean.MAX_CHARS + 1)
    assert not known.holds(long_text, ()) and not known.remembered(long_text, ())

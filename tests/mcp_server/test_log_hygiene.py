"""No signed URL reaches the logs (issue 12): the JSON log of a whole attempt, run with the entry points'
logging setup at DEBUG, holds no signed query of the job-log download, and no HTTP library's request line."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_support import config_text

from agent.cli import agent_run_command
from fixtures.forge.server import run_forge
from infra.jsonlog import QUIET_HTTP_LOGGERS, configure_json_logging
from policy.config import load_config_text

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SCRIPTS = Path(__file__).resolve().parents[2] / "fixtures" / "scripts"
_SIGNED = re.compile(r"(?:signature|sig)=(?!\[REDACTED)[^&\s\"]", re.IGNORECASE)


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in QUIET_HTTP_LOGGERS})
    stream = io.StringIO()
    configure_json_logging(logging.DEBUG, stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)


async def test_the_json_log_of_a_whole_attempt_holds_no_signed_url(tmp_path: Path, json_log: io.StringIO) -> None:
    project = "stale-import"
    async with run_forge(tmp_path / "forge", projects=[project]) as forge:
        await forge.wait_idle(120)
        config = load_config_text(config_text(forge, tmp_path / "ws", {project: "propose"}))
        out = io.StringIO()
        code = await agent_run_command(
            config, project, "test", f"scripted:{SCRIPTS / f'{project}.json'}", env={}, out=out
        )
        assert code == 0, out.getvalue()
    text = json_log.getvalue()
    # The attempt downloaded its job's log (through the signed redirect) while logging at DEBUG.
    assert "mcp_tool_call" in text and "get_job_logs" in text, text[-2000:]
    assert not _SIGNED.search(text), [m.group(0) for m in _SIGNED.finditer(text)][:3]
    assert "HTTP Request:" not in text  # httpx2's INFO request line
    # What an HTTP library still logs (WARNING and up) is redacted like everything else.
    logging.getLogger("httpx2").warning("GET https://h/_forge/logs/jobs/1?expires=1&signature=abcdef0123456789")
    assert "abcdef0123456789" not in json_log.getvalue()

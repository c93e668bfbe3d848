"""`greenloop demo` with an unusable ANTHROPIC_API_KEY stops at once with one line, before any pass runs.

A wrong key (the fake Messages API answers 401) and an unreachable API (nothing listens) are both found by
one free token count before the forge starts, instead of after every attempt has failed on them.
"""

from __future__ import annotations

import io
import socket

import pytest

from fixtures.demo import run_demo
from fixtures.fake_anthropic import FakeAnthropic, run_fake_anthropic
from policy.errors import ConfigError
from reconciler.cli import main


@pytest.mark.anyio
async def test_a_key_the_api_refuses_stops_the_demo_before_anything_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeAnthropic([{"text": "never reached"}])
    async with run_fake_anthropic(fake) as url:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-wrong-key-000000000000")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
        out = io.StringIO()
        with pytest.raises(ConfigError) as info:
            await run_demo(out=out)
    message = str(info.value)
    assert "auth" in message and "status 401" in message and url in message
    assert "unset ANTHROPIC_API_KEY" in message
    assert "sk-ant-wrong-key" not in message
    assert {(r.path, r.status) for r in fake.requests} == {("/v1/messages/count_tokens", 401)}
    assert "starting the local forge" not in out.getvalue()  # nothing was started


def test_an_unreachable_api_is_one_line_and_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-some-key-000000000000")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{port}")
    assert main(["demo"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("greenloop: demo: the model cannot be used with ANTHROPIC_API_KEY (")
    assert "could not connect" in err[0] and f"127.0.0.1:{port}" in err[0]


@pytest.mark.anyio
@pytest.mark.timeout(300)
async def test_a_model_api_failing_during_an_attempt_stops_the_demo_at_that_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The key passes the check (a token count), then the Messages API refuses every request.
    fake = FakeAnthropic([{"error": 401}] * 20)
    async with run_fake_anthropic(fake) as url:
        monkeypatch.setenv("ANTHROPIC_API_KEY", fake.api_key)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
        with pytest.raises(ConfigError) as info:
            await run_demo(out=io.StringIO(), projects=["bug-lib"], deadline_seconds=240)
    message = str(info.value)
    assert message.startswith("demo: stopped: the model API failed for bug-lib (attempt ")
    assert "model_error" in message
    served = [r for r in fake.requests if r.path == "/v1/messages"]
    assert served and len(served) <= 3  # one attempt (with the SDK's retries), not pass after pass

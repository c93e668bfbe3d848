"""How an agent run that raised is classified: the outside's outages are transient, everything else permanent."""

from __future__ import annotations

import pytest

from agent.errors import ModelError, ScriptError
from mcp_server.errors import ForgeAuthError, ForgeError, ForgeNotFound, ForgeRateLimited, ForgeUnavailable
from policy.types import FailureClass
from reconciler.dispatch import failure_class


def _caused(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        pytest.param(ForgeUnavailable("Forge unavailable: x."), FailureClass.TRANSIENT, id="forge-unavailable"),
        pytest.param(ForgeRateLimited("Forge rate limit: x."), FailureClass.TRANSIENT, id="forge-rate-limited"),
        pytest.param(ForgeError("Forge: 502.", status=502), FailureClass.TRANSIENT, id="forge-5xx"),
        pytest.param(ForgeAuthError("Forge auth.", status=401), FailureClass.PERMANENT, id="forge-auth"),
        pytest.param(ForgeNotFound("Forge: 404.", status=404), FailureClass.PERMANENT, id="forge-404"),
        pytest.param(ModelError("m", kind="overloaded", status_code=529), FailureClass.TRANSIENT, id="model-529"),
        pytest.param(ModelError("m", kind="connection"), FailureClass.TRANSIENT, id="model-connection"),
        pytest.param(ModelError("m", kind="auth", status_code=401), FailureClass.PERMANENT, id="model-auth"),
        pytest.param(ModelError("m", kind="bad_request", status_code=400), FailureClass.PERMANENT, id="model-400"),
        pytest.param(ScriptError("out of answers"), FailureClass.PERMANENT, id="script"),
        pytest.param(ValueError("a bug of ours"), FailureClass.PERMANENT, id="bug"),
        pytest.param(
            ExceptionGroup("session", [ForgeUnavailable("Forge unavailable: token.")]),
            FailureClass.TRANSIENT,
            id="in-a-task-group",
        ),
        pytest.param(
            _caused(RuntimeError("session failed"), ForgeUnavailable("Forge unavailable: x.")),
            FailureClass.TRANSIENT,
            id="caused-by-an-outage",
        ),
    ],
)
def test_failure_class_of_a_crash(exc: BaseException, expected: FailureClass) -> None:
    assert failure_class(exc) is expected

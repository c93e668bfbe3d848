"""Bearer tokens for the HTTP transport: minted by the reconciler, verified (or refused) by the MCP server."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from mcp_server.auth import AUDIENCE, ISSUER, JwtTokenVerifier, grant_from_access_token, mint_token
from mcp_server.session import Mode, SessionGrant

SECRET = "s" * 64  # long enough for HS512 too, so the algorithm-pinning case signs with the right key
OTHER_SECRET = "o" * 40
PROJECTS = ("bug-lib", "data-job")


def _forge(claims: dict[str, Any], *, secret: str = SECRET, algorithm: str = "HS256") -> str:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "bug-lib",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "abc",
        "project": "bug-lib",
        "attempt_id": "att12345",
        "job": "test",
        "mode": "agent",
    }
    base.update(claims)
    payload = {k: v for k, v in base.items() if v is not None}
    return jwt.encode(payload, secret, algorithm=algorithm)


@pytest.mark.anyio
async def test_minted_token_verifies_to_the_session_it_names() -> None:
    token = mint_token(SECRET, project="bug-lib", attempt_id="att12345", job="test", mode=Mode.AGENT, ttl_seconds=60)
    access = await JwtTokenVerifier(SECRET, projects=PROJECTS).verify_token(token)
    assert access is not None and access.scopes == ["agent"]
    assert access.expires_at is not None and 0 < access.expires_at - time.time() <= 60
    assert grant_from_access_token(access) == SessionGrant(
        project="bug-lib", mode=Mode.AGENT, attempt_id="att12345", job="test", client="http"
    )


@pytest.mark.anyio
async def test_read_only_token_carries_no_attempt() -> None:
    token = mint_token(SECRET, project="data-job", ttl_seconds=60)
    access = await JwtTokenVerifier(SECRET, projects=PROJECTS).verify_token(token)
    assert access is not None
    assert grant_from_access_token(access) == SessionGrant(project="data-job", mode=Mode.READ_ONLY, client="http")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "token",
    [
        pytest.param(lambda: _forge({"exp": int(time.time()) - 60}), id="expired"),
        pytest.param(lambda: _forge({}, secret=OTHER_SECRET), id="wrong-signature"),
        pytest.param(lambda: _forge({"aud": "somebody-else"}), id="wrong-audience"),
        pytest.param(lambda: _forge({"iss": "evil"}), id="wrong-issuer"),
        pytest.param(lambda: _forge({"project": "other", "sub": "other"}), id="unknown-project"),
        pytest.param(lambda: _forge({"project": "data-job"}), id="project-differs-from-subject"),
        pytest.param(lambda: _forge({"mode": "admin"}), id="unknown-mode"),
        pytest.param(lambda: _forge({"exp": None}), id="no-expiry"),
        pytest.param(lambda: _forge({"aud": None}), id="no-audience"),
        pytest.param(lambda: _forge({"exp": int(time.time()) + 30 * 86400}), id="lifetime-too-long"),
        pytest.param(lambda: _forge({"nbf": int(time.time()) + 600}), id="not-yet-valid"),
        pytest.param(lambda: _forge({"attempt_id": ["x"]}), id="attempt-not-a-string"),
        pytest.param(lambda: _forge({}, algorithm="HS512"), id="other-algorithm"),
        pytest.param(
            lambda: jwt.encode({"project": "bug-lib", "aud": AUDIENCE}, key="", algorithm="none"), id="alg-none"
        ),
        pytest.param(lambda: "not-a-jwt", id="garbage"),
        pytest.param(lambda: "", id="empty"),
    ],
)
async def test_bad_tokens_verify_to_nothing(token: Any) -> None:
    assert await JwtTokenVerifier(SECRET, projects=PROJECTS).verify_token(token()) is None


@pytest.mark.anyio
async def test_tampered_mode_breaks_the_signature() -> None:
    token = mint_token(SECRET, project="bug-lib", ttl_seconds=60)
    header, _, signature = token.split(".")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCE)
    claims.update(mode="agent", attempt_id="att12345", job="test")
    forged_payload = jwt.encode(claims, OTHER_SECRET, algorithm="HS256").split(".")[1]
    forged = f"{header}.{forged_payload}.{signature}"
    assert await JwtTokenVerifier(SECRET, projects=PROJECTS).verify_token(forged) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"secret": "short"}, "at least 32 bytes", id="short-secret"),
        pytest.param({"ttl_seconds": 0}, "TTL", id="zero-ttl"),
        pytest.param({"ttl_seconds": 10 * 86400}, "TTL", id="long-ttl"),
        pytest.param({"mode": "root"}, "root", id="unknown-mode"),
    ],
)
def test_mint_token_refuses_bad_parameters(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"secret": SECRET, "project": "bug-lib", "ttl_seconds": 60, **kwargs}
    secret = args.pop("secret")
    with pytest.raises(ValueError, match=message):
        mint_token(secret, **args)


def test_verifier_refuses_a_short_secret() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        JwtTokenVerifier("too-short", projects=PROJECTS)

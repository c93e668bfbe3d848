"""GitHubApp: JWT claims, token exchange, caching, refresh before expiry and after a 401."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mcp_server.errors import ForgeAuthError, ForgeNotFound, ForgeUnavailable
from mcp_server.forge import ForgeClient
from mcp_server.github_app import GitHubApp
from policy.config import ForgeSettings

API = "https://forge.test/api/v3"
START = 1_700_000_000.0


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def key_path(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "app.pem"
    path.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


class FakeForge:
    """Verifies App JWTs with the public key and issues numbered one-hour installation tokens."""

    def __init__(self, public_key: rsa.RSAPublicKey, clock: list[float], *, status: int = 201) -> None:
        self.public_key = public_key
        self.clock = clock
        self.status = status
        self.claims: list[dict[str, Any]] = []
        self.issued: list[str] = []
        self.bodies: list[Any] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/api/v3/app/installations/77/access_tokens" and request.method == "POST":
            bearer = request.headers["authorization"].removeprefix("Bearer ")
            # The fake clock is in the past: check iat/exp by value below, not against the wall clock.
            unchecked = {"verify_iat": False, "verify_exp": False}
            claims = jwt.decode(bearer, self.public_key, algorithms=["RS256"], options=unchecked)
            self.claims.append(claims)
            self.bodies.append(json.loads(request.content) if request.content else None)
            if self.status != 201:
                return httpx2.Response(self.status, json={"message": "nope"})
            token = f"ghs_installation_token_{len(self.issued) + 1:04d}_abcdefghij"
            self.issued.append(token)
            expires = datetime.fromtimestamp(self.clock[0] + 3600, tz=UTC).isoformat().replace("+00:00", "Z")
            return httpx2.Response(201, json={"token": token, "expires_at": expires, "permissions": {}})
        if request.url.path == "/api/v3/repos/acme/widgets":
            # A repo endpoint that only the newest token may use.
            if request.headers.get("authorization") != f"Bearer {self.issued[-1]}":
                return httpx2.Response(401, json={"message": "Bad credentials"})
            return httpx2.Response(200, json={"full_name": "acme/widgets", "default_branch": "main"})
        return httpx2.Response(404)


def make_app(key_path: Path, forge: FakeForge, clock: list[float]) -> GitHubApp:
    return GitHubApp(
        api_url=API,
        app_id="12345",
        installation_id="77",
        private_key_path=key_path,
        transport=httpx2.MockTransport(forge),
        clock=lambda: clock[0],
    )


@pytest.mark.anyio
async def test_jwt_is_rs256_with_iat_backdated_a_minute_exp_nine_minutes_ahead_and_app_id_issuer(
    key_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    clock = [START]
    forge = FakeForge(rsa_key.public_key(), clock)
    async with make_app(key_path, forge, clock) as app:
        await app.token()
    header = jwt.get_unverified_header(app.secrets()[-1])
    assert header["alg"] == "RS256"
    assert forge.claims == [{"iat": int(START) - 60, "exp": int(START) + 540, "iss": "12345"}]


@pytest.mark.anyio
async def test_installation_token_is_cached_until_five_minutes_before_it_expires(
    key_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    clock = [START]
    forge = FakeForge(rsa_key.public_key(), clock)
    async with make_app(key_path, forge, clock) as app:
        first = await app.token()
        clock[0] = START + 3600 - 301  # just outside the refresh margin
        assert await app.token() == first
        clock[0] = START + 3600 - 299  # inside it: refresh
        second = await app.token()
    assert first != second
    assert forge.issued == [first, second] and app.exchanges == 2


@pytest.mark.anyio
async def test_secrets_lists_the_live_token_and_the_replaced_one(key_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    clock = [START]
    forge = FakeForge(rsa_key.public_key(), clock)
    async with make_app(key_path, forge, clock) as app:
        assert app.secrets() == ()
        first = await app.token()
        app.invalidate(first)
        second = await app.token()
        secrets = app.secrets()
    assert first in secrets and second in secrets


@pytest.mark.anyio
async def test_invalidate_ignores_a_token_that_is_no_longer_current(key_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    clock = [START]
    forge = FakeForge(rsa_key.public_key(), clock)
    async with make_app(key_path, forge, clock) as app:
        first = await app.token()
        app.invalidate(first)
        second = await app.token()
        app.invalidate(first)  # a late 401 for the old token must not throw away the new one
        assert await app.token() == second
    assert app.exchanges == 2


@pytest.mark.anyio
async def test_forge_client_refreshes_the_token_once_on_401(key_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    clock = [START]
    forge = FakeForge(rsa_key.public_key(), clock)
    app = make_app(key_path, forge, clock)
    async with app, ForgeClient(ForgeSettings(api_url=API), app, transport=httpx2.MockTransport(forge)) as client:
        await app.token()
        forge.issued.append("ghs_rotated_elsewhere_0000000000")  # the forge no longer accepts our token
        repo = await client.get_repo("acme/widgets")
    assert repo.default_branch == "main"
    assert app.exchanges == 2


@pytest.mark.parametrize(
    ("status", "error"),
    [
        pytest.param(401, ForgeAuthError, id="jwt-rejected"),
        pytest.param(403, ForgeAuthError, id="forbidden"),
        pytest.param(404, ForgeNotFound, id="no-installation"),
        pytest.param(502, ForgeUnavailable, id="bad-gateway"),
    ],
)
@pytest.mark.anyio
async def test_failed_exchange_raises_a_typed_error_without_the_jwt(
    key_path: Path, rsa_key: rsa.RSAPrivateKey, status: int, error: type[Exception]
) -> None:
    clock = [START]
    forge = FakeForge(rsa_key.public_key(), clock, status=status)
    async with make_app(key_path, forge, clock) as app:
        with pytest.raises(error) as info:
            await app.token()
    assert type(info.value) is error
    assert "eyJ" not in str(info.value)


@pytest.mark.anyio
async def test_unreachable_forge_is_unavailable(key_path: Path) -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused")

    async with GitHubApp(
        api_url=API, app_id="1", installation_id="77", private_key_path=key_path, transport=httpx2.MockTransport(refuse)
    ) as app:
        with pytest.raises(ForgeUnavailable, match="ConnectError"):
            await app.token()


def write_ec_key(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        pytest.param(lambda p: None, "cannot read", id="missing"),
        pytest.param(lambda p: p.write_text("not a key"), "not an unencrypted PEM", id="garbage"),
        pytest.param(write_ec_key, "not an RSA key", id="ec-key"),
    ],
)
def test_unusable_private_key_fails_at_construction(tmp_path: Path, setup: Any, match: str) -> None:
    path = tmp_path / "key.pem"
    setup(path)
    with pytest.raises(ForgeAuthError, match=match):
        GitHubApp(api_url=API, app_id="1", installation_id="2", private_key_path=path)


def test_from_settings_names_the_missing_setting() -> None:
    with pytest.raises(ForgeAuthError, match="'installation_id'"):
        GitHubApp.from_settings(ForgeSettings(app_id="1", private_key_path="/nonexistent"))


def test_from_settings_reads_the_forge_section(key_path: Path) -> None:
    settings = ForgeSettings(api_url=API, app_id="9", installation_id="77", private_key_path=str(key_path))
    app = GitHubApp.from_settings(settings)
    claims = jwt.decode(app.jwt(), options={"verify_signature": False})
    assert claims["iss"] == "9"


# ---------------------------------------------------------------------------------------------- local forge


@pytest.mark.anyio
async def test_local_forge_accepts_the_jwt_caches_the_token_and_refreshes_it_after_expiry(tmp_path: Path) -> None:
    from fixtures.forge.server import run_forge

    async with (
        run_forge(tmp_path / "forge", projects=["clean"], actions_enabled=False) as forge,
        GitHubApp(
            api_url=forge.api_url,
            app_id=str(forge.app_id),
            installation_id=str(forge.installation_id),
            private_key_path=forge.private_key_path,
        ) as app,
        ForgeClient(ForgeSettings(api_url=forge.api_url), app) as client,
    ):
        first = await app.token()
        assert first.startswith("ghs_")
        assert (await client.get_repo("acme/clean")).full_name == "acme/clean"
        assert await app.token() == first and app.exchanges == 1

        # The forge's test control expires every installation token: the next call gets a 401 and the
        # client refreshes once, transparently.
        async with httpx2.AsyncClient() as admin:
            response = await admin.post(
                f"{forge.api_url}/_forge/tokens/expire",
                json={"all_installation_tokens": True},
                headers={"Authorization": f"Bearer {forge.admin_token}"},
            )
            assert response.status_code == 200
        assert (await client.get_repo("acme/clean")).default_branch == "main"
        second = await app.token()
    assert second != first and app.exchanges == 2
    assert first in app.secrets() and second in app.secrets()


@pytest.mark.anyio
async def test_local_forge_rejects_a_jwt_signed_with_another_key(tmp_path: Path, key_path: Path) -> None:
    from fixtures.forge.server import run_forge

    async with (
        run_forge(tmp_path / "forge", actions_enabled=False) as forge,
        GitHubApp(
            api_url=forge.api_url,
            app_id=str(forge.app_id),
            installation_id=str(forge.installation_id),
            private_key_path=key_path,
        ) as app,
    ):
        with pytest.raises(ForgeAuthError, match="HTTP 401"):
            await app.token()


@pytest.mark.anyio
async def test_local_forge_token_exchange_carries_the_api_version_and_a_fast_clock_is_named(
    tmp_path: Path,
) -> None:
    import time

    from fixtures.forge.server import run_forge

    async with run_forge(tmp_path / "forge", actions_enabled=False) as forge:
        kwargs: dict[str, Any] = {
            "api_url": forge.api_url,
            "app_id": str(forge.app_id),
            "installation_id": str(forge.installation_id),
            "private_key_path": forge.private_key_path,
        }
        async with GitHubApp(**kwargs) as app:
            await app.token()
        [exchange] = [r for r in forge.stats.log if r["route"].endswith("/access_tokens")]
        assert exchange["status"] == 201 and exchange["api_version"] == "2022-11-28"
        # This machine's clock runs 90 s fast: GitHub finds exp more than 10 minutes ahead of its own clock.
        async with GitHubApp(**kwargs, clock=lambda: time.time() + 90) as skewed:
            with pytest.raises(ForgeAuthError) as info:
                await skewed.token()
    text = str(info.value)
    assert "HTTP 401" in text and "'Expiration time' claim ('exp') is too far in the future" in text
    assert "check this machine's clock" in text


@pytest.mark.anyio
async def test_a_refused_exchange_keeps_the_forge_message_but_never_the_jwt(
    key_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    def echo(request: httpx2.Request) -> httpx2.Response:
        bearer = request.headers["authorization"].removeprefix("Bearer ")
        return httpx2.Response(401, json={"message": f"A JSON web token could not be decoded: {bearer}"})

    async with GitHubApp(
        api_url=API,
        app_id="12345",
        installation_id="77",
        private_key_path=key_path,
        transport=httpx2.MockTransport(echo),
    ) as app:
        with pytest.raises(ForgeAuthError) as info:
            await app.token()
    assert "A JSON web token could not be decoded" in str(info.value) and "eyJ" not in str(info.value)
    assert "clock" not in str(info.value)


@pytest.mark.anyio
async def test_a_token_scoped_to_one_repository_and_read_access_is_held_to_it_by_the_local_forge(
    tmp_path: Path,
) -> None:
    from fixtures.forge.server import run_forge

    async with (
        run_forge(tmp_path / "forge", projects=["clean", "bug-lib"], actions_enabled=False) as forge,
        GitHubApp(
            api_url=forge.api_url,
            app_id=str(forge.app_id),
            installation_id=str(forge.installation_id),
            private_key_path=forge.private_key_path,
            repositories=["clean"],
            permissions={"contents": "read", "actions": "read"},
        ) as app,
        ForgeClient(ForgeSettings(api_url=forge.api_url), app) as client,
    ):
        assert (await client.get_repo("acme/clean")).full_name == "acme/clean"
        assert await client.list_commits("acme/clean", sha="main", per_page=1)
        with pytest.raises(ForgeNotFound):
            await client.get_repo("acme/bug-lib")
        with pytest.raises(ForgeAuthError, match="Resource not accessible by integration"):
            await client.find_pull_request("acme/clean", "greenloop/fix/x")


@pytest.mark.anyio
async def test_scoped_tokens_ask_for_their_scope_are_cached_per_scope_and_refreshed_before_expiry(
    key_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    clock = [START]
    forge = FakeForge(rsa_key.public_key(), clock)
    async with make_app(key_path, forge, clock) as app:
        attempt = app.scoped(repositories=["widgets"], permissions={"contents": "write"})
        observer = app.scoped(repositories=["widgets", "gears"], permissions={"actions": "read"})
        first = await attempt.token()
        assert await app.scoped(repositories=["widgets"], permissions={"contents": "write"}).token() == first
        seen = await observer.token()
        assert seen != first and attempt.expires_at == START + 3600
        clock[0] = START + 3600 - 299  # inside the refresh margin: a new token of the same scope
        second = await attempt.token()
        assert second not in (first, seen)
        assert set(app.secrets()) >= {first, second, seen}  # every scope's token is redacted
        attempt.invalidate(second)  # a 401: the next call exchanges again
        third = await attempt.token()
    assert third != second
    assert forge.bodies == [
        {"repositories": ["widgets"], "permissions": {"contents": "write"}},
        {"repositories": ["gears", "widgets"], "permissions": {"actions": "read"}},
        {"repositories": ["widgets"], "permissions": {"contents": "write"}},
        {"repositories": ["widgets"], "permissions": {"contents": "write"}},
    ]


@pytest.mark.anyio
async def test_remote_observation_token_is_fetched_once_and_refreshed_before_it_expires() -> None:
    from mcp_server.operator_http import RemoteTokens

    clock = [START]
    asked: list[str | None] = []

    async def fetch(stale: str | None) -> tuple[str, float]:
        asked.append(stale)
        return f"ghs_observer_{len(asked):04d}_abcdefghijklmnop", clock[0] + 3600

    tokens = RemoteTokens(fetch, clock=lambda: clock[0])
    first = await tokens.token()
    clock[0] = START + 3600 - 121  # outside the two-minute margin: the same token
    assert await tokens.token() == first
    clock[0] = START + 3600 - 119  # inside it: fetched again from the sidecar
    second = await tokens.token()
    tokens.invalidate(second)  # the forge said 401: the sidecar is told which token went stale
    third = await tokens.token()
    assert len({first, second, third}) == 3
    assert asked == [None, None, second] and tokens.fetches == 3

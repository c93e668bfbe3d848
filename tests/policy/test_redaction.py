"""Secret redaction: every kind of secret is gone, ordinary log text is untouched, cost stays linear."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.redaction import LineRedactor, is_secret_key, redact, redact_obj, secret_variants

GH_TOKEN = "ghs_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
LIVE = "ghs_LiveInstallationToken0123456789abcd"
TS = "2026-01-02T03:04:05.1234567Z "
PEM_BODY = [
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun",
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK",
    "LxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW/VDL5AaWTg0nLVkjRo",
    "=",
]


@pytest.mark.parametrize(
    ("line", "secret", "kind"),
    [
        pytest.param(
            f"{TS}remote: https://x-access-token:{GH_TOKEN}@github.com/o/r.git",
            GH_TOKEN,
            "[REDACTED]@",
            id="url-credentials-token",
        ),
        pytest.param(
            "Cloning https://deploy:hunter2hunter2@git.example.com/r.git",
            "hunter2hunter2",
            "[REDACTED]@",
            id="url-credentials-password",
        ),
        pytest.param(
            "mysql://root:p@ss@w0rd@db.internal:3306/app", "p@ss@w0rd", "[REDACTED]@", id="url-password-with-at-signs"
        ),
        pytest.param(f"export GITHUB_TOKEN={GH_TOKEN}", GH_TOKEN, "github_token", id="github-installation-token"),
        pytest.param(
            "token ghp_abcdefghijklmnopqrstuvwxyz0123456789 used",
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "github_token",
            id="github-classic-pat",
        ),
        pytest.param(
            "gho_16C7e42F292c6912E7710c838347Ae178B4a and ghu_16C7e42F292c6912E7710c838347Ae178B4a",
            "16C7e42F292c6912E7710c838347Ae178B4a",
            "github_token",
            id="github-oauth-user",
        ),
        pytest.param(
            "refresh=ghr_1B4a2e77838347a7E420ce178F2E7c6912E169246c34E1ccbF66C46812d16D5B1A9Dc86A1498",
            "1B4a2e77838347a7E420ce178F2E7c6912E16",
            "github_token",
            id="github-refresh",
        ),
        pytest.param(
            "pat github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ in env",
            "11ABCDEFG0123456789_abcdefghij",
            "github_token",
            id="github-fine-grained-pat",
        ),
        pytest.param(
            "ANTHROPIC_API_KEY set to sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz012345-_6789AA",
            "AbCdEfGhIjKlMnOpQrStUvWxYz012345",
            "anthropic_key",
            id="anthropic-key",
        ),
        pytest.param(
            "openai: sk-proj-Abc123Def456Ghi789Jkl012Mno345Pqr678",
            "Abc123Def456Ghi789Jkl012",
            "api_key",
            id="openai-project-key",
        ),
        pytest.param(
            "[INFO] using AKIAIOSFODNN7EXAMPLE for s3 upload",
            "AKIAIOSFODNN7EXAMPLE",
            "aws_access_key",
            id="aws-access-key-id",
        ),
        pytest.param(
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "aws_secret_key",
            id="aws-secret-key",
        ),
        pytest.param(
            'AWS_SECRET_ACCESS_KEY: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"',
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "aws_secret_key",
            id="aws-secret-key-env",
        ),
        pytest.param(
            "notify with xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
            "1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
            "slack_token",
            id="slack-bot-token",
        ),
        pytest.param(
            "POST https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
            "T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
            "slack_webhook",
            id="slack-webhook",
        ),
        pytest.param(
            "id_token=eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOm8vciJ9.c2lnbmF0dXJlLXZhbHVlLWhlcmU",
            "eyJzdWIiOiJyZXBvOm8vciJ9",
            "jwt",
            id="jwt",
        ),
        pytest.param(
            "Authorization: Bearer abcdef0123456789abcdef",
            "abcdef0123456789abcdef",
            "authorization",
            id="authorization-bearer",
        ),
        pytest.param(
            "curl -H 'authorization: token 0123456789abcdef0123' https://api",
            "0123456789abcdef0123",
            "authorization",
            id="authorization-token-lowercase",
        ),
        pytest.param(
            "> Authorization: Basic dXNlcjpodW50ZXIyaHVudGVyMg==",
            "dXNlcjpodW50ZXIyaHVudGVyMg==",
            "authorization",
            id="authorization-basic",
        ),
        pytest.param(
            "sent header Bearer 9f8e7d6c5b4a39281706f5e4d3c2b1a0",
            "9f8e7d6c5b4a39281706f5e4d3c2b1a0",
            "authorization",
            id="bare-bearer",
        ),
        pytest.param("DB_PASSWORD=hunter2 ./run", "hunter2", "secret", id="password-env"),
        pytest.param(
            "connect(password='correct horse battery')",
            "correct horse battery",
            "secret",
            id="password-quoted-with-spaces",
        ),
        pytest.param(
            '{"client_secret": "s3cr3t-value", "grant": "x"}', "s3cr3t-value", "secret", id="client-secret-json"
        ),
        pytest.param("api_key: k-1234567890", "k-1234567890", "secret", id="api-key-yaml"),
        pytest.param("x-api-key=abcdef123456", "abcdef123456", "secret", id="api-key-kebab"),
        pytest.param('{"accessToken":"tok-9876543210"}', "tok-9876543210", "secret", id="camel-case-token"),
        pytest.param(
            "https://api.example.com/v1?access_token=qwerty123456&page=2",
            "qwerty123456",
            "secret",
            id="token-query-parameter",
        ),
        pytest.param("docker login --password hunter22 registry", "hunter22", "secret", id="password-flag"),
        pytest.param(
            "HTTP Request: GET http://127.0.0.1:8/_forge/logs/jobs/7?expires=1790000000&signature=9f8e7d6c5b4a3928"
            ' "HTTP/1.1 200 OK"',
            "9f8e7d6c5b4a3928",
            "url_signature",
            id="signed-log-url",
        ),
        pytest.param(
            "https://acct.blob.core.windows.net/logs/1.txt?sv=2021-08-06&se=2026-12-03&sig=AbC%2Bdef1234%3D&sp=r",
            "AbC%2Bdef1234%3D",
            "url_signature",
            id="azure-sas-sig",
        ),
        pytest.param(
            "https://s3.example/x?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=0123abcdef4567&X-Amz-Date=1",
            "0123abcdef4567",
            "url_signature",
            id="aws-presigned-signature",
        ),
        pytest.param("curl -u admin:letmein123 https://host", "letmein123", "secret", id="curl-user"),
    ],
)
def test_secret_does_not_survive(line: str, secret: str, kind: str) -> None:
    out = redact(line)
    assert secret not in out
    assert kind in out


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("commit 4e8932e579d2e085ea2d9e6e88035d1ad0ad16a6 (HEAD -> main)", id="git-sha"),
        pytest.param("request 123e4567-e89b-12d3-a456-426614174000 failed", id="uuid"),
        pytest.param("image sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", id="digest"),
        pytest.param("Cloning into 'repo'... https://github.com/org/repo.git", id="plain-url"),
        pytest.param("git@github.com:org/repo.git and ssh://git@github.com/org/repo", id="ssh-user"),
        pytest.param("usage: input_tokens=1200 output_tokens=300 max_tokens=1024", id="token-counts"),
        pytest.param("jwt.exceptions.InvalidTokenError: Signature has expired", id="token-error-class"),
        pytest.param("assert token == expected_token", id="comparison"),
        pytest.param("GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}", id="actions-secret-reference"),
        pytest.param("token: $GH_TOKEN", id="env-reference"),
        pytest.param("Authorization: Basic ***", id="actions-mask"),
        pytest.param("password: [REDACTED:secret]", id="already-redacted"),
        pytest.param("[INFO] Tests run: 42, Failures: 0, Errors: 0, Skipped: 1", id="maven-summary"),
        pytest.param("task-runner-1234567890abcdefghijk started", id="word-ending-in-sk"),
        pytest.param("java.lang.AssertionError: expected:<1> but was:<2>", id="java-assertion"),
        pytest.param("Enter password:", id="prompt-without-value"),
        pytest.param("monkey=3 hotkey: ctrl", id="key-suffix-words"),
        pytest.param("2026-01-02T03:04:05.1234567Z ##[group]Run actions/checkout@v4", id="github-step"),
    ],
)
def test_ordinary_text_survives(text: str) -> None:
    assert redact(text) == text


def test_live_secret_is_redacted_raw_percent_encoded_and_base64() -> None:
    secret = "p@ss/w+rd:" + "x" * 20
    basic = base64.b64encode(f"x-access-token:{secret}".encode()).decode()
    text = "\n".join(
        [
            f"token {secret} end",
            f"url https://h/?t={quote(secret, safe='')}",
            f"AUTHORIZATION: basic {basic}",
            f"blob {base64.b64encode(b'prefix-' + secret.encode() + b'-suffix').decode()}",
        ]
    )
    out = redact(text, extra_secrets=[secret])
    assert secret not in out
    assert quote(secret, safe="") not in out
    assert basic not in out
    for lead in range(3):
        # The secret's own base64 fragment at any alignment inside a larger blob is gone too.
        core = base64.b64encode(b"\0" * lead + secret.encode()).decode()[4 if lead else 0 :][:16]
        assert core not in out
    assert out.count("[REDACTED:") == 4


def test_live_token_in_basic_auth_header_is_redacted() -> None:
    basic = base64.b64encode(f"x-access-token:{LIVE}".encode()).decode()
    out = redact(f"{TS}http.https://github.com/.extraheader AUTHORIZATION: basic {basic}", extra_secrets=[LIVE])
    assert basic not in out
    assert basic[20:40] not in out


def test_short_extra_secrets_are_ignored() -> None:
    assert secret_variants("abc") == frozenset()
    assert redact("abc abc", extra_secrets=["abc", ""]) == "abc abc"


@pytest.mark.parametrize("prefix", [pytest.param("", id="plain"), pytest.param(TS, id="github-timestamps")])
def test_multiline_private_key_is_redacted(prefix: str) -> None:
    lines = ["before", "-----BEGIN RSA PRIVATE KEY-----", *PEM_BODY, "-----END RSA PRIVATE KEY-----", "after"]
    text = "\n".join(prefix + line for line in lines) + "\n"
    out = redact(text)
    for body in PEM_BODY:
        if len(body) > 1:
            assert body not in out
    assert out.splitlines()[0] == prefix + "before"
    assert out.splitlines()[-1] == prefix + "after"
    assert out.count("\n") == text.count("\n")


def test_private_key_on_one_line_with_escaped_newlines_is_redacted() -> None:
    key = "-----BEGIN PRIVATE KEY-----\\n" + "\\n".join(PEM_BODY) + "\\n-----END PRIVATE KEY-----"
    out = redact(f'{{"type": "service_account", "private_key": "{key}", "id": 1}}')
    assert PEM_BODY[0] not in out
    assert '"id": 1' in out


def test_truncated_private_key_is_redacted_until_the_key_material_ends() -> None:
    text = "\n".join(["-----BEGIN OPENSSH PRIVATE KEY-----", *PEM_BODY[:2], "Error: could not load key"])
    out = redact(text)
    assert PEM_BODY[0] not in out and PEM_BODY[1] not in out
    assert out.endswith("Error: could not load key")


def test_private_key_straddling_a_chunk_boundary_is_redacted() -> None:
    # Large texts are processed in ~1 MB chunks; a key across the cut must still be caught.
    filler = "[INFO] compiling module\n" * 43_690  # just under 1 MiB
    text = filler + "-----BEGIN EC PRIVATE KEY-----\n" + "\n".join(PEM_BODY) + "\n-----END EC PRIVATE KEY-----\nok\n"
    out = redact(text * 2)
    assert PEM_BODY[0] not in out and PEM_BODY[2] not in out
    assert out.count("ok\n") == 2
    assert len(out.splitlines()) == len((text * 2).splitlines())


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a\n-----BEGIN RSA PRIVATE KEY-----\nMIIB\nQUJD\n-----END RSA PRIVATE KEY-----\nb\n", id="pem"),
        pytest.param(f"x\r\ntoken={GH_TOKEN}\r\n\r\ndone", id="crlf"),
        pytest.param("k: -----BEGIN PRIVATE KEY-----\rAAAA\r-----END PRIVATE KEY----- tail password=x1", id="cr"),
    ],
)
def test_line_redactor_agrees_with_redact(text: str) -> None:
    liner = LineRedactor()
    lines = text.splitlines(keepends=True)
    assert "".join(liner(line) for line in lines) == redact(text)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                *"ab:/@=_-. \n\"'0Z",
                "token",
                "password",
                "https",
                "sk-",
                "ghp_",
                "://",
                "Bearer ",
                "-----BEGIN RSA PRIVATE KEY-----",
                "-----END RSA PRIVATE KEY-----",
                "AKIA",
                "eyJ",
                "\r\n",
                "\r",
            ]
        ),
        max_size=120,
    ).map("".join)
)
def test_redact_never_fails_and_is_idempotent(text: str) -> None:
    once = redact(text)
    assert redact(once) == once
    assert once.count("\n") == text.count("\n")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "text",
    [
        pytest.param("A" * 2_000_000, id="one-long-word"),
        pytest.param(("sk-" + "a" * 300 + " ") * 5_000, id="many-sk-prefixes"),
        pytest.param(("x://" + "a@" * 200 + "/ ") * 2_000, id="url-with-many-at-signs"),
        pytest.param("password=" * 200_000, id="repeated-keys"),
        pytest.param(("eyJ" + "a" * 100 + ".") * 10_000, id="jwt-like-prefixes"),
        pytest.param(("-----BEGIN RSA PRIVATE KEY-----" + "\n") * 20_000, id="many-unterminated-keys"),
    ],
)
def test_hostile_inputs_finish(text: str) -> None:
    # Linear patterns: these finish in well under a second each; the timeout only catches a blow-up.
    redact(text, extra_secrets=[LIVE])


def test_redact_obj_walks_json_like_values() -> None:
    value = {
        "password": "hunter2",
        "max_tokens": 1024,
        "usage": {"input_tokens": 5, "output_tokens": 7},
        "headers": [{"Authorization": "Bearer abc"}, ("X-Api-Key", "k")],
        "log": f"push to https://x-access-token:{LIVE}@github.com failed",
        LIVE: "key is the secret",
        "nested": {"accessToken": {"value": f"tok {LIVE}"}},
        "count": 3,
        "ok": True,
        "none": None,
    }
    out = redact_obj(value, extra_secrets=[LIVE])
    assert out["password"] == "[REDACTED:secret]"
    assert out["max_tokens"] == 1024 and out["usage"] == {"input_tokens": 5, "output_tokens": 7}
    assert out["headers"][0] == {"Authorization": "[REDACTED:secret]"}
    assert out["headers"][1] == ("X-Api-Key", "k")  # a tuple of strings is data, not a mapping
    assert LIVE not in repr(out)
    assert out["count"] == 3 and out["ok"] is True and out["none"] is None
    assert value["password"] == "hunter2"  # the input is not modified


def test_redact_obj_caps_depth() -> None:
    deep: object = "x"
    for _ in range(100):
        deep = [deep]
    out = redact_obj(deep)
    assert "[REDACTED:too_deep]" in repr(out)


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("DB_PASSWORD", True),
        ("apiKey", True),
        ("api_key", True),
        ("X-Api-Key", True),
        ("accessToken", True),
        ("client_secret", True),
        ("Authorization", True),
        ("set-cookie", True),
        ("private_key", True),
        ("max_tokens", False),
        ("input_tokens", False),
        ("token_type", False),
        ("secret_name", False),
        ("keys", False),
        ("", False),
    ],
)
def test_is_secret_key(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret

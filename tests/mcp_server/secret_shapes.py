"""Files holding every secret shape `policy.redaction` knows, for the windowed-read and log-page tests."""

from __future__ import annotations

import base64
from collections.abc import Sequence


def _b64_lines(seed: int, n: int) -> list[str]:
    """`n` lines of key-like base64 (64 characters each), different for every seed."""
    raw = bytes((seed * 131 + i * 29 + (i >> 3) * 7) % 256 for i in range(48 * n))
    text = base64.b64encode(raw).decode()
    return [text[i : i + 64] for i in range(0, len(text), 64)]


def _pem(kind: str, seed: int, *, headers: Sequence[str] = ()) -> tuple[str, list[str]]:
    body = _b64_lines(seed, 8)
    block = [f"-----BEGIN {kind}-----", *headers, *([""] if headers else []), *body, f"-----END {kind}-----"]
    return "\n".join(block), body


def secret_files() -> dict[str, tuple[str, list[str]]]:
    """File name -> (text, the pieces that must never be shown): one file per secret shape of
    policy.redaction, each between ordinary lines so that windows start and end everywhere around it."""
    files: dict[str, tuple[str, list[str]]] = {}
    kinds = [
        "RSA PRIVATE KEY",
        "EC PRIVATE KEY",
        "DSA PRIVATE KEY",
        "OPENSSH PRIVATE KEY",
        "PRIVATE KEY",
        "ENCRYPTED PRIVATE KEY",
        "PGP PRIVATE KEY BLOCK",
    ]
    for seed, kind in enumerate(kinds):
        pem, body = _pem(kind, seed)
        files[f"keys/{kind.lower().replace(' ', '_')}.pem"] = (f"# deploy key\nname: app\n{pem}\ntrailer: 1\n", body)
    encrypted, body = _pem("RSA PRIVATE KEY", 20, headers=["Proc-Type: 4,ENCRYPTED", "DEK-Info: AES-128-CBC,0A1B2C"])
    files["keys/legacy_encrypted.key"] = (f"{encrypted}\n", body)
    two_a, body_a = _pem("EC PRIVATE KEY", 21)
    two_b, body_b = _pem("PRIVATE KEY", 22)
    files["keys/two.pem"] = (f"{two_a}\n\n{two_b}\n", body_a + body_b)
    sa_body = _b64_lines(30, 8)
    inline = "\\n".join(["-----BEGIN PRIVATE KEY-----", *sa_body, "-----END PRIVATE KEY-----", ""])
    service_account = "\n".join(
        [
            "{",
            '  "type": "service_account",',
            '  "project_id": "demo-project",',
            '  "private_key_id": "0123456789abcdef0123456789abcdef01234567",',
            f'  "private_key": "{inline}",',
            '  "client_email": "ci@demo-project.iam.gserviceaccount.com",',
            '  "token_uri": "https://oauth2.googleapis.com/token"',
            "}",
            "",
        ]
    )
    files["deploy/service-account.json"] = (service_account, sa_body)
    gh = "ghs_" + "Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0UvWx"
    aws = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
    jwt_token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOm8vciJ9.c2lnbmF0dXJlLXZhbHVlLWhlcmU"
    tokens = "\n".join(
        [
            f"GITHUB_TOKEN={gh}",
            f"aws_secret_access_key = {aws}",
            f"Authorization: Bearer {jwt_token}",
            "",
        ]
    )
    files["ci/env.txt"] = (tokens, [gh[4:], aws, "eyJzdWIiOiJyZXBvOm8vciJ9"])
    # A long single line of tokens: the byte budget cuts it, so a window ends inside it.
    files["ci/one-line.txt"] = (
        f"{' '.join([f'GITHUB_TOKEN={gh}', f'aws_secret_access_key={aws}'] * 20)}\n",
        [gh[4:], aws],
    )
    return files


def assert_nothing_shown(shown: str, pieces: Sequence[str], where: str) -> None:
    for piece in pieces:
        for start in range(0, max(1, len(piece) - 15)):
            fragment = piece[start : start + 16]
            assert fragment not in shown, f"{where}: {fragment!r} of a secret is shown"

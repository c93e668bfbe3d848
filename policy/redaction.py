"""Secret redaction for anything that leaves the MCP server: logs, transcripts, reports, tool results.

`redact(text)` replaces every secret it recognises with `[REDACTED:<kind>]` (URL credentials become
`scheme://[REDACTED]@host`); `redact_obj(obj)` does the same through a JSON-like structure and also blanks
the value of any mapping key that names a secret (`password`, `accessToken`, `api_key`, ...).

What is recognised (kind in brackets):

- the caller's live secrets (`extra_secrets`), verbatim, percent-encoded and base64-encoded (also inside a
  larger base64 blob such as Basic auth's `x-access-token:<token>`) [known_secret]
- GitHub tokens `ghp_ gho_ ghu_ ghs_ ghr_ github_pat_` [github_token]; Anthropic `sk-ant-` [anthropic_key];
  OpenAI-style `sk-...` [api_key]; AWS access key ids `AKIA...` [aws_access_key] and the value after
  `aws_secret_access_key` [aws_secret_key]; Slack `xox?-` tokens [slack_token] and webhooks [slack_webhook];
  JWTs [jwt]; PEM private-key blocks, also spread over many lines [private_key]
- `Authorization:` header values and `Bearer <token>` [authorization]; `user:pass@` in URLs;
  `password=`/`secret:`/`token=`/`api_key=` style assignments and `--password value` flags, keeping the
  key and redacting the value [secret]
- the signature of a signed URL (a short-lived bearer credential): `signature=`/`sig=` query values,
  `X-Amz-Signature`, `X-Goog-Signature`, Azure SAS `sig` [url_signature]

No rule crosses a line break (the PEM walk tags every line of a block), so redacting a whole text keeps its
lines where they were:
a window cut from the redacted text afterwards (a page of a file or of a log) shows no part of a secret, even
a multi-line key whose BEGIN line is outside the window. Cut windows only from redacted text.

Strings in `extra_secrets` shorter than 6 characters are ignored (they would match everywhere).

Cost: one regex per rule, each starting with a literal so the engine skips ahead, with boundaries checked
after a match; no nested or ambiguous quantifiers, so every rule is linear. Case-insensitive rules run on
the lower-cased text. Nothing crosses a line break except the PEM walk, and large texts go in ~1 MB chunks
cut at line breaks: 100 MB takes about two seconds. Pure: no I/O.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Collection, Container, Iterator
from functools import lru_cache
from typing import Any, TypeVar, cast
from urllib.parse import quote

__all__ = ["REDACTED", "LineRedactor", "is_secret_key", "redact", "redact_obj", "secret_variants"]

REDACTED = "[REDACTED]"

_T = TypeVar("_T")

# Secrets shorter than this are ignored: redacting every "abc" would destroy a log and protect nothing.
_MIN_SECRET_LEN = 6
# Base64 fragments shorter than this would match by chance.
_MIN_B64_FRAGMENT = 12
_CHUNK_CHARS = 1 << 20
_MAX_DEPTH = 64

_VALUE = r"(?P<val>\"[^\"\r\n]*\"|'[^'\r\n]*'|[^\s\"'=,;&][^\s\"',;&]*)"
_ASSIGN = r"[\"']?[ \t]*[:=][ \t]*"
_KEY_PREFIXES = ("api", "access", "private", "secret", "auth", "client")

# A value that is not itself a secret: already redacted, masked by the CI, or a variable reference.
_NOT_A_VALUE = re.compile(r"\[REDACTED|\*{3}|\$\{|\$[A-Z_][A-Z0-9_]*(?![A-Za-z0-9_])|<[a-z_-]+>$")


_Handler = Callable[["re.Match[str]", str], str]
_Rule = tuple[re.Pattern[str], bool, _Handler]


def _tag(kind: str) -> str:
    return f"[REDACTED:{kind}]"


def _keyed(kind: str) -> _Handler:
    """Keep everything before group `val`, replace the value (keeping its quotes)."""

    def handle(m: re.Match[str], text: str) -> str:
        start, end = m.span("val")
        val = text[start:end]
        bare = val.strip("\"'")
        if not bare or _NOT_A_VALUE.match(bare):
            return text[m.start() : m.end()]
        specific = _SPECIFIC.fullmatch(val)
        label = specific.lastgroup if specific is not None and specific.lastgroup else kind
        if len(val) >= 2 and val[0] in "\"'" and val[-1] == val[0]:
            redacted = f"{val[0]}{_tag(label)}{val[0]}"
        else:
            redacted = _tag(label)
        return text[m.start() : start] + redacted + text[end : m.end()]

    return handle


def _whole(kind: str) -> _Handler:
    def handle(m: re.Match[str], text: str) -> str:
        return _tag(kind)

    return handle


def _bounded(kind: str, left: str, right: str = "") -> _Handler:
    """Redact the match unless it is glued to a character of `left` before it (or `right` after it)."""

    def handle(m: re.Match[str], text: str) -> str:
        s, e = m.span()
        if (s > 0 and text[s - 1] in left) or (right and e < len(text) and text[e] in right):
            return m.group(0)
        return _tag(kind)

    return handle


def _sk_key(m: re.Match[str], text: str) -> str:
    s = m.start()
    body = m.group(0)
    if (s > 0 and (text[s - 1].isalnum() or text[s - 1] in "_-")) or not any(c.isdigit() for c in body):
        return body
    return _tag("anthropic_key" if body.startswith("sk-ant-") else "api_key")


def _url(m: re.Match[str], text: str) -> str:
    userinfo = m.group("userinfo")[:-1]
    if ":" in userinfo:
        return f"://{REDACTED}@"
    return m.group(0)  # a bare user name ("git@"); a token there is caught by the token rules


def _signed_query(m: re.Match[str], text: str) -> str:
    """`sig=`/`signature=` only as a whole query key or a `-Signature` suffix (not `design=`)."""
    s = m.start()
    if s > 0 and text[s - 1] not in "?&;-_ \t\"'":
        return text[s : m.end()]
    return _keyed("url_signature")(m, text)


def _key_word(m: re.Match[str], text: str) -> str:
    """`...key = value`: only for api/access/private/secret/auth/client keys (not `monkey=3`)."""
    s = m.start()
    before = text[max(0, s - 8) : s].lower().rstrip("_-")
    if not before.endswith(_KEY_PREFIXES):
        return text[s : m.end()]
    return _keyed("secret")(m, text)


_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# Every pattern starts with a literal so the regex engine can skip ahead quickly (a leading lookbehind or
# alternation makes it try every position, 20-50x slower); boundaries are checked in the handler.
# Patterns flagged True run on the lower-cased text (same positions) and so are case-insensitive.
_RULES: tuple[_Rule, ...] = (
    (re.compile(r"://(?P<userinfo>(?:[^\s/?#'\"<>@]*+@)++)(?=[A-Za-z0-9\[])"), False, _url),
    (re.compile(r"g(?:h[pousr]|ithub_pat)_[A-Za-z0-9_]{20,}"), False, _whole("github_token")),
    (re.compile(r"sk-[A-Za-z0-9_-]{20,}"), False, _sk_key),
    (re.compile(r"A(?:KIA|SIA|BIA|CCA)[A-Z0-9]{16}"), False, _bounded("aws_access_key", _LETTERS, _LETTERS)),
    (re.compile(r"x(?:ox[abposr]|app)-[A-Za-z0-9-]{10,}"), False, _bounded("slack_token", _LETTERS)),
    (re.compile(r"hooks\.slack\.com/services/[A-Za-z0-9/_-]+"), False, _whole("slack_webhook")),
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), False, _whole("jwt")),
    (
        re.compile(r"aws_?secret_?(?:access_?)?key[\"']?[ \t]*[:=][ \t]*[\"']?(?P<val>[a-z0-9/+=]{16,})"),
        True,
        _keyed("aws_secret_key"),
    ),
    (
        re.compile(
            r"authorization[\"']?[ \t]*[:=][ \t]*[\"']?"
            r"(?:(?:bearer|basic|token|digest|bot|negotiate|ntlm)[ \t]+)?(?P<val>[^\s\"',;]+)"
        ),
        True,
        _keyed("authorization"),
    ),
    (re.compile(r"bearer[ \t]+(?P<val>[a-z0-9._~+/-]{16,}=*)"), True, _keyed("authorization")),
    (
        re.compile(
            r"--?(?:password|passwd|token|secret|api-?key|access-token|auth-token)[ \t]+"
            r"(?P<val>[^\s\-][^\s]*)"
        ),
        True,
        _keyed("secret"),
    ),
    (re.compile(r"-(?:u|-user)[ \t]+[^\s:'\"]+:(?P<val>[^\s'\"]+)"), False, _keyed("secret")),
    (re.compile(r"pass(?:word|wd|phrase)" + _ASSIGN + _VALUE), True, _keyed("secret")),
    (re.compile(r"secret" + _ASSIGN + _VALUE), True, _keyed("secret")),
    (re.compile(r"token" + _ASSIGN + _VALUE), True, _keyed("secret")),
    (re.compile(r"credentials?" + _ASSIGN + _VALUE), True, _keyed("secret")),
    (re.compile(r"key" + _ASSIGN + _VALUE), True, _key_word),
    (re.compile(r"sig(?:nature)?=(?P<val>[^&\s\"'#<>]+)"), True, _signed_query),
)
# The same patterns compiled case-insensitively, for text whose lower-casing changes its length.
_RULES_CI: dict[re.Pattern[str], re.Pattern[str]] = {
    p: re.compile(p.pattern, re.IGNORECASE) for p, ci, _ in _RULES if ci
}
# A literal every match of each rule contains (on the lower-cased text for the case-insensitive rules): a rule
# runs only on text holding one of its literals, so a text without any (most of them) costs a few `in` tests.
_NEEDLES: tuple[tuple[str, ...], ...] = (
    ("://",),
    ("gh", "github_pat_"),
    ("sk-",),
    ("AKIA", "ASIA", "ABIA", "ACCA"),
    ("xox", "xapp-"),
    ("hooks.slack.com/services/",),
    ("eyJ",),
    ("aws",),
    ("authorization",),
    ("bearer",),
    ("-password", "-passwd", "-token", "-secret", "-api", "-access-token", "-auth-token"),
    ("-u",),
    ("pass",),
    ("secret",),
    ("token",),
    ("credential",),
    ("key",),
    ("sig",),
)
# Any literal of any rule, lower-cased: one search that rules out every rule at once for most short texts.
_ANY_NEEDLE = re.compile("|".join(sorted({re.escape(n.lower()) for ns in _NEEDLES for n in ns}, key=len, reverse=True)))
# Recognises a whole value as a specific kind, so `GITHUB_TOKEN=ghp_...` says github_token.
_SPECIFIC = re.compile(
    r"(?P<github_token>g(?:h[pousr]|ithub_pat)_[A-Za-z0-9_]{20,})"
    r"|(?P<anthropic_key>sk-ant-[A-Za-z0-9_-]{16,})"
    r"|(?P<api_key>sk-[A-Za-z0-9_-]{20,})"
    r"|(?P<slack_token>x(?:ox[abposr]|app)-[A-Za-z0-9-]{10,})"
    r"|(?P<jwt>eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*)"
)


def _apply_rules(text: str) -> str:
    first = text.lower()
    if len(first) == len(text) and _ANY_NEEDLE.search(first) is None:
        return text
    lowered: str | None = first
    for (pattern, ci, handle), needles in zip(_RULES, _NEEDLES, strict=True):
        if ci:
            if lowered is None:
                lowered = text.lower()
            if len(lowered) != len(text):  # rare: matched case-insensitively on the text itself, no skipping
                changed = _sub_at(_RULES_CI[pattern], text, text, handle)
            elif any(n in lowered for n in needles):
                changed = _sub_at(pattern, lowered, text, handle)
            else:
                continue
        else:
            if not any(n in text for n in needles):
                continue
            changed = _sub_at(pattern, text, text, handle)
        if changed is not text:
            text, lowered = changed, None
    return text


def _sub_at(pattern: re.Pattern[str], lowered: str, text: str, handle: _Handler) -> str:
    """Like `pattern.sub` on `text`, but matching on `lowered` (`text` or its same-length lower-case form)."""
    out: list[str] = []
    pos = 0
    for m in pattern.finditer(lowered):
        out.append(text[pos : m.start()])
        out.append(handle(m, text))
        pos = m.end()
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


_PEM_BEGIN = re.compile(r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_PEM_END = re.compile(r"-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
# A CI line prefix: GitHub's "job<TAB>step<TAB>" (gh run view --log) and/or its timestamp.
_PEM_PREFIX = re.compile(r"(?:[^\t\r\n]*\t[^\t\r\n]*\t)?(?:\ufeff?\d{4}-\d\d-\d\dT[0-9:.]+Z ?)?")
# Inside a PEM block (after the prefix): base64, or a header such as "Proc-Type: 4,ENCRYPTED".
_PEM_BODY = re.compile(
    r"[ \t]*(?:[A-Za-z0-9+/=]*|(?:Proc-Type|DEK-Info|Comment|Version|Hash|Charset):[^\r\n]{0,200})[ \t]*"
)
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)?")

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_KEY_WORDS = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "secret",
        "token",
        "apikey",
        "authorization",
        "credential",
        "credentials",
        "cookie",
        "pat",
    }
)
_KEY_PAIRS = frozenset(
    {
        ("api", "key"),
        ("access", "key"),
        ("private", "key"),
        ("secret", "key"),
        ("auth", "key"),
        ("set", "cookie"),
        ("client", "secret"),
    }
)


def _b64_fragments(secret: bytes) -> Iterator[str]:
    """The base64 text that encodes `secret` wherever it sits in a larger encoded blob (3 alignments)."""
    for lead in range(3):
        encoded = base64.b64encode(b"\0" * lead + secret).decode()
        own = len(secret) - ((3 - lead) % 3)  # bytes of `secret` after the group shared with the lead
        start = 4 if lead else 0
        groups = own // 3
        fragment = encoded[start : start + 4 * groups]
        for variant in {fragment, fragment.replace("+", "-").replace("/", "_")}:
            if len(variant) >= _MIN_B64_FRAGMENT:
                yield variant


def secret_variants(secret: str) -> frozenset[str]:
    """The forms of `secret` that may appear in text: itself, percent-encoded, and base64 fragments."""
    if len(secret) < _MIN_SECRET_LEN:
        return frozenset()
    forms = {secret, quote(secret, safe="")}
    raw = secret.encode()
    forms.update(_b64_fragments(raw))
    forms.add(base64.b64encode(b"x-access-token:" + raw).decode())
    return frozenset(f for f in forms if f)


@lru_cache(maxsize=32)
def _variants_sorted(secrets: tuple[str, ...]) -> tuple[str, ...]:
    forms: set[str] = set()
    for secret in secrets:
        forms |= secret_variants(secret)
    return tuple(sorted(forms, key=len, reverse=True))


def _known(extra_secrets: Collection[str]) -> tuple[str, ...]:
    """The variants of `extra_secrets`, longest first (cached per tuple as given, the usual case)."""
    if not extra_secrets:
        return ()
    if isinstance(extra_secrets, tuple):
        return _known_tuple(extra_secrets)
    return _variants_sorted(tuple(sorted({s for s in extra_secrets if s})))


@lru_cache(maxsize=32)
def _known_tuple(extra_secrets: tuple[str, ...]) -> tuple[str, ...]:
    return _variants_sorted(tuple(sorted({s for s in extra_secrets if s})))


def _replace_known(text: str, variants: tuple[str, ...]) -> str:
    tag = _tag("known_secret")
    for form in variants:
        if form in text:
            text = text.replace(form, tag)
    return text


class LineRedactor:
    """Redacts one line at a time, in order, remembering whether it is inside a multi-line PEM block.

    Feed every line of a text (with or without its line break) in order; the result equals `redact` on
    the whole text. Use a fresh instance per text.
    """

    def __init__(self, *, extra_secrets: Collection[str] = ()) -> None:
        self._known = _known(extra_secrets)
        self.in_private_key = False

    def __call__(self, line: str) -> str:
        """The redacted `line`."""
        body, end = _split_eol(line)
        return self._pem(_replace_known(body, self._known)) + end

    def _pem(self, line: str) -> str:
        out: list[str] = []
        pos = 0
        if self.in_private_key:
            end = _PEM_END.search(line)
            if end is not None:
                prefix = _PEM_PREFIX.match(line)
                keep = prefix.end() if prefix is not None else 0
                out.append(line[:keep] + _tag("private_key"))
                pos = end.end()
                self.in_private_key = False
            else:
                prefix = _PEM_PREFIX.match(line)
                keep = prefix.end() if prefix is not None else 0
                if _PEM_BODY.fullmatch(line, keep) is None:
                    self.in_private_key = False  # not key material: the block was cut short
                    return self._pem(line)
                return line[:keep] + _tag("private_key") if line[keep:].strip() else line
        while True:
            begin = _PEM_BEGIN.search(line, pos)
            if begin is None:
                out.append(_apply_rules(line[pos:]))
                return "".join(out)
            out.append(_apply_rules(line[pos : begin.start()]))
            out.append(_tag("private_key"))
            end = _PEM_END.search(line, begin.end())
            if end is None:
                self.in_private_key = True
                return "".join(out)
            pos = end.end()


def _split_eol(line: str) -> tuple[str, str]:
    if line.endswith("\r\n"):
        return line[:-2], "\r\n"
    if line.endswith(("\n", "\r")):
        return line[:-1], line[-1]
    return line, ""


def _chunks(text: str) -> Iterator[str]:
    """`text` in pieces of about `_CHUNK_CHARS`, each ending at a line break (or the end)."""
    start, n = 0, len(text)
    while start < n:
        stop = start + _CHUNK_CHARS
        if stop >= n:
            yield text[start:]
            return
        cut = text.find("\n", stop)
        if cut == -1:
            cut_r = text.find("\r", stop)
            cut = n - 1 if cut_r == -1 else cut_r
        yield text[start : cut + 1]
        start = cut + 1


def redact(text: str, *, extra_secrets: Collection[str] = ()) -> str:
    """`text` with every recognised secret replaced by `[REDACTED:<kind>]`; line breaks are kept as they are."""
    if not text:
        return text
    known = _known(extra_secrets)
    if len(text) <= _CHUNK_CHARS and "PRIVATE KEY" not in text:
        return _apply_rules(_replace_known(text, known))
    out: list[str] = []
    liner = LineRedactor(extra_secrets=extra_secrets)
    for chunk in _chunks(text):
        pos = 0
        while pos < len(chunk):
            if not liner.in_private_key:
                # Whole stretches without a key go through the rules at once; only the lines from a
                # key's BEGIN line to its end are walked one by one.
                begin = _PEM_BEGIN.search(chunk, pos)
                start = len(chunk) if begin is None else _line_start(chunk, pos, begin.start())
                out.append(_apply_rules(_replace_known(chunk[pos:start], known)))
                pos = start
            for m in _LINE.finditer(chunk, pos):
                if not m.group(0):
                    pos = len(chunk)
                    break
                out.append(liner(m.group(0)))
                pos = m.end()
                if not liner.in_private_key:
                    break
    return "".join(out)


def _line_start(text: str, lo: int, pos: int) -> int:
    """Start of the line holding `pos`, not before `lo`."""
    return max(text.rfind("\n", lo, pos), text.rfind("\r", lo, pos), lo - 1) + 1


@lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """Whether a mapping key names a secret: `password`, `api_key`, `accessToken`, `X-Api-Key`, ...

    Counts such as `max_tokens` or `input_tokens` are not secrets.
    """
    words = [w for w in re.split(r"[^a-z0-9]+", _CAMEL.sub("_", key).lower()) if w]
    if not words:
        return False
    if words[-1] in _KEY_WORDS:
        return True
    return len(words) >= 2 and (words[-2], words[-1]) in _KEY_PAIRS


def redact_obj(obj: _T, *, extra_secrets: Collection[str] = (), clean: Container[str] = ()) -> _T:
    """A copy of a JSON-like value with every string redacted and the values of secret-named keys blanked.

    Dicts, lists and tuples are copied (keys are redacted too); other values are returned as they are.
    Structures nested deeper than 64 levels are replaced by `[REDACTED:too_deep]`. Strings in `clean` (a
    set: text this caller already redacted with the same secrets) are kept as they are, not redacted again.
    """
    secrets = tuple(sorted({s for s in extra_secrets if s}))

    def walk(value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return value if value in clean else redact(value, extra_secrets=secrets)
        if depth >= _MAX_DEPTH and isinstance(value, dict | list | tuple):
            return _tag("too_deep")
        if isinstance(value, dict):
            result: dict[Any, Any] = {}
            for k, v in value.items():
                new_key = walk(k, depth + 1) if isinstance(k, str) else k
                if isinstance(k, str) and isinstance(v, str | bytes) and v and is_secret_key(k):
                    result[new_key] = _tag("secret")
                else:
                    result[new_key] = walk(v, depth + 1)
            return result
        if isinstance(value, list):
            return [walk(v, depth + 1) for v in value]
        if isinstance(value, tuple):
            return tuple(walk(v, depth + 1) for v in value)
        return value

    return cast(_T, walk(obj, 0))

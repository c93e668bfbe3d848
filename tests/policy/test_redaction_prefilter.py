"""The literal prefilter of the redaction rules (a speed-up) changes no result: every rule still runs wherever
it could match."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from policy import redaction
from policy.redaction import redact

# Fragments that start, end or sit next to every rule's literal, in several cases.
_FRAGMENTS = [
    "https://",
    "user:pa55word@",
    "host",
    "ghp_",
    "GHS_",
    "github_pat_",
    "A" * 22,
    "sk-",
    "sk-ant-",
    "AKIA",
    "ASIA",
    "xoxb-",
    "xapp-",
    "hooks.slack.com/services/",
    "eyJ",
    "eyJhbGciOi",
    ".",
    "aws_secret_access_key",
    "AWS_Secret_Key",
    "Authorization",
    "authorization: ",
    "Bearer ",
    "BEARER\t",
    "--password ",
    "-Token ",
    "--api-key ",
    "-u ",
    "--user ",
    "alice:",
    "pass",
    "PASSWORD",
    "passphrase",
    "secret",
    "Secret",
    "token",
    "TOKEN",
    "credential",
    "credentials",
    "key",
    "api_key",
    "Api-Key",
    "sig",
    "signature=",
    "X-Amz-Signature=",
    "=",
    ": ",
    '"',
    "'",
    " ",
    "\t",
    "\n",
    "\r\n",
    "&",
    "?",
    "0123456789abcdef",
    "ABCDEFGHIJKLMNOP",
    "_",
    "-",
    "/",
    "+",
    "İ",
    "ſ",
    "K",
]


def _reference(text: str) -> str:
    """The rules without the prefilter, as they were: each rule on the whole (lower-cased) text."""
    for pattern, ci, handle in redaction._RULES:
        if ci:
            lowered = text.lower()
            if len(lowered) == len(text):
                text = redaction._sub_at(pattern, lowered, text, handle)
            else:
                text = redaction._sub_at(redaction._RULES_CI[pattern], text, text, handle)
        else:
            text = redaction._sub_at(pattern, text, text, handle)
    return text


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), min_size=1, max_size=24))
def test_the_prefilter_never_changes_what_is_redacted(parts: list[str]) -> None:
    text = "".join(parts)
    assert redaction._apply_rules(text) == _reference(text)


def test_every_rule_has_literals_that_each_match_contains() -> None:
    assert len(redaction._NEEDLES) == len(redaction._RULES)
    samples = [
        "https://u:p@h",
        "ghp_" + "a" * 24,
        "sk-" + "a1" * 12,
        "AKIA" + "A" * 16,
        "xoxb-" + "1" * 12,
        "hooks.slack.com/services/T/B/x",
        "eyJabcdef.eyJabcdef.sig",
        "aws_secret_access_key=" + "a" * 20,
        "Authorization: Bearer abc",
        "bearer " + "a" * 20,
        "--password hunter22",
        "-u alice:hunter22",
        "password=hunter22",
        "secret=hunter22",
        "token=hunter22",
        "credentials=hunter22",
        "api_key=hunter22",
        "?sig=abcdef",
    ]
    for (pattern, ci, _handle), needles, sample in zip(redaction._RULES, redaction._NEEDLES, samples, strict=True):
        probe = sample.lower() if ci else sample
        match = pattern.search(probe)
        assert match is not None, (pattern.pattern, sample)
        assert any(n in match.group(0) for n in needles), (pattern.pattern, needles)
        assert redaction._ANY_NEEDLE.search(probe.lower()) is not None


def test_text_without_any_literal_is_returned_as_it_is() -> None:
    text = "def paginate(items, size):\n    return [items[i : i + size] for i in range(0, len(items), size)]\n"
    assert re.search(redaction._ANY_NEEDLE, text.lower()) is None
    assert redact(text) is text

"""Every page of a job log holding a secret shape shows none of it (issue 12): log pages are cut from the
whole log's redaction, never redacted page by page."""

from __future__ import annotations

import pytest
from secret_shapes import assert_nothing_shown, secret_files

from mcp_server.log_excerpt import MIN_BUDGET_TOKENS, excerpt

_SHAPES = secret_files()


@pytest.mark.parametrize("name", sorted(_SHAPES))
def test_every_page_of_a_log_holding_a_secret_shows_none_of_it(name: str) -> None:
    text, pieces = _SHAPES[name]
    # As a CI log shows it: timestamped lines, the secret somewhere in the middle, an error at the end.
    lines = [
        "Run ./deploy.sh",
        *text.splitlines(),
        "Error: deploy failed",
        "##[error]Process completed with exit code 1.",
    ]
    log = "".join(f"2026-12-03T09:00:{i % 60:02d}.0000000Z {line}\n" for i, line in enumerate(lines))
    assert_nothing_shown(excerpt(log, budget_tokens=MIN_BUDGET_TOKENS).rendered, pieces, f"{name} excerpt")
    for start in range(1, len(lines) + 1):
        for budget in (MIN_BUDGET_TOKENS, 2000):
            page = excerpt(log, budget_tokens=budget, start_line=start)
            assert_nothing_shown(page.rendered, pieces, f"{name} page from line {start}")

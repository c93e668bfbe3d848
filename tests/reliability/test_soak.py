"""The soak (`bench/soak.py`) for about a minute: hundreds of projects flipping red and green under fault
injection; nothing duplicated, nothing lost, no secret leaked, memory flat. Two short runs with the product
sabotaged show the checks can fail."""

from __future__ import annotations

from typing import Any

import pytest

import bench.soak as soak
from reconciler.runner import reconcile as real_reconcile
from reconciler.summary import RunSummary


@pytest.mark.slow
def test_sixty_second_soak_duplicates_nothing_loses_nothing_leaks_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    result = soak.run(seconds=60, projects=200, seed=11, real=True, quiet=True)
    print(soak.render(result))
    assert result.counts_line.startswith(f"soak: passes={result.passes} faults=")
    assert result.projects == 200 and result.real_projects == len(soak.REAL_PROJECTS)
    assert result.passes >= 10 and result.failures >= 50 and result.attempts >= 50
    assert sum(result.faults.values()) > 0 and result.faults["malformed_body"] and result.faults["racing_pass"]
    assert result.log_lines > 0
    assert result.duplicates == 0, result.problems
    assert result.lost == 0, result.problems
    assert result.leaked_secrets == 0, result.problems
    assert result.traced_mb_last < result.traced_mb_first * 1.5 + 20, (result.traced_mb_first, result.traced_mb_last)


def test_a_soak_whose_passes_start_nothing_reports_lost_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    async def never_starts(ctx: Any, **kwargs: Any) -> RunSummary:
        return await real_reconcile(ctx, **{**kwargs, "dry_run": True})

    monkeypatch.setattr(soak, "reconcile", never_starts)
    result = soak.run(seconds=3, projects=30, seed=3, real=False, quiet=True)
    assert result.attempts == 0
    assert result.lost > 0 and result.duplicates == 0


def test_a_soak_with_log_redaction_turned_off_reports_leaked_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    import reconciler.api

    monkeypatch.setattr(reconciler.api, "redact", lambda text, **_: text)
    result = soak.run(seconds=3, projects=30, seed=3, real=False, quiet=True)
    assert result.leaked_secrets > 0

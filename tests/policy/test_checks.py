"""policy/checks.py: what a head's check runs and statuses say about merging it."""

from __future__ import annotations

from policy.checks import CheckState, ContextReport, checks_verdict


def check(name: str, status: str = "completed", conclusion: str | None = "success") -> ContextReport:
    return ContextReport(name, "check", status, conclusion, f"https://ci/{name}")


def status(context: str, state: str) -> ContextReport:
    return ContextReport(context, "status", state)


def test_nothing_reported_is_pending_not_green() -> None:
    assert checks_verdict([]).state is CheckState.PENDING
    assert checks_verdict([], ["test"]).pending == ("test",)


def test_every_check_and_status_counts_without_branch_protection() -> None:
    assert checks_verdict([check("test"), check("lint", conclusion="skipped")]).state is CheckState.PASSED
    pending = checks_verdict([check("test"), check("lint", "in_progress", None)])
    assert (pending.state, pending.pending) == (CheckState.PENDING, ("lint",))
    failing = checks_verdict([check("test"), status("deploy/preview", "error")])
    assert (failing.state, failing.failing) == (CheckState.FAILING, ("deploy/preview",))
    assert "failing on the head commit: deploy/preview" in failing.reason()


def test_only_required_contexts_count_under_branch_protection() -> None:
    reports = [check("test"), check("lint", conclusion="failure"), status("ci/external", "pending")]
    assert checks_verdict(reports, ["test"]).state is CheckState.PASSED
    missing = checks_verdict(reports, ["test", "e2e"])
    assert (missing.state, missing.pending) == (CheckState.PENDING, ("e2e",))
    assert missing.reason().startswith("required checks not finished")


def test_the_newest_report_of_a_name_decides() -> None:
    rerun = [check("test"), check("test", conclusion="failure")]  # newest first: the re-run passed
    assert checks_verdict(rerun).state is CheckState.PASSED
    failed = checks_verdict([check("test", conclusion="failure"), check("test")])
    assert failed.state is CheckState.FAILING and failed.failing_urls == ("https://ci/test",)

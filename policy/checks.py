"""What a pull request's checks say about merging it: pure rules over check runs and commit statuses.

A context passes when its newest check run (by name) completed as success, neutral or skipped, or its newest
commit status (by context) is success; it is pending while queued or in progress (or its status says pending),
failing when it completed otherwise, and missing when nothing reported it. Branch protection names the
contexts that must pass; where it names none, every check run and commit status on the head must pass and at
least one must exist (a head nothing has checked is not green, it is not checked yet).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["PASSING_CONCLUSIONS", "CheckState", "ChecksVerdict", "ContextReport", "checks_verdict"]

PASSING_CONCLUSIONS = frozenset({"success", "neutral", "skipped"})


class CheckState(StrEnum):
    """The checks of one commit, as the merge rule and the API show them."""

    PENDING = "pending"
    FAILING = "failing"
    PASSED = "passed"


@dataclass(frozen=True)
class ContextReport:
    """One check run (`kind` "check") or commit status (`kind` "status") on the head."""

    name: str
    kind: str
    status: str  # check runs: queued | in_progress | completed; statuses: their state
    conclusion: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class ChecksVerdict:
    """What the head's checks say: the overall state and which contexts hold it back."""

    state: CheckState
    failing: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    failing_urls: tuple[str, ...] = ()

    def reason(self) -> str:
        """One sentence for a refusal or the API: which checks fail or wait."""
        scope = "required check" if self.required else "check"
        if self.state is CheckState.FAILING:
            return f"{scope}s failing on the head commit: {', '.join(self.failing)}"
        if self.state is CheckState.PENDING:
            waiting = ", ".join(self.pending) if self.pending else "none reported yet"
            return f"{scope}s not finished on the head commit: {waiting}"
        return f"every {scope} passed on the head commit"


def _newest(reports: Iterable[ContextReport], kind: str) -> dict[str, ContextReport]:
    out: dict[str, ContextReport] = {}
    for report in reports:  # newest first, as the forge lists them: the first of each name wins
        if report.kind == kind and report.name not in out:
            out[report.name] = report
    return out


def _context_state(check: ContextReport | None, status: ContextReport | None) -> CheckState | None:
    if (check is not None and check.status == "completed" and check.conclusion in PASSING_CONCLUSIONS) or (
        status is not None and status.status == "success"
    ):
        return CheckState.PASSED
    if (check is not None and check.status == "completed") or (
        status is not None and status.status in ("error", "failure")
    ):
        return CheckState.FAILING
    if check is None and status is None:
        return None
    return CheckState.PENDING


def checks_verdict(reports: Sequence[ContextReport], required: Sequence[str] = ()) -> ChecksVerdict:
    """The verdict on a head commit from its check runs and statuses (newest first) and the required contexts."""
    checks, statuses = _newest(reports, "check"), _newest(reports, "status")
    names = list(dict.fromkeys(required)) if required else list(dict.fromkeys([*checks, *statuses]))
    failing: list[str] = []
    pending: list[str] = []
    urls: list[str] = []
    for name in names:
        state = _context_state(checks.get(name), statuses.get(name))
        if state is CheckState.FAILING:
            failing.append(name)
            url = next((r.url for r in (checks.get(name), statuses.get(name)) if r is not None and r.url), None)
            if url:
                urls.append(url)
        elif state is not CheckState.PASSED:  # pending, or a required context nothing reported yet
            pending.append(name)
    if failing:
        state = CheckState.FAILING
    elif pending or not names:
        state = CheckState.PENDING
    else:
        state = CheckState.PASSED
    return ChecksVerdict(state, tuple(failing), tuple(pending), tuple(required), tuple(urls))

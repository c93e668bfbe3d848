"""The escalation report: Markdown for the human who picks up a run that stopped without a fix."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.types import AttemptTask, StopReason
from mcp_server.log_facts import header_facts
from policy.redaction import redact

__all__ = ["AttemptChange", "WriteAttempt", "render_escalation", "render_report"]

_WHY: dict[StopReason, str] = {
    StopReason.NO_FIX: "The model ended without opening a pull request.",
    StopReason.MAX_TURNS: "The run used all its model turns.",
    StopReason.TOKEN_BUDGET: "The run used its whole token budget.",
    StopReason.WALL_TIMEOUT: "The run took longer than its wall-clock limit.",
    StopReason.REPEATED_CALL: "The model kept making the same tool call.",
    StopReason.FLIP_FLOP: "The model started undoing its own changes.",
    StopReason.ERROR_STREAK: "Too many tool calls in a row failed or were refused.",
    StopReason.MODEL_ERROR: "The model API kept failing.",
    StopReason.MAX_TOKENS_TRUNCATED: "The model's output was cut off at the token limit again.",
    StopReason.SUCCEEDED_PR: "A pull request was opened.",
}


@dataclass(frozen=True)
class WriteAttempt:
    """One write_repo_file call: where, and what came of it."""

    path: str
    result: str
    refused: bool


@dataclass(frozen=True)
class AttemptChange:
    """What one attempt on the failure did: its end, the files it wrote (with a short size note), its PR."""

    attempt_id: str
    status: str
    stop_reason: str | None
    files: tuple[str, ...]
    pr_url: str | None


def _cell(text: str, limit: int = 200) -> str:
    one_line = " ".join(text.split())
    if len(one_line) > limit:
        one_line = one_line[: limit - 1] + "…"
    return one_line.replace("\\", "\\\\").replace("|", "\\|").replace("`", "'") or " "


def _excerpt(log: str, *, lines: int = 40, chars: int = 4_000) -> str:
    tail = "\n".join(log.splitlines()[-lines:])
    if len(tail) > chars:
        tail = "…" + tail[-chars:]
    return tail.replace("```", "'''")


def render_report(
    *,
    task: AttemptTask,
    stop_reason: StopReason,
    stop_detail: str,
    first_log: str | None,
    writes: Sequence[WriteAttempt],
    hypothesis: str | None,
    turns: int,
    tokens: int,
    cost_usd: float,
    secrets: Iterable[str] = (),
) -> str:
    """The report, redacted. Everything quoted from the run is shown as data (code blocks, table cells)."""
    lines = [
        f"# greenloop could not fix `{_cell(task.project)}` / `{_cell(task.job)}`",
        "",
        "## The failure",
        "",
        f"- Project: `{_cell(task.project)}`",
        f"- Job: `{_cell(task.job)}`",
        f"- Failing run: {task.failing_run_id}",
        f"- Commit: `{_cell(task.head_sha)}`",
        "",
    ]
    facts = header_facts(first_log) if first_log else []
    if facts:
        lines += ["What the log names, root cause first:", "", *[f"- {_cell(row, 600)}" for row in facts], ""]
    if first_log:
        lines += [
            "Log excerpt (last lines of the first log the agent read):",
            "",
            "```text",
            _excerpt(first_log),
            "```",
            "",
        ]
    else:
        lines += ["The agent never read a job log.", ""]
    lines += ["## What was tried", ""]
    if writes:
        lines += ["| # | Path | Result |", "|---|------|--------|"]
        for i, w in enumerate(writes, 1):
            result = ("refused: " if w.refused else "") + w.result
            lines.append(f"| {i} | `{_cell(w.path, 120)}` | {_cell(result)} |")
        lines.append("")
    else:
        lines += ["No file changes were attempted.", ""]
    lines += ["## Hypothesised root cause", ""]
    if hypothesis and hypothesis.strip():
        lines += ["The model's last words (unverified):", ""]
        lines += ["> " + ln if ln else ">" for ln in hypothesis.strip().splitlines()[:60]]
        lines.append("")
    else:
        lines += ["The model did not say.", ""]
    lines += [
        "## Why it stopped",
        "",
        f"- Stop reason: `{stop_reason.value}`: {_WHY.get(stop_reason, '')}",
        f"- Detail: {_cell(stop_detail, 400)}",
        f"- Turns: {turns}; tokens: {tokens}; cost: ${cost_usd:.4f}",
        "",
    ]
    return redact("\n".join(lines), extra_secrets=tuple(secrets))


def render_escalation(
    *,
    project: str,
    job: str,
    run_id: str,
    run_url: str | None,
    head_sha: str,
    why: str,
    log: str | None,
    attempts: Sequence[AttemptChange],
    hypothesis: str | None,
    links: Sequence[tuple[str, str]] = (),
    secrets: Iterable[str] = (),
) -> str:
    """The report a human gets when greenloop stops on a failure, redacted; quoted text is shown as data.

    Names the failing job and run (with its link), the failing tests or first errors the log names, what each
    attempt changed, the hypothesis, why it stopped, and links.
    """
    run = f"[{_cell(run_id)}]({run_url})" if run_url else f"`{_cell(run_id)}`"
    lines = [
        f"# greenloop needs a human: `{_cell(project)}` / `{_cell(job)}`",
        "",
        f"**Why it stopped:** {_cell(why, 600)}",
        "",
        "## The failure",
        "",
        f"- Job: `{_cell(job)}`, failing run {run}, commit `{_cell(head_sha[:12])}`",
    ]
    facts = header_facts(log) if log else []
    lines += [f"- {_cell(row, 600)}" for row in facts] or ["- The log names no failing test or error location."]
    lines.append("")
    if log:
        lines += ["First errors (log excerpt):", "", "```text", _excerpt(log, lines=25, chars=2_500), "```", ""]
    lines += ["## What each attempt changed", ""]
    if attempts:
        lines += ["| Attempt | Ended | Files changed | Pull request |", "|---|---|---|---|"]
        for a in attempts:
            ended = a.status + (f" ({a.stop_reason})" if a.stop_reason else "")
            files = ", ".join(f"`{_cell(f, 120)}`" for f in a.files) or "none"
            pr = f"[PR]({a.pr_url})" if a.pr_url else "none"
            lines.append(f"| `{_cell(a.attempt_id)}` | {_cell(ended)} | {files} | {pr} |")
        lines.append("")
    else:
        lines += ["No attempt ran on this failure.", ""]
    lines += ["## Hypothesis", ""]
    if hypothesis and hypothesis.strip():
        lines += ["The agent's (unverified):", ""]
        lines += ["> " + ln if ln else ">" for ln in hypothesis.strip().splitlines()[:30]]
        lines.append("")
    else:
        lines += ["None recorded.", ""]
    if links:
        lines += ["## Links", "", *[f"- [{_cell(label)}]({url})" for label, url in links], ""]
    return redact("\n".join(lines), extra_secrets=tuple(secrets))

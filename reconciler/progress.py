"""What `greenloop reconcile` shows on a terminal while its agents work: the pass, each attempt's state
changes as the store records them, and a final table of the attempts.

Shown only when the output is a terminal (`PassProgress.wanted`): piped or `--json` output stays the pass
summary alone, byte for byte. State changes are read back from the store's transition rows (the one
record of them), polled every `poll_seconds`, so a change another replica makes shows too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TextIO

from reconciler.cli_attempts import format_table, printable
from reconciler.context import ReconcilerContext
from reconciler.errors import ReconcilerError
from reconciler.store import attempts as attempt_store
from reconciler.summary import RunSummary

__all__ = ["PassProgress"]


class PassProgress:
    """Progress lines for one `greenloop reconcile` on `out` (a terminal)."""

    def __init__(self, ctx: ReconcilerContext, out: TextIO, *, poll_seconds: float = 1.0) -> None:
        self._ctx = ctx
        self.out = out
        self._poll_seconds = poll_seconds
        self._seen: dict[str, int] = {}  # attempt id -> transitions already shown
        self._t0 = time.monotonic()

    @staticmethod
    def wanted(out: TextIO, *, as_json: bool) -> bool:
        """Whether to show progress: only on a terminal, never under `--json`."""
        isatty = getattr(out, "isatty", None)
        return not as_json and callable(isatty) and bool(isatty())

    def _say(self, text: str) -> None:
        print(f"[{time.monotonic() - self._t0:6.1f}s] {printable(text)}", file=self.out, flush=True)

    def pass_started(self, projects: int, *, dry_run: bool) -> None:
        """The pass is about to run."""
        self._say(f"{'dry run: ' if dry_run else ''}reconcile pass over {projects} project(s) ...")

    def pass_done(self, summary: RunSummary) -> None:
        """The pass is over; say which agents now run (and that they are waited for)."""
        started = summary.attempts_started
        if summary.dry_run or not started:
            return
        names = ", ".join(f"{a.attempt_id} ({a.project}/{a.job})" for a in started)
        self._say(f"waiting for {len(started)} agent(s): {names}; Ctrl-C cancels them")

    async def show_changes(self, attempt_ids: Sequence[str]) -> None:
        """Print each new state change of `attempt_ids` (from the store's transition rows) once."""
        for attempt_id in attempt_ids:
            try:
                rows = await attempt_store.attempt_transitions(self._ctx.sessions, attempt_id)
            except ReconcilerError:
                continue  # a busy store: the next poll shows it
            shown = self._seen.get(attempt_id, 0)
            for t in rows[shown:]:
                why = f" ({t.reason})" if t.reason else ""
                self._say(f"attempt {attempt_id}: {t.from_status or 'new'} -> {t.to_status}{why}")
            self._seen[attempt_id] = max(shown, len(rows))

    async def follow(self, attempt_ids: Sequence[str]) -> None:
        """Show state changes until cancelled (the caller cancels it once the agents are done)."""
        while True:
            await self.show_changes(attempt_ids)
            await asyncio.sleep(self._poll_seconds)

    async def final_table(self, attempt_ids: Sequence[str]) -> None:
        """The last state changes, then one row per attempt as the store has it now."""
        await self.show_changes(attempt_ids)
        rows = []
        for attempt_id in attempt_ids:
            a = await attempt_store.get_attempt(self._ctx.sessions, attempt_id)
            if a is None:
                continue
            tokens = a.input_tokens + a.output_tokens + a.cache_tokens
            rows.append((a.id, a.project, a.job, a.status, a.turns, tokens, f"${a.cost_usd:.4f}", a.pr_url))
        if rows:
            headers = ("ATTEMPT", "PROJECT", "JOB", "STATUS", "TURNS", "TOKENS", "COST", "PULL REQUEST")
            print(printable(format_table(headers, rows)), file=self.out, flush=True)

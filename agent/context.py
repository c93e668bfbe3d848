"""What the conversation keeps of tool results: nothing sent twice, large old results elided.

Two rules keep an attempt's context small without losing anything the model cannot get back:

- **Given once.** A read tool called again with the same arguments whose answer is the same text as one
  still in the conversation is answered with a reference to that earlier result instead of a second copy
  (`repeat_note`). The failure excerpt of the log is given once this way; other lines are paged on demand
  (`get_job_logs` with `start_line`).
- **Large old results elided.** A tool result of at least `ELIDE_MIN_CHARS` characters that is more than
  `KEEP_RECENT_TURNS` turns old is replaced by a note saying what it was and how to get it again. The
  attempt's failure excerpt is pinned and never elided.

Eliding changes an early part of the conversation, so every later token must be written to the prompt cache
again (1.25x the input price instead of 0.1x for a read). Elision therefore happens in batches: only when the
elidable results add up to `ELIDE_BATCH_CHARS` characters are they all elided at once, so the cached prefix
stays stable between batches and short attempts are never rewritten (`bench/context_cost.py`, figure 5c, measures
this against eliding every turn).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agent.guards import canonical_call
from mcp_server.models import READ_TOOLS, ToolName

__all__ = ["ELIDE_BATCH_CHARS", "ELIDE_MIN_CHARS", "KEEP_RECENT_TURNS", "ContextKeeper", "ShownResult"]

ELIDE_MIN_CHARS = 2_000
KEEP_RECENT_TURNS = 3
ELIDE_BATCH_CHARS = 48_000
READ_ONLY_TOOLS = frozenset(READ_TOOLS)


@dataclass
class ShownResult:
    """A tool result as it stands in the conversation; `block` is the very dict sent to the model."""

    turn: int
    name: str
    call: str  # canonical_call(name, arguments)
    arguments: Any
    text: str
    block: dict[str, Any]
    pinned: bool = False
    elided: bool = False


def _arguments(arguments: Any, limit: int = 200) -> str:
    text = json.dumps(arguments, sort_keys=True, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ContextKeeper:
    """Tracks the tool results in one attempt's conversation and decides what is resent or elided."""

    def __init__(
        self,
        *,
        min_chars: int = ELIDE_MIN_CHARS,
        keep_recent_turns: int = KEEP_RECENT_TURNS,
        batch_chars: int = ELIDE_BATCH_CHARS,
    ) -> None:
        self.min_chars = min_chars
        self.keep_recent_turns = keep_recent_turns
        self.batch_chars = batch_chars
        self.results: list[ShownResult] = []

    def repeat_note(self, name: str, arguments: Any, text: str) -> str | None:
        """The reference to send instead of `text` when the same read already answered the same, else None."""
        if name not in READ_ONLY_TOOLS or len(text) < 200:
            return None
        call = canonical_call(name, arguments)
        for shown in reversed(self.results):
            if shown.call == call and not shown.elided and shown.text == text:
                more = (
                    " To see other lines of the log, call get_job_logs with start_line."
                    if name == ToolName.GET_JOB_LOGS
                    else ""
                )
                return (
                    f"Unchanged: this is the same result as your {name} call in turn {shown.turn}, which is "
                    f"still above in this conversation; it is not repeated here.{more}"
                )
        return None

    def add(self, turn: int, name: str, arguments: Any, text: str, block: dict[str, Any], *, pinned: bool) -> None:
        """Register a tool result just added to the conversation (only successful, full results)."""
        self.results.append(
            ShownResult(
                turn=turn,
                name=name,
                call=canonical_call(name, arguments),
                arguments=arguments,
                text=text,
                block=block,
                pinned=pinned,
            )
        )

    def elidable(self, turn: int) -> list[ShownResult]:
        """Results that may be elided before the request of `turn`."""
        return [
            r
            for r in self.results
            if not r.pinned
            and not r.elided
            and len(r.text) >= self.min_chars
            and turn - r.turn > self.keep_recent_turns
        ]

    def compact(self, turn: int) -> tuple[int, int]:
        """Elide every elidable result when together they reach the batch size; returns (results, characters)."""
        candidates = self.elidable(turn)
        chars = sum(len(r.text) for r in candidates)
        if not candidates or chars < self.batch_chars:
            return 0, 0
        for r in candidates:
            how = (
                "call get_job_logs again (use start_line to page)"
                if r.name == ToolName.GET_JOB_LOGS
                else f"call {r.name} again"
            )
            note = (
                f"[Elided to keep the conversation short: the result of {r.name} {_arguments(r.arguments)} "
                f"from turn {r.turn} ({len(r.text)} characters). If you need it, {how}.]"
            )
            r.block["content"] = [{"type": "text", "text": note}]
            r.elided = True
        return len(candidates), chars

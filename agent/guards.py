"""Guards: the limits that end a run, each with its own `StopReason`.

The loop asks the guards before and after every model call and tool call; a guard that trips raises
`GuardStop`, which the loop turns into the run's stop reason. Limits come from `policy.config.Budgets`.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anyio

from agent.types import StopReason
from policy.config import Budgets

__all__ = ["GuardStop", "Guards", "canonical_call"]


class GuardStop(Exception):
    """A guard ended the run. Caught by the loop only."""

    def __init__(self, reason: StopReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def canonical_call(name: str, arguments: Any) -> str:
    """The identity of a tool call: its name and its arguments as canonical JSON."""
    return name + "\x00" + json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _digest(content: str) -> str:
    return hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class _FileHistory:
    current: str
    earlier: set[str] = field(default_factory=set)


class Guards:
    """Per-run guard state."""

    def __init__(self, budgets: Budgets, *, max_truncations: int = 1) -> None:
        self.budgets = budgets
        self.deadline = anyio.current_time() + budgets.wall_seconds
        self._calls: Counter[str] = Counter()
        self._error_streak = 0
        self._files: dict[str, _FileHistory] = {}
        self._truncations = 0
        self._max_truncations = max_truncations

    # -- model calls ---------------------------------------------------------------------------------

    def before_model_call(self, turns_done: int) -> None:
        """Stop when the turn budget is spent or the wall clock ran out."""
        if turns_done >= self.budgets.max_turns:
            raise GuardStop(StopReason.MAX_TURNS, f"used all {self.budgets.max_turns} model turns")
        self.remaining_seconds()

    def after_response(self, tokens_so_far: int) -> None:
        """Stop when input + output tokens reached the budget."""
        if tokens_so_far >= self.budgets.max_tokens:
            raise GuardStop(
                StopReason.TOKEN_BUDGET, f"used {tokens_so_far} tokens of a budget of {self.budgets.max_tokens}"
            )

    def allow_truncated_continue(self) -> None:
        """A response was cut off at max_tokens: allow one continuation per run, then stop."""
        self._truncations += 1
        if self._truncations > self._max_truncations:
            raise GuardStop(
                StopReason.MAX_TOKENS_TRUNCATED,
                f"the model's output was cut off at max_tokens {self._truncations} times",
            )

    # -- wall clock ----------------------------------------------------------------------------------

    def remaining_seconds(self) -> float:
        """Seconds left before the wall timeout; stops the run when none are."""
        left = self.deadline - anyio.current_time()
        if left <= 0:
            raise GuardStop(StopReason.WALL_TIMEOUT, f"ran longer than {self.budgets.wall_seconds:g}s")
        return left

    def wall_timeout(self, during: str) -> GuardStop:
        """The stop to raise when a `fail_after(remaining_seconds())` scope expired."""
        return GuardStop(StopReason.WALL_TIMEOUT, f"ran longer than {self.budgets.wall_seconds:g}s ({during})")

    # -- tool calls ----------------------------------------------------------------------------------

    def before_tool_call(self, name: str, arguments: Any) -> None:
        """Count this exact call; stop when it is the `max_repeat_calls`-th identical one."""
        key = canonical_call(name, arguments)
        self._calls[key] += 1
        if self._calls[key] >= self.budgets.max_repeat_calls:
            raise GuardStop(
                StopReason.REPEATED_CALL,
                f"{name} called {self._calls[key]} times with the same arguments",
            )

    def before_write(self, path: str, content: str) -> None:
        """Stop when a write would restore content the file already had earlier in this run."""
        history = self._files.get(path)
        if history is None:
            return
        digest = _digest(content)
        if digest != history.current and digest in history.earlier:
            raise GuardStop(StopReason.FLIP_FLOP, f"write_repo_file would restore earlier content of {path!r}")

    def seen_content(self, path: str, content: str) -> None:
        """Record the content a file has now (read from, or written to, the workspace)."""
        digest = _digest(content)
        history = self._files.get(path)
        if history is None:
            self._files[path] = _FileHistory(current=digest)
        elif digest != history.current:
            history.earlier.add(history.current)
            history.current = digest

    def after_tool_result(self, *, is_error: bool) -> None:
        """Count consecutive tool errors; stop at `max_error_streak`."""
        self._error_streak = self._error_streak + 1 if is_error else 0
        if self._error_streak >= self.budgets.max_error_streak:
            raise GuardStop(StopReason.ERROR_STREAK, f"{self._error_streak} tool errors in a row")

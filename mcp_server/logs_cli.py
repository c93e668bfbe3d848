"""`greenloop logs excerpt FILE`: print the failure excerpt of a CI log file (a thin wrapper)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mcp_server.log_excerpt import excerpt

__all__ = ["logs_excerpt_command"]


def logs_excerpt_command(path: str, budget_tokens: int, as_json: bool) -> int:
    """Print the excerpt of the log at `path` (or, with `as_json`, its kept line numbers as JSON).

    Returns the exit code: 0, or 2 when the file cannot be read or the budget is invalid (one line on
    stderr says why).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        print(f"greenloop: Cannot read log file: {reason}: {path!r}.", file=sys.stderr)
        return 2
    try:
        result = excerpt(data, budget_tokens=budget_tokens)
    except ValueError as exc:
        print(f"greenloop: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(
            json.dumps(
                {
                    "kept_line_numbers": result.kept_line_numbers,
                    "total_lines": result.total_lines,
                    "estimated_tokens": result.estimated_tokens,
                    "truncated": result.truncated,
                }
            )
        )
    else:
        sys.stdout.write(result.rendered)
    return 0

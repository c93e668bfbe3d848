"""Benchmark: how many labelled error lines `mcp_server.log_excerpt.excerpt` keeps within a token budget.

    python -m bench.log_excerpt [--data DIR] [--budgets 1000,2000,4000]

DIR holds one directory per case with `fail.log` and `groundtruth` (first line: the log format; then
`E a-b` / `E n` error lines and `C ...` context lines, 1-based). The default is `../shared/ci-logs/dev`
beside the repository. For each case and budget it measures recall of the `E` lines (a line counts when
its number is in `kept_line_numbers`) for the excerpt and for a naive baseline, the last lines that fit the
same budget (`log_excerpt.tail`), and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import bench_line
from mcp_server.log_excerpt import excerpt, tail

__all__ = ["DEFAULT_BUDGETS", "default_data_dir", "load_groundtruth", "main", "render_table", "run"]

DEFAULT_BUDGETS: tuple[int, ...] = (1000, 2000, 4000)


def default_data_dir() -> Path:
    """`../shared/ci-logs/dev` relative to the repository root."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "ci-logs" / "dev"


def load_groundtruth(path: Path) -> tuple[str, list[tuple[int, int]]]:
    """The log format and the labelled error ranges (inclusive) of a `groundtruth` file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise ValueError(f"Invalid groundtruth: empty file: {str(path)!r}.")
    ranges: list[tuple[int, int]] = []
    for line in lines[1:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] != "E":
            continue
        first, _, last = parts[1].partition("-")
        ranges.append((int(first), int(last or first)))
    return lines[0].strip(), ranges


def _cases(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.iterdir() if (p / "fail.log").is_file() and (p / "groundtruth").is_file())


def run(data_dir: str | Path, *, budgets: Sequence[int] = DEFAULT_BUDGETS) -> list[dict[str, Any]]:
    """One row per case and budget: recall of the excerpt and of the last-lines baseline.

    Raises:
        FileNotFoundError: `data_dir` does not exist or holds no case.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Benchmark data not found: no such directory: {str(root)!r}.")
    cases = _cases(root)
    if not cases:
        raise FileNotFoundError(f"Benchmark data not found: no case with fail.log and groundtruth in {str(root)!r}.")
    rows: list[dict[str, Any]] = []
    for case in cases:
        data = (case / "fail.log").read_bytes()
        fmt, ranges = load_groundtruth(case / "groundtruth")
        for budget in budgets:
            ours = excerpt(data, budget_tokens=budget)
            base = tail(data, budget_tokens=budget)
            labelled = {n for a, b in ranges for n in range(a, b + 1) if n <= ours.total_lines}
            row: dict[str, Any] = {
                "case": case.name,
                "format": fmt,
                "budget": budget,
                "labelled_lines": len(labelled),
                "labelled_ranges": len(ranges),
            }
            for name, result in (("ours", ours), ("baseline", base)):
                kept = set(result.kept_line_numbers)
                row[f"{name}_recall"] = len(labelled & kept) / len(labelled) if labelled else 1.0
                hit = sum(1 for a, b in ranges if any(n in kept for n in range(a, b + 1)))
                row[f"{name}_ranges_hit"] = hit / len(ranges) if ranges else 1.0
                row[f"{name}_tokens"] = result.estimated_tokens
            rows.append(row)
    return rows


def render_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown summary per budget: mean and minimum recall, cases at 100%, for excerpt and baseline."""
    out = [
        "| budget (tokens) | cases | mean recall | baseline | min recall | baseline min | cases at 100% "
        "| baseline at 100% | ranges hit | baseline ranges hit | max tokens used |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for budget in sorted({r["budget"] for r in rows}):
        rs = [r for r in rows if r["budget"] == budget]
        ours = [r["ours_recall"] for r in rs]
        base = [r["baseline_recall"] for r in rs]
        out.append(
            f"| {budget} | {len(rs)} | {statistics.mean(ours):.3f} | {statistics.mean(base):.3f} "
            f"| {min(ours):.3f} | {min(base):.3f} | {sum(1 for x in ours if x >= 1.0)} "
            f"| {sum(1 for x in base if x >= 1.0)} | {statistics.mean(r['ours_ranges_hit'] for r in rs):.3f} "
            f"| {statistics.mean(r['baseline_ranges_hit'] for r in rs):.3f} | {max(r['ours_tokens'] for r in rs)} |"
        )
    figures: dict[str, object] = {"cases": len({r["case"] for r in rows})}
    for budget in sorted({r["budget"] for r in rows}):
        figures[f"recall_{budget}"] = statistics.mean(r["ours_recall"] for r in rows if r["budget"] == budget)
    return "\n".join([*out, "", bench_line("log_excerpt", figures)])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; exit code 2 when the data is missing."""
    parser = argparse.ArgumentParser(prog="python -m bench.log_excerpt", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="directory of labelled cases")
    parser.add_argument("--budgets", default=",".join(map(str, DEFAULT_BUDGETS)), help="comma-separated token budgets")
    parser.add_argument("--cases", action="store_true", help="also print one line per case")
    args = parser.parse_args(argv)
    try:
        rows = run(args.data, budgets=[int(b) for b in args.budgets.split(",") if b.strip()])
    except FileNotFoundError as exc:
        print(f"bench.log_excerpt: {exc} Pass --data DIR (see /work/shared/ci-logs/README.md).", file=sys.stderr)
        return 2
    print(render_table(rows))
    if args.cases:
        print()
        print("| case | budget | labelled | recall | baseline |")
        print("|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['case']} | {r['budget']} | {r['labelled_lines']} | {r['ours_recall']:.2f} "
                  f"| {r['baseline_recall']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

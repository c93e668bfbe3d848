"""Benchmark: how many labelled error lines `mcp_server.log_excerpt.excerpt` keeps within a token budget.

    python -m bench.log_excerpt [--data DIR] [--budgets 1000,2000,4000]

DIR holds one directory per case with `fail.log` and `groundtruth` (first line: the log format; then
`E a-b` / `E n` error lines and `C ...` context lines, 1-based). The default is `../shared/ci-logs/dev`
beside the repository. For each case and budget it measures recall of the `E` lines (a line counts when
its number is in `kept_line_numbers`) for the excerpt and for a naive baseline, the last lines that fit the
same budget (`log_excerpt.tail`); whether the first error block (the first line of the earliest `E` range)
is kept; and the best possible recall, the most labelled lines any excerpt of that budget can show
(`log_excerpt.excerpt_of_lines`, shortest lines first). "Labels fit" when the best possible is 100%.
It prints a Markdown table ending with a `BENCH log_excerpt ...` line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mcp_server.log_excerpt import excerpt, excerpt_of_lines, tail

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


def _line_lengths(data: bytes) -> dict[int, int]:
    return {i: len(line) for i, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1)}


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
            first = min((a for a, _ in ranges if a <= ours.total_lines), default=None)
            lengths = _line_lengths(data)
            best = excerpt_of_lines(data, sorted(labelled, key=lambda n: (lengths.get(n, 0), n)), budget_tokens=budget)
            row: dict[str, Any] = {
                "case": case.name,
                "format": fmt,
                "budget": budget,
                "labelled_lines": len(labelled),
                "labelled_ranges": len(ranges),
            }
            for name, result in (("ours", ours), ("baseline", base), ("best", best)):
                kept = set(result.kept_line_numbers)
                row[f"{name}_recall"] = len(labelled & kept) / len(labelled) if labelled else 1.0
                row[f"{name}_first_kept"] = first is None or first in kept
                hit = sum(1 for a, b in ranges if any(n in kept for n in range(a, b + 1)))
                row[f"{name}_ranges_hit"] = hit / len(ranges) if ranges else 1.0
                row[f"{name}_tokens"] = result.estimated_tokens
            rows.append(row)
    return rows


def render_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown summary per budget (excerpt, last-lines baseline, best possible), ending with a BENCH line."""
    out = [
        "| budget (tokens) | cases | mean recall | baseline | best possible | first error block kept | baseline "
        "| labels fit | recall where labels fit | min recall | cases at 100% | baseline at 100% "
        "| ranges hit | baseline ranges hit | max tokens used |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    bench = ["BENCH log_excerpt"]
    for budget in sorted({r["budget"] for r in rows}):
        rs = [r for r in rows if r["budget"] == budget]
        ours = [r["ours_recall"] for r in rs]
        base = [r["baseline_recall"] for r in rs]
        fit = [r for r in rs if r["best_recall"] >= 1.0]
        fit_recall = statistics.mean(r["ours_recall"] for r in fit) if fit else 1.0
        first = {name: sum(r[f"{name}_first_kept"] for r in rs) / len(rs) for name in ("ours", "baseline")}
        out.append(
            f"| {budget} | {len(rs)} | {statistics.mean(ours):.3f} | {statistics.mean(base):.3f} "
            f"| {statistics.mean(r['best_recall'] for r in rs):.3f} | {first['ours']:.0%} | {first['baseline']:.0%} "
            f"| {len(fit)} | {fit_recall:.3f} | {min(ours):.3f} "
            f"| {sum(1 for x in ours if x >= 1.0)} | {sum(1 for x in base if x >= 1.0)} "
            f"| {statistics.mean(r['ours_ranges_hit'] for r in rs):.3f} "
            f"| {statistics.mean(r['baseline_ranges_hit'] for r in rs):.3f} | {max(r['ours_tokens'] for r in rs)} |"
        )
        k = f"{budget // 1000}k" if budget % 1000 == 0 else str(budget)
        bench.append(
            f"recall_{k}={statistics.mean(ours):.3f} best_{k}={statistics.mean(r['best_recall'] for r in rs):.3f} "
            f"first_kept_{k}={first['ours']:.3f} recall_fit_{k}={fit_recall:.3f} fit_{k}={len(fit)}"
        )
    out.append("")
    by_budget = {r["budget"] for r in rows}
    if 1000 in by_budget:
        share = statistics.mean(r["ours_first_kept"] for r in rows if r["budget"] == 1000)
        out.append(
            f"- Goal: the first error block kept in at least 98% of logs at 1,000 tokens: "
            f"**{'met' if share >= 0.98 else 'not met'}** ({share:.0%})."
        )
    if 2000 in by_budget:
        fit = [r["ours_recall"] for r in rows if r["budget"] == 2000 and r["best_recall"] >= 1.0]
        recall = statistics.mean(fit) if fit else 1.0
        out.append(
            f"- Goal: recall at 2,000 tokens of at least 0.9 on the logs whose labels fit: "
            f"**{'met' if recall >= 0.9 else 'not met'}** ({recall:.3f} over {len(fit)} logs)."
        )
    out += ["", " ".join(bench)]
    return "\n".join(out)


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
        print("| case | budget | labelled | recall | baseline | best possible | first error block kept |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for r in rows:
            print(
                f"| {r['case']} | {r['budget']} | {r['labelled_lines']} | {r['ours_recall']:.2f} "
                f"| {r['baseline_recall']:.2f} | {r['best_recall']:.2f} "
                f"| {'yes' if r['ours_first_kept'] else 'NO'} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

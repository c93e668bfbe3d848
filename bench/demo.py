"""Figures 4-6: agent harness overhead by phase, context cost per fixture, and the whole demo's wall time.

Figure 5c (`bench/context_cost.py`) replays one long synthetic attempt through the loop under four context
policies, to show what prompt caching and eliding old tool results each do to tokens and cost.

Runs `greenloop demo` (scripted model, so model time is zero) several times in-process and reads what it
measured: wall time, the fixture jobs' time on the forge, every MCP tool call's duration from the audit
table, and the tokens each attempt sent (the scripted back-end estimates 4 characters a token; the real
model's `usage` replaces the estimate when ANTHROPIC_API_KEY is set).

    python -m bench.demo [--runs N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from fixtures.demo import DemoResult, run_demo

__all__ = ["main", "render_table", "run"]

# The tools of one full attempt, in the order an attempt uses them (the clone happens in the first call).
PHASES = (
    "get_job_logs",
    "read_repo_file",
    "list_repo_files",
    "create_branch",
    "write_repo_file",
    "commit_and_push",
    "create_pull_request",
    "merge_pull_request",
)


def _median_spread(values: Sequence[float]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:.2f} (±{(max(values) - min(values)) / 2:.2f})" if len(values) > 1 else f"{med:.2f}"


def run(*, runs: int = 3) -> dict[str, Any]:
    """Run the demo `runs` times (after one warm-up) and collect the figures."""
    from bench import context_cost

    results: list[DemoResult] = []
    for i in range(runs + 1):
        result = asyncio.run(run_demo(out=io.StringIO(), progress=False, deadline_seconds=120))
        if i > 0:  # the first run warms caches (imports, git, the file system)
            results.append(result)
    phase_ms: dict[str, list[float]] = defaultdict(list)
    attempt_ms: list[float] = []
    for r in results:
        per_project: dict[str, float] = defaultdict(float)
        for project, tool, _outcome, ms in r.tool_calls:
            per_project[project] += ms
            if project == "data-job":
                phase_ms[tool].append(ms)
        if "data-job" in per_project:
            attempt_ms.append(per_project["data-job"])
    return {
        "runs": len(results),
        "all_ok": all(r.ok for r in results),
        "demo_seconds": [r.seconds for r in results],
        "forge_job_seconds": [r.forge_job_seconds for r in results],
        "passes": [r.passes for r in results],
        "phase_ms": dict(phase_ms),
        "attempt_tool_ms": attempt_ms,
        "tokens": {
            p.name: (p.input_tokens, p.cache_write_tokens, p.cache_read_tokens, p.output_tokens, p.cost_usd)
            for p in results[-1].projects
        },
        "model": results[-1].model,
        "long": asyncio.run(context_cost.long_attempts()),
    }


def render_table(figures: dict[str, Any]) -> str:
    """Markdown tables for figures 4, 5, 5c and 6, then the section's BENCH line."""
    from bench.context_cost import BUG_LIB_BEFORE_USD, POLICIES, price_note, uncached_cost

    lines = [
        f"Demo runs: {figures['runs']} (after a warm-up); every run reached every expected state: "
        f"{figures['all_ok']}; model: {figures['model']}.",
        "",
        "**Figure 4: agent harness overhead** (data-job attempt, scripted model: model time is zero; "
        "milliseconds of tool time, median and half-spread over runs)",
        "",
        "| phase (tool) | ms |",
        "|---|---|",
    ]
    for tool in PHASES:
        values = figures["phase_ms"].get(tool, [])
        if values:
            lines.append(f"| {tool} | {_median_spread(values)} |")
    lines.append(f"| **whole attempt (all tool calls)** | {_median_spread(figures['attempt_tool_ms'])} |")
    lines += [
        "",
        "**Figure 5: context cost per fixture attempt** (tokens the agent sent and received; the scripted model "
        "counts 4 characters a token and a simulated prompt cache splits the input like the API does: cache reads "
        "at 0.1x the input price, cache writes at 1.25x, the rest at 1x; cost with the default price table, "
        f"{price_note()})",
        "",
        "| project | input tokens | cached input tokens (read) | uncached input tokens (written / plain) "
        "| output tokens | cost with caching (USD) | cost without caching (USD) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (plain, written, read, tout, cost) in sorted(figures["tokens"].items()):
        total = plain + written + read
        lines.append(
            f"| {name} | {total} | {read} | {written} / {plain} | {tout} | {cost:.4f} "
            f"| {uncached_cost(total, tout):.4f} |"
        )
    bench_line = "BENCH tokens bug_lib=missing"
    bug_lib = figures["tokens"].get("bug-lib")
    if bug_lib is not None:
        plain, written, read, tout, cost = bug_lib
        lines += [
            "",
            f"bug-lib: {cost / BUG_LIB_BEFORE_USD:.0%} of the ${BUG_LIB_BEFORE_USD} its scripted attempt cost before "
            f"prompt caching (goal: at most 40%): **{'met' if cost <= 0.4 * BUG_LIB_BEFORE_USD else 'not met'}**.",
        ]
        bench_line = (
            f"BENCH tokens bug_lib_input_tokens={plain + written + read} bug_lib_cached_input_tokens={read} "
            f"bug_lib_uncached_input_tokens={plain + written} bug_lib_output_tokens={tout} bug_lib_cost_usd={cost:.4f} "
            f"bug_lib_cost_uncached_usd={uncached_cost(plain + written + read, tout):.4f}"
        )
    lines += [
        "",
        f"**Figure 5c: one long attempt under four context policies** ({figures['long'][0]['turns']} model turns of "
        "the scripted model over canned tool results of realistic sizes (`bench/context_cost.py::LONG_SESSION`), "
        "the real server's tool list; same estimates and prices as figure 5)",
        "",
        "| policy | input tokens | cache read | cache written | plain | largest request | last request | cost (USD) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in figures["long"]:
        lines.append(
            f"| {row['policy']} | {row['input']} | {row['read']} | {row['written']} | {row['plain']} | {row['peak']} "
            f"| {row['last']} | {row['cost']:.4f} |"
        )
    by_policy = {row["policy"]: row for row in figures["long"]}
    keep, every, batched = (by_policy[label] for label, _, _ in POLICIES[1:])
    lines += [
        "",
        f"Batched elision costs {batched['cost'] / keep['cost']:.2f}x keeping everything (with caching) and cuts the "
        f"last request from {keep['last']} to {batched['last']} tokens; eliding every turn breaks the cached prefix "
        f"each time and costs {every['cost'] / keep['cost']:.2f}x.",
    ]
    bench_line += (
        f" long_cost_keep_usd={keep['cost']:.4f} long_cost_batched_usd={batched['cost']:.4f} "
        f"long_cost_every_turn_usd={every['cost']:.4f} long_last_request_tokens_keep={keep['last']} "
        f"long_last_request_tokens_batched={batched['last']}"
    )
    greenloop = [d - f for d, f in zip(figures["demo_seconds"], figures["forge_job_seconds"], strict=True)]
    lines += [
        "",
        "**Figure 6: the whole demo** (seconds, median and half-spread)",
        "",
        "| measure | seconds |",
        "|---|---|",
        f"| `greenloop demo` wall time | {_median_spread(figures['demo_seconds'])} |",
        f"| fixture jobs on the forge before the first pass | {_median_spread(figures['forge_job_seconds'])} |",
        f"| everything else (forge start, passes, agents, merges, verification runs) | {_median_spread(greenloop)} |",
        f"| reconcile passes per demo | {_median_spread([float(p) for p in figures['passes']])} |",
        "",
        bench_line,
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the figures as Markdown."""
    parser = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one measured run")
    args = parser.parse_args(argv)
    print(render_table(run(runs=1 if args.quick else args.runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

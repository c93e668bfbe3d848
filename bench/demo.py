"""Figures 4-6: agent harness overhead by phase, context cost per fixture, and the whole demo's wall time.

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

from bench import bench_line
from reconciler.demo import DemoResult, run_demo

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
        "tokens": {p.name: (p.input_tokens, p.output_tokens, p.cost_usd) for p in results[-1].projects},
        "model": results[-1].model,
    }


def render_table(figures: dict[str, Any]) -> str:
    """Markdown tables for figures 4, 5 and 6."""
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
        "**Figure 5: context cost per fixture attempt** (tokens the agent sent and received; scripted model "
        "counts 4 characters a token)",
        "",
        "| project | input tokens | output tokens | cost (USD, default price table) |",
        "|---|---|---|---|",
    ]
    for name, (tin, tout, cost) in sorted(figures["tokens"].items()):
        lines.append(f"| {name} | {tin} | {tout} | {cost:.4f} |")
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
        bench_line(
            "demo",
            {
                "all_ok": figures["all_ok"],
                "attempt_tool_ms": statistics.median(figures["attempt_tool_ms"]),
                "demo_s": statistics.median(figures["demo_seconds"]),
                "passes": statistics.median(figures["passes"]),
            },
        ),
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

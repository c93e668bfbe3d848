"""Figure 5c: one long attempt under four context policies (prompt caching, eliding old tool results).

`long_attempts()` replays `LONG_SESSION` (29 model turns of log pages, file reads and a fix) with the
scripted model through `agent.loop.run_attempt`, against the real MCP server's tool list and canned tool
results of realistic sizes, once per policy in `POLICIES`, and returns tokens, cache reads and writes,
the largest and the last request, and the cost. `bench/demo.py` prints it beside figure 5.
"""

from __future__ import annotations

import json
from typing import Any

from mcp_types import CallToolResult, ListToolsResult, TextContent

from agent.accounting import price_for
from agent.context import ContextKeeper
from agent.loop import run_attempt
from agent.scripted import ScriptedBackend
from agent.types import AttemptTask
from policy.config import AgentSettings, Budgets

__all__ = ["BUG_LIB_BEFORE_USD", "LONG_SESSION", "POLICIES", "long_attempts", "price_note", "uncached_cost"]

# bug-lib's scripted attempt before prompt caching (docs/benchmarks.md at commit 2359ff1): the reference for
# the goal of "at most 40% of today's cost for the same script".
BUG_LIB_BEFORE_USD = 0.148


def uncached_cost(input_tokens: int, output_tokens: int) -> float:
    """The cost had every input token been paid at the full input price (no prompt caching)."""
    _, (p_in, p_out, _, _) = price_for(AgentSettings().model, AgentSettings().prices)
    return (input_tokens * p_in + output_tokens * p_out) / 1_000_000


def price_note() -> str:
    _, (p_in, p_out, p_write, p_read) = price_for(AgentSettings().model, AgentSettings().prices)
    return f"USD per million tokens: input {p_in}, output {p_out}, cache write {p_write}, cache read {p_read}"


# One long attempt: (tool, arguments, characters of its result). Files are read, the log paged, some files
# read again after others, then a fix; 29 model turns in all.
LONG_SESSION: tuple[tuple[str, dict[str, Any], int], ...] = (
    ("get_job_logs", {"run_id": 1}, 7_000),
    ("list_repo_files", {}, 1_500),
    *(
        ("read_repo_file", {"path": f"src/module_{i}.py"}, size)
        for i, size in enumerate((6_000, 9_000, 4_000, 12_000, 3_000, 8_000, 5_000, 10_000))
    ),
    ("get_job_logs", {"run_id": 1, "start_line": 1}, 7_000),
    ("get_job_logs", {"run_id": 1, "start_line": 180}, 7_000),
    *(("read_repo_file", {"path": f"tests/test_{i}.py"}, size) for i, size in enumerate((7_000, 6_000, 11_000, 4_000))),
    ("list_job_runs", {}, 1_200),
    ("read_repo_file", {"path": "src/module_1.py"}, 9_000),
    ("get_project_info", {}, 600),
    *(("read_repo_file", {"path": f"src/extra_{i}.py"}, size) for i, size in enumerate((5_000, 9_000, 6_000))),
    ("create_branch", {}, 150),
    ("write_repo_file", {"path": "src/module_3.py", "content": "x = 1\n" * 300}, 150),
    ("read_repo_file", {"path": "src/module_3.py"}, 1_800),
    ("write_repo_file", {"path": "tests/test_2.py", "content": "y = 2\n" * 200}, 150),
    ("commit_and_push", {"message": "fix the thing"}, 150),
    ("create_pull_request", {"title": "Fix", "body": "Root cause: the thing."}, 300),
)
# (label, prompt caching, context keeper): eliding "every turn" is a batch of one character.
POLICIES: tuple[tuple[str, bool, dict[str, int]], ...] = (
    ("no caching, keep every result", False, {"min_chars": 10**9}),
    ("caching, keep every result", True, {"min_chars": 10**9}),
    ("caching, elide old results every turn", True, {"batch_chars": 1}),
    ("caching, elide old results in batches (default)", True, {}),
)


class _CannedSession:
    """The real MCP server's tool list; every tool call answered with text of the size `LONG_SESSION` gives."""

    def __init__(self, tools: ListToolsResult) -> None:
        self._tools = tools
        self._sizes = {json.dumps([t, a], sort_keys=True): n for t, a, n in LONG_SESSION}

    async def list_tools(self, *, cursor: str | None = None) -> ListToolsResult:
        return self._tools

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> CallToolResult:
        size = self._sizes.get(json.dumps([name, arguments or {}], sort_keys=True), 200)
        line = f"{name}: line of a canned result for {json.dumps(arguments, sort_keys=True)}"
        text = "\n".join(f"{n:5d} {line}" for n in range(size // (len(line) + 7) + 1))[:size]
        return CallToolResult(content=[TextContent(type="text", text=text)])


async def _server_tools() -> ListToolsResult:
    from mcp import Client

    from mcp_server.server import build_server
    from mcp_server.session import Mode, SessionGrant

    def no_binding(_grant: SessionGrant) -> Any:
        raise RuntimeError("the canned session calls no tool on the server")

    grant = SessionGrant(project="bench", mode=Mode.AGENT, attempt_id="bench0001", job="test", client="bench")
    async with Client(build_server(no_binding, mode=Mode.AGENT, grant=grant)) as client:
        return await client.list_tools()


async def long_attempts() -> list[dict[str, Any]]:
    tools = await _server_tools()
    script = {"steps": [{"tool": t, "input": a} for t, a, _ in LONG_SESSION], "final_message": "Opened a PR."}
    task = AttemptTask(project="bench", job="test", failing_run_id=1, head_sha="0" * 40)
    rows: list[dict[str, Any]] = []
    for label, caching, keeper in POLICIES:
        settings = AgentSettings(prompt_caching=caching)
        outcome = await run_attempt(
            ScriptedBackend(script),
            _CannedSession(tools),
            task,
            Budgets(max_turns=100, max_tokens=10_000_000),
            settings=settings,
            context=ContextKeeper(**keeper),
        )
        if not outcome.succeeded:
            raise RuntimeError(f"the long attempt stopped early ({label}): {outcome.stop_detail}")
        u = outcome.usage
        rows.append(
            {
                "policy": label,
                "turns": outcome.turns,
                "input": u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens,
                "read": u.cache_read_input_tokens,
                "written": u.cache_creation_input_tokens,
                "plain": u.input_tokens,
                "cost": outcome.cost_usd,
                "peak": max(
                    c.input_tokens + c.cache_creation_input_tokens + c.cache_read_input_tokens for c in outcome.calls
                ),
                "last": sum(
                    (
                        outcome.calls[-1].input_tokens,
                        outcome.calls[-1].cache_creation_input_tokens,
                        outcome.calls[-1].cache_read_input_tokens,
                    )
                ),
            }
        )
    return rows

"""The `greenloop-mcp` entry point: `mcp_server.cli` with the store's audit sink for `--audit-db`.

The MCP server sits below the reconciler and never touches SQL; this wrapper is where the two meet, so the
sidecar can still write its audit trail into the reconciler's `mcp_tool_call` table (`--audit-db`) and serve the
logs of runs reported from outside Actions from its store (`--runs-db`, default the `--audit-db` URL).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mcp_server.cli import main as mcp_main
from reconciler.errors import ReconcilerError

if TYPE_CHECKING:
    from reconciler.store.audit import StoreAuditSink
    from reconciler.store.runs import DatabaseReportedRuns

__all__ = ["main"]


def _database_sink(url: str) -> StoreAuditSink:
    from reconciler.store.audit import StoreAuditSink

    return StoreAuditSink(url)


def _reported_runs(url: str) -> DatabaseReportedRuns:
    from reconciler.store.runs import DatabaseReportedRuns

    return DatabaseReportedRuns(url)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `greenloop-mcp`; returns the process exit code (2 for an unusable `--audit-db`/`--runs-db` URL)."""
    try:
        return mcp_main(argv, database_sink=_database_sink, reported_runs=_reported_runs)
    except ReconcilerError as exc:  # the audit database's URL or store: one line, like `greenloop`
        print("greenloop-mcp: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The `greenloop-mcp` entry point: `mcp_server.cli` with the store's audit sink for `--audit-db`.

The MCP server sits below the reconciler and never touches SQL; this wrapper is where the two meet, so the
sidecar can still write its audit trail into the reconciler's `mcp_tool_call` table.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mcp_server.cli import main as mcp_main
from reconciler.errors import ReconcilerError

if TYPE_CHECKING:
    from reconciler.store.audit import StoreAuditSink

__all__ = ["main"]


def _database_sink(url: str) -> StoreAuditSink:
    from reconciler.store.audit import StoreAuditSink

    return StoreAuditSink(url)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `greenloop-mcp`; returns the process exit code (2 for an unusable `--audit-db` URL)."""
    try:
        return mcp_main(argv, database_sink=_database_sink)
    except ReconcilerError as exc:  # the audit database's URL or store: one line, like `greenloop`
        print("greenloop-mcp: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

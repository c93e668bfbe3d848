"""The operators' web pages at `/ui`: projects, attempts, one attempt, spend (read-only, server-rendered).

`ui_routes(ctx, token=...)` gives the routes `reconciler.api.build_api` adds next to the API.
"""

from __future__ import annotations

from reconciler.ui.routes import ui_routes

__all__ = ["ui_routes"]

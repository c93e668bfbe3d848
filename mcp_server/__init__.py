"""greenloop's MCP server: the ten least-privilege tools and the only holder of forge credentials.

Entry points: `mcp_server.server.build_server` (the MCPServer), `mcp_server.session` (what a session is
bound to), `mcp_server.auth` (HTTP bearer tokens), `mcp_server.audit` (the tool-call trail) and the
`greenloop-mcp` command (`mcp_server.cli`). Nothing is re-exported here, so importing a light module doesn't
load the MCP SDK. Structured logs and configuration loading live below, in `infra`.
"""

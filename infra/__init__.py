"""greenloop's ground floor of shared infrastructure: structured JSON logs (`infra.jsonlog`) and loading the
configuration from disk and the environment (`infra.settings`).

It sits just above `policy` (it uses its config parser and redaction) and below every package that does
I/O: `policy <- infra <- mcp_server <- agent <- reconciler` (tests/test_layering.py). It holds no domain
logic, opens no network connection and imports no third-party I/O library.
"""

"""The `greenloop` command line: one sub-command per verb, each a thin wrapper over a library call.

Sub-command modules are imported lazily so `greenloop --help` stays fast and a broken optional piece
can't stop the others.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from policy.errors import ConfigError

__all__ = ["build_parser", "main"]


def _config_check(args: argparse.Namespace) -> int:
    from mcp_server.settings import load_config

    config = load_config(args.config)
    print(f"configuration OK: {len(config.projects)} project(s)")
    for p in config.projects:
        jobs = ",".join(p.jobs) or "all jobs"
        print(f"  {p.name:<20} {p.repo:<30} {p.autonomy.value:<10} {jobs}")
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    from reconciler.db_cli import db_upgrade

    return db_upgrade(args.url)


def _logs_excerpt(args: argparse.Namespace) -> int:
    from mcp_server.logs_cli import logs_excerpt_command

    return logs_excerpt_command(args.file, args.budget_tokens, args.json)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `greenloop`."""
    parser = argparse.ArgumentParser(prog="greenloop", description="Keep scheduled jobs and CI green.")
    parser.add_argument(
        "--config", default=None, help="path of greenloop.toml (default: $GREENLOOP_CONFIG or ./greenloop.toml)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="configuration commands")
    psub = p.add_subparsers(dest="config_command", required=True)
    psub.add_parser("check", help="validate greenloop.toml and list its projects").set_defaults(func=_config_check)

    p = sub.add_parser("db", help="database commands")
    psub = p.add_subparsers(dest="db_command", required=True)
    up = psub.add_parser("upgrade", help="apply migrations (default: SQLite file ./greenloop.db)")
    up.add_argument("--url", default=None, help="SQLAlchemy URL, e.g. postgresql+asyncpg://user@host/db")
    up.set_defaults(func=_db_upgrade)

    p = sub.add_parser("logs", help="log tools")
    psub = p.add_subparsers(dest="logs_command", required=True)
    ex = psub.add_parser("excerpt", help="print the failure excerpt of a CI log file")
    ex.add_argument("file")
    ex.add_argument("--budget-tokens", type=int, default=2000)
    ex.add_argument("--json", action="store_true", help="print the kept line numbers as JSON")
    ex.set_defaults(func=_logs_excerpt)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `greenloop`; returns the process exit code."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args))
    except ConfigError as exc:
        print(f"greenloop: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

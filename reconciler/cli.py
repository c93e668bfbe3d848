"""The `greenloop` command line: one sub-command per verb, each a thin wrapper over a library call.

Sub-command modules are imported lazily so `greenloop --help` stays fast and a broken optional piece
can't stop the others.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from policy.errors import ConfigError

__all__ = ["build_parser", "main"]


def _config_check(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from infra.settings import CONFIG_ENV, load_config

    config = load_config(args.config)
    if not args.config and not os.environ.get(CONFIG_ENV) and not Path("greenloop.toml").exists():
        print(
            f"no configuration file found: tried --config (not given), ${CONFIG_ENV} (unset), "
            f"{Path('greenloop.toml').resolve()} (no such file); the built-in defaults apply"
        )
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


DEMO_ENTRY_POINT = "demo"
"""The `greenloop.commands` entry point of the demo (registered by the `fixtures` package the wheel ships)."""


DEV_ENTRY_POINT = "dev"
"""The `greenloop.commands` entry point of `greenloop run --dev` (the fixture forge and the scripted model)."""


def _entry_point(name: str, what: str) -> Callable[..., int]:
    """The `greenloop.commands` entry point `name`.

    The demo and the development mode drive the local forge and the fixture projects, which are not product
    code: they are found through their entry points instead of imported, so the product never depends on
    `fixtures`.
    """
    from importlib.metadata import entry_points

    found = entry_points(group="greenloop.commands", name=name)
    if not found:
        raise ConfigError(f"{what}: not installed (the greenloop.commands entry point {name!r} is missing)")
    command: Callable[..., int] = next(iter(found)).load()
    return command


def _demo(args: argparse.Namespace) -> int:
    demo_command = _entry_point(DEMO_ENTRY_POINT, "demo")
    return demo_command(as_json=args.json, deadline_seconds=args.deadline, keep_dir=args.keep)


def _reconcile(args: argparse.Namespace) -> int:
    from reconciler.service import reconcile_command

    repos = [r for r in (args.repos or "").split(",") if r] or None
    return reconcile_command(args.config, repos=repos, dry_run=args.dry_run, as_json=args.json)


def _run(args: argparse.Namespace) -> int:
    if args.dev:
        return _entry_point(DEV_ENTRY_POINT, "run --dev")(config_path=args.config)
    from reconciler.service import run_command

    return run_command(args.config)


def _report(args: argparse.Namespace) -> int:
    from reconciler.report_cli import report_command

    return report_command(args)


def _agent_run(args: argparse.Namespace) -> int:
    import asyncio

    from infra.settings import load_config
    from reconciler.cli_attempts import active_attempt_refusal
    from reconciler.manual_run import manual_agent_run

    config = load_config(args.config)
    refusal = asyncio.run(active_attempt_refusal(config, args.project))
    if refusal is not None:
        print(f"greenloop: {refusal}", file=sys.stderr)
        return 2
    return asyncio.run(manual_agent_run(config, args.project, args.job, args.model, run_id=args.run_id))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `greenloop`."""
    parser = argparse.ArgumentParser(prog="greenloop", description="Keep scheduled jobs and CI green.")
    parser.add_argument("--config", default=None, help=_CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the whole loop on the local forge and the fixture projects")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON on stdout")
    p.add_argument(
        "--deadline", type=_positive_seconds, default=120.0, help="seconds to wait for every project to settle"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (forge, store, workspaces)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("reconcile", help="run one reconcile pass and print its summary")
    p.add_argument("--repos", default=None, help="comma-separated project names or owner/name (default: all)")
    p.add_argument("--dry-run", action="store_true", help="report what would start; start nothing")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_reconcile)

    p = sub.add_parser("run", help="run the reconciler: scheduled passes plus the HTTP API")
    p.add_argument(
        "--dev",
        action="store_true",
        help="development mode: loopback only, the local fixture forge, the scripted model, no API token",
    )
    p.set_defaults(func=_run)

    from reconciler.report_cli import add_report_parser

    add_report_parser(sub).set_defaults(func=_report)

    p = sub.add_parser("agent", help="agent commands")
    psub = p.add_subparsers(dest="agent_command", required=True)
    ar = psub.add_parser("run", help="run one remediation attempt by hand and print its outcome")
    ar.add_argument("--project", required=True)
    ar.add_argument("--job", required=True)
    ar.add_argument("--model", default=None, help="scripted:FILE | replay:FILE | record:FILE | anthropic[:MODEL]")
    ar.add_argument("--run-id", default=None, help="the failing run's id (default: the latest failed run)")
    ar.set_defaults(func=_agent_run)

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

    from reconciler.cli_attempts import register

    register(sub)
    _config_everywhere(parser)
    return parser


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


_CONFIG_HELP = "path of greenloop.toml (default: $GREENLOOP_CONFIG, else ./greenloop.toml)"


def _config_everywhere(parser: argparse.ArgumentParser) -> None:
    """Let every sub-command take `--config` too (`greenloop config check --config FILE`, as the docs write it).

    Its default there is "not given", so it never overrides a `--config` given before the sub-command.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                if not any("--config" in a.option_strings for a in child._actions):
                    child.add_argument("--config", default=argparse.SUPPRESS, help=_CONFIG_HELP)
                _config_everywhere(child)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `greenloop`; returns the process exit code."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    from infra.jsonlog import configure_json_logging

    # Warnings and errors as redacted JSON lines on stderr, HTTP libraries quiet (`greenloop run` then logs
    # from INFO up, the same way).
    configure_json_logging(logging.WARNING)
    try:
        return int(func(args))
    except ConfigError as exc:
        print(f"greenloop: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

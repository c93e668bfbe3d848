"""The README's two commands stay true: CI runs the test command verbatim, the demo command's program exists."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    head = text.split("\n## ", 1)[0]  # the two commands sit above the first section
    return re.findall(r"```bash\n(.+?)\n```", head, flags=re.S)


def test_readme_has_exactly_two_commands_at_the_top() -> None:
    commands = _commands()
    assert len(commands) == 2, commands
    assert all("\n" not in c for c in commands), "each command is one line a newcomer can paste"


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    _demo, tests = _commands()
    assert "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert tests in ci.splitlines(), "the test command in .ci/run must be the README's, character for character"


def test_demo_command_runs_the_greenloop_demo_entry_point() -> None:
    demo, _tests = _commands()
    assert demo.endswith("greenloop demo")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts["greenloop"] == "reconciler.cli:main"
    out = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "demo", "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert "--json" in out.stdout


def test_both_commands_install_from_this_checkout() -> None:
    demo, tests = _commands()
    for command in (demo, tests):
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install ")
        assert " -e " in command


def test_the_readme_command_runs_the_postgresql_tests_when_the_local_server_answers() -> None:
    # Without GREENLOOP_TEST_POSTGRES_URL in the environment (as a newcomer pastes the README's command), the
    # PostgreSQL-backed tests still run when the local server answers, as they do under .ci/run.
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location("_tests_root_conftest", ROOT / "tests" / "conftest.py")
    assert spec is not None and spec.loader is not None
    root_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(root_conftest)
    if not root_conftest.local_postgres_answers():
        import pytest

        pytest.skip("no PostgreSQL answers on 127.0.0.1:5432 (then .ci/run skips those tests too)")
    env = {k: v for k, v in os.environ.items() if k != root_conftest.POSTGRES_ENV}
    one = (
        "tests/reconciler/test_store_attempts.py::"
        "test_start_attempt_inserts_a_pending_attempt_with_a_creation_transition"
    )
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", one],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:]
    assert "2 passed" in out.stdout and "skipped" not in out.stdout, out.stdout[-3000:]  # sqlite and postgresql

"""`greenloop --config FILE ...` and `greenloop ... --config FILE` both work; every sub-command says so."""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from reconciler.cli import build_parser, main

GOOD = '[[project]]\nname = "billing"\nrepo = "acme/billing"\n'


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "custom.toml"
    path.write_text(GOOD, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GREENLOOP_CONFIG", raising=False)


@pytest.mark.parametrize("order", ["before", "after"])
def test_config_check_takes_config_before_or_after_the_sub_command(config_file: Path, order: str) -> None:
    argv = ("--config", str(config_file), "config", "check")
    if order == "after":
        argv = ("config", "check", "--config", str(config_file))
    code, out, err = run(*argv)
    assert (code, err) == (0, "")
    assert out.startswith("configuration OK: 1 project(s)") and "billing" in out


def test_a_config_after_the_sub_command_wins_over_one_before(config_file: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text(GOOD.replace("billing", "payroll"), encoding="utf-8")
    code, out, _ = run("--config", str(config_file), "config", "check", "--config", str(other))
    assert code == 0 and "payroll" in out and "billing" not in out


def test_a_missing_explicit_file_is_an_error_naming_it(tmp_path: Path) -> None:
    code, _, err = run("config", "check", "--config", str(tmp_path / "nope.toml"))
    assert code == 2 and "nope.toml: configuration file not found" in err


def test_with_no_file_config_check_says_which_paths_were_tried(tmp_path: Path) -> None:
    code, out, _ = run("config", "check")
    assert code == 0
    assert "no configuration file found: tried --config (not given), $GREENLOOP_CONFIG (unset)," in out
    assert str(tmp_path / "greenloop.toml") in out
    assert "configuration OK: 0 project(s)" in out


def _leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaf_parsers(child, (*path, name))


def test_every_sub_command_help_mentions_config() -> None:
    leaves = list(_leaf_parsers(build_parser()))
    assert ("config", "check") in leaves and ("attempts", "list") in leaves and ("run",) in leaves
    for leaf in leaves:
        out = io.StringIO()
        with redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
            main([*leaf, "--help"])
        assert exit_info.value.code == 0
        assert "--config" in out.getvalue(), leaf

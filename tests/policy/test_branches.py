"""Fix-branch names are valid git refs of one recognisable shape."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from policy.branches import MAX_BRANCH_LENGTH, attempt_id_of, fix_branch_name, is_fix_branch

_GIT = shutil.which("git")


def _git_accepts(branch: str) -> bool:
    if _GIT is None:
        pytest.skip("git is not installed")
    result = subprocess.run(
        [_GIT, "check-ref-format", "--branch", branch], capture_output=True, text=True, timeout=10, check=False
    )
    return result.returncode == 0


JOBS = [
    pytest.param("build", id="plain"),
    pytest.param("Build & Test (ubuntu-latest, 3.11)", id="matrix-name"),
    pytest.param("..", id="dotdot"),
    pytest.param("a..b", id="inner-dotdot"),
    pytest.param("@{upstream}", id="at-brace"),
    pytest.param("@", id="at"),
    pytest.param("deploy.lock", id="lock-suffix"),
    pytest.param("trailing.", id="trailing-dot"),
    pytest.param(".hidden", id="leading-dot"),
    pytest.param("-leading-dash", id="leading-dash"),
    pytest.param("a/b//c/", id="slashes"),
    pytest.param("~^:?*[\\", id="forbidden-punctuation"),
    pytest.param("tab\there new\nline\x00nul\x7f", id="control-chars"),
    pytest.param(" ", id="space"),
    pytest.param("", id="empty"),
    pytest.param("日本語", id="non-latin"),
    pytest.param("Ünïcödé Jöb", id="accents"),
    pytest.param("x" * 300, id="very-long"),
    pytest.param("a-" * 80, id="long-with-hyphens"),
    pytest.param("HEAD", id="head"),
]


@pytest.mark.parametrize("job", JOBS)
@pytest.mark.parametrize("attempt_id", ["a1b2c3", "a1b2c3d4e5f6", "z" * 32])
def test_fix_branch_name_is_a_valid_git_branch(job: str, attempt_id: str) -> None:
    name = fix_branch_name(job, attempt_id)
    assert name.startswith("greenloop/fix/")
    assert name.endswith("-" + attempt_id)
    assert len(name) <= MAX_BRANCH_LENGTH
    assert name == name.lower()
    assert is_fix_branch(name)
    assert attempt_id_of(name) == attempt_id
    assert _git_accepts(name), name


def test_fix_branch_name_keeps_a_readable_slug() -> None:
    assert fix_branch_name("Build & Test", "a1b2c3d4e5f6") == "greenloop/fix/build-test-a1b2c3d4e5f6"
    assert fix_branch_name("Ünïcödé", "abcdef") == "greenloop/fix/unicode-abcdef"
    assert fix_branch_name("日本語", "abcdef") == "greenloop/fix/job-abcdef"


def test_fix_branch_name_is_deterministic_and_distinct_per_attempt() -> None:
    assert fix_branch_name("ci", "abcdef1") == fix_branch_name("ci", "abcdef1")
    assert fix_branch_name("ci", "abcdef1") != fix_branch_name("ci", "abcdef2")


@pytest.mark.parametrize(
    "attempt_id",
    [
        pytest.param("", id="empty"),
        pytest.param("abc", id="too-short"),
        pytest.param("a" * 33, id="too-long"),
        pytest.param("ABCDEF12", id="uppercase"),
        pytest.param("abc-def", id="hyphen"),
        pytest.param("abc def12", id="space"),
        pytest.param("../../x1", id="traversal"),
        pytest.param("abcdef\n", id="newline"),
        pytest.param("abcdéf", id="non-ascii"),
    ],
)
def test_fix_branch_name_rejects_bad_attempt_ids(attempt_id: str) -> None:
    with pytest.raises(ValueError, match="Invalid attempt id"):
        fix_branch_name("ci", attempt_id)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("main", id="main"),
        pytest.param("greenloop/fix/", id="prefix-only"),
        pytest.param("greenloop/fix/abcdef", id="no-slug"),
        pytest.param("greenloop/fix/ci-ABCDEF", id="uppercase-id"),
        pytest.param("greenloop/fix/ci-abc", id="short-id"),
        pytest.param("greenloop/fix/../main-abcdef", id="traversal"),
        pytest.param("greenloop/fix/ci-abcdef/extra", id="extra-component"),
        pytest.param("refs/heads/greenloop/fix/ci-abcdef", id="full-ref"),
        pytest.param("greenloop/fix/ci--abcdef", id="double-hyphen"),
        pytest.param("greenloop/fix/-ci-abcdef", id="leading-hyphen"),
        pytest.param("Greenloop/fix/ci-abcdef", id="prefix-case"),
        pytest.param("greenloop/fix/ci-abcdef.lock", id="lock"),
        pytest.param("greenloop/fix/ci-abcdef\n", id="trailing-newline"),
        pytest.param("greenloop/fix/" + "x" * 80 + "-abcdef", id="over-100"),
    ],
)
def test_is_fix_branch_rejects_other_names(name: str) -> None:
    assert not is_fix_branch(name)
    assert attempt_id_of(name) is None

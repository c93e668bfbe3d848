"""The path wall: hostile paths against a real repository with hostile symlinks."""

from __future__ import annotations

import os
import posixpath
import time
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.config import WriteRules
from policy.errors import PathRefused
from policy.paths import (
    MAX_PATH_BYTES,
    check_relative,
    check_write_allowed,
    confine,
    is_git_component,
    is_within,
    matches_glob,
)
from policy.types import RefusalReason

# Symlinks created in the repository (name -> target, relative to the repo unless absolute).
_SYMLINKS: dict[str, str] = {
    "link_out": "../outside",  # directory outside
    "link_out_file": "../outside/secret.txt",  # file outside
    "abs_out": "/etc",  # absolute, outside
    "dangling_out": "../outside/not-yet.txt",  # dangling, points outside
    "dangling_in": "src/not-yet.py",  # dangling, points inside: fine
    "evil": "../repo-evil",  # sibling sharing the repo's name as a prefix
    "up": "..",
    "self": ".",
    "loop": "loop",
    "loop_a": "loop_b",
    "loop_b": "loop_a",
    "git_config_link": ".git/config",
    "git_dir_link": ".git",
    "git_hook_link": ".git/hooks/pre-commit",
    "src_link": "src",  # symlinked parent directory, inside: fine
    "sub/deeper": "../../outside",  # symlinked parent directory, nested, outside
    "src/escape": "../docs/readme.md",  # inside, but outside src/
    "innocent.yml": ".github/workflows/ci.yml",  # inside, but onto a denied path
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with a .git directory, ordinary files, a sibling 'repo-evil' and hostile symlinks."""
    base = tmp_path_factory.mktemp("ws")
    root = base / "repo"
    for rel in (".git/hooks", "src", "docs", "sub", ".github/workflows"):
        (root / rel).mkdir(parents=True)
    (root / ".git/config").write_text("[core]\n")
    (root / ".git/hooks/pre-commit").write_text("#!/bin/sh\n")
    (root / "src/main.py").write_text("print('hi')\n")
    (root / "docs/readme.md").write_text("# hi\n")
    (root / ".github/workflows/ci.yml").write_text("on: push\n")
    (base / "outside").mkdir()
    (base / "outside/secret.txt").write_text("secret\n")
    (base / "repo-evil").mkdir()
    (base / "repo-evil/x").write_text("evil\n")
    for name, target in _SYMLINKS.items():
        os.symlink(target, root / name)
    return root


def _confine(root: Path, requested: str, *, rules: WriteRules | None = None, allow_root: bool = False) -> str:
    return confine(
        str(root), requested, realpath=os.path.realpath, islink=os.path.islink, rules=rules, allow_root=allow_root
    )


R = RefusalReason
HOSTILE = [
    # Lexical: empty, absolute, home, NUL, backslash, drive.
    pytest.param("", R.EMPTY, id="empty"),
    pytest.param("/etc/passwd", R.ABSOLUTE, id="absolute"),
    pytest.param("//etc/passwd", R.ABSOLUTE, id="double-slash-absolute"),
    pytest.param("///x", R.ABSOLUTE, id="triple-slash-absolute"),
    pytest.param("~/.ssh/id_rsa", R.ABSOLUTE, id="home"),
    pytest.param("~root/x", R.ABSOLUTE, id="home-of-user"),
    pytest.param("a\x00b", R.NUL_BYTE, id="nul"),
    pytest.param("src/main.py\x00.txt", R.NUL_BYTE, id="nul-extension-truncation"),
    pytest.param("a\\b", R.BACKSLASH, id="backslash"),
    pytest.param("..\\..\\x", R.BACKSLASH, id="backslash-traversal"),
    pytest.param("C:x", R.DRIVE, id="drive-relative"),
    pytest.param("c:/windows/x", R.DRIVE, id="drive-absolute"),
    # Traversal, even when it would stay inside.
    pytest.param("..", R.TRAVERSAL, id="dotdot"),
    pytest.param("../x", R.TRAVERSAL, id="parent"),
    pytest.param("a/../../x", R.TRAVERSAL, id="nested-escape"),
    pytest.param("src/../src/main.py", R.TRAVERSAL, id="dotdot-staying-inside"),
    pytest.param("a/b/..", R.TRAVERSAL, id="trailing-dotdot"),
    pytest.param("../repo-evil/x", R.TRAVERSAL, id="prefix-sibling-by-dotdot"),
    pytest.param("./../x", R.TRAVERSAL, id="dot-then-dotdot"),
    # .git, in every disguise.
    pytest.param(".git", R.GIT_DIR, id="git-dir"),
    pytest.param(".git/config", R.GIT_DIR, id="git-config"),
    pytest.param("./.git/config", R.GIT_DIR, id="dot-git-config"),
    pytest.param(".git/hooks/pre-commit", R.GIT_DIR, id="git-hook"),
    pytest.param(".GIT/config", R.GIT_DIR, id="git-upper"),
    pytest.param(".Git/HEAD", R.GIT_DIR, id="git-mixed-case"),
    pytest.param(".git./config", R.GIT_DIR, id="git-trailing-dot"),
    pytest.param(".git /config", R.GIT_DIR, id="git-trailing-space"),
    pytest.param(".git::$DATA/config", R.GIT_DIR, id="git-ntfs-stream"),
    pytest.param("GIT~1/config", R.GIT_DIR, id="git-8dot3"),
    pytest.param("sub/.git/config", R.GIT_DIR, id="nested-git"),
    pytest.param("src//.git", R.GIT_DIR, id="git-after-double-slash"),
    # Percent-encoding.
    pytest.param("%2e%2e/x", R.ENCODED, id="pct-dotdot"),
    pytest.param("%2E%2E%2Fx", R.ENCODED, id="pct-upper"),
    pytest.param("..%2fx", R.ENCODED, id="pct-slash"),
    pytest.param("a%5cb", R.ENCODED, id="pct-backslash"),
    pytest.param("%252e%252e/x", R.ENCODED, id="pct-double-encoded"),
    pytest.param("%c0%ae%c0%ae/x", R.ENCODED, id="pct-overlong-utf8"),
    pytest.param("x%00.txt", R.ENCODED, id="pct-nul"),
    pytest.param("%ef%bc%8e%ef%bc%8e/x", R.ENCODED, id="pct-fullwidth-dot"),
    # Unicode look-alikes and non-normalised text.
    pytest.param("．．／x", R.LOOKALIKE, id="fullwidth-dotdot-slash"),
    pytest.param("\u2024\u2024/x", R.LOOKALIKE, id="one-dot-leader"),
    pytest.param("\ua4f8\ua4f8/x", R.LOOKALIKE, id="lisu-dot"),
    pytest.param("a\u2215b", R.LOOKALIKE, id="division-slash"),
    pytest.param("a\u2044b", R.LOOKALIKE, id="fraction-slash"),
    pytest.param("\ufe52\ufe52/x", R.LOOKALIKE, id="small-full-stop"),
    pytest.param("a\uff3cb", R.LOOKALIKE, id="fullwidth-backslash"),
    pytest.param("\uff0egit/config", R.LOOKALIKE, id="fullwidth-dot-git"),
    pytest.param("\ufb01le.txt", R.LOOKALIKE, id="ligature"),
    pytest.param("cafe\u0301.txt", R.LOOKALIKE, id="decomposed-accent"),
    # Control and invisible characters.
    pytest.param("a\u200bb", R.CONTROL_CHAR, id="zero-width-space"),
    pytest.param(".g\u200cit/config", R.CONTROL_CHAR, id="zero-width-in-git"),
    pytest.param("evil\u202etxt.sh", R.CONTROL_CHAR, id="bidi-override"),
    pytest.param("a\nb", R.CONTROL_CHAR, id="newline"),
    pytest.param("a\tb", R.CONTROL_CHAR, id="tab"),
    pytest.param("a\x7fb", R.CONTROL_CHAR, id="del"),
    pytest.param("a\x85b", R.CONTROL_CHAR, id="c1-nel"),
    pytest.param("a\u2028b", R.CONTROL_CHAR, id="line-separator"),
    pytest.param("\ufeffa", R.CONTROL_CHAR, id="bom"),
    pytest.param("a\udc80b", R.CONTROL_CHAR, id="lone-surrogate"),
    # Length.
    pytest.param("x" * 256, R.TOO_LONG, id="component-256"),
    pytest.param("é" * 128, R.TOO_LONG, id="component-256-bytes-utf8"),
    pytest.param("a/" * 2100, R.TOO_LONG, id="total-over-4096"),
    # The root itself.
    pytest.param(".", R.ROOT, id="dot"),
    pytest.param("./", R.ROOT, id="dot-slash"),
    pytest.param("./.", R.ROOT, id="dot-dot-slash-dot"),
    # Through symlinks.
    pytest.param("link_out/secret.txt", R.OUTSIDE_ROOT, id="symlinked-dir-outside"),
    pytest.param("link_out_file", R.OUTSIDE_ROOT, id="symlink-to-outside-file"),
    pytest.param("link_out/new.txt", R.OUTSIDE_ROOT, id="new-file-under-symlinked-dir"),
    pytest.param("link_out/newdir/new.txt", R.OUTSIDE_ROOT, id="new-deep-file-under-symlinked-dir"),
    pytest.param("dangling_out", R.OUTSIDE_ROOT, id="dangling-symlink-outside"),
    pytest.param("abs_out/passwd", R.OUTSIDE_ROOT, id="absolute-symlink"),
    pytest.param("evil/x", R.OUTSIDE_ROOT, id="prefix-sibling-by-symlink"),
    pytest.param("evil/new.txt", R.OUTSIDE_ROOT, id="prefix-sibling-new-file"),
    pytest.param("up", R.OUTSIDE_ROOT, id="symlink-to-parent"),
    pytest.param("up/outside/secret.txt", R.OUTSIDE_ROOT, id="through-symlink-to-parent"),
    pytest.param("sub/deeper/secret.txt", R.OUTSIDE_ROOT, id="nested-symlinked-parent"),
    pytest.param("loop", R.SYMLINK_LOOP, id="self-loop"),
    pytest.param("loop/x", R.SYMLINK_LOOP, id="under-self-loop"),
    pytest.param("loop_a/x", R.SYMLINK_LOOP, id="two-link-loop"),
    pytest.param("git_config_link", R.GIT_DIR, id="symlink-to-git-config"),
    pytest.param("git_hook_link", R.GIT_DIR, id="symlink-to-git-hook"),
    pytest.param("git_dir_link/hooks/pre-commit", R.GIT_DIR, id="symlink-to-git-dir"),
    pytest.param("git_dir_link/new", R.GIT_DIR, id="new-file-via-git-dir-symlink"),
    pytest.param("self/git_dir_link/config", R.GIT_DIR, id="self-then-git-link"),
    pytest.param("self", R.ROOT, id="symlink-to-root"),
    pytest.param("self/.git/config", R.GIT_DIR, id="self-then-git"),
]


@pytest.mark.parametrize(("requested", "reason"), HOSTILE)
def test_confine_refuses_hostile_path(repo: Path, requested: str, reason: RefusalReason) -> None:
    with pytest.raises(PathRefused) as info:
        _confine(repo, requested)
    assert info.value.reason == reason
    assert info.value.path == requested
    message = str(info.value)
    assert message.startswith("Access denied: ")
    assert message.endswith(".")
    # The host path of the workspace never reaches the model.
    assert str(repo.parent) not in message
    assert os.path.realpath(repo.parent) not in message


def test_hostile_table_is_large_and_unique() -> None:
    ids = [p.id for p in HOSTILE]
    assert len(ids) >= 60
    assert len(set(ids)) == len(ids)


ACCEPTED = [
    pytest.param("src/main.py", "src/main.py", id="existing-file"),
    pytest.param("src/new.py", "src/new.py", id="new-file"),
    pytest.param("new/deep/file.txt", "new/deep/file.txt", id="new-deep-file"),
    pytest.param("./src/main.py", "src/main.py", id="leading-dot"),
    pytest.param("src/./main.py", "src/main.py", id="inner-dot"),
    pytest.param("src//main.py", "src/main.py", id="double-slash"),
    pytest.param("src/", "src", id="trailing-slash"),
    pytest.param("dangling_in", "src/not-yet.py", id="dangling-symlink-inside"),
    pytest.param("src_link/main.py", "src/main.py", id="symlinked-dir-inside"),
    pytest.param("self/src/main.py", "src/main.py", id="symlink-to-root-then-file"),
    pytest.param(".gitignore", ".gitignore", id="gitignore"),
    pytest.param(".github/workflows/ci.yml", ".github/workflows/ci.yml", id="workflow-without-rules"),
    pytest.param("a.git/x", "a.git/x", id="dot-git-suffix"),
    pytest.param(".gitx/x", ".gitx/x", id="dot-git-prefix"),
    pytest.param("...", "...", id="three-dots"),
    pytest.param("..a", "..a", id="dotdot-prefix"),
    pytest.param("a..b", "a..b", id="inner-dotdot"),
    pytest.param("100%/x", "100%/x", id="bare-percent"),
    pytest.param("a%20b", "a%20b", id="harmless-percent-escape"),
    pytest.param("日本語/ファイル.txt", "日本語/ファイル.txt", id="japanese"),
    pytest.param("café.txt", "café.txt", id="composed-accent"),
    pytest.param("ab:c", "ab:c", id="inner-colon"),
    pytest.param("x" * 255, "x" * 255, id="component-255"),
]


@pytest.mark.parametrize(("requested", "expected_rel"), ACCEPTED)
def test_confine_accepts_paths_inside(repo: Path, requested: str, expected_rel: str) -> None:
    result = _confine(repo, requested)
    assert result == os.path.join(os.path.realpath(repo), expected_rel)


def test_confine_allows_root_only_when_asked(repo: Path) -> None:
    assert _confine(repo, ".", allow_root=True) == os.path.realpath(repo)
    assert _confine(repo, "./", allow_root=True) == os.path.realpath(repo)
    with pytest.raises(PathRefused):
        _confine(repo, "", allow_root=True)


def test_confine_without_islink_never_escapes_through_a_loop(repo: Path) -> None:
    # realpath leaves a loop unresolved; without islink it is not detected, but it is still inside the root.
    result = confine(str(repo), "loop/x", realpath=os.path.realpath)
    assert is_within(os.path.realpath(repo), result)


def test_confine_resolves_a_symlinked_root(repo: Path, tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    os.symlink(repo, alias)
    assert _confine(alias, "src/main.py") == os.path.join(os.path.realpath(repo), "src/main.py")
    with pytest.raises(PathRefused) as info:
        _confine(alias, "link_out/secret.txt")
    assert info.value.reason == RefusalReason.OUTSIDE_ROOT


WRITE_REFUSED = [
    pytest.param(WriteRules(), ".github/workflows/ci.yml", R.DENIED_GLOB, id="workflow"),
    pytest.param(WriteRules(), ".github/workflows/new.yml", R.DENIED_GLOB, id="new-workflow"),
    pytest.param(WriteRules(), ".GitHub/Workflows/x.yml", R.DENIED_GLOB, id="workflow-case"),
    pytest.param(WriteRules(), "CODEOWNERS", R.DENIED_GLOB, id="codeowners"),
    pytest.param(WriteRules(), "docs/CODEOWNERS", R.DENIED_GLOB, id="docs-codeowners"),
    pytest.param(WriteRules(), "keys/server.pem", R.DENIED_GLOB, id="pem"),
    pytest.param(WriteRules(), "server.KEY", R.DENIED_GLOB, id="key-upper"),
    pytest.param(WriteRules(), "a/b/.env", R.DENIED_GLOB, id="dotenv"),
    pytest.param(WriteRules(), ".env.local", R.DENIED_GLOB, id="dotenv-local"),
    pytest.param(WriteRules(), "home/id_rsa.pub", R.DENIED_GLOB, id="ssh-key"),
    pytest.param(WriteRules(), "innocent.yml", R.DENIED_GLOB, id="symlink-onto-workflow"),
    pytest.param(WriteRules(), "self", R.ROOT, id="root-via-symlink"),
    pytest.param(WriteRules(allowed=("src/**",)), "docs/readme.md", R.NOT_ALLOWED, id="outside-allowed"),
    pytest.param(WriteRules(allowed=("src/**",)), "src_link/new.py", R.NOT_ALLOWED, id="requested-not-allowed"),
    pytest.param(WriteRules(allowed=("src/**",)), "src/escape", R.NOT_ALLOWED, id="resolved-not-allowed"),
    pytest.param(
        WriteRules(allowed=("src/**",), denied=("src/vendor/**",)),
        "src/vendor/x.py",
        R.DENIED_GLOB,
        id="project-denied-wins",
    ),
    pytest.param(WriteRules(allowed=("**",), denied=()), "src/x.pem", R.DENIED_GLOB, id="defaults-stay"),
    # ':' is readable in an existing file name but never written: drive, NTFS stream, URL, pathspec magic.
    pytest.param(WriteRules(), "file:/etc/passwd", R.DRIVE, id="url-scheme"),
    pytest.param(WriteRules(), "https://evil.example/x", R.DRIVE, id="url-with-host"),
    pytest.param(WriteRules(), "ab:c", R.DRIVE, id="inner-colon-write"),
    pytest.param(WriteRules(), "src/main.py::$DATA", R.DRIVE, id="ntfs-stream"),
    pytest.param(WriteRules(), "src/main.py:hidden", R.DRIVE, id="ntfs-named-stream"),
    pytest.param(WriteRules(), ":(exclude)src/x.py", R.DRIVE, id="pathspec-magic"),
    pytest.param(WriteRules(), ":!src/x.py", R.DRIVE, id="pathspec-short-magic"),
    pytest.param(WriteRules(allowed=("**",), denied=()), "src/a:b.py", R.DRIVE, id="colon-even-if-allowed"),
]


@pytest.mark.parametrize(("rules", "requested", "reason"), WRITE_REFUSED)
def test_confine_applies_write_rules(repo: Path, rules: WriteRules, requested: str, reason: RefusalReason) -> None:
    with pytest.raises(PathRefused) as info:
        _confine(repo, requested, rules=rules)
    assert info.value.reason == reason
    assert "**" not in str(info.value)  # the globs are not disclosed


@pytest.mark.parametrize(
    ("rules", "requested"),
    [
        pytest.param(WriteRules(), "src/main.py", id="default-rules"),
        pytest.param(WriteRules(allowed=("src/**",)), "src/new.py", id="allowed-glob"),
        pytest.param(WriteRules(allowed=("src/**", "docs/*.md")), "docs/readme.md", id="second-allowed-glob"),
        pytest.param(WriteRules(), ".github/ISSUE_TEMPLATE/bug.md", id="github-but-not-workflows"),
        pytest.param(WriteRules(), "docs/CODEOWNERS.md", id="not-codeowners"),
    ],
)
def test_confine_allows_writes_the_rules_permit(repo: Path, rules: WriteRules, requested: str) -> None:
    assert _confine(repo, requested, rules=rules).startswith(os.path.realpath(repo) + "/")


def test_check_relative_normalises() -> None:
    assert check_relative("./a//b/./c/") == PurePosixPath("a/b/c")
    assert check_relative(".", allow_root=True) == PurePosixPath(".")


@pytest.mark.parametrize(
    ("root", "candidate", "inside"),
    [
        pytest.param("/repo", "/repo", True, id="root-itself"),
        pytest.param("/repo", "/repo/a/b", True, id="below"),
        pytest.param("/repo/", "/repo/a", True, id="trailing-slash-root"),
        pytest.param("/repo", "/repo-evil", False, id="prefix-sibling"),
        pytest.param("/repo", "/repo-evil/x", False, id="prefix-sibling-child"),
        pytest.param("/repo", "/repox", False, id="prefix-no-dash"),
        pytest.param("/repo", "/", False, id="filesystem-root"),
        pytest.param("/repo", "/repo/../etc", False, id="lexical-dotdot"),
        pytest.param("/repo", "/repo/a/../../etc", False, id="nested-dotdot"),
        pytest.param("/repo", "repo/a", False, id="relative-candidate"),
        pytest.param("repo", "/repo/a", False, id="relative-root"),
        pytest.param("/", "/anything", True, id="slash-root"),
    ],
)
def test_is_within_compares_components(root: str, candidate: str, inside: bool) -> None:
    assert is_within(root, candidate) is inside


@pytest.mark.parametrize(
    ("rel", "pattern", "matches"),
    [
        pytest.param(".git/config", ".git/**", True, id="git-child"),
        pytest.param(".git/hooks/pre-commit", ".git/**", True, id="git-grandchild"),
        pytest.param(".git", ".git/**", False, id="git-itself"),
        pytest.param("a/.git/config", ".git/**", False, id="git-anchored"),
        pytest.param("x.pem", "**/*.pem", True, id="pem-at-root"),
        pytest.param("a/b/x.pem", "**/*.pem", True, id="pem-deep"),
        pytest.param("a/b/x.pem.txt", "**/*.pem", False, id="pem-suffix"),
        pytest.param("CODEOWNERS", "CODEOWNERS", True, id="codeowners-root"),
        pytest.param("docs/CODEOWNERS", "CODEOWNERS", False, id="codeowners-not-nested"),
        pytest.param("docs/CODEOWNERS", "**/CODEOWNERS", True, id="codeowners-any-depth"),
        pytest.param("src/a.py", "src/*.py", True, id="star"),
        pytest.param("src/a/b.py", "src/*.py", False, id="star-not-across-slash"),
        pytest.param("src/.hidden.py", "src/*.py", True, id="star-matches-dotfile"),
        pytest.param("a/b/c/d", "a/**/d", True, id="middle-doublestar"),
        pytest.param("a/d", "a/**/d", True, id="middle-doublestar-zero"),
        pytest.param("a/x", "a/?", True, id="question"),
        pytest.param("a/xy", "a/?", False, id="question-one-char"),
        pytest.param("a/b", "[ab]/b", True, id="class"),
        pytest.param("c/b", "[!ab]/b", True, id="negated-class"),
        pytest.param("a/b", "[!ab]/b", False, id="negated-class-miss"),
        pytest.param("x", "**", True, id="doublestar-all"),
        pytest.param("a/b/c", "**", True, id="doublestar-deep"),
        pytest.param("a.txt", "a[.]txt", True, id="literal-dot-class"),
        pytest.param("a[b", "a[b", True, id="unclosed-bracket"),
        pytest.param("a-b", "a[--]b", True, id="class-double-dash"),
        pytest.param("a/b", "a[/]b", False, id="class-never-slash"),
    ],
)
def test_matches_glob(rel: str, pattern: str, matches: bool) -> None:
    assert matches_glob(rel, pattern) is matches


def test_matches_glob_case_insensitive_on_request() -> None:
    assert not matches_glob(".GitHub/Workflows/a.yml", ".github/workflows/**")
    assert matches_glob(".GitHub/Workflows/a.yml", ".github/workflows/**", case_sensitive=False)


# Per-match budget for the adversarial globs below: generous (a match takes milliseconds), while the old
# backtracking matcher took ~17 s for `*a` x 10 on 40 characters and multiplied that with every extra `*a`.
_MATCH_BUDGET_S = 1.0


def _timed_match(rel: str, pattern: str, *, case_sensitive: bool = True) -> bool:
    started = time.perf_counter()
    got = matches_glob(rel, pattern, case_sensitive=case_sensitive)
    took = time.perf_counter() - started
    assert took < _MATCH_BUDGET_S, f"{pattern!r} on {len(rel)} characters took {took:.1f} s"
    return got


def test_the_issue_12_glob_answers_within_its_budget() -> None:
    assert _timed_match("a" * 40, "*a" * 10 + "*b") is False
    assert _timed_match("a" * 60, "*a" * 14 + "*b") is False
    assert _timed_match("a" * 60, "*a" * 14 + "*") is True


@settings(max_examples=60, deadline=None)
@given(
    unit=st.sampled_from(["*a", "*?", "**/a", "a*", "*[ab]", "**/*a", "?*", "*/a"]),
    repeats=st.integers(min_value=1, max_value=60),
    tail=st.sampled_from(["*b", "b", "**/b", "[!a]", "", "/**"]),
    name_unit=st.sampled_from(["a", "a/", "aa/a", "A"]),
    name_repeats=st.integers(min_value=1, max_value=2000),
    case_sensitive=st.booleans(),
)
def test_adversarial_globs_match_within_the_budget(
    unit: str, repeats: int, tail: str, name_unit: str, name_repeats: int, case_sensitive: bool
) -> None:
    pattern = (unit * repeats + tail)[:200]  # list_repo_files accepts globs of at most 200 characters
    rel = (name_unit * name_repeats)[:MAX_PATH_BYTES]
    _timed_match(rel, pattern, case_sensitive=case_sensitive)
    _timed_match(rel + "b", pattern, case_sensitive=case_sensitive)


def test_check_write_allowed_denied_wins_over_allowed() -> None:
    rules = WriteRules(allowed=("**",), denied=("generated/**",))
    with pytest.raises(PathRefused) as info:
        check_write_allowed(PurePosixPath("generated/x.py"), rules)
    assert info.value.reason == RefusalReason.DENIED_GLOB
    check_write_allowed(PurePosixPath("src/x.py"), rules)


@pytest.mark.parametrize(
    ("component", "is_git"),
    [
        (".git", True),
        (".GiT", True),
        (".git.", True),
        (".git. .", True),
        ("git~1", True),
        ("GIT~12", True),
        (".git:stream", True),
        (".gitignore", False),
        ("git", False),
        ("x.git", False),
        (".git-x", False),
    ],
)
def test_is_git_component(component: str, is_git: bool) -> None:
    assert is_git_component(component) is is_git


# --- property: whatever is accepted lands inside the real root, never under .git -----------------------------

_TOKENS = [
    ".",
    "..",
    "/",
    "//",
    "\\",
    "%",
    "%2e",
    "%2f",
    "%5c",
    "%25",
    "a",
    "b",
    "~",
    ":",
    "C:",
    ".git",
    ".GIT",
    "git~1",
    "\u2024",
    "\uff0e",
    "\uff0f",
    "\u2215",
    "\ua4f8",
    "\u200b",
    "\x00",
    " ",
    *_SYMLINKS.keys(),
]


@st.composite
def _hostile_paths(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return "".join(draw(st.lists(st.sampled_from(_TOKENS), max_size=8)))
    parts = draw(st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=6))
    return "/".join(parts)


@settings(max_examples=400, deadline=None)
@given(requested=st.one_of(_hostile_paths(), st.text(alphabet="./\\%a2eEfF\u2024\uff0e\u00b7b~:", max_size=20)))
def test_accepted_paths_stay_inside_the_real_root(repo: Path, requested: str) -> None:
    real_root = os.path.realpath(repo)
    for rules in (None, WriteRules()):
        try:
            result = _confine(repo, requested, rules=rules)
        except PathRefused:
            continue
        assert is_within(real_root, result)
        assert result != real_root
        # Re-resolving changes nothing: the result is already real.
        assert os.path.realpath(result) == result
        rel = PurePosixPath(posixpath.relpath(result, real_root))
        assert not any(is_git_component(p) for p in rel.parts)

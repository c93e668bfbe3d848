"""Path confinement: the wall's pure predicate.

Every path the agent names is relative to one workspace (a checked-out repository). `check_relative` refuses
anything lexically suspicious, `confine` also resolves symlinks through an injected `realpath` (policy does no
I/O; the workspace passes `os.path.realpath`) and refuses what lands outside the workspace or under `.git`,
and `check_write_allowed` applies a project's allowed/denied globs.

Refusals raise `PathRefused` with a `RefusalReason`. Messages name the requested path only, never the host
root, so they are safe to show to the model.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePosixPath

from policy.config import WriteRules
from policy.errors import PathRefused
from policy.types import RefusalReason

__all__ = [
    "MAX_COMPONENT_BYTES",
    "MAX_PATH_BYTES",
    "check_relative",
    "check_write_allowed",
    "confine",
    "is_git_component",
    "is_within",
    "matches_glob",
]

MAX_COMPONENT_BYTES = 255
MAX_PATH_BYTES = 4096

# Security: characters that look like '.', '/' or '\' but that NFKC leaves alone (NFKC-changing ones such as
# U+FF0E, U+2024, U+FE52, U+FF0F, U+FF3C are caught by the normalisation check as well).
_LOOKALIKES = frozenset(
    "\u2024\u2025\u2026\uff0e\ufe52\u3002\uff61\u0701\u0702\u06d4\u0589\u2e3c\ua4f8\ua60e\u00b7\u2027"
    "\u2219\u22c5\u2e31\u2e33"  # dots
    "\u2215\u2044\u2571\u29f8\uff0f\u1735\u27cb\u2f03\u0338"  # slashes
    "\u2216\u29f5\u29f9\ufe68\uff3c\u27cd\u2572\u20e5"  # backslashes
)
# Security: Cc control, Cf format (zero-width joiners, bidi overrides, BOM), Cs lone surrogates, Zl/Zp breaks.
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_PERCENT_RE = re.compile(r"%([0-9A-Fa-f]{2})")
_SHORT_GIT_RE = re.compile(r"^git~\d+$", re.IGNORECASE)  # NTFS 8.3 short name of '.git'

_REASON_TEXT: dict[RefusalReason, str] = {
    RefusalReason.EMPTY: "path is empty",
    RefusalReason.ABSOLUTE: "path must be relative to the workspace",
    RefusalReason.TRAVERSAL: "path may not contain '..'",
    RefusalReason.NUL_BYTE: "path contains a NUL byte",
    RefusalReason.BACKSLASH: "path contains a backslash; use '/'",
    RefusalReason.DRIVE: "path names a drive, a stream or a URL scheme (':')",
    RefusalReason.CONTROL_CHAR: "path contains a control or invisible character",
    RefusalReason.TOO_LONG: "path is too long",
    RefusalReason.ENCODED: "path contains a percent-encoded separator, dot or byte",
    RefusalReason.LOOKALIKE: "path contains look-alike or non-normalised unicode",
    RefusalReason.GIT_DIR: "path is inside .git",
    RefusalReason.OUTSIDE_ROOT: "path is outside the workspace",
    RefusalReason.SYMLINK_LOOP: "path goes through a symlink loop",
    RefusalReason.ROOT: "path names the workspace itself, not a file in it",
    RefusalReason.DENIED_GLOB: "path is protected and may not be written",
    RefusalReason.NOT_ALLOWED: "path is not in the project's writable paths",
}


def _refuse(reason: RefusalReason, requested: str) -> PathRefused:
    shown = requested if len(requested) <= 200 else requested[:200] + "..."
    return PathRefused(f"Access denied: {_REASON_TEXT[reason]}: {shown!r}.", reason=reason, path=requested)


def is_git_component(component: str) -> bool:
    """True when `component` names git's own directory, including case, trailing-dot/space and 8.3 tricks."""
    # Security: '.GIT', '.git.', '.git ', '.git::$DATA' and 'GIT~1' all reach .git on some filesystem.
    name = component.split(":", 1)[0].rstrip(". ").casefold()
    return name == ".git" or bool(_SHORT_GIT_RE.match(name))


def _check_encoded(requested: str) -> bool:
    """True when a percent-escape decodes to '.', '/', '\\', '%', NUL or any non-ASCII byte."""
    for match in _PERCENT_RE.finditer(requested):
        byte = int(match.group(1), 16)
        if byte in (0x00, 0x25, 0x2E, 0x2F, 0x5C) or byte >= 0x80:
            return True
    return False


def check_relative(requested: str, *, allow_root: bool = False) -> PurePosixPath:
    """Lexically check a workspace-relative path and return it normalised ('.' components dropped).

    With `allow_root`, a path that reduces to nothing ('.', './') returns `PurePosixPath('.')`; otherwise it
    is refused. No filesystem access happens here; symlinks are `confine`'s job.

    Raises:
        PathRefused: the path is empty, absolute, traversing, encoded, look-alike, too long, under `.git`, ...
    """
    parts = _relative_parts(requested, allow_root=allow_root)
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _relative_parts(requested: str, *, allow_root: bool) -> list[str]:
    """`check_relative`'s checks, on strings: the path's components ('.' and empty ones dropped; none for the
    root, when `allow_root`)."""
    # Security: every check here is lexical and runs before any join, so nothing hostile reaches realpath.
    if not isinstance(requested, str) or requested == "":
        raise _refuse(RefusalReason.EMPTY, str(requested))
    if "\x00" in requested:
        raise _refuse(RefusalReason.NUL_BYTE, requested)
    ascii_only = requested.isascii()  # no ASCII character is Cf, Cs, Zl, Zp or a look-alike; NFKC keeps ASCII
    if (
        any(ch < " " or ch == "\x7f" for ch in requested)
        if ascii_only
        else any(unicodedata.category(ch) in _BAD_CATEGORIES for ch in requested)
    ):
        raise _refuse(RefusalReason.CONTROL_CHAR, requested)
    if "\\" in requested:
        raise _refuse(RefusalReason.BACKSLASH, requested)
    if requested.startswith("/"):
        raise _refuse(RefusalReason.ABSOLUTE, requested)
    if _DRIVE_RE.match(requested):
        raise _refuse(RefusalReason.DRIVE, requested)
    if "%" in requested and _check_encoded(requested):
        raise _refuse(RefusalReason.ENCODED, requested)
    if not ascii_only and (
        any(ch in _LOOKALIKES for ch in requested) or unicodedata.normalize("NFKC", requested) != requested
    ):
        raise _refuse(RefusalReason.LOOKALIKE, requested)
    if (len(requested) if ascii_only else len(requested.encode("utf-8"))) > MAX_PATH_BYTES:
        raise _refuse(RefusalReason.TOO_LONG, requested)
    parts = [p for p in requested.split("/") if p not in ("", ".")]
    for i, part in enumerate(parts):
        if (len(part) if ascii_only else len(part.encode("utf-8"))) > MAX_COMPONENT_BYTES:
            raise _refuse(RefusalReason.TOO_LONG, requested)
        if part == "..":
            raise _refuse(RefusalReason.TRAVERSAL, requested)
        if i == 0 and part.startswith("~"):
            # Security: '~' and '~user' are expanded by shells and expanduser; never let one lead a path.
            raise _refuse(RefusalReason.ABSOLUTE, requested)
        if is_git_component(part):
            raise _refuse(RefusalReason.GIT_DIR, requested)
    if not parts and not allow_root:
        raise _refuse(RefusalReason.ROOT if requested.strip("/.") == "" else RefusalReason.EMPTY, requested)
    return parts


def is_within(root: str, candidate: str) -> bool:
    """True when absolute `candidate` is `root` or below it, compared component by component.

    Both are normalised lexically first (callers pass real paths). '/repo-evil' is not within '/repo'.
    Relative inputs are never within anything.
    """
    if not (root.startswith("/") and candidate.startswith("/")):
        return False
    # Security: compare components (is_relative_to), never string prefixes.
    root_path = PurePosixPath(posixpath.normpath(root))
    cand_path = PurePosixPath(posixpath.normpath(candidate))
    return cand_path.is_relative_to(root_path)


def _parts_below(root_n: str, real_n: str) -> list[str] | None:
    """The components of normalised `real_n` below normalised `root_n` (none: the root itself), or None when it
    is not within it (`is_within`, on strings)."""
    if root_n.startswith("//") or real_n.startswith("//"):  # POSIX's implementation-defined '//' root: pathlib's
        if not is_within(root_n, real_n):
            return None
        return list(PurePosixPath(real_n).relative_to(PurePosixPath(root_n)).parts)
    if not (root_n.startswith("/") and real_n.startswith("/")):
        return None
    if real_n == root_n:
        return []
    prefix = root_n if root_n.endswith("/") else root_n + "/"
    if not real_n.startswith(prefix):
        return None
    return real_n[len(prefix) :].split("/")


def _escape_class(body: str) -> str:
    """Escape a bracket expression's body for `re`, keeping single '-' ranges ('a-z')."""
    out: list[str] = []
    for i, ch in enumerate(body):
        is_range = ch == "-" and 0 < i < len(body) - 1 and body[i - 1] != "-" and body[i + 1] != "-"
        out.append("-" if is_range else re.escape(ch))
    return "".join(out)


@dataclass(frozen=True)
class _Char:
    """Consume one character that passes `kind`: 'lit' (equals `value`), 'any', 'not_slash' or 'class'."""

    kind: str
    value: str = ""
    cls: re.Pattern[str] | None = None


@dataclass(frozen=True)
class _Split:
    """Continue at both `first` and `second` without consuming (a jump when they are equal)."""

    first: int
    second: int


_Op = _Char | _Split
_MAX_CACHED_STEPS = 4096  # transitions remembered per glob: plenty for a real pattern, bounded for the rest


class _Glob:
    """One compiled glob: a small program of `_Char`/`_Split` steps, run as a Thompson NFA.

    Matching reads the name once, carrying the set of steps that could be active (never more than the
    program's length): at most name length x program length work whatever the pattern, no backtracking to
    blow up. Transitions between state sets are cached (a lazily built DFA, bounded), so a repeated
    pattern costs about one dictionary lookup per character.
    """

    def __init__(self, ops: list[_Op], case_sensitive: bool) -> None:
        self._ops = ops
        self._fold = not case_sensitive
        self._steps: dict[tuple[frozenset[int], str], frozenset[int]] = {}
        self._start = self._closure([0])

    def _closure(self, pcs: list[int]) -> frozenset[int]:
        seen: set[int] = set()
        while pcs:
            pc = pcs.pop()
            if pc in seen:
                continue
            seen.add(pc)
            op = self._ops[pc] if pc < len(self._ops) else None
            if isinstance(op, _Split):
                pcs += (op.first, op.second)
        return frozenset(seen)

    def _accepts(self, op: _Char, ch: str) -> bool:
        if op.kind == "lit":
            return ch == op.value or (self._fold and ch.lower() == op.value.lower())
        if op.kind == "not_slash":
            return ch != "/"
        if op.cls is not None:
            return op.cls.fullmatch(ch) is not None
        return True  # 'any'

    def _step(self, states: frozenset[int], ch: str) -> frozenset[int]:
        key = (states, ch)
        found = self._steps.get(key)
        if found is None:
            nxt: list[int] = []
            for pc in states:
                op = self._ops[pc] if pc < len(self._ops) else None
                if isinstance(op, _Char) and self._accepts(op, ch):
                    nxt.append(pc + 1)
            found = self._closure(nxt)
            if len(self._steps) < _MAX_CACHED_STEPS:
                self._steps[key] = found
        return found

    def fullmatch(self, text: str) -> bool:
        states = self._start
        for ch in text:
            states = self._step(states, ch)
            if not states:
                return False
        return len(self._ops) in states


def _emit_star(ops: list[_Op], kind: str) -> None:
    """Zero or more characters of `kind`."""
    top = len(ops)
    ops += (_Split(top + 1, top + 3), _Char(kind), _Split(top, top))


def _emit_segment(ops: list[_Op], segment: str, flags: int) -> None:
    """One glob path segment (no '/'): `*`, `?` and `[...]` never match '/'."""
    i, n = 0, len(segment)
    while i < n:
        ch = segment[i]
        i += 1
        if ch == "*":
            while i < n and segment[i] == "*":
                i += 1
            _emit_star(ops, "not_slash")
        elif ch == "?":
            ops.append(_Char("not_slash"))
        elif ch == "\\" and i < n:
            ops.append(_Char("lit", segment[i]))
            i += 1
        elif ch == "[":
            j = i
            if j < n and segment[j] in "!^":
                j += 1
            if j < n and segment[j] == "]":
                j += 1
            while j < n and segment[j] != "]":
                j += 1
            if j >= n:
                ops.append(_Char("lit", "["))
                continue
            body = segment[i:j]
            i = j + 1
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            body = _escape_class(body)
            # One character against one bracket expression: no repetition, nothing to backtrack.
            regex = f"[^/{body}]" if negate else f"(?!/)[{body}]"
            ops.append(_Char("class", cls=re.compile(regex, flags | re.DOTALL)))
        else:
            ops.append(_Char("lit", ch))


@lru_cache(maxsize=512)
def _compile_glob(pattern: str, case_sensitive: bool) -> _Glob:
    segments: list[str] = []
    for seg in pattern.strip("/").split("/"):
        if seg == "" or (seg == "**" and segments and segments[-1] == "**"):
            continue
        segments.append(seg)
    flags = 0 if case_sensitive else re.IGNORECASE
    ops: list[_Op] = []
    need_sep = False
    for i, seg in enumerate(segments):
        if need_sep:
            ops.append(_Char("lit", "/"))
        if seg == "**":
            if i == len(segments) - 1:  # a trailing '**': one or more characters, '/' included
                ops.append(_Char("any"))
                _emit_star(ops, "any")
            else:  # a leading or inner '**/': nothing, or any characters ending with '/'
                top = len(ops)
                ops.append(_Split(top + 1, top + 6))
                ops.append(_Char("any"))
                _emit_star(ops, "any")
                ops.append(_Char("lit", "/"))
                need_sep = False
                continue
        else:
            _emit_segment(ops, seg, flags)
        need_sep = True
    return _Glob(ops, case_sensitive)


def matches_glob(rel: str, pattern: str, *, case_sensitive: bool = True) -> bool:
    """True when workspace-relative `rel` matches a gitignore-like `pattern`, anchored at the root.

    `*`, `?` and `[...]` stay within one component (and match dotfiles); `**` spans any number of
    components: `**/*.pem` matches at any depth, `.git/**` everything below `.git`, `**` everything.
    A pattern without `**/` matches at the root only: `CODEOWNERS` is not `docs/CODEOWNERS`.

    Linear in `len(rel)` for a given pattern (at most `len(rel)` x pattern length steps): no pattern can
    make it backtrack.
    """
    return _compile_glob(pattern, case_sensitive).fullmatch(rel)


def check_write_allowed(rel: PurePosixPath, rules: WriteRules) -> None:
    """Refuse a write to `rel` unless an allowed glob matches and no denied glob does (denied wins), and any
    write to a path containing ':' (reason `drive`).

    Denied globs (the project's plus the built-in ones) match case-insensitively, so '.GitHub/Workflows/x'
    is protected too. Messages never list the globs.

    Raises:
        PathRefused: reason `denied_glob`, `not_allowed` or `drive` (also `root` for the workspace itself).
    """
    _check_write_text(rel.as_posix(), rules)


def _check_write_text(text: str, rules: WriteRules) -> None:
    """`check_write_allowed` of a relative path as text ('.' for the root)."""
    if text in ("", "."):
        raise _refuse(RefusalReason.ROOT, text)
    # Security: no ':' in a written path. Reads of existing files with one stay allowed, but a new one would be
    # a drive or an NTFS stream on Windows checkouts ('a:b', 'x::$DATA'), look like a URL ('file:/etc/passwd')
    # and, leading, be git pathspec magic (':(exclude)x', ':!x') to the git commands that check it.
    if ":" in text:
        raise _refuse(RefusalReason.DRIVE, text)
    # Security: denied wins, and the built-in denied globs can't be removed by a project.
    if any(matches_glob(text, g, case_sensitive=False) for g in rules.effective_denied):
        raise _refuse(RefusalReason.DENIED_GLOB, text)
    if not any(matches_glob(text, g) for g in rules.allowed):
        raise _refuse(RefusalReason.NOT_ALLOWED, text)


def confine(
    root: str,
    requested: str,
    *,
    realpath: Callable[[str], str],
    rules: WriteRules | None = None,
    islink: Callable[[str], bool] | None = None,
    allow_root: bool = False,
) -> str:
    """Resolve `requested` inside workspace `root` and return its real absolute path, or refuse.

    `realpath` is injected (pass `os.path.realpath`): it resolves symlinks in the existing prefix, so a new
    file is judged by its nearest existing parent and a dangling symlink by its target. When `islink` is
    given (pass `os.path.islink`), a resolved path that still contains a symlink, which is how realpath
    reports a loop, is refused. When `rules` is given, both the requested and the resolved relative path
    must be writable. The result is valid only until the filesystem changes: writers must still refuse to
    follow symlinks (O_NOFOLLOW) when they open it.

    Raises:
        PathRefused: any lexical refusal of `check_relative`, `outside_root`, `git_dir`, `symlink_loop`,
            `root`, or the write-rule reasons.
    """
    parts = _relative_parts(requested, allow_root=allow_root)
    real_root = realpath(root)
    joined = posixpath.join(real_root, "/".join(parts)) if parts else real_root
    real = realpath(joined)
    # Security: judge the resolved path, not the requested one: symlinks can point anywhere.
    root_n, real_n = posixpath.normpath(real_root), posixpath.normpath(real)
    real_parts = _parts_below(root_n, real_n)
    if real_parts is None:
        raise _refuse(RefusalReason.OUTSIDE_ROOT, requested)
    if any(is_git_component(part) for part in real_parts):
        raise _refuse(RefusalReason.GIT_DIR, requested)
    if not real_parts and not allow_root:
        raise _refuse(RefusalReason.ROOT, requested)
    if islink is not None:
        # Security: a fully resolved path has no symlink left in it; one that does is a loop realpath gave up on.
        probe = root_n.rstrip("/")
        for part in real_parts:
            probe = f"{probe}/{part}"
            if islink(probe):
                raise _refuse(RefusalReason.SYMLINK_LOOP, requested)
    if rules is not None:
        try:
            _check_write_text("/".join(parts) or ".", rules)
            _check_write_text("/".join(real_parts) or ".", rules)
        except PathRefused as exc:
            # Keep the requested path in the message: the resolved one may reveal a symlink's target.
            raise _refuse(RefusalReason(exc.reason), requested) from None
    return real

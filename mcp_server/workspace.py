"""One project's git working copy for one session: the I/O gate of the wall.

Every file operation resolves its path through `resolve_path`, the only caller of `realpath`, which defers
to `policy.paths.confine`. Writes happen only on a fix branch, never through a symlink, via a temporary
file and `os.replace`, within the attempt's change limits measured against the default branch.

Git runs as `git` subprocesses with a timeout, a minimal environment and no terminal prompt. The
installation token reaches git ONLY through the environment, as an `http.extraHeader` passed with
`GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n`, and only for the commands that talk to the forge
(clone, fetch, push): never in a URL, an argument or `.git/config`. Hooks never run
(`core.hooksPath=/dev/null`), the host's git configuration is ignored, and pushes never force.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import errno
import os
import re
import stat
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from mcp_server.deadline import off_loop
from mcp_server.errors import GitError, ToolRefused, WorkspaceError, WorkspaceRefused
from policy.branches import ATTEMPT_ID_RE, is_fix_branch
from policy.config import ProjectConfig
from policy.errors import PathRefused
from policy.gate import ATTEMPT_TRAILER
from policy.paths import check_relative, confine, is_git_component, matches_glob
from policy.redaction import redact

__all__ = [
    "ATTEMPT_TRAILER",
    "MAX_READ_FILE_BYTES",
    "CommitSummary",
    "FileListing",
    "FileSlice",
    "PushResult",
    "Workspace",
    "WriteResult",
]

MAX_READ_FILE_BYTES = 10_000_000  # larger files are refused: reading them would stall the session
# Files up to this size are read and redacted on the event loop (well under a millisecond); larger ones in a
# worker thread (mcp_server.deadline), so that one session's big file never stalls another session.
_INLINE_READ_CHARS = 16_000
# A listing of a directory holding at most this many files (and no glob) is made on the event loop too.
_INLINE_LIST_ENTRIES = 200
_SHA_RE = re.compile(r"[0-9a-f]{7,40}")  # `ref` of read_file: a commit SHA, never a name
_BINARY_PROBE_BYTES = 8000  # git's own heuristic: a NUL byte in the first 8000 bytes means binary
_STDERR_CHARS = 1000
# How git over HTTP reports credentials the forge refused (401): with prompts off it cannot ask for others.
_AUTH_FAILED = re.compile(
    r"Authentication failed|could not read (Username|Password)|returned error: 401", re.IGNORECASE
)
_TRAILER_LINE_RE = re.compile(rf"^\s*{ATTEMPT_TRAILER}\s*:.*$", re.IGNORECASE | re.MULTILINE)

# Security: fixed for every git command. Hooks from the repository never run, symlinks stay symlinks (so
# `confine` sees them), local-file transports are off, and credentials never follow a redirect.
_GIT_CONFIG: tuple[tuple[str, str], ...] = (
    ("core.symlinks", "true"),
    ("core.hooksPath", "/dev/null"),
    ("protocol.file.allow", "never"),
    ("http.followRedirects", "false"),
    ("credential.helper", ""),
    ("commit.gpgSign", "false"),
)


# Git commands that never change the working tree or which files it lists; any other drops the file index.
_READ_ONLY_GIT = frozenset(
    {"ls-files", "rev-parse", "log", "diff", "rev-list", "merge-base", "check-ignore", "hash-object", "cat-file"}
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileSlice(_Model):
    """Lines `start_line..end_line` (1-based, inclusive) of a text file; `next_start_line` when truncated."""

    path: str
    start_line: int
    end_line: int
    total_lines: int
    content: str
    truncated: bool
    next_start_line: int | None


class FileListing(_Model):
    """Sorted workspace-relative file paths; `total` matched, `truncated` when more than returned."""

    paths: tuple[str, ...]
    truncated: bool
    total: int


class WriteResult(_Model):
    """A file written on the fix branch, and the whole change's size against the default branch."""

    path: str
    bytes: int
    created: bool
    lines_changed_total: int
    files_changed_total: int


class PushResult(_Model):
    """The commit pushed and the branch it landed on."""

    sha: str
    branch: str


class CommitSummary(_Model):
    """One commit of the current branch's history."""

    sha: str
    message: str
    author_name: str
    author_email: str
    date: datetime


@dataclass(frozen=True)
class _GitResult:
    returncode: int
    stdout: bytes
    stderr: str


def _basic_header(token: str) -> str:
    credential = base64.b64encode(f"x-access-token:{token}".encode()).decode("ascii")
    return f"Authorization: Basic {credential}"


def _check_git_url(git_url: str) -> str:
    parts = urlsplit(git_url)
    # Security: credentials travel only in the environment; a URL carrying any would end up in .git/config.
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WorkspaceError(f"Workspace: the git URL must be http(s)://host[/path]: {parts.scheme!r}.")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise WorkspaceError("Workspace: the git URL may not carry credentials, a query or a fragment.")
    return git_url.rstrip("/")


class Workspace:
    """One project's working copy for one session. Methods are safe to call concurrently (one lock).

    Raises (from every method): `GitError` when git fails or times out (redacted stderr),
    `WorkspaceRefused` for a path the rules refuse, `ToolRefused` for a request the model can correct.
    """

    def __init__(
        self,
        *,
        root_dir: Path,
        project: ProjectConfig,
        git_url: str,
        token: Callable[[], Awaitable[str]],
        bot_name: str,
        bot_email: str,
        timeout: float = 60,
        invalidate: Callable[[str], None] | None = None,
    ) -> None:
        self._root = Path(os.path.abspath(root_dir))
        self._real_root: str | None = None
        self._project = project
        self._default = project.default_branch
        self._remote_url = f"{_check_git_url(git_url)}/{project.repo}.git"
        self._token = token
        self._invalidate = invalidate  # drops a token the forge refused, so the next `token()` is fresh
        self._bot_name = bot_name
        self._bot_email = bot_email
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._unpushed: str | None = None  # a commit made whose push failed; pushed by the next call
        self._pushed: str | None = None  # the last commit this object pushed (a resumed object has none)
        self._secrets: tuple[str, ...] = ()
        # The listing index (`_file_index`): dropped whenever the tree may have changed.
        self._index: tuple[tuple[str, str], ...] | None = None
        self._tree_version = 0

    @property
    def root(self) -> Path:
        """The working copy's directory (host path: never show it to the model)."""
        return self._root

    # ------------------------------------------------------------------------------------------ sync

    async def ensure_clone(self) -> None:
        """Clone the default branch if there is no working copy; else fetch, and unless a fix branch is
        checked out, hard-reset the default branch to the forge's and remove untracked files.

        Raises:
            GitError: clone or fetch failed.
            WorkspaceError: the working copy's directory cannot be created (not writable, a file in the way).
        """
        async with self._lock:
            if not (self._root / ".git").is_dir():
                try:
                    self._root.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:  # unwritable, full, or a file in the way: say so (no host path)
                    reason = exc.strerror or exc.__class__.__name__
                    raise WorkspaceError(f"Workspace unavailable: cannot create the working copy: {reason}.") from exc
                await self._git(
                    "clone",
                    "--no-tags",
                    "--single-branch",
                    "--branch",
                    self._default,
                    "--",
                    self._remote_url,
                    str(self._root),
                    network=True,
                    cwd=self._root.parent,
                )
                return
            await self._git("fetch", "--no-tags", "--prune", "origin", network=True)
            branch = self.current_branch()
            if branch is None or not is_fix_branch(branch):
                # -B with --force: the branch is reset to the forge's head and local changes are discarded.
                await self._git("checkout", "--force", "-B", self._default, self._default_ref())
                await self._git("clean", "-ffdx")

    # ------------------------------------------------------------------------------------------ paths

    def resolve_path(self, requested: str, *, for_write: bool) -> Path:
        """The real path of workspace-relative `requested`, or a refusal. The only caller of realpath.

        For writes, the project's allowed/denied globs apply to both the requested and the resolved path.

        Raises:
            WorkspaceRefused: outside the workspace, under .git, a symlink loop, a protected path, ...
        """
        if self._real_root is None:
            self._real_root = os.path.realpath(self._root)
        try:
            real = confine(
                self._real_root,
                requested,
                realpath=os.path.realpath,
                rules=self._project.write if for_write else None,
                islink=os.path.islink,
            )
        except PathRefused as exc:
            raise WorkspaceRefused(str(exc), reason=str(exc.reason), path=exc.path) from exc
        return Path(real)

    def _relative(self, real: Path) -> str:
        if self._real_root is None:
            raise WorkspaceError("Workspace: no path has been resolved yet.")
        return real.relative_to(self._real_root).as_posix()

    def _os_refused(self, exc: OSError, requested: str, action: str) -> ToolRefused:
        """A refusal for an OS error met at `requested`, naming the path component at fault (never a host
        path): a file used as a directory, a name too long, a symlink loop, no permission, a read-only or
        full filesystem."""
        parts = check_relative(requested, allow_root=True).parts
        root = self._real_root or str(self._root)
        code = exc.errno
        if code == errno.ENOTDIR:
            found = _first_non_directory(root, parts)
            if found is not None:
                return ToolRefused(
                    f"{action} refused: {found!r} is a file, not a directory, so nothing can be under it: "
                    f"{requested!r}."
                )
            return ToolRefused(f"{action} refused: a component of the path is not a directory: {requested!r}.")
        if code == errno.ENAMETOOLONG:
            longest = max(parts, key=lambda p: len(p.encode("utf-8")), default=requested)
            shown = longest if len(longest) <= 60 else longest[:60] + "..."
            return ToolRefused(f"{action} refused: the name {shown!r} is too long for the filesystem: {requested!r}.")
        if code == errno.ELOOP:
            return ToolRefused(f"{action} refused: the path goes through too many symbolic links: {requested!r}.")
        if code in (errno.EACCES, errno.EPERM):
            parent = "/".join(parts[:-1])
            where = f"its directory {parent!r}" if parent else "the repository root"
            return ToolRefused(f"{action} refused: permission denied on {requested!r} or {where}.")
        if code == errno.EROFS:
            return ToolRefused(f"{action} refused: the workspace's filesystem is read-only: {requested!r}.")
        if code == errno.EISDIR:
            return ToolRefused(f"{action} refused: {requested!r} is a directory, not a file.")
        if code in (errno.ENOSPC, errno.EDQUOT):
            return ToolRefused(f"{action} refused: no space left on the workspace's filesystem: {requested!r}.")
        reason = exc.strerror or exc.__class__.__name__
        return ToolRefused(f"{action} refused: the filesystem refused {requested!r}: {reason}.")

    # ------------------------------------------------------------------------------------------ read

    async def read_file(
        self,
        requested: str,
        *,
        start_line: int = 1,
        max_lines: int = 400,
        max_bytes: int = 100_000,
        redact_text: Callable[[str], str] = redact,
        ref: str | None = None,
    ) -> FileSlice:
        """Up to `max_lines` lines (and about `max_bytes` bytes) of a UTF-8 text file, from `start_line`,
        redacted by `redact_text` (pass the session's, which knows the live tokens).

        The whole file is redacted before the window is cut, so a secret spread over lines (a PEM key, a
        multi-line JSON key) is masked in every window, even one that starts in its middle.

        With `ref`, the file as it was at that commit, read from git's objects (never the working tree): only
        a commit SHA of the default branch's history, and the same lexical path wall (no `..`, no `.git`); a
        symlink or submodule entry is refused, not followed.

        Raises:
            WorkspaceRefused: the path is refused.
            ToolRefused: missing, not a regular file, binary, too large, `start_line` past the end, or the
                filesystem refused (the message names the path component at fault); `ref` not a commit of the
                default branch's history.
        """
        if start_line < 1 or max_lines < 1 or max_bytes < 1:
            raise ToolRefused("Read refused: start_line, max_lines and max_bytes must be at least 1.")
        if ref is not None:
            rel, text = await self._text_at(requested, ref)
            lines, total = await off_loop(_window, text, redact_text, start_line, max_lines, max_bytes)
            return _slice(requested, rel, lines, total, start_line)
        real = self.resolve_path(requested, for_write=False)
        rel = self._relative(real)
        try:
            if _small_file(real):
                # Reading and redacting a few KB costs less than the thread hop: done here. A file that grew
                # since the stat is windowed (and redacted) in a worker thread all the same.
                text = _read_text(real, requested)
                if len(text) <= _INLINE_READ_CHARS:
                    lines, total = _window(text, redact_text, start_line, max_lines, max_bytes)
                else:
                    lines, total = await off_loop(_window, text, redact_text, start_line, max_lines, max_bytes)
            else:
                lines, total = await off_loop(
                    _read_window, real, requested, redact_text, start_line, max_lines, max_bytes
                )
        except OSError as exc:
            raise self._os_refused(exc, requested, "Read") from exc
        return _slice(requested, rel, lines, total, start_line)

    async def _text_at(self, requested: str, ref: str) -> tuple[str, str]:
        """(normalised path, whole text) of `requested` at commit `ref` of the default branch's history."""
        where = f"{requested!r} at {ref!r}"
        if not _SHA_RE.fullmatch(ref):
            raise ToolRefused(
                f"Read refused: ref must be a commit SHA (7 to 40 hex digits) of the default branch's history; "
                f"branch, tag and other names are not accepted: {ref!r}."
            )
        try:
            rel = check_relative(requested).as_posix()
        except PathRefused as exc:
            raise WorkspaceRefused(str(exc), reason=str(exc.reason), path=exc.path) from exc
        sha = await self._rev_parse_optional(ref)
        if sha is None:
            raise ToolRefused(f"Read refused: {ref!r} is not a commit of this repository.")
        ancestor = await self._git("merge-base", "--is-ancestor", sha, self._default_ref(), check=False)
        if ancestor.returncode != 0:
            raise ToolRefused(
                f"Read refused: commit {ref!r} is not in the history of the default branch "
                f"{self._default!r}; only its commits can be read."
            )
        listed = await self._git("ls-tree", "-z", "--full-tree", sha, "--", rel, check=False)
        entry = listed.stdout.decode("utf-8", errors="surrogateescape").split("\0", 1)[0]
        meta, _, name = entry.partition("\t")
        if listed.returncode != 0 or not entry or name != rel:
            raise ToolRefused(f"Not found: no such file: {where}.")
        mode, kind, blob = [*meta.split(), "", "", ""][:3]
        if kind == "tree":
            raise ToolRefused(f"Not a file: it is a directory; use list_repo_files: {where}.")
        if kind != "blob" or mode not in ("100644", "100755"):
            raise ToolRefused(f"Not a file: not a regular file (a symlink or submodule is not followed): {where}.")
        size = await self._git("cat-file", "-s", blob)
        if int(size.stdout.decode().strip() or 0) > MAX_READ_FILE_BYTES:
            raise ToolRefused(f"File too large: over the {MAX_READ_FILE_BYTES} byte limit: {where}.")
        data = (await self._git("cat-file", "blob", blob)).stdout
        if b"\x00" in data[:_BINARY_PROBE_BYTES]:
            raise ToolRefused(f"Binary file: it can't be shown: {where}.")
        return rel, data.decode("utf-8", errors="surrogateescape")

    async def list_files(
        self,
        under: str = "",
        glob: str | None = None,
        limit: int = 500,
        *,
        redact_text: Callable[[str], str] = redact,
    ) -> FileListing:
        """Tracked and untracked (not ignored) files under directory `under`, sorted, optionally filtered
        by a root-anchored `glob` (`**/*.py`), the paths returned redacted by `redact_text`. Never lists
        `.git/`.

        Raises:
            WorkspaceRefused: `under` is refused.
            ToolRefused: `under` is not a directory.
        """
        prefix = ""
        if under not in ("", ".", "./"):
            real = self.resolve_path(under, for_write=False)
            if not real.is_dir():  # one stat, as resolve_path's own: no thread hop
                raise ToolRefused(f"Not a directory: {under!r}.")
            prefix = f"{self._relative(real)}/"
        index = await self._file_index()
        few = _few_under(index, prefix) if prefix and glob is None else None
        if few is not None:
            # A directory's few files, no glob: less work than a thread hop, done here.
            paths, total = _select_listed(few, prefix, None, limit, redact_text)
        else:
            # Matching every path against the glob, and redacting many paths, run off the event loop.
            paths, total = await off_loop(_select_listed, index, prefix, glob, limit, redact_text)
        return FileListing(paths=paths, truncated=total > limit, total=total)

    async def _file_index(self) -> tuple[tuple[str, str], ...]:
        """Every listable file of the working tree as sorted (shown, git) path pairs: built with one
        `git ls-files` and kept until the tree changes (any git command that may change it, any write)."""
        index = self._index
        if index is not None:
            return index
        version = self._tree_version
        result = await self._git("ls-files", "-z", "--cached", "--others", "--exclude-standard")
        index = await off_loop(_build_index, self._root, result.stdout)
        if version == self._tree_version:  # nothing changed the tree while it was listed
            self._index = index
        return index

    def _tree_changed(self) -> None:
        """Forget the file index: the next listing lists the tree again."""
        self._tree_version += 1
        self._index = None

    # ------------------------------------------------------------------------------------------ git state

    def current_branch(self) -> str | None:
        """The checked-out branch, or None when HEAD is detached or there is no working copy."""
        try:
            head = (self._root / ".git" / "HEAD").read_text(encoding="utf-8").strip()
        except OSError:
            return None
        prefix = "ref: refs/heads/"
        return head[len(prefix) :] if head.startswith(prefix) else None

    async def head_sha(self) -> str:
        """The sha of HEAD."""
        return await self._rev_parse("HEAD")

    async def recent_commits(self, n: int) -> list[CommitSummary]:
        """The newest `n` commits of the current branch, newest first."""
        result = await self._git("log", f"--max-count={max(0, int(n))}", "-z", "--format=%H%x1f%an%x1f%ae%x1f%aI%x1f%B")
        commits: list[CommitSummary] = []
        for record in result.stdout.decode("utf-8", errors="replace").split("\0"):
            fields = record.split("\x1f", 4)
            if len(fields) != 5:
                continue
            sha, name, email, date, message = fields
            commits.append(
                CommitSummary(
                    sha=sha.strip(),
                    author_name=name,
                    author_email=email,
                    date=datetime.fromisoformat(date),
                    message=message.strip(),
                )
            )
        return commits

    async def create_branch(self, name: str) -> str:
        """Create fix branch `name` at the default branch's head and check it out; returns its head sha.

        Idempotent: when `name` already exists and contains the default branch's head (it was created here
        before, possibly with commits since), it is checked out again. When only the forge has it (a revision
        round or a resume in a fresh working copy), it is fetched and checked out at the forge's head, so new
        commits build on the pushed ones and the push stays a fast-forward.

        Raises:
            ToolRefused: `name` is not a fix branch name, or it exists but doesn't build on the default
                branch's head.
        """
        # Security: the agent creates, writes and pushes only fix branches, never the default branch.
        if not is_fix_branch(name) or name == self._default:
            raise ToolRefused(f"Refused: not a fix branch name: {name!r}.")
        async with self._lock:
            base = await self._rev_parse(self._default_ref())
            existing = await self._rev_parse_optional(f"refs/heads/{name}")
            if existing is None:
                pushed = await self._forge_branch(name)
                await self._git("checkout", "--no-track", "-b", name, pushed or base)
                return pushed or base
            contains = await self._git("merge-base", "--is-ancestor", base, existing, check=False)
            if contains.returncode != 0:
                raise ToolRefused(
                    f"Refused: branch {name!r} already exists and does not start from the default branch's head."
                )
            if self.current_branch() != name:
                await self._git("checkout", name)
            return existing

    async def _forge_branch(self, name: str) -> str | None:
        """The forge's head of fix branch `name`, fetched into `refs/remotes/origin/<name>`; None when the forge
        has no such branch (or cannot be read: the branch is then created afresh, and a push that is not a
        fast-forward is refused by the forge)."""
        tracking = f"refs/remotes/origin/{name}"
        fetched = await self._git(
            "fetch", "--no-tags", "origin", f"+refs/heads/{name}:{tracking}", network=True, check=False
        )
        return await self._rev_parse_optional(tracking) if fetched.returncode == 0 else None

    # ------------------------------------------------------------------------------------------ write

    async def write_file(
        self, requested: str, content: str, *, max_bytes: int, max_files_changed: int, max_lines_changed: int
    ) -> WriteResult:
        """Create or replace a text file on the fix branch, within the change limits.

        The limits count the whole change against the default branch, this write included: files changed
        and lines added plus deleted (`git diff --numstat`).

        Raises:
            ToolRefused: not on a fix branch, content too large, a limit would be exceeded, the path is a
                directory or ignored by .gitignore.
            WorkspaceRefused: the path is refused, or it (or a directory on the way) is a symlink.
        """
        branch = self.current_branch()
        # Security: writes only on a fix branch; the default branch changes only through a pull request.
        if branch is None or not is_fix_branch(branch) or branch == self._default:
            raise ToolRefused(
                f"Write refused: the workspace is on {branch!r}, not a fix branch; call create_branch first."
            )
        data = content.encode("utf-8")
        if len(data) > max_bytes:
            raise ToolRefused(
                f"Write refused: the content is {len(data)} bytes, over the limit of {max_bytes}: {requested!r}."
            )
        async with self._lock:
            real = self.resolve_path(requested, for_write=True)
            rel = self._relative(real)
            lexical = Path(self._real_root or "") / check_relative(requested).as_posix()
            try:
                info = await off_loop(_check_write_target, real, lexical, requested)
            except OSError as exc:
                raise self._os_refused(exc, requested, "Write") from exc
            ignored = await self._git("check-ignore", "-q", "--", rel, check=False)
            if ignored.returncode == 0:
                raise ToolRefused(f"Write refused: the path is ignored by .gitignore and can't be committed: {rel!r}.")
            mode = stat.S_IMODE(info.st_mode) if info is not None else 0o644
            files, lines = await self._measure_change(rel, data, executable=bool(mode & 0o111))
            if files > max_files_changed or lines > max_lines_changed:
                raise ToolRefused(
                    f"Write refused: the change would touch {files} file(s) and {lines} line(s) against the default "
                    f"branch; the limits are {max_files_changed} file(s) and {max_lines_changed} line(s): "
                    f"{requested!r}."
                )
            try:
                self._tree_changed()
                await off_loop(_replace_file, real, data, mode)
            except OSError as exc:
                raise self._os_refused(exc, requested, "Write") from exc
            finally:
                self._tree_changed()
            return WriteResult(
                path=rel, bytes=len(data), created=info is None, lines_changed_total=lines, files_changed_total=files
            )

    async def _measure_change(self, rel: str, data: bytes, *, executable: bool) -> tuple[int, int]:
        """(files, lines) the working tree would differ from the default branch with `rel` set to `data`.

        Uses a throwaway index, so the working tree and the real index stay untouched until the write.
        """
        blob = (await self._git("hash-object", "-w", "--stdin", stdin=data)).stdout.decode().strip()
        fd, index = tempfile.mkstemp(prefix="greenloop-index-", dir=self._root / ".git")
        os.close(fd)
        os.unlink(index)  # git wants to create the index itself
        env = {"GIT_INDEX_FILE": index}
        try:
            await self._git("read-tree", "HEAD", env=env)
            await self._git("add", "-A", env=env)
            entry = f"{'100755' if executable else '100644'},{blob},{rel}"
            await self._git("update-index", "--add", "--cacheinfo", entry, env=env)
            numstat = await self._git(
                "diff", "--cached", "--numstat", "-z", "--no-renames", self._default_ref(), "--", env=env
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(index)
        return _count_numstat(numstat.stdout)

    async def commit_and_push(self, message: str, *, attempt_id: str, expected_branch: str) -> PushResult:
        """Commit every change with the bot identity and a `Greenloop-Attempt` trailer, and push the fix
        branch to the forge without force.

        Raises:
            ToolRefused: HEAD is not `expected_branch`, not a fix branch, the message is empty, or there is
                nothing to commit.
            GitError: the commit or the push failed (e.g. the forge's branch moved: no force push, ever).
            ValueError: `attempt_id` is not an attempt id.
        """
        if not ATTEMPT_ID_RE.fullmatch(attempt_id):
            raise ValueError(f"Invalid attempt id: {attempt_id!r}.")
        async with self._lock:
            branch = self.current_branch()
            # Security: push only the expected fix branch, never the default branch.
            if branch != expected_branch or branch is None or not is_fix_branch(branch) or branch == self._default:
                raise ToolRefused(
                    f"Commit refused: the workspace is on {branch!r}, not the fix branch {expected_branch!r}."
                )
            await self._git("add", "-A")
            staged = await self._git("diff", "--cached", "--quiet", check=False)
            head = await self._rev_parse("HEAD")
            if staged.returncode == 0:
                # A resumed attempt (its worker died after committing) may find its own commit already there:
                # push it (a no-op if the forge has it) instead of refusing, so the attempt can open its PR.
                resumable = self._pushed != head and await self._is_own_commit(head, attempt_id)
                if self._unpushed != head and not resumable:
                    raise ToolRefused("Nothing to commit: no file changed since the last commit; write a file first.")
            else:
                text = _TRAILER_LINE_RE.sub("", message).strip()
                if not text:
                    raise ToolRefused("Commit refused: the commit message is empty.")
                identity = {
                    "GIT_AUTHOR_NAME": self._bot_name,
                    "GIT_AUTHOR_EMAIL": self._bot_email,
                    "GIT_COMMITTER_NAME": self._bot_name,
                    "GIT_COMMITTER_EMAIL": self._bot_email,
                }
                await self._git(
                    "commit",
                    "--no-verify",
                    "--cleanup=whitespace",
                    "--file=-",
                    f"--trailer={ATTEMPT_TRAILER}: {attempt_id}",
                    stdin=text.encode("utf-8"),
                    env=identity,
                )
                head = await self._rev_parse("HEAD")
                self._unpushed = head
            # Security: a plain refspec, no '+' and no --force: the forge refuses anything but a fast-forward.
            push = await self._git(
                "push", "--porcelain", "--no-verify", "origin", f"HEAD:refs/heads/{branch}", network=True, check=False
            )  # fmt: skip
            if push.returncode != 0:
                await self._settle_push(branch, head, push.stderr)
            self._unpushed = None
            self._pushed = head
            return PushResult(sha=head, branch=branch)

    async def _settle_push(self, branch: str, head: str, stderr: str) -> None:
        """A failed push may have landed all the same (its reply was lost, or git re-sent it and was told
        ``cannot lock ref ... reference already exists``): the forge is the truth. Its fix branch at `head`
        means pushed; anything else raises, saying what the forge showed.

        Raises:
            GitError: the forge's fix branch is not at `head` (or could not be read back).
        """
        seen = await self._git("ls-remote", "--refs", "origin", f"refs/heads/{branch}", network=True, check=False)
        words = seen.stdout.decode("ascii", "replace").split()
        remote = words[0] if seen.returncode == 0 and words else None
        if remote == head:
            return
        if seen.returncode != 0:
            saw = f"the forge's branch could not be read back: {self._scrub(seen.stderr)}"
        elif remote is None:
            saw = "the forge has no such branch"
        else:
            saw = f"the forge's branch is at {remote[:12]}, not {head[:12]}"
        raise GitError(f"Git failed: git push: {self._scrub(stderr)} (read back: {saw})")

    async def _is_own_commit(self, sha: str, attempt_id: str) -> bool:
        """Whether `sha` is ahead of the default branch and carries this attempt's trailer."""
        ahead = await self._git("rev-list", "--count", f"{self._default_ref()}..{sha}", check=False)
        if ahead.returncode != 0 or ahead.stdout.decode().strip() in ("", "0"):
            return False
        body = await self._git("log", "-1", "--format=%B", sha, check=False)
        return f"{ATTEMPT_TRAILER}: {attempt_id}" in body.stdout.decode("utf-8", "replace").splitlines()

    # ------------------------------------------------------------------------------------------ git

    def _default_ref(self) -> str:
        return f"refs/remotes/origin/{self._default}"

    async def _rev_parse(self, ref: str) -> str:
        sha = await self._rev_parse_optional(ref)
        if sha is None:
            raise GitError(f"Git failed: no such commit: {ref!r}.")
        return sha

    async def _rev_parse_optional(self, ref: str) -> str | None:
        result = await self._git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
        sha = result.stdout.decode().strip()
        return sha if result.returncode == 0 and sha else None

    def _environment(self, token: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
        """The whole environment of a git subprocess: nothing inherited but PATH."""
        config = list(_GIT_CONFIG)
        if token is not None:
            # Security: the token reaches git only here, in the child's environment.
            config.insert(0, ("http.extraHeader", _basic_header(token)))
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": os.devnull,
            "LC_ALL": "C",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_COUNT": str(len(config)),
        }
        for i, (key, value) in enumerate(config):
            env[f"GIT_CONFIG_KEY_{i}"] = key
            env[f"GIT_CONFIG_VALUE_{i}"] = value
        env.update(extra or {})
        return env

    async def _git(
        self,
        *args: str,
        network: bool = False,
        check: bool = True,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> _GitResult:
        """Run one git command; `network` commands get the installation token (in the environment only)."""
        token = await self._token() if network else None
        if token is not None:
            self._secrets = (token,)
        argv = ["git", *args]
        result = await self._spawn(argv, self._environment(token, env), cwd or self._root, stdin)
        if token is not None and result.returncode != 0 and self._invalidate and _AUTH_FAILED.search(result.stderr):
            # The installation token expired or was revoked early: refresh it once and run again, as the
            # REST client does. Refused at authentication, the command changed nothing on the forge.
            self._invalidate(token)
            token = await self._token()
            self._secrets = (token,)
            result = await self._spawn(argv, self._environment(token, env), cwd or self._root, stdin)
        if check and result.returncode != 0:
            raise GitError(f"Git failed: git {args[0]}: {self._scrub(result.stderr)}")
        return result

    async def _spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, stdin: bytes | None) -> _GitResult:
        """Start one subprocess and wait for it, killing it at the timeout. The one place git is spawned."""
        if argv[1] in _READ_ONLY_GIT:
            return await self._spawn_process(argv, env, cwd, stdin)
        # Before and after: a listing made while the tree changes is not kept (`_file_index`).
        self._tree_changed()
        try:
            return await self._spawn_process(argv, env, cwd, stdin)
        finally:
            self._tree_changed()

    async def _spawn_process(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, stdin: bytes | None
    ) -> _GitResult:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=dict(env),
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise GitError(f"Git failed: could not start git {argv[1]!r}: {exc.__class__.__name__}.") from exc
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(stdin), timeout=self._timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise GitError(f"Git failed: git {argv[1]} timed out after {self._timeout:g}s.") from None
        except BaseException:  # cancelled (the tool call's deadline): don't leave git running behind
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        return _GitResult(
            returncode=proc.returncode if proc.returncode is not None else -1,
            stdout=stdout,
            stderr=stderr.decode("utf-8", errors="replace"),
        )

    def _scrub(self, stderr: str) -> str:
        """Stderr fit for a message: tokens and host paths masked, shortened."""
        text = redact(stderr.strip(), extra_secrets=self._secrets)
        text = text.replace(str(self._root), "<workspace>")
        if self._real_root:
            text = text.replace(self._real_root, "<workspace>")
        return text[-_STDERR_CHARS:] or "(no output)"


def _count_numstat(output: bytes) -> tuple[int, int]:
    """(files, lines added + deleted) from `git diff --numstat -z` (binary files count 0 lines)."""
    files = 0
    lines = 0
    for record in output.split(b"\0"):
        parts = record.split(b"\t", 2)
        if len(parts) != 3:
            continue
        files += 1
        lines += sum(int(n) for n in parts[:2] if n.isdigit())
    return files, lines


def _select_listed(
    index: Sequence[tuple[str, str]], prefix: str, glob: str | None, limit: int, redact_text: Callable[[str], str]
) -> tuple[tuple[str, ...], int]:
    """The first `limit` paths (redacted) of the file index under directory `prefix` ('' = all, else ending
    in '/') that match `glob`, and how many there are."""
    matched = [shown for shown, path in index if path.startswith(prefix) and (glob is None or matches_glob(path, glob))]
    return tuple(redact_text(p) for p in matched[:limit]), len(matched)


def _few_under(index: Sequence[tuple[str, str]], prefix: str) -> Sequence[tuple[str, str]] | None:
    """The index entries shown under directory `prefix` (found by bisection), or None when there are more
    than `_INLINE_LIST_ENTRIES` (or `prefix` is not valid text). A git path under a valid-text `prefix` is
    shown under it too, so the shown order finds them all."""
    if _printable(prefix) != prefix:
        return None
    start = bisect.bisect_left(index, (prefix, ""))
    stop = start
    while stop < len(index) and index[stop][0].startswith(prefix):
        stop += 1
        if stop - start > _INLINE_LIST_ENTRIES:
            return None
    return index[start:stop]


def _build_index(root: Path, ls_files: bytes) -> tuple[tuple[str, str], ...]:
    """The listable files of `git ls-files -z` output that exist in the working tree, as (shown, git) path
    pairs sorted by the shown path."""
    listed: set[str] = set()
    for raw in ls_files.split(b"\0"):
        if not raw:
            continue
        path = raw.decode("utf-8", errors="surrogateescape")
        # Security: git never lists .git, but a nested repository's .git file is refused all the same.
        if any(is_git_component(part) for part in path.split("/")):
            continue
        listed.add(path)
    # Tracked files deleted in the working tree are still listed by git: keep only those that exist. A file
    # name that is not UTF-8 is shown with U+FFFD in place of its bad bytes: JSON (and the model) can't carry
    # lone surrogates, and one such name must not break the whole listing.
    return tuple(sorted((_printable(p), p) for p in listed if os.path.lexists(root / p)))


def _printable(path: str) -> str:
    """`path` (decoded with surrogateescape) as valid UTF-8 text: undecodable bytes become U+FFFD."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _check_write_target(real: Path, lexical: Path, requested: str) -> os.stat_result | None:
    """The current `lstat` of a write target (None when it is new), refusing symlinks and non-files."""
    # Security: never write through a symlink, neither the file itself (lstat) nor a directory on the way
    # (the resolved path must be the lexical one).
    try:
        info: os.stat_result | None = os.lstat(lexical)
    except FileNotFoundError:
        info = None
    if (info is not None and stat.S_ISLNK(info.st_mode)) or real != lexical:
        raise WorkspaceRefused(
            f"Access denied: the path is or goes through a symlink: {requested!r}.", reason="symlink", path=requested
        )
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise ToolRefused(f"Write refused: the path exists and is not a regular file: {requested!r}.")
    return info


def _replace_file(real: Path, data: bytes, mode: int) -> None:
    """Write `data` to `real` atomically: a temporary file in the same directory, then `os.replace`."""
    real.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".greenloop-", dir=real.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), mode)
        # Security: rename replaces a symlink planted at `real` in the meantime instead of following it.
        os.replace(tmp, real)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_window(
    real: Path, requested: str, redact_text: Callable[[str], str], start_line: int, max_lines: int, max_bytes: int
) -> tuple[list[str], int]:
    """The window of a file's redacted text (see `_window`), read in one go off the event loop."""
    # Security: redact the whole text, then cut the window (a window alone can hide a secret's start).
    return _window(_read_text(real, requested), redact_text, start_line, max_lines, max_bytes)


def _slice(requested: str, rel: str, lines: list[str], total: int, start_line: int) -> FileSlice:
    """The `FileSlice` of a window (`_window`), or a refusal when it is out of range or not UTF-8 text."""
    if total == 0:
        if start_line > 1:
            raise ToolRefused(f"Out of range: the file is empty: {requested!r}.")
        return FileSlice(
            path=rel, start_line=1, end_line=0, total_lines=0, content="", truncated=False, next_start_line=None
        )
    if start_line > total:
        raise ToolRefused(
            f"Out of range: start_line {start_line} is past the end of the file ({total} lines): {requested!r}."
        )
    content = "".join(lines)
    try:
        content.encode("utf-8")
    except UnicodeEncodeError:  # a byte that isn't UTF-8 in the window (carried as a lone surrogate)
        raise ToolRefused(f"Binary file: not UTF-8 text, it can't be shown: {requested!r}.") from None
    end_line = start_line + len(lines) - 1
    truncated = end_line < total
    return FileSlice(
        path=rel,
        start_line=start_line,
        end_line=end_line,
        total_lines=total,
        content=content,
        truncated=truncated,
        next_start_line=end_line + 1 if truncated else None,
    )


def _small_file(real: Path) -> bool:
    """Whether `real` is a regular file small enough to read and redact on the event loop."""
    try:
        info = os.stat(real)
    except OSError:
        return False  # the worker thread's read says why
    return stat.S_ISREG(info.st_mode) and info.st_size <= _INLINE_READ_CHARS


def _read_text(real: Path, requested: str) -> str:
    """The whole text of a regular file (bytes that aren't UTF-8 kept as lone surrogates), or a refusal."""
    try:
        # Security: O_NOFOLLOW refuses a symlink swapped in after resolve_path; O_NONBLOCK keeps a FIFO
        # from hanging the open (it is refused just below as not a regular file).
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ToolRefused(f"Not found: no such file: {requested!r}.") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ToolRefused(f"Not a file: it is a directory; use list_repo_files: {requested!r}.")
        if not stat.S_ISREG(info.st_mode):
            raise ToolRefused(f"Not a file: not a regular file: {requested!r}.")
        if info.st_size > MAX_READ_FILE_BYTES:
            raise ToolRefused(
                f"File too large: {info.st_size} bytes, over the {MAX_READ_FILE_BYTES} byte limit: {requested!r}."
            )
        data = handle.read(MAX_READ_FILE_BYTES + 1)
    if b"\x00" in data[:_BINARY_PROBE_BYTES]:
        raise ToolRefused(f"Binary file: it can't be shown: {requested!r}.")
    return data.decode("utf-8", errors="surrogateescape")


def _window(
    text: str, redact_text: Callable[[str], str], start_line: int, max_lines: int, max_bytes: int
) -> tuple[list[str], int]:
    """Lines `start_line..` (with their newlines) of redacted `text` within `max_lines` and about `max_bytes`
    UTF-8 bytes, and its line count. A first line longer than `max_bytes` is cut to its head."""
    shown = redact_text(text)
    lines = _split_newlines(shown)
    selected: list[str] = []
    used = 0
    for line in lines[start_line - 1 : start_line - 1 + max_lines]:
        size = len(line.encode("utf-8", errors="surrogateescape"))
        if used + size > max_bytes:
            if selected:
                break  # stop here; the next call starts at this line
            raw = line.encode("utf-8", errors="surrogateescape")[:max_bytes]  # one huge line: show its head
            while raw and (raw[-1] & 0xC0) == 0x80:
                raw = raw[:-1]  # don't cut a UTF-8 character in half
            if raw and raw[-1] >= 0xC0:
                raw = raw[:-1]
            # A cut line is no longer whole: redacted again, so the window stays clean text as it is.
            line = redact_text(raw.decode("utf-8", errors="surrogateescape"))
            size = len(raw)
        selected.append(line)
        used += size
    return selected, len(lines)


def _split_newlines(text: str) -> list[str]:
    """`text` cut after every newline (only there, as git counts lines), each line keeping its own."""
    lines = text.split("\n")
    out = [line + "\n" for line in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    return out


def _first_non_directory(root: str, parts: Sequence[str]) -> str | None:
    """The first proper prefix of `parts` (relative, '/'-joined) that exists and is not a directory."""
    probe = root
    for i, part in enumerate(parts[:-1]):
        probe = os.path.join(probe, part)
        try:
            info = os.lstat(probe)
        except OSError:
            return None
        if not stat.S_ISDIR(info.st_mode):
            return "/".join(parts[: i + 1])
    return None

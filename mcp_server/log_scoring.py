"""How strongly each line of a CI log explains a failure (the scoring half of `log_excerpt`).

Every line gets an evidence score from the patterns in `_EVIDENCE` (10: what failed and why, such as
exception headers, compiler errors, failing tests, assertion messages; 9: that something failed, such as
error markers, build results, exit codes; 7: softer failure words; 2: warnings). Lines scoring 5 or more
are anchors. Each anchor then lifts the priority of the lines that explain it:

- its block: the stack frames, indented and "Caused by:" lines under it (Java: the first 12 and last 6
  frames; Python tracebacks: the first 4, the last 20 and the exception line after them);
- three lines of context before and two after, and the GitHub Actions step (`##[group]Run ...`) it is in;
- later anchors weigh more than earlier ones (0.6 at the start of the log to 1.0 at the end), except the
  first error: the earliest line that says what failed and why (score 10: a compiler error, `##[error]`,
  a failing test, a traceback, an exception) outweighs every other line, so its block is always picked
  first, before later errors and their repeats (the first error is usually the cause of the rest).

The last 12 lines before GitHub's post-job cleanup are kept as the end of the log. Noise (download and
install progress, blank and separator lines) scores nothing, and lines repeated many times score little
after their first occurrences. Lines left over get a small filler priority by distance to the nearest
anchor, then by position. Priorities of 3 or more are "core": they form the clusters the excerpt picks.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["ANCHOR", "CORE", "Segment", "bounded_raw", "clean_line", "is_warning", "priorities"]

ANCHOR = 5.0
CORE = 3.0
FIRST_ERROR_SCORE = 10.0
FIRST_ERROR_WEIGHT = 11.0
MAX_RAW_LINE = 20_000

_SCORED_CHARS = 2000
_BLOCK_HEAD = 12
_BLOCK_TAIL = 6
_TRACEBACK_HEAD = 4
_TRACEBACK_TAIL = 20
_TAIL_LINES = 12
_REPEAT_LIMIT = 3
_REPEAT_LIMIT_NUMBERS = 20
_FRAME_FLOOR = 1.5
_FILLER_DISTANCE = 30

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]{0,512}(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?")
_PREFIX = re.compile(r"(?:[^\t\r\n]{0,200}\t[^\t\r\n]{0,200}\t)?\ufeff?\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z ?")


def _words(*literals: str) -> list[str]:
    """Whole-word patterns, each starting with its literal (the word boundary is checked after it)."""
    return [f"{re.escape(w)}(?<!\\w{re.escape(w)})\\b" for w in literals]


# A line scores its best match. Each pattern is searched over the whole window at once and its matches
# mapped back to lines. Patterns start with a literal so the regex engine jumps between occurrences (a
# leading `\b`, character class or alternation makes it try every position, 10-20x slower); word
# boundaries are lookbehinds placed after the literal.
_EVIDENCE: tuple[tuple[float, list[str]], ...] = (
    (
        10.0,
        [
            r"##\[error\]",
            r"Traceback \(most recent call last\)",
            r"Error(?<!\wError)(?:\[[A-Za-z]?\d+\])?:",
            r"error(?<!\werror)(?:\[[A-Za-z]?\d+\])?:",
            "Exception(?=:| *$)",
            "Error(?=:| *$)",
            "Throwable(?=:| *$)",
            *_words("panic", "panicked", "FAIL", "FAILED", "assert"),
            "<<< FAILURE!",
            "<<< ERROR!",
            r"Tests run: \d+, Failures: (?:[1-9]|\d+, Errors: [1-9])",
            "No space left on device",
            "Segmentation fault",
            "core dumped",
            "ut of memory",
            "OOMKilled",
            "ssertion failed",
            "ssertion error",
            "ComparisonFailure",
            r"^E {2,}\S",
            r"expected(?<!\wexpected)\b[^\n]{0,200}\bbut (?:was|got|found)\b",
            r":\[\d+,\d+\] ",
            "FAILURES =",
            "short test summary info",
        ],
    ),
    (
        9.0,
        [
            *_words("ERROR", "ERR", "FATAL", "FAILURE", "FAILS", "fatal", "Killed"),
            "BUILD FAILED",
            "Build failed",
            "marked build as failure",
            "Caused by:",
            "exit code [1-9]",
            "exit status [1-9]",
            "returned non-zero",
            "returned status [1-9]",
            "returned exit code [1-9]",
            r"[1-9]\d* (?:failed|errors?|failures?)\b",
            "✕ ",
            "✗ ",
            "✖ ",
            "❌",
            "× ",
        ],
    ),
    (
        7.0,
        [
            *_words("failed", "Failed", "cannot", "Cannot", "error", "failure", "unresolved", "Undefined", "timed out"),
            "cannot find symbol",
            "undefined reference",
            "cannot access",
            "o such file",
            "ermission denied",
            "command not found",
            r"not found\b",
            "ould not",
            "nable to",
            "Timeout(?:Error|Exception)?:",
            "eadline exceeded",
        ],
    ),
    (2.0, [*_words("WARN", "WARNING", "warning", "Warning"), r"^>[ \t]"]),
)
_EVIDENCE_RE = tuple((w, re.compile(p, re.MULTILINE)) for w, ps in _EVIDENCE for p in ps)
# Counts of zero are not failures: "Failures: 0, Errors: 0", "0 errors", "no errors found".
_ZERO_RE = tuple(
    re.compile(p)
    for p in (
        "Failures: 0, Errors: 0",
        r"0(?<![\w.]0) (?:errors?|failures?|failed)\b",
        r"no(?<!\wno) (?:errors?|failures?|failed)\b",
        r"No(?<!\wNo) (?:errors?|failures?|failed)\b",
        r"error(?<!\werror)s?: 0\b",
    )
)
# Download and install progress (blank and separator lines are recognised per line by `_SEPARATOR`).
_NOISE_RE = tuple(
    re.compile(p, re.MULTILINE)
    for p in (
        r"Download(?:ing|ed)? (?:from|https?:)",
        r"Progress \(\d",
        "Receiving objects",
        "Resolving deltas",
        "Unpacking objects",
        "remote: (?:Counting|Compressing|Enumerating|Total)",
        r"Get:(?<![^\n]Get:)\d+ ",
        "Preparing to unpack",
        "Selecting previously",
        "Setting up(?<![^\n]Setting up) ",
        "Processing triggers",
        r"Collecting [\w.\[\]-]+(?:[<>=!~ ]|$)",
        "Requirement already satisfied",
        "Using cached ",
        r"%[ \t]*\|[█▉▊▋▌▍▎▏#= ]",
        r"\[=*>?[ \t]*\][ \t]*\d",
        r"##\[endgroup\]",
    )
)
_SEPARATOR = re.compile(r"[ \t]*(?:\[\w+\][ \t]*)?[-=_*#~.+]{4,}[ \t]*")
_FRAME = re.compile(
    r"\s+at |\s*\.\.\. \d+ (?:more|common frames omitted)|\s*File \".*\", line \d+|\s*(?:Caused by|Suppressed):"
)
_CALL_FRAME = re.compile(r"\s+at |\s*File \".*\", line \d+")
_MARKER_ONLY = re.compile(r"\s*(?:\[(?:ERROR|WARNING|WARN|INFO)\]|##\[error\]|ERROR:?|E)?\s*")
_TRACEBACK = re.compile(r"Traceback \(most recent call last\)")
_ROOT_MARKER = re.compile(
    r"##\[error\]|\[ERROR\]|\b(?:error|ERROR|Error)\b|FAIL|<<< (?:FAILURE|ERROR)!|Traceback \(most recent call last\)"
    r"|\bpanic|No space left on device|Segmentation fault|core dumped|OOMKilled|^E {2,}\S|ssertion"
    r"|(?:Exception|Error|Throwable): \S"
)
_WARNING = re.compile(r"\bwarn(?:ing)?\b", re.IGNORECASE)
_DIGITS = re.compile(r"\d+")


def is_warning(text: str) -> bool:
    """Whether a log line is a warning (a compiler warning can look like an error otherwise)."""
    return _WARNING.search(text) is not None


def _first_error(scored: list[_Lines]) -> tuple[int, int] | None:
    """(id of the lines, index) of the first error: the earliest root-error line, in the failing GitHub
    Actions step when the log has steps (the step of the first `##[error]`; earlier steps succeeded)."""
    step: tuple[int, int] | None = None
    for lines in scored:
        for i, text in enumerate(lines.clean):
            if text.startswith("##[group]Run "):
                step = (id(lines), i)
            elif text.startswith("##[error]"):
                break
        else:
            continue
        break
    else:
        step = None  # no ##[error] line: any step may hold the cause
    started = step is None
    for lines in scored:
        for i in range(lines.n):
            started = started or (id(lines), i) == step
            if started and lines.is_root_error(i):
                return id(lines), i
    return None


@dataclass
class Segment:
    """Consecutive lines of a log: `raw[i]` is line `first + i` (1-based)."""

    first: int
    raw: list[str]


def clean_line(raw: str) -> str:
    """`raw` without ANSI codes and without the GitHub timestamp / job-and-step prefix."""
    text = _ANSI.sub("", raw) if "\x1b" in raw else raw
    m = _PREFIX.match(text)
    return text[m.end() :] if m is not None else text


def bounded_raw(raw: str, limit: int = MAX_RAW_LINE) -> str:
    """A very long line cut to about `limit` characters, never through a word (which could be a secret)."""
    if len(raw) <= limit:
        return raw
    head = raw[: limit * 3 // 4]
    head = head[: max(head.rfind(" "), head.rfind("\t")) + 1]
    rest = raw[-(limit // 4) :]
    starts = [i for i in (rest.find(" "), rest.find("\t")) if i >= 0]
    rest = rest[min(starts) :] if starts else ""
    return f"{head}…[{len(raw) - len(head) - len(rest)} chars cut]…{rest}"


def priorities(segments: list[Segment], total: int) -> tuple[dict[int, float], dict[int, str], int | None]:
    """Priority of every line of `segments` (0: never shown) and its raw text, by line number, and the
    number of the first error line (None when there is none).

    The last segment is taken to be the end of the log; `total` is the number of lines in the log.
    """
    prio: dict[int, float] = {}
    raw_of: dict[int, str] = {}
    scored = [
        (segment, _Lines([clean_line(bounded_raw(r, _SCORED_CHARS)) for r in segment.raw])) for segment in segments
    ]
    first_error = _first_error([lines for _, lines in scored])
    first_line: int | None = None
    for segment, lines in scored:
        first = first_error[1] if first_error is not None and first_error[0] == id(lines) else None
        if first is not None:
            first_line = segment.first + first
        values = lines.priorities(segment.first, total, at_end=segment is segments[-1], first_error=first)
        for i, value in enumerate(values):
            n = segment.first + i
            if n <= total:
                raw_of[n] = segment.raw[i]
                prio[n] = max(value, prio.get(n, 0.0))
    return prio, raw_of, first_line


def _matching_lines(pattern: re.Pattern[str], joined: str, starts: list[int]) -> Iterator[int]:
    """Indexes of the lines (starting at `starts` in `joined`) in which `pattern` matches."""
    last = -1
    for m in pattern.finditer(joined):
        i = bisect_right(starts, m.start()) - 1
        if i != last:
            last = i
            yield i


class _Lines:
    """The features of consecutive cleaned lines, and the priorities derived from them."""

    def __init__(self, clean: list[str]) -> None:
        self.clean = clean
        self.n = n = len(clean)
        self.score, self.noise = _scores(clean)
        self.bare = [_MARKER_ONLY.fullmatch(c) is not None for c in clean]  # "[ERROR] " with nothing after it
        self.frame = [_FRAME.match(c) is not None for c in clean]
        for i in range(n):
            if self.bare[i]:
                self.score[i] = 0.0
            elif (
                i + 1 < n
                and self.frame[i + 1]
                and not self.frame[i]
                and not self.noise[i]
                and _CALL_FRAME.match(clean[i + 1])
            ):
                # The line a stack trace hangs from names the exception, whatever its wording.
                self.score[i] = max(self.score[i], 9.0)
        # A continuation line belongs to the block above it: stack frames, indented lines, "Caused by:",
        # and bare markers that separate the parts of one error report.
        self.cont = [
            self.frame[i] or self.bare[i] or (clean[i][:1] in (" ", "\t") and not self.noise[i]) for i in range(n)
        ]
        self._demote_repeats()
        self.prio = [0.0] * n

    def _demote_repeats(self) -> None:
        """Retry loops and polling say nothing new after the first few lines and the last one: exact
        repeats beyond 3, and lines differing only in numbers beyond 20."""
        for keys, limit in (
            ([c.strip() for c in self.clean], _REPEAT_LIMIT),
            ([_DIGITS.sub("0", c.strip()) for c in self.clean], _REPEAT_LIMIT_NUMBERS),
        ):
            counts = Counter(k for k in keys if k)
            seen: Counter[str] = Counter()
            for i, key in enumerate(keys):
                if key and counts[key] > limit:
                    seen[key] += 1
                    if limit < seen[key] < counts[key]:
                        self.score[i] *= 0.2
                        self.noise[i] = True

    def lift(self, i: int, value: float) -> None:
        if 0 <= i < self.n and value > self.prio[i]:
            self.prio[i] = value

    def is_root_error(self, i: int) -> bool:
        """Whether line `i` can be the first error: it says what failed and why (score 10) with an error
        marker or an exception with its message (a bare exception name, or a compiler warning, is not)."""
        return (
            self.score[i] >= FIRST_ERROR_SCORE
            and not self.frame[i]
            and not self.bare[i]
            and _ROOT_MARKER.search(self.clean[i]) is not None
            and not is_warning(self.clean[i])
        )

    def priorities(self, first: int, total: int, *, at_end: bool, first_error: int | None = None) -> list[float]:
        run = [0] * (self.n + 1)  # run[i]: number of continuation lines starting at i
        for i in range(self.n - 1, -1, -1):
            run[i] = run[i + 1] + 1 if self.cont[i] else 0
        block_floor = 0.0
        step = -1  # the last "##[group]Run ..." line: the GitHub Actions step an error belongs to
        for i in range(self.n):
            s = self.score[i]
            if self.clean[i].startswith("##[group]Run "):
                step = i
            if s >= ANCHOR and (not self.frame[i] or self.clean[i].lstrip().startswith("Caused by")):
                weight = s * (0.6 + 0.4 * (first + i) / max(total, 1))
                if i == first_error:
                    weight = FIRST_ERROR_WEIGHT  # root cause first: above every later error, however recent
                self._anchor(i, weight, run[i + 1], step)
                block_floor = s * 0.25
            elif self.cont[i] and block_floor:
                self.lift(i, block_floor)  # the middle of a long block: shown if room is left
            elif not self.cont[i]:
                block_floor = 0.0
            if s > 0:
                self.lift(i, s * 0.3)
            if self.frame[i]:
                self.lift(i, _FRAME_FLOOR)
        if at_end:
            self._end_of_log()
        self._filler(first, total)
        return self.prio

    def _anchor(self, i: int, weight: float, block: int, step: int) -> None:
        self.lift(i, weight)
        if step >= 0:
            self.lift(step, weight * 0.35)
        for k, share in ((1, 0.5), (2, 0.4), (3, 0.3)):
            if i - k >= 0 and not self.noise[i - k]:
                self.lift(i - k, weight * share)
        if _TRACEBACK.search(self.clean[i]):
            # Python: the innermost frames and the exception line (after the frames) matter most.
            end = min(i + block + 1, self.n - 1)
            head, head_w, tail, tail_w = _TRACEBACK_HEAD, 0.7, _TRACEBACK_TAIL, 0.95
            self.lift(end, weight)
        else:
            # Java and friends: the throwing frames come first; "Caused by:" lines are anchors too.
            end = i + block
            head, head_w, tail, tail_w = _BLOCK_HEAD, 0.95, _BLOCK_TAIL, 0.7
        for j in range(i + 1, min(end, i + head) + 1):
            self.lift(j, weight * head_w)
        for j in range(max(i + head + 1, end - tail + 1), end + 1):
            self.lift(j, weight * tail_w)
        for k, share in ((1, 0.45), (2, 0.35)):
            if end + k < self.n and not self.noise[end + k]:
                self.lift(end + k, weight * share)

    def _end_of_log(self) -> None:
        """The last lines, before GitHub's post-job cleanup if there is one."""
        end = next((i for i in range(self.n) if self.clean[i].startswith("Post job cleanup.")), self.n)
        rank = 0
        for i in range(end - 1, -1, -1):
            if rank >= _TAIL_LINES:
                break
            if not self.noise[i]:
                self.lift(i, 4.0 - 0.2 * rank)
                rank += 1

    def _filler(self, first: int, total: int) -> None:
        """What is left of the budget goes to lines near anchors, then to later lines."""
        n = self.n
        distance = [n + 1] * n
        last = -(n + 1)
        for i in range(n):
            if self.score[i] >= ANCHOR:
                last = i
            distance[i] = i - last
        last = 2 * n + 1
        for i in range(n - 1, -1, -1):
            if self.score[i] >= ANCHOR:
                last = i
            distance[i] = min(distance[i], last - i)
        for i in range(n):
            if not self.noise[i]:
                near = 1.0 / (1 + distance[i]) if distance[i] <= _FILLER_DISTANCE else 0.0
                self.lift(i, 0.05 + near + 0.1 * (first + i) / max(total, 1))


def _scores(clean: list[str]) -> tuple[list[float], list[bool]]:
    """Evidence score and noise flag of every line."""
    n = len(clean)
    joined = "\n".join(clean)
    starts = [0] * n
    for i in range(1, n):
        starts[i] = starts[i - 1] + len(clean[i - 1]) + 1
    score = [0.0] * n
    for weight, pattern in _EVIDENCE_RE:
        for i in _matching_lines(pattern, joined, starts):
            score[i] = max(score[i], weight)
    for pattern in _ZERO_RE:
        for i in _matching_lines(pattern, joined, starts):
            if score[i] >= ANCHOR:
                score[i] = 1.0
    noise = [not c.strip() or (c[-1] in "-=_*#~.+ " and _SEPARATOR.fullmatch(c) is not None) for c in clean]
    for pattern in _NOISE_RE:
        for i in _matching_lines(pattern, joined, starts):
            noise[i] = True
    return [0.0 if noise[i] else score[i] for i in range(n)], noise

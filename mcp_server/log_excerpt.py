"""Failure excerpts of CI logs: the lines that explain a failure, within a token budget, redacted.

`excerpt(log)` scores every line (error markers, test failure summaries, exception headers, exit codes),
keeps Python tracebacks and Java stack traces as blocks (their first and last frames when long), a few
lines of context around each error and the end of the log, and drops noise (download progress,
separators, repeated lines). Lines are then chosen greedily by priority until the rendered excerpt reaches
the budget; what is left of the budget goes to lines near the errors. `excerpt(log, start_line=n)` is a
plain page from line n instead. `tail(log)` is the last lines that fit (a baseline).

Line numbers are 1-based and count `\\r\\n`, `\\r` and `\\n` as line breaks (progress bars use bare `\\r`).
Tokens are estimated as `ceil(characters / 3.5)` of the rendered text, which includes the line-number
gutter and the `... [lines a-b omitted] ...` markers; the estimate never exceeds the budget.

Shown text has ANSI colour codes, GitHub timestamps (`2026-01-02T03:04:05.1234567Z `) and the
`job<TAB>step<TAB>` prefix of `gh run view --log` removed, control characters replaced by U+FFFD, long
lines shortened, and every secret redacted by `policy.redaction` (with the caller's live secrets) before it
is measured or returned.

Large logs: the last 2 MB (at most 50 000 lines) are scored line by line; in the part before that only the
lines around the first and last occurrences of error words are looked at (found with `str.rfind`, C
speed). Memory stays bounded by that window whatever the log size; a 100 MB log takes a few seconds.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left, bisect_right, insort
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from itertools import pairwise

from pydantic import BaseModel, ConfigDict, Field

from policy.redaction import LineRedactor, redact

__all__ = [
    "CHARS_PER_TOKEN",
    "MIN_BUDGET_TOKENS",
    "Excerpt",
    "ExcerptLine",
    "decode_log",
    "estimate_tokens",
    "excerpt",
    "tail",
]

CHARS_PER_TOKEN = 3.5
MIN_BUDGET_TOKENS = 100

_FULL_SCAN_CHARS = 2_000_000
_FULL_SCAN_LINES = 50_000
_HEAD_WORDS = ("##[error]", "ERROR", "Error", "error", "FAIL", "Fail", "fail", "FATAL", "fatal", "Traceback",
               "Exception", "panic", "Caused by", "exit code")
_HEAD_FIRST_HITS = 10
_HEAD_LAST_HITS = 100
_HEAD_BEFORE = 3
_HEAD_AFTER = 30
_MAX_SCAN_BACK = 8192
_MAX_RAW_LINE = 20_000
_MAX_LINE_CHARS = 500
_BINARY_SAMPLE = 65_536
_BINARY_RATIO = 0.3

_ANCHOR = 5.0
_BLOCK_HEAD = 12
_BLOCK_TAIL = 6
_TRACEBACK_HEAD = 4
_TRACEBACK_TAIL = 20
_TAIL_LINES = 12
_REPEAT_LIMIT = 3
_REPEAT_LIMIT_NUMBERS = 20
_CORE = 3.0
_FRAME_FLOOR = 1.5
_CLUSTER_SHARE = 0.4

_SEP = re.compile(r"\r\n|\r|\n")
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]{0,512}(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?")
_PREFIX = re.compile(r"(?:[^\t\r\n]{0,200}\t[^\t\r\n]{0,200}\t)?\ufeff?\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z ?")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_BINARYISH = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\ufffd]")



def _words(*literals: str) -> list[str]:
    """Whole-word patterns, each starting with its literal (the word boundary is checked after it)."""
    return [f"{re.escape(w)}(?<!\\w{re.escape(w)})\\b" for w in literals]


# Weighted evidence that a line explains a failure; a line scores its best match. Each pattern is searched
# over the whole window at once and its matches mapped back to lines. Every pattern starts with a literal
# so the regex engine jumps between occurrences (a leading `\b`, character class or alternation makes it
# try every position, 10-20x slower); word boundaries are lookbehinds placed after the literal.
_EVIDENCE: tuple[tuple[float, list[str]], ...] = (
    # What failed and why: exception headers, compiler errors, failing tests, assertion messages.
    (10.0, ["##[error]", r"Traceback \(most recent call last\)", r"Error(?<!\wError)(?:\[[A-Za-z]?\d+\])?:",
            r"error(?<!\werror)(?:\[[A-Za-z]?\d+\])?:", "Exception(?=:| *$)", "Error(?=:| *$)",
            "Throwable(?=:| *$)", *_words("panic", "panicked", "FAIL", "FAILED", "assert"), "<<< FAILURE!",
            "<<< ERROR!", r"Tests run: \d+, Failures: (?:[1-9]|\d+, Errors: [1-9])", "No space left on device",
            "Segmentation fault", "core dumped", "ut of memory", "OOMKilled", "ssertion failed", "ssertion error",
            "ComparisonFailure", r"^E {2,}\S", r"expected(?<!\wexpected)\b[^\n]{0,200}\bbut (?:was|got|found)\b",
            r":\[\d+,\d+\] ", "FAILURES =", "short test summary info"]),
    # That something failed: error markers, build results, exit codes.
    (9.0, [*_words("ERROR", "ERR", "FATAL", "FAILURE", "FAILS", "fatal", "Killed"), "BUILD FAILED",
           "Build failed", "marked build as failure", "Caused by:", "exit code [1-9]", "exit status [1-9]",
           "returned non-zero", "returned status [1-9]", "returned exit code [1-9]",
           r" (?:failed|errors?|failures?)\b(?<=[^\d.][1-9] \w{6})|"
           r" (?:failed|errors?|failures?)\b(?<=[1-9]\d \w{6})", "✕ ", "✗ ", "✖ ", "❌", "× "]),
    (7.0, [*_words("failed", "Failed", "cannot", "Cannot", "error", "failure", "unresolved", "Undefined",
                   "timed out"), "cannot find symbol", "undefined reference", "cannot access", "o such file",
           "ermission denied", "command not found", r"not found\b", "ould not", "nable to",
           "Timeout(?:Error|Exception)?:", "eadline exceeded"]),
    (2.0, [*_words("WARN", "WARNING", "warning", "Warning"), r"^>[ \t]"]),
)
_EVIDENCE_RE = tuple((w, re.compile(p, re.MULTILINE)) for w, ps in _EVIDENCE for p in ps)
# Counts of zero are not failures: "Failures: 0, Errors: 0", "0 errors", "no errors found".
_ZERO_RE = tuple(re.compile(p) for p in (
    "Failures: 0, Errors: 0", r"0(?<![\w.]0) (?:errors?|failures?|failed)\b",
    r"no(?<!\wno) (?:errors?|failures?|failed)\b", r"No(?<!\wNo) (?:errors?|failures?|failed)\b",
    r"error(?<!\werror)s?: 0\b"))
# Lines that never explain a failure: download and install progress (blank and separator lines are
# recognised per line by `_SEPARATOR`).
_NOISE_RE = tuple(re.compile(p, re.MULTILINE) for p in (
    r"Download(?:ing|ed)? (?:from|https?:)", r"Progress \(\d", "Receiving objects", "Resolving deltas",
    "Unpacking objects", "remote: (?:Counting|Compressing|Enumerating|Total)", r"Get:(?<![^\n]Get:)\d+ ",
    "Preparing to unpack", "Selecting previously", "Setting up(?<![^\n]Setting up) ", "Processing triggers",
    r"Collecting [\w.\[\]-]+(?:[<>=!~ ]|$)", "Requirement already satisfied", "Using cached ",
    r"%[ \t]*\|[█▉▊▋▌▍▎▏#= ]", r"\[=*>?[ \t]*\][ \t]*\d", r"##\[endgroup\]"))
_SEPARATOR = re.compile(r"[ \t]*(?:\[\w+\][ \t]*)?[-=_*#~.+]{4,}[ \t]*")
_FRAME = re.compile(
    r"\s+at |\s*\.\.\. \d+ (?:more|common frames omitted)|\s*File \".*\", line \d+|\s*(?:Caused by|Suppressed):")
_DIGITS = re.compile(r"\d+")
_MARKER_ONLY = re.compile(r"\s*(?:\[(?:ERROR|WARNING|WARN|INFO)\]|##\[error\]|ERROR:?|E)?\s*")
_CALL_FRAME = re.compile(r"\s+at |\s*File \".*\", line \d+")
_TRACEBACK = re.compile(r"Traceback \(most recent call last\)")


class ExcerptLine(BaseModel):
    """One line of the log, or (when `omitted_through` is set) a marker for lines left out."""

    model_config = ConfigDict(frozen=True)

    number: int = Field(description="1-based line number in the log; for a gap, the first omitted line")
    text: str = Field(description="the cleaned, redacted line, or '... [lines a-b omitted] ...'")
    omitted_through: int | None = Field(default=None, description="set on gap markers: last omitted line")


class Excerpt(BaseModel):
    """A redacted excerpt of a log that fits a token budget."""

    model_config = ConfigDict(frozen=True)

    lines: list[ExcerptLine] = Field(description="kept lines and gap markers, in log order")
    total_lines: int = Field(description="number of lines in the whole log")
    kept_line_numbers: list[int] = Field(description="line numbers shown, ascending")
    truncated: bool = Field(description="true when some lines of the log are not shown")
    next_start_line: int | None = Field(
        default=None, description="for a page: the start_line of the next page; null at the end or for excerpts")
    estimated_tokens: int = Field(description="ceil(len(rendered) / 3.5)")
    rendered: str = Field(description="the excerpt as text: 'NNNN| line' rows and gap markers")
    note: str | None = Field(default=None, description="why the excerpt is unusual (binary log, huge log)")


def estimate_tokens(text: str) -> int:
    """The token estimate used for budgets: one token per 3.5 characters, rounded up."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def decode_log(data: bytes) -> str:
    """Log bytes as text: UTF-8 (a BOM is dropped), undecodable bytes replaced by U+FFFD."""
    return data.decode("utf-8", errors="replace").removeprefix("\ufeff")


def excerpt(
    log_text: str | bytes,
    *,
    budget_tokens: int = 2000,
    start_line: int | None = None,
    extra_secrets: Collection[str] = (),
) -> Excerpt:
    """The lines of `log_text` that best explain a failure, within `budget_tokens`, redacted.

    With `start_line`, a plain page of consecutive lines from that line instead; `next_start_line` then
    says where the next page starts.

    Raises:
        ValueError: `budget_tokens` is below `MIN_BUDGET_TOKENS`, or `start_line` is not a line of the log.
    """
    log = _Log.open(log_text, budget_tokens, extra_secrets)
    if log.binary_note is not None:
        return log.binary_excerpt()
    if start_line is not None:
        return log.page(start_line)
    return log.best()


def tail(log_text: str | bytes, *, budget_tokens: int = 2000, extra_secrets: Collection[str] = ()) -> Excerpt:
    """The last lines of `log_text` that fit `budget_tokens`, redacted (the naive baseline).

    Raises:
        ValueError: `budget_tokens` is below `MIN_BUDGET_TOKENS`.
    """
    log = _Log.open(log_text, budget_tokens, extra_secrets)
    if log.binary_note is not None:
        return log.binary_excerpt()
    return log.tail()


@dataclass
class _Segment:
    """Consecutive lines of the log: `raw[i]` is line `first + i`."""

    first: int
    raw: list[str]


@dataclass
class _Log:
    text: str
    total: int
    budget_chars: int
    secrets: tuple[str, ...]
    separators: int
    binary_note: str | None = None
    width: int = 4
    line_cap: int = _MAX_LINE_CHARS
    _pem: dict[int, str] = field(default_factory=dict)
    _shown: dict[int, str] = field(default_factory=dict)

    @classmethod
    def open(cls, log_text: str | bytes, budget_tokens: int, extra_secrets: Collection[str]) -> _Log:
        if budget_tokens < MIN_BUDGET_TOKENS:
            raise ValueError(f"Invalid budget: budget_tokens must be at least {MIN_BUDGET_TOKENS}: {budget_tokens!r}.")
        text = decode_log(log_text) if isinstance(log_text, bytes) else log_text
        separators = _separators(text, 0, len(text))
        total = separators + (1 if text and text[-1] not in "\r\n" else 0)
        budget_chars = int(budget_tokens * CHARS_PER_TOKEN)
        log = cls(text, total, budget_chars, tuple(sorted({s for s in extra_secrets if s})), separators)
        log.width = max(4, len(str(total)))
        log.line_cap = max(80, min(_MAX_LINE_CHARS, budget_chars // 3))
        log.binary_note = _binary_note(text)
        if log.binary_note is None and "PRIVATE KEY" in text:
            log._pem = _private_key_lines(text, log.secrets)
        return log

    # -- rendering -----------------------------------------------------------------------------------

    def shown(self, number: int, raw: str) -> str:
        """Line `number` as displayed: cleaned, redacted, shortened."""
        cached = self._shown.get(number)
        if cached is not None:
            return cached
        if number in self._pem:
            text = _clean(self._pem[number])
        else:
            text = redact(_clean(_bounded_raw(raw)), extra_secrets=self.secrets)
        text = _shorten(_CONTROL.sub("\ufffd", text), self.line_cap)
        self._shown[number] = text
        return text

    def row_cost(self, number: int, raw: str) -> int:
        return self.width + 3 + len(self.shown(number, raw))

    def gap_cost(self, first: int, last: int) -> int:
        return len(_gap_text(first, last)) + 1 if last >= first else 0

    def render(self, kept: list[int], raw_of: dict[int, str], *, note: str | None = None,
               gaps: bool = True, next_start: int | None = None) -> Excerpt:
        lines: list[ExcerptLine] = []
        rows: list[str] = [note] if note else []
        prev = 0
        for n in kept:
            if gaps and n > prev + 1:
                lines.append(ExcerptLine(number=prev + 1, text=_gap_text(prev + 1, n - 1), omitted_through=n - 1))
                rows.append(lines[-1].text)
            text = self.shown(n, raw_of[n])
            lines.append(ExcerptLine(number=n, text=text))
            rows.append(f"{n:>{self.width}}| {text}")
            prev = n
        if gaps and prev < self.total:
            lines.append(ExcerptLine(number=prev + 1, text=_gap_text(prev + 1, self.total),
                                     omitted_through=self.total))
            rows.append(lines[-1].text)
        rendered = "\n".join(rows) + ("\n" if rows else "")
        return Excerpt(
            lines=lines,
            total_lines=self.total,
            kept_line_numbers=list(kept),
            truncated=len(kept) < self.total,
            next_start_line=next_start,
            estimated_tokens=estimate_tokens(rendered),
            rendered=rendered,
            note=note,
        )

    def binary_excerpt(self) -> Excerpt:
        note = self.binary_note or ""
        return Excerpt(lines=[], total_lines=self.total, kept_line_numbers=[], truncated=self.total > 0,
                       estimated_tokens=estimate_tokens(note + "\n"), rendered=note + "\n", note=note)

    # -- modes ---------------------------------------------------------------------------------------

    def page(self, start_line: int) -> Excerpt:
        if not 1 <= start_line <= max(self.total, 1):
            raise ValueError(f"Invalid start line: the log has {self.total} lines: {start_line!r}.")
        offset = _offset_of_line(self.text, start_line)
        used = 0
        kept: list[int] = []
        raw_of: dict[int, str] = {}
        number = start_line
        for raw in _iter_lines(self.text, offset):
            cost = self.row_cost(number, raw)
            if kept and used + cost > self.budget_chars:
                break
            kept.append(number)
            raw_of[number] = raw
            used += cost
            number += 1
        next_start = number if number <= self.total else None
        return self.render(kept, raw_of, gaps=False, next_start=next_start)

    def tail(self) -> Excerpt:
        segment = self._tail_segment()
        kept: list[int] = []
        rows = 0
        for i in range(len(segment.raw) - 1, -1, -1):
            number = segment.first + i
            if number > self.total:
                continue
            cost = self.row_cost(number, segment.raw[i])
            if rows + cost + self.gap_cost(1, number - 1) > self.budget_chars:
                break
            kept.append(number)
            rows += cost
        kept.reverse()
        return self.render(kept, {n: segment.raw[n - segment.first] for n in kept})

    def best(self) -> Excerpt:
        cut = self._tail_cut()
        segments = _head_segments(self.text, cut) if cut > 0 else []
        segments.append(self._tail_segment(cut))
        note = None
        if cut > 0:
            note = (f"Note: large log ({len(self.text) // 1_000_000} MB): the end was read in full, the rest "
                    "searched for error lines only.")
        note = note if note is None or len(note) < self.budget_chars // 4 else None
        prio, raw_of = _priorities(segments, self.total)
        budget = self.budget_chars - (len(note) + 1 if note else 0)
        kept = self._choose(prio, raw_of, budget)
        return self.render(kept, raw_of, note=note)

    # -- selection -----------------------------------------------------------------------------------

    def _choose(self, prio: dict[int, float], raw_of: dict[int, str], budget: int) -> list[int]:
        """Error clusters first (best first, each whole or its head), then single lines near them."""
        kept: list[int] = []
        used = self.gap_cost(1, self.total)

        kept_set: set[int] = set()

        def add(n: int, limit: int = budget) -> bool:
            nonlocal used
            cost = self.row_cost(n, raw_of[n]) + self._gap_delta(kept, n)
            if used + cost > min(limit, budget):
                return False
            insort(kept, n)
            used += cost
            return True

        clusters: list[list[int]] = []
        for n in sorted(n for n, p in prio.items() if p >= _CORE):
            if clusters and n == clusters[-1][-1] + 1:
                clusters[-1].append(n)
            else:
                clusters.append([n])
        clusters.sort(key=lambda c: (-max(prio[n] for n in c), -c[-1]))
        errors = [c for c in clusters if max(prio[n] for n in c) >= _ANCHOR]
        others = [c for c in clusters if max(prio[n] for n in c) < _ANCHOR]
        # Error clusters in two passes: first none that does not fit whole may take more than a share of
        # the budget, so a second error elsewhere still gets shown; then the rest goes to them in order.
        # Then the other clusters (the end of the log, step headers).
        for share, group in ((_CLUSTER_SHARE, errors), (1.0, errors), (1.0, others)):
            for cluster in group:
                if budget - used < self.width + 4:
                    break
                limit = used + int(share * budget)
                misses = 0
                for n in cluster:
                    if n in kept_set:
                        continue
                    if used < limit and add(n, limit):
                        kept_set.add(n)
                        misses = 0
                    else:
                        misses += 1
                        if misses >= 3:
                            break
        misses = 0
        for n in sorted((n for n, p in prio.items() if 0 < p < _CORE), key=lambda n: (-prio[n], -n)):
            if add(n):
                misses = 0
            else:
                misses += 1
                if misses > 200 or budget - used < self.width + 4:
                    break
        return self._fill_small_gaps(kept, raw_of, budget - used)

    def _gap_delta(self, kept: list[int], n: int) -> int:
        i = bisect_left(kept, n)
        before = kept[i - 1] if i > 0 else 0
        after = kept[i] if i < len(kept) else self.total + 1
        return (self.gap_cost(before + 1, n - 1) + self.gap_cost(n + 1, after - 1)
                - self.gap_cost(before + 1, after - 1))

    def _fill_small_gaps(self, kept: list[int], raw_of: dict[int, str], room: int) -> list[int]:
        """Show the lines of 1-3 line gaps instead of a marker when that costs little or nothing."""
        options: list[tuple[int, list[int]]] = []
        for a, b in pairwise(kept):
            missing = list(range(a + 1, b))
            if 0 < len(missing) <= 3 and all(m in raw_of for m in missing):
                cost = sum(self.row_cost(m, raw_of[m]) for m in missing) - self.gap_cost(a + 1, b - 1)
                options.append((cost, missing))
        result = list(kept)
        for cost, missing in sorted(options):
            if cost <= room:
                result.extend(missing)
                room -= cost
        return sorted(result)

    # -- reading -------------------------------------------------------------------------------------

    def _tail_cut(self) -> int:
        """Offset of the first line of the window at the end of the log that is scored line by line."""
        text = self.text
        if len(text) <= _FULL_SCAN_CHARS and self.total <= _FULL_SCAN_LINES:
            return 0
        lo = max(0, len(text) - _FULL_SCAN_CHARS)
        pos = len(text)
        for _ in range(_FULL_SCAN_LINES):
            found = text.rfind("\n", lo, pos)
            if found < 0:
                break
            pos = found
        else:
            return pos + 1
        m = _SEP.search(text, lo)
        return m.end() if m is not None and m.end() < len(text) else lo

    def _tail_segment(self, cut: int | None = None) -> _Segment:
        cut = self._tail_cut() if cut is None else cut
        first = self.separators - _separators(self.text, cut, len(self.text)) + 1
        raw = _SEP.split(self.text[cut:])
        if raw and raw[-1] == "" and self.text[-1:] in ("\n", "\r"):
            raw.pop()
        return _Segment(first, [_bounded_raw(r) for r in raw])


# -- scoring -------------------------------------------------------------------------------------------


def _priorities(segments: list[_Segment], total: int) -> tuple[dict[int, float], dict[int, str]]:
    """Priority of every candidate line (0 = never shown) and the raw text of each."""
    prio: dict[int, float] = {}
    raw_of: dict[int, str] = {}
    last_segment = segments[-1] if segments else None
    for segment in segments:
        clean = [_clean(_bounded_raw(r, 2000)) for r in segment.raw]
        values = _segment_priorities(clean, segment.first, total, at_end=segment is last_segment)
        for i, value in enumerate(values):
            n = segment.first + i
            if n > total:
                continue
            raw_of[n] = segment.raw[i]
            if value > prio.get(n, 0.0):
                prio[n] = value
    return prio, raw_of


def _matching_lines(pattern: re.Pattern[str], joined: str, starts: list[int]) -> Iterator[int]:
    """Indexes of the lines (starting at `starts`, joined by newlines) in which `pattern` matches."""
    last = -1
    for m in pattern.finditer(joined):
        i = bisect_right(starts, m.start()) - 1
        if i != last:
            last = i
            yield i


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
            if weight > score[i]:
                score[i] = weight
    for pattern in _ZERO_RE:
        for i in _matching_lines(pattern, joined, starts):
            if score[i] >= _ANCHOR:
                score[i] = 1.0
    noise = [not c.strip() or (c[-1] in "-=_*#~.+ " and _SEPARATOR.fullmatch(c) is not None) for c in clean]
    for pattern in _NOISE_RE:
        for i in _matching_lines(pattern, joined, starts):
            noise[i] = True
    for i in range(n):
        if noise[i]:
            score[i] = 0.0
    return score, noise


def _segment_priorities(clean: list[str], first: int, total: int, *, at_end: bool) -> list[float]:
    n = len(clean)
    score, noise = _scores(clean)
    bare = [_MARKER_ONLY.fullmatch(c) is not None for c in clean]  # "[ERROR] " with nothing after it
    score = [0.0 if bare[i] else s for i, s in enumerate(score)]
    frame = [_FRAME.match(c) is not None for c in clean]
    for i in range(n - 1):
        # The line a stack trace hangs from names the exception, whatever its wording.
        if frame[i + 1] and not frame[i] and not noise[i] and not bare[i] and _CALL_FRAME.match(clean[i + 1]):
            score[i] = max(score[i], 9.0)
    # A continuation line belongs to the block above it: stack frames, indented lines, "Caused by:",
    # and bare markers that separate parts of one error report.
    cont = [frame[i] or bare[i] or (clean[i][:1] in (" ", "\t") and not noise[i]) for i in range(n)]

    # Lines repeated many times (retry loops, polling) say nothing new after the first few and the last:
    # exact repeats beyond 3, and lines differing only in numbers beyond 20.
    for keys, limit in (([c.strip() for c in clean], _REPEAT_LIMIT),
                        ([_DIGITS.sub("0", c.strip()) for c in clean], _REPEAT_LIMIT_NUMBERS)):
        counts = Counter(k for k in keys if k)
        seen: Counter[str] = Counter()
        for i, key in enumerate(keys):
            if key and counts[key] > limit:
                seen[key] += 1
                if limit < seen[key] < counts[key]:
                    score[i] *= 0.2
                    noise[i] = True

    prio = [0.0] * n

    def lift(i: int, value: float) -> None:
        if 0 <= i < n and value > prio[i]:
            prio[i] = value

    run = [0] * (n + 1)  # run[i]: continuation lines starting at i
    for i in range(n - 1, -1, -1):
        run[i] = run[i + 1] + 1 if cont[i] else 0

    block_floor = 0.0
    step = -1  # the last "##[group]Run ..." line: which GitHub Actions step an error belongs to
    for i in range(n):
        s = score[i]
        if clean[i].startswith("##[group]Run "):
            step = i
        if s >= _ANCHOR and (not frame[i] or clean[i].lstrip().startswith("Caused by")):
            block_floor = s * 0.25
            weight = s * (0.6 + 0.4 * (first + i) / max(total, 1))
            lift(i, weight)
            if step >= 0:
                lift(step, weight * 0.35)
            for k, value in ((1, 0.5), (2, 0.4), (3, 0.3)):
                if i - k >= 0 and not noise[i - k]:
                    lift(i - k, weight * value)
            if _TRACEBACK.search(clean[i]):
                # Python: the innermost frames and the exception line (after the frames) matter most.
                end = min(i + run[i + 1] + 1, n - 1)
                head, head_w, tail_len, tail_w = _TRACEBACK_HEAD, 0.7, _TRACEBACK_TAIL, 0.95
                lift(end, weight)
            else:
                # Java and friends: the throwing frames come first; "Caused by:" lines are anchors too.
                end = i + run[i + 1]
                head, head_w, tail_len, tail_w = _BLOCK_HEAD, 0.95, _BLOCK_TAIL, 0.7
            for j in range(i + 1, min(end, i + head) + 1):
                lift(j, weight * head_w)
            for j in range(max(i + head + 1, end - tail_len + 1), end + 1):
                lift(j, weight * tail_w)
            for k, value in ((1, 0.45), (2, 0.35)):
                if end + k < n and not noise[end + k]:
                    lift(end + k, weight * value)
        elif cont[i] and block_floor:
            lift(i, block_floor)
        elif not cont[i]:
            block_floor = 0.0
        if s > 0:
            lift(i, s * 0.3)
        if frame[i]:
            lift(i, _FRAME_FLOOR)

    if at_end:
        # The end of the log, before GitHub's post-job cleanup if there is one.
        end = next((i for i in range(n) if clean[i].startswith("Post job cleanup.")), n)
        rank = 0
        for i in range(end - 1, -1, -1):
            if rank >= _TAIL_LINES:
                break
            if not noise[i]:
                lift(i, 4.0 - 0.2 * rank)
                rank += 1

    # Filler: what is left of the budget goes to lines near errors, then to the end of the log.
    distance = [n + 1] * n
    last = -(n + 1)
    for i in range(n):
        if score[i] >= _ANCHOR:
            last = i
        distance[i] = i - last
    last = 2 * n + 1
    for i in range(n - 1, -1, -1):
        if score[i] >= _ANCHOR:
            last = i
        distance[i] = min(distance[i], last - i)
    for i in range(n):
        if not noise[i]:
            near = 1.0 / (1 + distance[i]) if distance[i] <= 30 else 0.0
            lift(i, 0.05 + near + 0.1 * (first + i) / max(total, 1))
    return prio


# -- text helpers --------------------------------------------------------------------------------------


def _clean(raw: str) -> str:
    """`raw` without ANSI codes and without the GitHub timestamp / job-and-step prefix."""
    text = _ANSI.sub("", raw) if "\x1b" in raw else raw
    m = _PREFIX.match(text)
    return text[m.end() :] if m is not None else text


def _bounded_raw(raw: str, limit: int = _MAX_RAW_LINE) -> str:
    """A very long line cut to about `limit` characters, never through the middle of a word (a secret)."""
    if len(raw) <= limit:
        return raw
    head = re.sub(r"\S+$", "", raw[: limit * 3 // 4])
    rest = re.sub(r"^\S+", "", raw[-(limit // 4) :])
    return f"{head} …[{len(raw) - len(head) - len(rest)} chars cut]… {rest}"


def _shorten(text: str, cap: int) -> str:
    if len(text) <= cap:
        return text
    marker = f" …[{len(text) - cap} chars cut]… "
    keep = max(cap - len(marker), 20)
    return text[: keep * 3 // 4] + marker + text[len(text) - keep // 4 :]


def _gap_text(first: int, last: int) -> str:
    if first == last:
        return f"... [line {first} omitted] ..."
    return f"... [lines {first}-{last} omitted] ..."


def _binary_note(text: str) -> str | None:
    if not text:
        return None
    sample = text[:_BINARY_SAMPLE] + text[-_BINARY_SAMPLE:] if len(text) > 2 * _BINARY_SAMPLE else text
    bad = len(_BINARYISH.findall(sample))
    if bad / len(sample) <= _BINARY_RATIO:
        return None
    return (f"Note: this log looks binary ({100 * bad // len(sample)}% of sampled characters are control "
            "characters or undecodable bytes); no excerpt was made.")


def _separators(text: str, start: int, end: int) -> int:
    """Number of line breaks in text[start:end] (`start` and `end` must not split a CR LF pair)."""
    cr = text.count("\r", start, end)
    return text.count("\n", start, end) + cr - (text.count("\r\n", start, end) if cr else 0)


def _iter_lines(text: str, offset: int) -> Iterator[str]:
    pos = offset
    n = len(text)
    while pos < n:
        m = _SEP.search(text, pos)
        if m is None:
            yield text[pos:]
            return
        yield text[pos : m.start()]
        pos = m.end()


def _offset_of_line(text: str, number: int) -> int:
    """Offset of the first character of line `number` (1-based)."""
    pos, line = 0, 1
    step = 1 << 20
    n = len(text)
    while line < number and pos < n:
        end = min(pos + step, n)
        if end < n and text[end - 1] == "\r" and text[end] == "\n":
            end += 1
        count = _separators(text, pos, end)
        if line + count < number:
            line += count
            pos = end
            continue
        for m in _SEP.finditer(text, pos, end):
            line += 1
            if line == number:
                return m.end()
        pos = end
    return pos


def _line_start(text: str, pos: int) -> int:
    lo = max(0, pos - _MAX_SCAN_BACK)
    found = max(text.rfind("\n", lo, pos), text.rfind("\r", lo, pos))
    if found >= 0:
        return found + 1
    return lo


def _next_line_start(text: str, pos: int, limit: int) -> int:
    m = _SEP.search(text, pos, min(limit, pos + _MAX_SCAN_BACK))
    return m.end() if m is not None else min(limit, pos + _MAX_SCAN_BACK)


def _head_segments(text: str, cut: int) -> list[_Segment]:
    """Windows of lines around the first and last error words in text[:cut]."""
    hits: set[int] = set()
    for word in _HEAD_WORDS:
        end = cut
        for _ in range(_HEAD_LAST_HITS):
            found = text.rfind(word, 0, end)
            if found < 0:
                break
            hits.add(found)
            end = found
        pos = 0
        for _ in range(_HEAD_FIRST_HITS if end < cut else 0):  # only when the word occurs at all
            found = text.find(word, pos, end)
            if found < 0:
                break
            hits.add(found)
            pos = found + len(word)
    windows: list[tuple[int, int]] = []
    for hit in sorted(hits):
        start = _line_start(text, hit)
        for _ in range(_HEAD_BEFORE):
            if start == 0:
                break
            start = _line_start(text, start - 2 if text[max(0, start - 2) : start] == "\r\n" else start - 1)
        stop = hit
        for _ in range(_HEAD_AFTER + 1):
            if stop >= cut:
                break
            stop = _next_line_start(text, stop, cut)
        if windows and start <= windows[-1][1]:
            windows[-1] = (windows[-1][0], max(stop, windows[-1][1]))
        else:
            windows.append((start, stop))
    segments: list[_Segment] = []
    line, pos = 1, 0
    for start, stop in windows:
        line += _separators(text, pos, start)
        pos = start
        raw = _SEP.split(text[start:stop])
        if raw and raw[-1] == "" and text[stop - 1 : stop] in ("\n", "\r"):
            raw.pop()
        segments.append(_Segment(line, [_bounded_raw(r) for r in raw]))
    return segments


def _private_key_lines(text: str, secrets: tuple[str, ...]) -> dict[int, str]:
    """The redacted text of every line that starts or continues a PEM private-key block, by line number."""
    result: dict[int, str] = {}
    line, pos = 1, 0  # `pos` is the start of line `line`
    for m in re.finditer(r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY", text):
        if m.start() < pos:
            continue  # inside a block already walked
        start = _line_start(text, m.start())
        line += _separators(text, pos, start)
        pos = start
        redactor = LineRedactor(extra_secrets=secrets)
        while pos < len(text):
            sep = _SEP.search(text, pos)
            end = sep.start() if sep is not None else len(text)
            result[line] = redactor(text[pos:end])
            pos = sep.end() if sep is not None else len(text)
            line += 1
            if not redactor.in_private_key:
                break
    return result

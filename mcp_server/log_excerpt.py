"""Failure excerpts of CI logs: the lines that explain a failure, within a token budget, redacted.

`excerpt(log)` starts with the failing tests and error locations the log names (`log_facts`, at most 12%
of the budget), then scores every line (`log_scoring`: error markers, exception headers, failing tests, exit
codes; stack-trace blocks, context, the end of the log; noise and repeats demoted), then picks runs of
consecutive high-priority lines ("clusters"), best and latest first: in a first pass no error cluster may
take more than 40% of the budget, so a second error elsewhere is shown too; a second pass completes them;
then the end of the log; then single lines near the errors while budget remains. Gaps of 1-3 lines are
filled when that costs no more than their marker. `excerpt(log, start_line=n)` is a plain page from line
n instead; `tail(log)` is the last lines that fit (the naive baseline).

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
from bisect import bisect_left, insort
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from pydantic import BaseModel, ConfigDict, Field

from mcp_server.log_facts import LogFacts, extract_facts, facts_header
from mcp_server.log_scoring import ANCHOR, CORE, Segment, bounded_raw, clean_line, is_warning, priorities
from policy.redaction import LineRedactor, redact

__all__ = [
    "CHARS_PER_TOKEN",
    "MIN_BUDGET_TOKENS",
    "Excerpt",
    "ExcerptLine",
    "decode_log",
    "estimate_tokens",
    "excerpt",
    "excerpt_of_lines",
    "tail",
]

CHARS_PER_TOKEN = 3.5
MIN_BUDGET_TOKENS = 100

_FULL_SCAN_CHARS = 2_000_000
_FULL_SCAN_LINES = 50_000
_HEAD_WORDS = (
    "##[error]",
    "ERROR",
    "Error",
    "error",
    "FAIL",
    "Fail",
    "fail",
    "FATAL",
    "fatal",
    "Traceback",
    "Exception",
    "panic",
    "Caused by",
    "exit code",
)
_HEAD_FIRST_HITS = 10
_HEAD_LAST_HITS = 100
_HEAD_BEFORE = 3
_HEAD_AFTER = 30
_MAX_SCAN_BACK = 8192
_MAX_LINE_CHARS = 500
_BINARY_SAMPLE = 65_536
_BINARY_RATIO = 0.3

_CLUSTER_SHARE = 0.4
_SUMMARY_SHARE = 0.12

_SEP = re.compile(r"\r\n|\r|\n")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_BINARYISH = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\ufffd]")


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
        default=None, description="for a page: the start_line of the next page; null at the end or for excerpts"
    )
    estimated_tokens: int = Field(description="ceil(len(rendered) / 3.5)")
    rendered: str = Field(description="the excerpt as text: 'NNNN| line' rows and gap markers")
    note: str | None = Field(default=None, description="why the excerpt is unusual (binary log, huge log)")
    summary: str | None = Field(
        default=None, description="the 'Failing tests:' / 'Error locations:' lines the rendered excerpt starts with"
    )
    failing_tests: list[str] = Field(default_factory=list, description="failing tests the log names, first first")
    error_locations: list[str] = Field(default_factory=list, description="file:line the errors point at, first first")


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


def excerpt_of_lines(
    log_text: str | bytes, lines: Sequence[int], *, budget_tokens: int = 2000, extra_secrets: Collection[str] = ()
) -> Excerpt:
    """An excerpt showing the given `lines`, taken in the order given while they fit `budget_tokens`.

    With the lines ordered shortest first, this is the most of them any excerpt can show (the benchmark's
    "best possible").

    Raises:
        ValueError: `budget_tokens` is below `MIN_BUDGET_TOKENS`.
    """
    log = _Log.open(log_text, budget_tokens, extra_secrets)
    if log.binary_note is not None:
        return log.binary_excerpt()
    segment = log._tail_segment(0)
    raw_of = {segment.first + i: raw for i, raw in enumerate(segment.raw) if segment.first + i <= log.total}
    kept: list[int] = []
    used = log.gap_cost(1, log.total)
    for n in lines:
        if n not in raw_of or n in kept:
            continue
        cost = log.row_cost(n, raw_of[n]) + log._gap_delta(kept, n)
        if used + cost <= log.budget_chars:
            insort(kept, n)
            used += cost
    return log.render(kept, raw_of)


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
            text = clean_line(self._pem[number])
        else:
            text = redact(clean_line(bounded_raw(raw)), extra_secrets=self.secrets)
        text = _shorten(_CONTROL.sub("\ufffd", text), self.line_cap)
        self._shown[number] = text
        return text

    def row_cost(self, number: int, raw: str) -> int:
        return self.width + 3 + len(self.shown(number, raw))

    def gap_cost(self, first: int, last: int) -> int:
        return len(_gap_text(first, last)) + 1 if last >= first else 0

    def render(
        self,
        kept: list[int],
        raw_of: dict[int, str],
        *,
        note: str | None = None,
        gaps: bool = True,
        next_start: int | None = None,
        summary: str | None = None,
        facts: LogFacts | None = None,
    ) -> Excerpt:
        lines: list[ExcerptLine] = []
        rows: list[str] = ([summary] if summary else []) + ([note] if note else [])
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
            lines.append(ExcerptLine(number=prev + 1, text=_gap_text(prev + 1, self.total), omitted_through=self.total))
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
            summary=summary,
            failing_tests=facts.failing_tests if facts else [],
            error_locations=facts.locations if facts else [],
        )

    def binary_excerpt(self) -> Excerpt:
        note = self.binary_note or ""
        return Excerpt(
            lines=[],
            total_lines=self.total,
            kept_line_numbers=[],
            truncated=self.total > 0,
            estimated_tokens=estimate_tokens(note + "\n"),
            rendered=note + "\n",
            note=note,
        )

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
            note = (
                f"Note: large log ({len(self.text) // 1_000_000} MB): the end was read in full, the rest "
                "searched for error lines only."
            )
        note = note if note is None or len(note) < self.budget_chars // 4 else None
        prio, raw_of, first_error = priorities(segments, self.total)
        budget = self.budget_chars - (len(note) + 1 if note else 0)
        # Root cause first: the failing tests and error locations go on top, in a small share of the budget,
        # from the first error on (then what came before it); warnings are not errors.
        core = sorted(n for n, p in prio.items() if p >= CORE and not is_warning(self.shown(n, raw_of[n])))
        start = bisect_left(core, first_error) if first_error is not None else 0
        facts = extract_facts(self.shown(n, raw_of[n]) for n in core[start:] + core[:start])
        summary = facts_header(facts, int(budget * _SUMMARY_SHARE))
        budget -= len(summary) + 1 if summary else 0
        kept = self._choose(prio, raw_of, budget)
        return self.render(kept, raw_of, note=note, summary=summary, facts=facts)

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
        for n in sorted(n for n, p in prio.items() if p >= CORE):
            if clusters and n == clusters[-1][-1] + 1:
                clusters[-1].append(n)
            else:
                clusters.append([n])
        clusters.sort(key=lambda c: (-max(prio[n] for n in c), -c[-1]))
        errors = [c for c in clusters if max(prio[n] for n in c) >= ANCHOR]
        others = [c for c in clusters if max(prio[n] for n in c) < ANCHOR]
        # Error clusters in two passes: in the first none may take more than a share of the budget, so a
        # second error elsewhere still gets shown; the second completes them in order. Then the other
        # clusters (the end of the log, step headers).
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
        for n in sorted((n for n, p in prio.items() if 0 < p < CORE), key=lambda n: (-prio[n], -n)):
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
        return self.gap_cost(before + 1, n - 1) + self.gap_cost(n + 1, after - 1) - self.gap_cost(before + 1, after - 1)

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

    def _tail_segment(self, cut: int | None = None) -> Segment:
        cut = self._tail_cut() if cut is None else cut
        first = self.separators - _separators(self.text, cut, len(self.text)) + 1
        raw = _SEP.split(self.text[cut:])
        if raw and raw[-1] == "" and self.text[-1:] in ("\n", "\r"):
            raw.pop()
        return Segment(first, [bounded_raw(r) for r in raw])


# -- text helpers --------------------------------------------------------------------------------------


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
    return (
        f"Note: this log looks binary ({100 * bad // len(sample)}% of sampled characters are control "
        "characters or undecodable bytes); no excerpt was made."
    )


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


def _head_segments(text: str, cut: int) -> list[Segment]:
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
    segments: list[Segment] = []
    line, pos = 1, 0
    for start, stop in windows:
        line += _separators(text, pos, start)
        pos = start
        raw = _SEP.split(text[start:stop])
        if raw and raw[-1] == "" and text[stop - 1 : stop] in ("\n", "\r"):
            raw.pop()
        segments.append(Segment(line, [bounded_raw(r) for r in raw]))
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

"""The failing tests and error locations (`file:line`) a CI log names, shown at the top of its excerpt.

`extract_facts(lines)` reads cleaned, redacted log lines in log order and returns the failing tests
(unittest, pytest, Go, Rust, Maven Surefire, Gradle, Jest) and the places errors point at (compiler
`file:line[:col]`, javac `File.java:[line,col]`, Python traceback frames), first seen first, without
library paths (site-packages, node_modules, the JDK, module caches). `facts_header` renders them as the
excerpt's first lines (`Failing tests: ...` / `Error locations: ...`) within a character budget, and
`header_facts` reads those lines back from an excerpt's text (the escalation report does).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["TESTS_PREFIX", "WHERE_PREFIX", "LogFacts", "extract_facts", "facts_header", "header_facts"]

TESTS_PREFIX = "Failing tests: "
WHERE_PREFIX = "Error locations: "
_MAX_ITEMS = 20
_MAX_ITEM_CHARS = 160

# Each pattern's groups joined with "." name the test (unittest puts the full name in its parentheses).
_TESTS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        r"^(?:FAIL|ERROR): \w+ \(([\w.]+)\)",  # unittest
        r"^FAILED (\S+::\S+?)(?: - |$)",  # pytest summary
        r"^(\S+::\S+) (?:FAILED|ERROR)\b",  # pytest -v
        r"^\s*--- FAIL: (\S+)",  # go test
        r"^test (\S+) \.\.\. FAILED",  # cargo test
        r"^(?:\[ERROR\] )?(?:Tests run:.*<<< (?:FAILURE|ERROR)! - in )([\w.$]+)$",  # surefire, per class
        r"^(?:\[ERROR\] )?(\w+)\(([\w.$]+)\)\s+Time elapsed:.*<<< (?:FAILURE|ERROR)!",  # surefire 2.x, per test
        r"^(?:\[ERROR\] )?([\w.$]+\.\w+)\s+Time elapsed:.*<<< (?:FAILURE|ERROR)!",  # surefire 3.x, per test
        r"^\[ERROR\] {2,}([\w$]+(?:\.[\w$]+)*\.\w+):\d+",  # surefire summary ("[ERROR]   FooTest.bar:42 ...")
        r"^(\S+ > .+?) FAILED$",  # gradle
        r"^\s*[✕×] (.+?)(?: \(\d+ ?m?s\))?$",  # jest
    )
)
_PY_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+)')
_JAVAC = re.compile(r"((?:[\w.@-]*/)*[\w@-]+\.\w{1,6}):\[(\d+),(\d+)\]")
_FILE_LINE = re.compile(
    r"(?<![\w/.-])((?:\.{1,2}/|/)?(?:[\w.@-]+/)*[\w@-]+\.(?:py|go|rs|java|kt|kts|scala|groovy|js|jsx|mjs|cjs|ts|tsx"
    r"|c|cc|cpp|cxx|h|hpp|rb|php|cs|swift|m|mm|sh|ex|exs|erl|hs|ml|dart|lua|pl|jl|zig|vue|svelte|ya?ml|toml|gradle))"
    r":(\d+)(?::(\d+))?"
)
_STACK_FRAME = re.compile(r"\s+at |\s*\.\.\. \d+ more")
_LIBRARY = re.compile(
    r"site-packages/|dist-packages/|/usr/(?:local/)?lib/|node_modules/|<frozen|/\.m2/|/go/pkg/mod/|/rustc/|"
    r"\.cargo/registry/|/lib/python\d|/hostedtoolcache/"
)
_WORKSPACE = re.compile(r"^(?:/home/runner/work/[^/]+/[^/]+/|/github/workspace/)")


class LogFacts(BaseModel):
    """What a log says failed and where, in order of first appearance."""

    model_config = ConfigDict(frozen=True)

    failing_tests: list[str] = Field(default_factory=list, description="failing tests named in the log")
    locations: list[str] = Field(default_factory=list, description="file:line[:col] the errors point at")


def _add(items: list[str], seen: set[str], item: str) -> None:
    item = item.strip()[:_MAX_ITEM_CHARS]
    if item and item not in seen and len(items) < _MAX_ITEMS:
        seen.add(item)
        items.append(item)


def _location(path: str, line: str, col: str | None) -> str | None:
    if _LIBRARY.search(path):
        return None
    path = _WORKSPACE.sub("", path)
    return f"{path}:{line}" + (f":{col}" if col else "")


def extract_facts(lines: Iterable[str]) -> LogFacts:
    """The failing tests and error locations named in `lines` (cleaned log lines, in log order)."""
    tests: list[str] = []
    places: list[str] = []
    seen_tests: set[str] = set()
    seen_places: set[str] = set()
    for text in lines:
        for pattern in _TESTS:
            m = pattern.search(text)
            if m is not None:
                groups = [g for g in m.groups() if g]
                name = groups[0] if len(groups) == 1 else f"{groups[1]}.{groups[0]}"
                _add(tests, seen_tests, name)
                break
        frame = _PY_FRAME.match(text)
        if frame is not None:
            where = _location(frame.group(1), frame.group(2), None)
            if where:
                _add(places, seen_places, where)
            continue
        if _STACK_FRAME.match(text):
            continue  # Java and JavaScript frames: the error line above names the place that matters
        found = [(m.start(), _location(m.group(1), m.group(2), m.group(3))) for m in _JAVAC.finditer(text)]
        if not found:
            found = [(m.start(), _location(m.group(1), m.group(2), m.group(3))) for m in _FILE_LINE.finditer(text)]
        for _, where in sorted(found, key=lambda f: f[0]):
            if where:
                _add(places, seen_places, where)
    return LogFacts(failing_tests=tests, locations=places)


def _line(prefix: str, items: list[str], room: int) -> str | None:
    if not items or room <= len(prefix) + 10:
        return None
    shown: list[str] = []
    for i, item in enumerate(items):
        more = len(items) - i - 1
        rest = f" (+{more} more)" if more else ""
        candidate = prefix + ", ".join([*shown, item]) + rest
        if len(candidate) > room:
            break
        shown.append(item)
    if not shown:
        return None
    more = len(items) - len(shown)
    return prefix + ", ".join(shown) + (f" (+{more} more)" if more else "")


def facts_header(facts: LogFacts, max_chars: int) -> str | None:
    """The `Failing tests:` and `Error locations:` lines, at most `max_chars` characters in all (newlines
    included); None when the log names neither or nothing fits."""
    rows: list[str] = []
    room = max_chars
    for prefix, items in ((TESTS_PREFIX, facts.failing_tests), (WHERE_PREFIX, facts.locations)):
        row = _line(prefix, items, room - 1)
        if row is not None:
            rows.append(row)
            room -= len(row) + 1
    return "\n".join(rows) if rows else None


def header_facts(excerpt_text: str) -> list[str]:
    """The `Failing tests:` / `Error locations:` lines an excerpt's text starts with (empty when none)."""
    rows: list[str] = []
    for row in excerpt_text.splitlines()[:2]:
        if not row.startswith((TESTS_PREFIX, WHERE_PREFIX)):
            break
        rows.append(row)
    return rows

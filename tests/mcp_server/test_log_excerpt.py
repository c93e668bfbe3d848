"""Failure excerpts: the failing lines are kept, the budget holds, secrets are gone, huge and binary logs
are handled, paging walks the whole log, and recall on labelled real logs stays high."""

from __future__ import annotations

import json
import math
import random
import re
import tracemalloc
from pathlib import Path

import pytest

from bench.log_excerpt import load_groundtruth, render_table, run
from mcp_server.log_excerpt import CHARS_PER_TOKEN, MIN_BUDGET_TOKENS, Excerpt, excerpt, excerpt_of_lines, tail
from mcp_server.log_facts import LogFacts, extract_facts, facts_header, header_facts
from mcp_server.logs_cli import logs_excerpt_command

DATA = Path(__file__).parent / "data" / "ci_logs"
LIVE = "ghs_LiveInstallationToken0123456789abcd"


def _github_log(*, cleanup_lines: int = 30, noise_lines: int = 300) -> str:
    """A GitHub Actions log of a pytest run that fails, with timestamps, colours and post-job cleanup."""
    rows: list[str] = []

    def add(text: str) -> None:
        i = len(rows)
        rows.append(f"2026-03-01T10:{i // 60 % 60:02d}:{i % 60:02d}.{i:07d}Z {text}")

    add("##[group]Run actions/checkout@v4")
    add("with:")
    add("  token: ***")
    add("##[endgroup]")
    for i in range(noise_lines):
        add(f"Collecting package-{i}==1.{i}")
        add(f"  Downloading package_{i}-1.{i}-py3-none-any.whl (12 kB)")
    add("##[group]Run pytest -q")
    add("\x1b[36;1mpytest -q\x1b[0m")
    add("##[endgroup]")
    for i in range(40):
        add(f"tests/test_mod{i}.py ........                                    [{i * 2:3d}%]")
    add("=================================== FAILURES ===================================")
    add("________________________________ test_parse_date ________________________________")
    add("")
    add("    def test_parse_date():")
    add(">       assert parse_date('2026-02-30') is None")
    add("")
    add("tests/test_dates.py:14: ")
    add("Traceback (most recent call last):")
    add('  File "/home/runner/work/app/app/src/dates.py", line 41, in parse_date')
    add("    return datetime.date(year, month, day)")
    add('  File "/home/runner/work/app/app/src/calendar.py", line 7, in date')
    add("    raise ValueError('day is out of range for month')")
    add("\x1b[31mValueError: day is out of range for month\x1b[0m")
    add("=========================== short test summary info ============================")
    add("FAILED tests/test_dates.py::test_parse_date - ValueError: day is out of range for month")
    add("\x1b[31m1 failed, 319 passed in 12.34s\x1b[0m")
    add("##[error]Process completed with exit code 1.")
    add("Post job cleanup.")
    for i in range(cleanup_lines):
        add(f"[command]/usr/bin/git config --local --name-only --get-regexp core\\.sshCommand {i}")
    add("Cleaning up orphan processes")
    return "\n".join(rows) + "\n"


def _number_of(log: str, needle: str) -> int:
    return next(i for i, line in enumerate(log.splitlines(), 1) if needle in line)


def _assert_consistent(result: Excerpt, budget: int) -> None:
    """The invariants every excerpt keeps."""
    assert result.estimated_tokens == math.ceil(len(result.rendered) / CHARS_PER_TOKEN)
    assert result.estimated_tokens <= budget
    assert result.kept_line_numbers == sorted(set(result.kept_line_numbers))
    shown = [line.number for line in result.lines if line.omitted_through is None]
    assert shown == result.kept_line_numbers
    rows = result.rendered.splitlines()
    if result.summary:
        assert result.rendered.startswith(result.summary + "\n")
        rows = rows[result.summary.count("\n") + 1 :]
    rows = [row for row in rows if not (result.note and row == result.note)]
    assert len(rows) == len(result.lines)
    for line, row in zip(result.lines, rows, strict=True):
        if line.omitted_through is None:
            assert re.fullmatch(rf" *{line.number}\| .*", row)
            assert row.endswith(line.text)
        else:
            assert row == line.text
            assert line.text.startswith(f"... [line{'s' if line.omitted_through > line.number else ''} {line.number}")
    covered = sorted(n for line in result.lines for n in range(line.number, (line.omitted_through or line.number) + 1))
    if result.lines:
        assert covered == list(range(1, result.total_lines + 1))


def test_github_log_keeps_traceback_error_lines_and_failing_test_name() -> None:
    log = _github_log()
    result = excerpt(log, budget_tokens=600)
    _assert_consistent(result, 600)
    kept = set(result.kept_line_numbers)
    for needle in (
        "Traceback (most recent call last)",
        'calendar.py", line 7',
        "ValueError: day is out",
        "FAILED tests/test_dates.py::test_parse_date",
        "##[error]Process completed with exit code 1",
        "1 failed, 319 passed",
        "##[group]Run pytest -q",
    ):
        assert _number_of(log, needle) in kept, needle
    assert _number_of(log, "Collecting package-100==") not in kept
    assert result.truncated


def test_shown_text_has_no_timestamps_or_colours() -> None:
    result = excerpt(_github_log(), budget_tokens=600)
    assert "\x1b" not in result.rendered
    assert not re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", result.rendered)
    assert "ValueError: day is out of range for month" in result.rendered


def test_python_traceback_is_kept_whole() -> None:
    frames = [f'  File "/app/mod{i}.py", line {i}, in f{i}\n    f{i + 1}()' for i in range(8)]
    log = (
        "\n".join(
            [
                "start",
                *[f"step {i} ok" for i in range(200)],
                "Traceback (most recent call last):",
                *frames,
                "KeyError: 'missing'",
                *[f"teardown {i}" for i in range(200)],
            ]
        )
        + "\n"
    )
    result = excerpt(log, budget_tokens=800)
    _assert_consistent(result, 800)
    first = _number_of(log, "Traceback")
    last = _number_of(log, "KeyError")
    assert set(range(first, last + 1)) <= set(result.kept_line_numbers)


def test_java_stack_trace_keeps_header_top_frames_and_cause() -> None:
    frames = [f"\tat com.example.Layer{i}.call(Layer{i}.java:{i + 10})" for i in range(60)]
    log = (
        "\n".join(
            [
                *[f"[INFO] Building module {i}" for i in range(300)],
                'Exception in thread "main" java.lang.IllegalStateException: cache is closed',
                *frames,
                "Caused by: java.io.IOException: No space left on device",
                "\tat java.io.FileOutputStream.writeBytes(Native Method)",
                "\t... 42 more",
                *[f"[INFO] shutting down {i}" for i in range(100)],
            ]
        )
        + "\n"
    )
    result = excerpt(log, budget_tokens=700)
    _assert_consistent(result, 700)
    kept = set(result.kept_line_numbers)
    header = _number_of(log, "IllegalStateException")
    assert {header, header + 1, header + 2, header + 3} <= kept
    assert _number_of(log, "Caused by: java.io.IOException") in kept
    assert _number_of(log, "Layer30.call") not in kept  # the middle of a long trace goes first


@pytest.mark.parametrize("budget", [MIN_BUDGET_TOKENS, 300, 1000, 2000, 4000])
@pytest.mark.parametrize("case", ["cidiff_57", "pushcommentgithub_173", "commonscodec_2463"])
def test_budget_is_respected(case: str, budget: int) -> None:
    result = excerpt((DATA / case / "fail.log").read_bytes(), budget_tokens=budget)
    _assert_consistent(result, budget)
    assert result.kept_line_numbers


def test_small_log_is_shown_whole() -> None:
    log = "line one\nERROR: boom\nline three\n"
    result = excerpt(log, budget_tokens=2000)
    assert result.kept_line_numbers == [1, 2, 3]
    assert not result.truncated
    assert result.rendered == "   1| line one\n   2| ERROR: boom\n   3| line three\n"


def test_budget_below_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="Invalid budget"):
        excerpt("x", budget_tokens=MIN_BUDGET_TOKENS - 1)


def test_pages_walk_the_whole_log_once() -> None:
    log = _github_log(noise_lines=40)
    total = len(log.splitlines())
    seen: list[int] = []
    start: int | None = 1
    pages = 0
    while start is not None:
        page = excerpt(log, budget_tokens=MIN_BUDGET_TOKENS, start_line=start)
        assert page.estimated_tokens <= MIN_BUDGET_TOKENS
        assert page.kept_line_numbers[0] == start
        assert page.kept_line_numbers == list(range(start, start + len(page.kept_line_numbers)))
        assert all(line.omitted_through is None for line in page.lines)
        seen.extend(page.kept_line_numbers)
        start = page.next_start_line
        pages += 1
    assert seen == list(range(1, total + 1))
    assert pages > 5


def test_page_past_the_end_is_refused() -> None:
    with pytest.raises(ValueError, match="Invalid start line"):
        excerpt("a\nb\n", start_line=3)


def test_line_numbers_count_cr_crlf_and_lf() -> None:
    log = "one\r\ntwo\rprogress 10%\rprogress 100%\nERROR: five\nsix"
    page = excerpt(log, start_line=5)
    assert page.total_lines == 6
    assert [line.text for line in page.lines] == ["ERROR: five", "six"]
    assert page.next_start_line is None


def test_secrets_are_redacted_in_excerpts_and_pages() -> None:
    key = [
        "-----BEGIN RSA PRIVATE KEY-----",
        "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun",
        "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK",
        "-----END RSA PRIVATE KEY-----",
    ]
    log = (
        "\n".join(
            [
                *[f"2026-01-01T00:00:00.0000000Z {line}" for line in key],
                f"2026-01-01T00:00:01.0000000Z git push https://x-access-token:{LIVE}@github.com/o/r.git",
                "2026-01-01T00:00:02.0000000Z ERROR: push rejected, token=hunter2secret",
                f"2026-01-01T00:00:03.0000000Z retrying with {LIVE}",
                "2026-01-01T00:00:04.0000000Z ##[error]Process completed with exit code 1.",
            ]
        )
        + "\n"
    )
    for result in (
        excerpt(log, extra_secrets=[LIVE]),
        excerpt(log, start_line=1, extra_secrets=[LIVE]),
        excerpt(log, start_line=2, extra_secrets=[LIVE]),
        tail(log, extra_secrets=[LIVE]),
    ):
        assert LIVE not in result.rendered
        assert "hunter2secret" not in result.rendered
        assert "MIIEowIBAAKCAQEA" not in result.rendered and "VTLw7onLRnrq0" not in result.rendered
        assert "ERROR: push rejected" in result.rendered or result.kept_line_numbers[0] > 6


def test_binary_log_returns_a_note() -> None:
    data = random.Random(7).randbytes(200_000)
    result = excerpt(data)
    assert result.lines == []
    assert result.note is not None and "binary" in result.note
    assert result.rendered.strip() == result.note
    assert result.estimated_tokens < 100


def test_text_log_with_nul_bytes_and_invalid_utf8_is_excerpted() -> None:
    data = b"build start\n" + b"\x00\xff\xfe garbage \x00\n" + b"ERROR: compiler crashed \xc3\x28\n" + b"done\n"
    result = excerpt(data)
    _assert_consistent(result, 2000)
    assert result.note is None
    assert "ERROR: compiler crashed" in result.rendered
    assert "\x00" not in result.rendered
    assert "\ufffd" in result.rendered


def test_very_long_line_is_shortened() -> None:
    log = "ERROR: " + "x" * 50_000 + " end\nnext\n"
    result = excerpt(log, budget_tokens=1000)
    _assert_consistent(result, 1000)
    assert result.kept_line_numbers[0] == 1
    assert "chars cut" in result.lines[0].text


def test_tail_keeps_the_last_lines_that_fit() -> None:
    log = "".join(f"line {i}\n" for i in range(1, 2001))
    result = tail(log, budget_tokens=200)
    _assert_consistent(result, 200)
    assert result.kept_line_numbers[-1] == 2000
    assert result.kept_line_numbers == list(range(result.kept_line_numbers[0], 2001))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_100_mb_log_is_excerpted_in_bounded_memory() -> None:
    noise = "2026-01-02T03:04:05.1234567Z [INFO] Downloading from central: https://repo.example.org/a/b/1.0/b.pom\n"
    half = noise * (50_000_000 // len(noise))
    log = (
        half
        + "2026-01-02T03:04:05.1234567Z ERROR: early failure in setup step\n"
        + half
        + "2026-01-02T03:04:05.1234567Z Traceback (most recent call last):\n"
        + '2026-01-02T03:04:05.1234567Z   File "x.py", line 3, in <module>\n'
        + "2026-01-02T03:04:05.1234567Z ValueError: boom\n"
        + "2026-01-02T03:04:05.1234567Z ##[error]Process completed with exit code 1.\n"
    )
    assert len(log) > 100_000_000
    tracemalloc.start()
    try:
        result = excerpt(log, budget_tokens=2000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64_000_000  # the window scored line by line is 2 MB; the 100 MB input is not copied
    _assert_consistent(result, 2000)
    assert result.total_lines == log.count("\n")
    kept_text = result.rendered
    assert "ERROR: early failure in setup step" in kept_text  # found in the part not scored line by line
    assert "ValueError: boom" in kept_text
    assert "Traceback (most recent call last)" in kept_text
    assert result.note is not None and "large log" in result.note


def test_recall_on_labelled_sample() -> None:
    rows = run(DATA, budgets=[1000, 2000])
    assert len(rows) == 6
    for row in rows:
        assert row["ours_recall"] >= 0.9, row
        assert row["ours_tokens"] <= row["budget"]
    for row in rows:
        assert row["ours_first_kept"], row
        assert row["best_recall"] >= row["ours_recall"] - 0.05, row
    table = render_table(rows)
    assert "| 2000 | 3 |" in table and "**met** (100%)" in table
    bench = table.splitlines()[-1]
    assert bench.startswith("BENCH log_excerpt recall_1k=") and "first_kept_1k=1.000" in bench


def test_groundtruth_ranges_are_read() -> None:
    fmt, ranges = load_groundtruth(DATA / "cidiff_57" / "groundtruth")
    assert fmt == "RAW_GITHUB"
    assert ranges == [(515, 535)]


def test_benchmark_reports_missing_data(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Benchmark data not found"):
        run(tmp_path / "nope")


def test_cli_prints_the_excerpt(capsys: pytest.CaptureFixture[str]) -> None:
    assert logs_excerpt_command(str(DATA / "cidiff_57" / "fail.log"), 500, False) == 0
    out = capsys.readouterr().out
    assert "ConsoleClientTest > testClassicParsing() FAILED" in out
    assert math.ceil(len(out) / CHARS_PER_TOKEN) <= 500


def test_cli_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert logs_excerpt_command(str(DATA / "cidiff_57" / "fail.log"), 1000, True) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"kept_line_numbers", "total_lines", "estimated_tokens", "truncated"}
    assert data["total_lines"] == 592 and data["truncated"] is True
    assert 515 in data["kept_line_numbers"] and data["estimated_tokens"] <= 1000


@pytest.mark.parametrize("name", [pytest.param("missing.log", id="missing"), pytest.param(".", id="directory")])
def test_cli_unreadable_file_is_one_line_and_exit_2(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert logs_excerpt_command(str(tmp_path / name), 2000, False) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("greenloop: Cannot read log file:")


# -- root cause first ---------------------------------------------------------------------------------------


def _go_log(*, failing_tests: int = 60) -> str:
    """A Go CI log: a compiler error early in the step, then many later (higher-scoring, repeated) failures."""
    rows = [
        "##[group]Run go build ./... && go test ./...",
        *[f"go: downloading example.com/mod{i} v1.{i}.0" for i in range(50)],
    ]
    rows.append("##[error]./commands.go:395:20: undefined: parseFlags")
    rows += [f"ok  \texample.com/app/pkg{i}\t0.0{i % 10}s" for i in range(40)]
    for i in range(failing_tests):
        rows += [
            f"=== RUN   TestCommand{i}",
            f"    commands_test.go:{100 + i}: expected exit code 0, got 2",
            f"--- FAIL: TestCommand{i} (0.00s)",
            "FAIL\texample.com/app/cmd\t0.012s",
        ]
    rows += ["FAIL", "##[error]Process completed with exit code 1."]
    return "\n".join(rows) + "\n"


@pytest.mark.parametrize("budget", [1000, 2000, 4000])
def test_the_first_error_is_kept_before_later_repeated_failures(budget: int) -> None:
    log = _go_log()
    result = excerpt(log, budget_tokens=budget)
    _assert_consistent(result, budget)
    first = _number_of(log, "undefined: parseFlags")
    assert first in result.kept_line_numbers
    assert result.summary is not None and result.summary.startswith("Failing tests: TestCommand0, TestCommand1")
    assert result.error_locations[0] == "./commands.go:395:20"  # root cause first, then the later ones
    assert result.failing_tests[:2] == ["TestCommand0", "TestCommand1"]


_WARNING_THEN_ERROR = [
    *[f"[INFO] step {i}" for i in range(100)],
    "[WARNING] /src/main/java/a/Unsafe.java:[19,15] Unsafe is internal proprietary API",
    "java.lang.InterruptedException",
    "\tat java.lang.Object.wait(Native Method)",
    *[f"[INFO] compiling {i}" for i in range(300)],
    "[ERROR] /src/main/java/a/Map.java:[155,27] error: incompatible types",
    *[f"[ERROR] /src/main/java/a/Other{i}.java:[{i},1] error: cannot find symbol" for i in range(150)],
    "[INFO] BUILD FAILURE",
]
_ERROR_IN_A_STEP_THAT_SUCCEEDED = [
    "##[group]Run mvn -B dependency:go-offline --fail-never",
    "[ERROR] /w/src/Early.java:[1,1] cannot find symbol",
    *[f"[INFO] downloaded {i}" for i in range(300)],
    "##[group]Run mvn -B verify",
    *[f"[INFO] building {i}" for i in range(300)],
    "[ERROR] /w/src/Late.java:[42,46] cannot access Compiler",
    *[f"[ERROR] Tests run: {i}, Failures: 1 <<< FAILURE! - in a.T{i}Test" for i in range(120)],
    "##[error]Process completed with exit code 1.",
]


@pytest.mark.parametrize(
    ("rows", "needle", "location"),
    [
        pytest.param(
            _WARNING_THEN_ERROR,
            "Map.java:[155,27]",
            "/src/main/java/a/Map.java:155:27",
            id="a-warning-or-a-bare-exception-is-not-it",
        ),
        pytest.param(
            _ERROR_IN_A_STEP_THAT_SUCCEEDED,
            "Late.java:[42,46]",
            "/w/src/Late.java:42:46",
            id="an-error-in-a-step-that-succeeded-is-not-it",
        ),
    ],
)
def test_the_first_error_is_the_first_real_failure(rows: list[str], needle: str, location: str) -> None:
    log = "\n".join(rows) + "\n"
    result = excerpt(log, budget_tokens=1000)
    assert _number_of(log, needle) in result.kept_line_numbers
    assert result.error_locations[0] == location
    assert "Unsafe.java" not in (result.summary or "")


def test_the_summary_takes_a_small_share_of_the_budget_and_is_redacted() -> None:
    rows = [f"--- FAIL: TestVeryLongNameNumber{i}_{LIVE} (0.00s)" for i in range(200)] + ["FAIL"]
    result = excerpt("\n".join(rows) + "\n", budget_tokens=1000, extra_secrets=[LIVE])
    _assert_consistent(result, 1000)
    assert result.summary is not None and "(+" in result.summary  # the rest is counted, not listed
    assert len(result.summary) <= 0.12 * 1000 * CHARS_PER_TOKEN
    assert LIVE not in result.rendered and LIVE not in json.dumps(result.model_dump())


def test_pages_and_logs_without_failures_have_no_summary() -> None:
    assert excerpt(_go_log(), start_line=1, budget_tokens=500).summary is None
    assert excerpt("all good\n" * 20).summary is None


@pytest.mark.parametrize(
    ("line", "tests", "places"),
    [
        pytest.param(
            "FAIL: test_last_page (test_pagination.PageTest.test_last_page)",
            ["test_pagination.PageTest.test_last_page"],
            [],
            id="unittest",
        ),
        pytest.param(
            "FAILED tests/test_dates.py::test_parse[a-b] - ValueError: boom",
            ["tests/test_dates.py::test_parse[a-b]"],
            [],
            id="pytest",
        ),
        pytest.param("    --- FAIL: TestParse/empty (0.00s)", ["TestParse/empty"], [], id="go"),
        pytest.param("test parser::tests::empty ... FAILED", ["parser::tests::empty"], [], id="rust"),
        pytest.param(
            "testFoo(com.x.FooTest)  Time elapsed: 0.01 sec  <<< FAILURE!",
            ["com.x.FooTest.testFoo"],
            [],
            id="surefire-2",
        ),
        pytest.param("[ERROR]   FooTest.bar:42 expected:<1> but was:<2>", ["FooTest.bar"], [], id="surefire-summary"),
        pytest.param(
            "ConsoleClientTest > testClassicParsing() FAILED",
            ["ConsoleClientTest > testClassicParsing()"],
            [],
            id="gradle",
        ),
        pytest.param("  ✕ adds numbers (5 ms)", ["adds numbers"], [], id="jest"),
        pytest.param(
            '  File "/home/runner/work/app/app/src/dates.py", line 41, in parse_date',
            [],
            ["src/dates.py:41"],
            id="python-frame",
        ),
        pytest.param('  File "/usr/lib/python3.11/json/decoder.py", line 3, in x', [], [], id="library-frame"),
        pytest.param(
            "[ERROR] /w/src/A.java:[155,27] error: incompatible types", [], ["/w/src/A.java:155:27"], id="javac"
        ),
        pytest.param("./commands.go:395:20: undefined: parseFlags", [], ["./commands.go:395:20"], id="go-build"),
        pytest.param("src/lib.rs:12:5: error[E0308]: mismatched types", [], ["src/lib.rs:12:5"], id="rust-build"),
        pytest.param("\tat com.x.Foo.bar(Foo.java:12)", [], [], id="java-frame"),
        pytest.param("Tests run: 12, Failures: 0, Errors: 0", [], [], id="no-failure"),
    ],
)
def test_failing_tests_and_locations_are_extracted(line: str, tests: list[str], places: list[str]) -> None:
    assert extract_facts([line]) == LogFacts(failing_tests=tests, locations=places)


def test_the_header_is_read_back_from_an_excerpt() -> None:
    header = facts_header(LogFacts(failing_tests=["a", "b"], locations=["x.py:1"]), 200)
    assert header == "Failing tests: a, b\nError locations: x.py:1"
    assert header_facts(header + "\n  12| some line\n") == header.splitlines()
    assert header_facts("  12| Failing tests: no\n") == []
    assert facts_header(LogFacts(), 200) is None


def test_best_possible_shows_the_given_lines_as_far_as_they_fit() -> None:
    log = "".join(f"line {i}\n" for i in range(1, 1001))
    wanted = list(range(100, 1000, 3))
    result = excerpt_of_lines(log, wanted, budget_tokens=300)
    _assert_consistent(result, 300)
    assert result.kept_line_numbers and set(result.kept_line_numbers) <= set(wanted)
    assert len(result.kept_line_numbers) < len(wanted)

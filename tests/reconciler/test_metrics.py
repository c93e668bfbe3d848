"""reconciler.metrics: observations land in the right series and the exposition text parses."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from reconciler.metrics import Metrics, MetricsAuditSink
from reconciler.summary import RedJob, RunSummary, StartedAttempt

# One sample line of the text format 0.0.4: name, optional {labels}, value (no timestamps are written).
_SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\})?'
    r" (?P<value>[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|Inf|NaN))$"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_HELP = re.compile(r"^# HELP (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*) .*$")
_TYPE = re.compile(r"^# TYPE (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*) (?P<kind>counter|gauge|histogram|summary|untyped)$")

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_exposition(text: str) -> tuple[dict[str, str], Series]:
    """A strict little parser: every line is HELP, TYPE or a sample of a family declared just before."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    series: Series = {}
    current: str | None = None
    for line in text.splitlines():
        if m := _HELP.match(line):
            current = m["name"]
            continue
        if m := _TYPE.match(line):
            assert m["name"] == current, line
            assert m["name"] not in types, f"family declared twice: {line}"
            types[m["name"]] = m["kind"]
            continue
        m = _SAMPLE.match(line)
        assert m is not None, f"unparseable line: {line!r}"
        assert current is not None
        name = m["name"]
        base = re.sub(r"_(bucket|sum|count)$", "", name) if types.get(current) == "histogram" else name
        assert base == current, f"sample {name} outside its family {current}"
        labels = tuple(sorted((k, _unescape(v)) for k, v in _LABEL.findall(m["labels"] or "")))
        key = (name, labels)
        assert key not in series, f"duplicate series: {line}"
        series[key] = float(m["value"].replace("Inf", "inf"))
    return types, series


def _summary(**kw: object) -> RunSummary:
    base: dict[str, object] = {"trigger": "schedule", "started_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)}
    base.update(kw)
    return RunSummary.model_validate(base)


def test_fresh_metrics_render_parseable_text_with_zeroed_counters() -> None:
    types, series = parse_exposition(Metrics().render())
    assert types["greenloop_reconcile_passes_total"] == "counter"
    assert types["greenloop_reconcile_pass_duration_seconds"] == "histogram"
    assert types["greenloop_forge_rate_limit_remaining"] == "gauge"
    assert series[("greenloop_attempts_started_total", ())] == 0
    assert series[("greenloop_attempt_tokens_total", (("direction", "input"),))] == 0


def test_observe_pass_counts_by_trigger_and_fills_the_duration_histogram() -> None:
    m = Metrics()
    red = RedJob(project="p", job="ci", run_id="1", head_sha="a" * 40, conclusion="failure", decision="start")
    started = StartedAttempt(project="p", job="ci", attempt_id="abc", run_id="1")
    m.observe_pass(
        _summary(duration_ms=300.0, projects_scanned=3, projects_red=1, red=[red], attempts_started=[started])
    )
    m.observe_pass(_summary(trigger="debug", duration_ms=7000.0, skips={"paused": 2}, errors={"q": "boom"}))
    _, s = parse_exposition(m.render())
    assert s[("greenloop_reconcile_passes_total", (("trigger", "schedule"),))] == 1
    assert s[("greenloop_reconcile_passes_total", (("trigger", "debug"),))] == 1
    h = "greenloop_reconcile_pass_duration_seconds"
    assert s[(f"{h}_bucket", (("le", "0.25"),))] == 0
    assert s[(f"{h}_bucket", (("le", "0.5"),))] == 1
    assert s[(f"{h}_bucket", (("le", "5"),))] == 1
    assert s[(f"{h}_bucket", (("le", "10"),))] == 2
    assert s[(f"{h}_bucket", (("le", "+Inf"),))] == 2
    assert s[(f"{h}_count", ())] == 2
    assert s[(f"{h}_sum", ())] == pytest.approx(7.3)
    assert s[("greenloop_attempts_started_total", ())] == 1
    assert s[("greenloop_reconcile_skips_total", (("reason", "paused"),))] == 2
    assert s[("greenloop_reconcile_project_errors_total", ())] == 1
    assert s[("greenloop_reconcile_projects_scanned", ())] == 0  # a gauge: the latest pass
    assert (
        s[("greenloop_reconcile_last_pass_timestamp_seconds", ())]
        == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    )


def test_histogram_buckets_are_cumulative_and_monotonic() -> None:
    m = Metrics()
    for ms in (1.0, 60.0, 400.0, 2_000.0, 9_000.0, 500_000.0):
        m.observe_pass(_summary(duration_ms=ms))
    _, s = parse_exposition(m.render())
    buckets = sorted(
        ((float(dict(k[1])["le"].replace("+Inf", "inf")), v) for k, v in s.items() if k[0].endswith("_bucket")),
    )
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)
    assert buckets[-1] == (math.inf, 6)


def test_dry_run_pass_counts_no_started_attempts() -> None:
    m = Metrics()
    started = StartedAttempt(project="p", job="ci", attempt_id=None, run_id="1")
    m.observe_pass(_summary(dry_run=True, attempts_started=[started]))
    assert m.value("greenloop_attempts_started_total") == 0
    assert m.value("greenloop_reconcile_passes_total", trigger="schedule") == 1


def test_attempt_finished_adds_outcome_tokens_and_cost() -> None:
    m = Metrics()
    m.observe_attempt_finished("succeeded", 1200, 300, 0.25)
    m.observe_attempt_finished("failed", 800, 100, 0.125)
    m.observe_attempt_finished("failed", 0, 0, 0.0)
    _, s = parse_exposition(m.render())
    assert s[("greenloop_attempts_finished_total", (("outcome", "succeeded"),))] == 1
    assert s[("greenloop_attempts_finished_total", (("outcome", "failed"),))] == 2
    assert s[("greenloop_attempt_tokens_total", (("direction", "input"),))] == 2000
    assert s[("greenloop_attempt_tokens_total", (("direction", "output"),))] == 400
    assert s[("greenloop_attempt_cost_usd_total", ())] == pytest.approx(0.375)


@pytest.mark.anyio
async def test_tool_calls_counted_directly_and_through_the_audit_sink() -> None:
    @dataclass(frozen=True)
    class Event:
        tool: str
        outcome: str

    m = Metrics()
    m.observe_tool_call("read_repo_file", "ok")
    sink = MetricsAuditSink(m)
    await sink.record(Event("read_repo_file", "ok"))
    await sink.record(Event("write_repo_file", "refused"))
    _, s = parse_exposition(m.render())
    assert s[("greenloop_mcp_tool_calls_total", (("outcome", "ok"), ("tool", "read_repo_file")))] == 2
    assert s[("greenloop_mcp_tool_calls_total", (("outcome", "refused"), ("tool", "write_repo_file")))] == 1


def test_set_forge_copies_the_client_counters() -> None:
    from mcp_server.forge import ForgeStats

    m = Metrics()
    m.set_forge(ForgeStats(requests=10, not_modified=7, rate_remaining=4990, retries=1))
    m.set_forge(ForgeStats(requests=12, not_modified=9, rate_remaining=None, retries=1))
    _, s = parse_exposition(m.render())
    assert s[("greenloop_forge_requests_total", ())] == 12
    assert s[("greenloop_forge_not_modified_total", ())] == 9
    assert s[("greenloop_forge_retries_total", ())] == 1
    assert s[("greenloop_forge_rate_limit_remaining", ())] == 4990  # an unknown budget keeps the last known


@pytest.mark.parametrize(
    "label",
    [
        pytest.param('quote"inside', id="double-quote"),
        pytest.param("back\\slash", id="backslash"),
        pytest.param("new\nline", id="newline"),
        pytest.param("}{ = ,", id="syntax-chars"),
        pytest.param("ünïcødé", id="unicode"),
    ],
)
def test_hostile_label_values_are_escaped_and_round_trip(label: str) -> None:
    m = Metrics()
    m.observe_tool_call(label, "error")
    _, s = parse_exposition(m.render())
    assert s[("greenloop_mcp_tool_calls_total", (("outcome", "error"), ("tool", label)))] == 1


def test_unsorted_histogram_buckets_are_refused() -> None:
    with pytest.raises(ValueError, match="Histogram buckets invalid"):
        Metrics(pass_buckets=(1.0, 0.5))


def test_failed_and_skipped_passes_are_counted() -> None:
    m = Metrics()
    m.observe_pass_failed("schedule")
    m.observe_pass_failed("schedule")
    m.observe_pass_skipped("lease_held")
    _, s = parse_exposition(m.render())
    assert s[("greenloop_reconcile_pass_failures_total", (("trigger", "schedule"),))] == 2
    assert s[("greenloop_reconcile_passes_skipped_total", (("reason", "lease_held"),))] == 1

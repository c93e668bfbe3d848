"""In-memory metrics of the reconciler, rendered in the Prometheus text exposition format (version 0.0.4).

No client library: counters, gauges and one histogram are plain numbers keyed by their label values, and
`render()` writes the text format itself. One `Metrics` lives in the `ReconcilerContext`; the pass, the
dispatcher and the API feed it, `GET /metrics` serves it. Values reset when the process restarts (as with any
Prometheus client); the durable record is the store.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from reconciler.summary import RunSummary

__all__ = [
    "CONTENT_TYPE",
    "PASS_DURATION_BUCKETS",
    "ForgeCounters",
    "Metrics",
    "MetricsAuditSink",
    "ToolCallEvent",
]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# Seconds. A pass over a few unchanged projects costs one 304 each (milliseconds); a cold pass over many
# projects with job listings can take tens of seconds.
PASS_DURATION_BUCKETS: Final[tuple[float, ...]] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

_Labels = tuple[tuple[str, str], ...]


class ForgeCounters(Protocol):
    """What `set_forge` reads: `mcp_server.forge.ForgeStats` has these attributes."""

    @property
    def requests(self) -> int: ...
    @property
    def not_modified(self) -> int: ...
    @property
    def retries(self) -> int: ...
    @property
    def rate_remaining(self) -> int | None: ...


class ToolCallEvent(Protocol):
    """What `MetricsAuditSink` reads from an `mcp_server.audit.AuditEvent`."""

    @property
    def tool(self) -> str: ...
    @property
    def outcome(self) -> str: ...


@dataclass
class _Family:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    values: dict[_Labels, float] = field(default_factory=dict)
    # histogram only: per label set, cumulative bucket counts (same order as `buckets`), sum, count
    buckets: tuple[float, ...] = ()
    bucket_counts: dict[_Labels, list[int]] = field(default_factory=dict)
    sums: dict[_Labels, float] = field(default_factory=dict)
    counts: dict[_Labels, int] = field(default_factory=dict)


def _labels(**labels: str) -> _Labels:
    return tuple(sorted(labels.items()))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _format_labels(labels: Iterable[tuple[str, str]]) -> str:
    items = list(labels)
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in items) + "}"


class Metrics:
    """The reconciler's counters, gauges and pass-duration histogram; `render()` gives the exposition text.

    Safe to call from several threads (one lock); every method is O(labels) and never does I/O.
    """

    def __init__(self, *, pass_buckets: Sequence[float] = PASS_DURATION_BUCKETS) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, _Family] = {}
        self._counter("greenloop_reconcile_passes_total", "Reconcile passes run, by trigger.")
        self._histogram(
            "greenloop_reconcile_pass_duration_seconds", "Wall time of one reconcile pass.", tuple(pass_buckets)
        )
        self._gauge("greenloop_reconcile_last_pass_timestamp_seconds", "Unix time the latest pass started.")
        self._gauge("greenloop_reconcile_projects_scanned", "Projects scanned by the latest pass.")
        self._gauge("greenloop_reconcile_projects_red", "Projects with a red job in the latest pass.")
        self._counter("greenloop_reconcile_pass_failures_total", "Passes that raised or timed out, by trigger.")
        self._counter("greenloop_reconcile_passes_skipped_total", "Scheduled passes not run, by reason.")
        self._counter("greenloop_reconcile_skips_total", "Red jobs the gate skipped, by reason.")
        self._counter("greenloop_reconcile_project_errors_total", "Projects a pass could not reconcile (errors).")
        self._counter("greenloop_reconcile_reruns_total", "Re-runs of a failed job requested (flake check).")
        self._counter("greenloop_attempts_started_total", "Remediation attempts started.")
        self._counter("greenloop_attempts_finished_total", "Remediation attempts finished, by outcome.")
        self._counter("greenloop_attempt_tokens_total", "Model tokens spent by finished attempts, by direction.")
        self._counter("greenloop_attempt_cost_usd_total", "Model cost of finished attempts, in US dollars.")
        self._counter("greenloop_mcp_tool_calls_total", "MCP tool calls, by tool and outcome.")
        self._counter("greenloop_forge_requests_total", "HTTP requests sent to the forge.")
        self._counter("greenloop_forge_not_modified_total", "Forge answers that were 304 Not Modified.")
        self._counter("greenloop_forge_retries_total", "Forge requests retried.")
        self._gauge("greenloop_forge_rate_limit_remaining", "The forge's last reported remaining request budget.")
        self._gauge(
            "greenloop_resync_projects_deferred",
            "Projects the latest scheduled (paced) pass had due but left for a later tick to keep the reserve.",
        )
        self._counter("greenloop_webhook_deliveries_total", "Signed webhook deliveries received, by event and outcome.")
        self._counter("greenloop_webhook_refused_total", "Webhook deliveries refused, by reason (nothing changed).")
        self._counter("greenloop_reconcile_wakeups_total", "Project reconciles requested by an event, by source.")
        self._gauge("greenloop_spend_usd", "Model cost of attempts started in the current window, by limit.")
        self._gauge("greenloop_spend_limit_usd", "The configured cost limit of each window (USD).")
        self._counter("greenloop_spend_notices_total", "Spend notices sent (80% or 100% of a limit), by limit.")
        # Counters that exist without labels start at 0 so a scrape shows them before the first event.
        for name in (
            "greenloop_attempts_started_total",
            "greenloop_attempt_cost_usd_total",
            "greenloop_forge_requests_total",
            "greenloop_forge_not_modified_total",
            "greenloop_forge_retries_total",
            "greenloop_reconcile_reruns_total",
        ):
            self._families[name].values[()] = 0.0
        for direction in ("input", "output"):
            self._families["greenloop_attempt_tokens_total"].values[_labels(direction=direction)] = 0.0

    # --- observations -------------------------------------------------------------------------------------

    def observe_pass(self, summary: RunSummary) -> None:
        """Count one finished pass: trigger, duration, red projects, skips, errors and (unless dry) starts."""
        with self._lock:
            self._inc("greenloop_reconcile_passes_total", 1, trigger=summary.trigger)
            self._observe("greenloop_reconcile_pass_duration_seconds", max(summary.duration_ms, 0.0) / 1000.0)
            self._set("greenloop_reconcile_last_pass_timestamp_seconds", summary.started_at.timestamp())
            self._set("greenloop_reconcile_projects_scanned", summary.projects_scanned)
            self._set("greenloop_reconcile_projects_red", summary.projects_red)
            if summary.trigger == "schedule":
                self._set("greenloop_resync_projects_deferred", summary.projects_deferred)
            if summary.rate_limit_remaining is not None:
                self._set("greenloop_forge_rate_limit_remaining", summary.rate_limit_remaining)
            for reason, n in summary.skips.items():
                self._inc("greenloop_reconcile_skips_total", n, reason=reason)
            if summary.errors:
                self._inc("greenloop_reconcile_project_errors_total", len(summary.errors))
            if not summary.dry_run:
                # A dry run starts nothing and requests nothing; counting it would report work not done.
                self._inc("greenloop_attempts_started_total", len(summary.attempts_started))
                self._inc("greenloop_reconcile_reruns_total", len(summary.reruns))

    def observe_pass_failed(self, trigger: str) -> None:
        """Count a pass that raised or timed out (it produced no summary)."""
        with self._lock:
            self._inc("greenloop_reconcile_pass_failures_total", 1, trigger=trigger)

    def observe_pass_skipped(self, reason: str) -> None:
        """Count a scheduled pass not run (e.g. `lease_held`: another replica is running it)."""
        with self._lock:
            self._inc("greenloop_reconcile_passes_skipped_total", 1, reason=reason)

    def observe_attempt_finished(self, status: str, tokens_in: int, tokens_out: int, cost: float) -> None:
        """Count one attempt reaching `status` (its outcome), with the tokens and cost it spent."""
        with self._lock:
            self._inc("greenloop_attempts_finished_total", 1, outcome=status)
            self._inc("greenloop_attempt_tokens_total", max(tokens_in, 0), direction="input")
            self._inc("greenloop_attempt_tokens_total", max(tokens_out, 0), direction="output")
            self._inc("greenloop_attempt_cost_usd_total", max(cost, 0.0))

    def observe_tool_call(self, tool: str, outcome: str) -> None:
        """Count one MCP tool call (`outcome`: ok, refused or error)."""
        with self._lock:
            self._inc("greenloop_mcp_tool_calls_total", 1, tool=tool, outcome=outcome)

    def observe_webhook(self, event: str, outcome: str) -> None:
        """Count one signed delivery of `event` (`outcome`: accepted, ignored or duplicate)."""
        with self._lock:
            self._inc("greenloop_webhook_deliveries_total", 1, event=event, outcome=outcome)

    def observe_webhook_refused(self, reason: str) -> None:
        """Count one refused delivery (`reason`: unsigned, bad_signature, too_large, malformed, disabled)."""
        with self._lock:
            self._inc("greenloop_webhook_refused_total", 1, reason=reason)

    def observe_wakeup(self, source: str) -> None:
        """Count one project reconcile requested by an event (`source`: webhook or run)."""
        with self._lock:
            self._inc("greenloop_reconcile_wakeups_total", 1, source=source)

    def set_spend(self, limit: str, spent: float, limit_usd: float, *, project: str = "") -> None:
        """Spend and limit (USD) of one window: `project_daily` (with `project`), `fleet_daily`, `fleet_monthly`."""
        labels = {"limit": limit, **({"project": project} if project else {})}
        with self._lock:
            self._set("greenloop_spend_usd", spent, **labels)
            self._set("greenloop_spend_limit_usd", limit_usd, **labels)

    def observe_spend_notice(self, limit: str, level: str) -> None:
        """Count one spend notice (`notice` at the notice share, `exhausted` at 100%)."""
        with self._lock:
            self._inc("greenloop_spend_notices_total", 1, limit=limit, level=level)

    def set_forge(self, stats: ForgeCounters) -> None:
        """Copy the forge client's cumulative counters (requests, 304s, retries, rate budget left)."""
        with self._lock:
            self._set("greenloop_forge_requests_total", stats.requests)
            self._set("greenloop_forge_not_modified_total", stats.not_modified)
            self._set("greenloop_forge_retries_total", stats.retries)
            if stats.rate_remaining is not None:
                self._set("greenloop_forge_rate_limit_remaining", stats.rate_remaining)

    def value(self, name: str, **labels: str) -> float:
        """The current value of a counter or gauge (0 when never set); a histogram's observation count."""
        with self._lock:
            family = self._families[name]
            key = _labels(**labels)
            if family.kind == "histogram":
                return float(family.counts.get(key, 0))
            return family.values.get(key, 0.0)

    # --- rendering ----------------------------------------------------------------------------------------

    def render(self) -> str:
        """The Prometheus text exposition (0.0.4) of every metric, families in a stable order."""
        lines: list[str] = []
        with self._lock:
            for family in self._families.values():
                lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
                lines.append(f"# TYPE {family.name} {family.kind}")
                if family.kind == "histogram":
                    lines.extend(self._render_histogram(family))
                    continue
                for key in sorted(family.values):
                    lines.append(f"{family.name}{_format_labels(key)} {_format_value(family.values[key])}")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _render_histogram(family: _Family) -> list[str]:
        lines: list[str] = []
        for key in sorted(family.counts):
            counts = family.bucket_counts[key]
            for bound, n in zip(family.buckets, counts, strict=True):
                labels = (*key, ("le", _format_value(bound)))
                lines.append(f"{family.name}_bucket{_format_labels(labels)} {n}")
            lines.append(f"{family.name}_bucket{_format_labels((*key, ('le', '+Inf')))} {family.counts[key]}")
            lines.append(f"{family.name}_sum{_format_labels(key)} {_format_value(family.sums[key])}")
            lines.append(f"{family.name}_count{_format_labels(key)} {family.counts[key]}")
        return lines

    # --- internals (call with the lock held) --------------------------------------------------------------

    def _counter(self, name: str, help_text: str) -> None:
        self._families[name] = _Family(name, "counter", help_text)

    def _gauge(self, name: str, help_text: str) -> None:
        self._families[name] = _Family(name, "gauge", help_text)

    def _histogram(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        if list(buckets) != sorted(set(buckets)) or any(not math.isfinite(b) for b in buckets):
            raise ValueError(f"Histogram buckets invalid: must be finite, increasing and distinct: {buckets!r}.")
        self._families[name] = _Family(name, "histogram", help_text, buckets=buckets)

    def _inc(self, name: str, amount: float, **labels: str) -> None:
        family = self._families[name]
        key = _labels(**labels)
        family.values[key] = family.values.get(key, 0.0) + amount

    def _set(self, name: str, value: float, **labels: str) -> None:
        self._families[name].values[_labels(**labels)] = float(value)

    def _observe(self, name: str, value: float, **labels: str) -> None:
        family = self._families[name]
        key = _labels(**labels)
        counts = family.bucket_counts.setdefault(key, [0] * len(family.buckets))
        for i, bound in enumerate(family.buckets):
            if value <= bound:
                counts[i] += 1
        family.sums[key] = family.sums.get(key, 0.0) + value
        family.counts[key] = family.counts.get(key, 0) + 1


class MetricsAuditSink:
    """An `mcp_server.audit.AuditSink` that counts tool calls into `Metrics` (combine with `FanOutAuditSink`)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def record(self, event: ToolCallEvent) -> None:
        """Count the call by tool and outcome."""
        self._metrics.observe_tool_call(event.tool, event.outcome)

"""Notifications: one Slack-compatible incoming-webhook message when an attempt succeeds or is escalated,
when its fix PR has waited longer than `stale_pr_hours` (once), and when spending reaches the notice share or
the whole of a cost limit (`reconciler.budget`).

`notify()` never raises: a chat outage must not fail a reconcile pass. It returns whether the webhook took
the message, and logs one structured event either way. The webhook URL is itself a credential (whoever
holds it can post to the channel), so it never appears in a log line or an error message.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import httpx2

from infra.jsonlog import log_event
from policy.redaction import redact

__all__ = ["DEFAULT_TIMEOUT_SECONDS", "NotifyEvent", "build_payload", "notify"]

logger = logging.getLogger("greenloop.notify")

NotifyEvent = Literal["succeeded", "escalated", "spend", "stale_pr"]

DEFAULT_TIMEOUT_SECONDS: Final = 10.0

# Slack refuses a section whose text exceeds 3000 characters; the top-level `text` is the fallback shown in
# notifications and is kept short.
_SECTION_LIMIT: Final = 3000
_TEXT_LIMIT: Final = 300

_HEADLINES: Final[dict[str, str]] = {
    "succeeded": ":white_check_mark: greenloop fixed {project}",
    "escalated": ":rotating_light: greenloop needs a human on {project}",
    "spend": ":moneybag: greenloop spending on {project}",
    "stale_pr": ":hourglass: greenloop's fix for {project} is waiting for a human",
}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build_payload(
    event: NotifyEvent, *, project: str, attempt_id: str | None, pr_url: str | None, summary_markdown: str
) -> dict[str, Any]:
    """The webhook body: a plain `text` fallback plus Block Kit `blocks` (header, summary, context).

    The summary is redacted (it may quote logs) and clipped to Slack's section limit.
    """
    headline = _HEADLINES[event].format(project=project)
    text = headline + (f": {pr_url}" if pr_url else "")
    summary = _clip(redact(summary_markdown).strip() or "(no summary)", _SECTION_LIMIT)
    context = ([f"attempt `{attempt_id}`"] if attempt_id else []) + [f"project `{project}`"]
    if pr_url:
        context.append(f"<{pr_url}|pull request>")
    return {
        "text": _clip(text, _TEXT_LIMIT),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": _clip(headline, 150), "emoji": True}},
            {"type": "section", "text": {"type": "mrkdwn", "text": summary}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)}]},
        ],
    }


async def notify(
    webhook_url: str | None,
    event: NotifyEvent,
    *,
    project: str,
    attempt_id: str | None,
    pr_url: str | None,
    summary_markdown: str,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> bool:
    """Post `event` (for an attempt, or for spending: no attempt) to the incoming webhook; True on 2xx.

    No webhook configured, a refused or malformed URL, a timeout, a network error or a non-2xx answer all
    give False and one log event; nothing is raised (cancellation still propagates).
    """
    fields: dict[str, Any] = {"notify_event": event, "project": project, "attempt_id": attempt_id}
    if not webhook_url:
        log_event(logger, "notify_skipped", level=logging.DEBUG, reason="no webhook configured", **fields)
        return False
    parts = urlsplit(webhook_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # Security: the URL is a credential; say what is wrong with it without echoing it.
        log_event(logger, "notify_failed", level=logging.WARNING, reason="webhook URL is not http(s)", **fields)
        return False
    fields["webhook_host"] = parts.hostname
    payload = build_payload(
        event, project=project, attempt_id=attempt_id, pr_url=pr_url, summary_markdown=summary_markdown
    )
    try:
        # Two timeouts: httpx2's per-phase one, and an overall deadline for a server that trickles bytes.
        async with (
            asyncio.timeout(timeout_seconds),
            httpx2.AsyncClient(
                timeout=httpx2.Timeout(timeout_seconds), follow_redirects=False, trust_env=False
            ) as http,
        ):
            response = await http.post(webhook_url, json=payload)
    except (TimeoutError, httpx2.TimeoutException):
        log_event(logger, "notify_failed", level=logging.WARNING, reason="timed out", timeout=timeout_seconds, **fields)
        return False
    except httpx2.HTTPError as exc:
        log_event(logger, "notify_failed", level=logging.WARNING, reason=exc.__class__.__name__, **fields)
        return False
    except Exception:  # the contract is "never raises": a bug here must not fail the caller's pass
        logger.exception("notify_crashed", extra={"greenloop_fields": fields})
        return False
    if not response.is_success:
        log_event(
            logger, "notify_failed", level=logging.WARNING, reason="http status", status=response.status_code, **fields
        )
        return False
    log_event(logger, "notify_sent", status=response.status_code, **fields)
    return True

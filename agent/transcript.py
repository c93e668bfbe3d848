"""The run's transcript: requests, responses, tool calls and results, stop. JSON-serialisable.

Every event is passed through `policy.redaction.redact_obj` (with the run's extra secrets) before it
is kept, so nothing that leaves this object can carry a credential. Requests are recorded as deltas:
the system prompt and tool list once (`setup`), then only the messages new since the last request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from anthropic.types import Message

from agent.accounting import ModelCall, UsageTotals, total_of
from agent.models import ModelRequest
from policy.redaction import redact_obj

__all__ = ["Transcript", "usage_in"]


class Transcript:
    """An append-only, redacted event list for one attempt."""

    def __init__(self, *, secrets: Iterable[str] = ()) -> None:
        self._secrets = tuple(s for s in secrets if s)
        self._start = time.monotonic()
        self._events: list[dict[str, Any]] = []
        self._sent_messages = 0

    def _add(self, kind: str, data: dict[str, Any]) -> None:
        event = {"seq": len(self._events), "t": round(time.monotonic() - self._start, 3), "kind": kind, **data}
        self._events.append(redact_obj(event, extra_secrets=self._secrets))

    def setup(self, *, task: dict[str, Any], model: str, system: str, tools: Sequence[dict[str, Any]]) -> None:
        """Record what the run started with."""
        self._add("setup", {"task": task, "model": model, "system": system, "tools": list(tools)})

    def request(self, turn: int, request: ModelRequest) -> None:
        """Record a model request: its parameters and the messages not recorded before."""
        new = request.messages[self._sent_messages :]
        self._sent_messages = len(request.messages)
        self._add(
            "request",
            {
                "turn": turn,
                "model": request.model,
                "max_tokens": request.max_tokens,
                "message_count": len(request.messages),
                "new_messages": new,
            },
        )

    def response(self, turn: int, message: Message, call: ModelCall) -> None:
        """Record a model response and its accounting."""
        self._add(
            "response",
            {
                "turn": turn,
                "id": message.id,
                "stop_reason": message.stop_reason,
                "content": [b.model_dump(mode="json", exclude_none=True) for b in message.content],
                "usage": call.model_dump(mode="json"),
            },
        )

    def tool_call(self, turn: int, *, tool_use_id: str, name: str, arguments: Any) -> None:
        """Record a tool call the model asked for."""
        self._add("tool_call", {"turn": turn, "tool_use_id": tool_use_id, "name": name, "input": arguments})

    def tool_result(self, turn: int, *, tool_use_id: str, name: str, is_error: bool, text: str, source: str) -> None:
        """Record a tool result; `source` is "server" (the MCP tool answered) or "agent" (refused locally)."""
        self._add(
            "tool_result",
            {
                "turn": turn,
                "tool_use_id": tool_use_id,
                "name": name,
                "is_error": is_error,
                "text": text,
                "source": source,
            },
        )

    def note(self, turn: int, message: str) -> None:
        """Record something the loop did on its own (a continuation prompt, a retry)."""
        self._add("note", {"turn": turn, "message": message})

    def stop(self, *, reason: str, detail: str, turns: int) -> None:
        """Record why the run ended."""
        self._add("stop", {"reason": reason, "detail": detail, "turns": turns})

    @property
    def events(self) -> list[dict[str, Any]]:
        """A copy of the (already redacted) events."""
        return list(self._events)

    def to_json(self) -> str:
        """The events as one JSON array."""
        return json.dumps(self._events, ensure_ascii=False, default=str)


def usage_in(transcript_json: str) -> UsageTotals:
    """The summed accounting of the model calls a stored transcript (`Transcript.to_json`) recorded.

    Raises:
        ValueError: the text is not a JSON list of events.
    """
    events = json.loads(transcript_json)
    if not isinstance(events, list):
        raise ValueError("Invalid transcript: not a JSON list of events.")
    return total_of(
        [
            ModelCall.model_validate(e["usage"])
            for e in events
            if isinstance(e, dict) and e.get("kind") == "response" and "usage" in e
        ]
    )

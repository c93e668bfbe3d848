"""Record a real model session to JSON, and replay it later without the network.

File shape: `{"version": 1, "exchanges": [{"request": {...}, "response": {...}} | {"request": {...},
"error": {"kind": ..., "status_code": ..., "message": ...}}]}`. Everything written is passed through
`policy.redaction.redact_obj` first.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from anthropic.types import Message

from agent.errors import ModelError, ReplayMismatch, ScriptError
from agent.models import ModelBackend, ModelRequest
from policy.redaction import redact_obj

__all__ = ["RecordingBackend", "ReplayBackend"]

_VERSION = 1


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RecordingBackend:
    """Wraps another back-end and appends every request/response pair to `path` as it goes."""

    def __init__(self, inner: ModelBackend, path: str | Path, *, secrets: Iterable[str] = ()) -> None:
        self._inner = inner
        self._path = Path(path)
        self._secrets = tuple(secrets)
        self.exchanges: list[dict[str, Any]] = []

    async def create(self, request: ModelRequest) -> Message:
        """Forward `request` and record the answer (or the `ModelError`) before returning it."""
        entry: dict[str, Any] = {"request": request.model_dump(mode="json")}
        try:
            response = await self._inner.create(request)
        except ModelError as exc:
            entry["error"] = {"kind": exc.kind, "status_code": exc.status_code, "message": str(exc)}
            self._save(entry)
            raise
        entry["response"] = response.model_dump(mode="json", exclude_none=True)
        self._save(entry)
        return response

    def _save(self, entry: dict[str, Any]) -> None:
        self.exchanges.append(redact_obj(entry, extra_secrets=self._secrets))
        self._path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(self._path, json.dumps({"version": _VERSION, "exchanges": self.exchanges}, indent=1))


class ReplayBackend:
    """Answers requests from a recording, in order.

    By default a request must have the same model, tool names and number of messages as the recorded
    one; `strict=True` compares the whole request.
    """

    def __init__(self, path: str | Path, *, strict: bool = False) -> None:
        name = str(path)
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ScriptError(f"Script error: cannot read recording: {name!r}: {exc.strerror}.") from None
        except json.JSONDecodeError as exc:
            raise ScriptError(f"Script error: recording is not valid JSON: {name!r}: {exc.msg}.") from None
        if not isinstance(data, dict) or data.get("version") != _VERSION or not isinstance(data.get("exchanges"), list):
            raise ScriptError(f"Script error: not a version-{_VERSION} recording: {name!r}.")
        self._exchanges: list[dict[str, Any]] = data["exchanges"]
        self._strict = strict
        self._next = 0

    async def create(self, request: ModelRequest) -> Message:
        """The recorded answer to the next request.

        Raises:
            ScriptError: the recording has no more exchanges.
            ReplayMismatch: `request` does not match the recorded request.
            ModelError: the recorded exchange was an error.
        """
        if self._next >= len(self._exchanges):
            raise ScriptError(f"Script error: the recording has only {len(self._exchanges)} exchange(s).")
        entry = self._exchanges[self._next]
        self._next += 1
        recorded = entry.get("request") or {}
        self._check(request, recorded)
        if "error" in entry:
            err = entry["error"]
            raise ModelError(
                str(err.get("message", "recorded error")),
                kind=str(err.get("kind", "server_error")),
                status_code=err.get("status_code"),
            )
        return Message.model_validate(entry["response"])

    def _check(self, request: ModelRequest, recorded: dict[str, Any]) -> None:
        turn = self._next
        if self._strict:
            if request.model_dump(mode="json") != recorded:
                raise ReplayMismatch(f"Replay mismatch: request {turn} differs from the recording.")
            return
        tools_now = sorted(t.get("name", "") for t in request.tools)
        tools_then = sorted(t.get("name", "") for t in recorded.get("tools", []))
        if request.model != recorded.get("model") or tools_now != tools_then:
            raise ReplayMismatch(f"Replay mismatch: request {turn} has a different model or tool list.")
        if len(request.messages) != len(recorded.get("messages", [])):
            raise ReplayMismatch(
                f"Replay mismatch: request {turn} has {len(request.messages)} message(s), "
                f"the recording {len(recorded.get('messages', []))}."
            )

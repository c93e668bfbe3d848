"""A scripted model: replays a fixed list of tool calls, one per turn, then a final message.

Script shape (`fixtures/scripts/<project>.json`)::

    {"project": "calc", "steps": [{"tool": "get_job_logs", "input": {"run_id": "$FAILING_RUN_ID"}}, ...],
     "final_message": "Fixed the off-by-one in add()."}

`$NAME` placeholders in input strings are replaced from `substitutions` (keys without the `$`); a
string that is exactly one placeholder takes the substitution's own type (so a run id stays an int).
Responses are real `anthropic.types.Message` objects with estimated `usage` (4 characters a token, the
request's cache breakpoints honoured by a simulated prompt cache, `agent.prompt_cache.PrefixCache`), so the
loop sees the same shape and the same accounting as from the API.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from anthropic.types import Message
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import ScriptError
from agent.models import ModelRequest
from agent.prompt_cache import PrefixCache, estimate_tokens

__all__ = ["Script", "ScriptStep", "ScriptedBackend", "load_script", "substitute"]

_PLACEHOLDER = re.compile(r"\$([A-Z][A-Z0-9_]*)")


class ScriptStep(BaseModel):
    """One tool call the scripted model makes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tool: Annotated[str, Field(min_length=1, max_length=200)]
    input: dict[str, Any] = Field(default_factory=dict)
    text: str | None = None  # optional reasoning text sent before the tool call


class Script(BaseModel):
    """A whole scripted session."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str | None = None
    steps: list[ScriptStep]
    final_message: str = ""


def load_script(source: str | Path | Mapping[str, Any]) -> Script:
    """Parse a script from a path or an already-loaded mapping.

    Raises:
        ScriptError: the file is missing, not JSON, or not a valid script.
    """
    if isinstance(source, Mapping):
        data: Any = dict(source)
        name = "<script>"
    else:
        name = str(source)
        try:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ScriptError(f"Script error: cannot read script: {name!r}: {exc.strerror}.") from None
        except json.JSONDecodeError as exc:
            raise ScriptError(f"Script error: not valid JSON: {name!r}: {exc.msg}.") from None
    try:
        return Script.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ScriptError(f"Script error: invalid script {name!r}: {where}: {first['msg']}.") from None


def substitute(value: Any, substitutions: Mapping[str, object]) -> Any:
    """Replace `$NAME` placeholders anywhere in `value` (strings inside dicts and lists)."""
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole and whole.group(1) in substitutions:
            return substitutions[whole.group(1)]
        return _PLACEHOLDER.sub(
            lambda m: str(substitutions[m.group(1)]) if m.group(1) in substitutions else m.group(0), value
        )
    if isinstance(value, dict):
        return {k: substitute(v, substitutions) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, substitutions) for v in value]
    return value


class ScriptedBackend:
    """Replays a `Script`: step i answers turn i with one `tool_use`; then `final_message` with end_turn."""

    def __init__(
        self,
        script: str | Path | Mapping[str, Any] | Script,
        substitutions: Mapping[str, object] | None = None,
        *,
        cache: PrefixCache | None = None,
    ) -> None:
        self.script = script if isinstance(script, Script) else load_script(script)
        self._subs = dict(substitutions or {})
        self._turn = 0
        self.finished = False
        self.cache = cache if cache is not None else PrefixCache()

    @property
    def turns_served(self) -> int:
        """How many responses have been handed out."""
        return self._turn

    async def create(self, request: ModelRequest) -> Message:
        """The next scripted response.

        Raises:
            ScriptError: asked again after the final message.
        """
        if self.finished:
            raise ScriptError("Script error: the scripted session already ended.")
        index = self._turn
        self._turn += 1
        content: list[dict[str, Any]]
        if index < len(self.script.steps):
            step = self.script.steps[index]
            content = []
            if step.text:
                content.append({"type": "text", "text": step.text})
            content.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_script_{index:04d}",
                    "name": step.tool,
                    "input": substitute(step.input, self._subs),
                }
            )
            stop_reason = "tool_use"
        else:
            self.finished = True
            content = [{"type": "text", "text": substitute(self.script.final_message, self._subs)}]
            stop_reason = "end_turn"
        return Message.model_validate(
            {
                "id": f"msg_script_{index:04d}",
                "type": "message",
                "role": "assistant",
                "model": request.model,
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": {
                    **self.cache.usage(request.model_dump(mode="json")),
                    "output_tokens": estimate_tokens(content),
                },
            }
        )

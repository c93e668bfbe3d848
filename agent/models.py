"""Model back-ends: the one interface the loop talks to, and the real Anthropic SDK behind it.

Every back-end answers a `ModelRequest` with an `anthropic.types.Message`, so the loop cannot tell a
real model from a scripted or replayed one. Errors the SDK could not retry away become `ModelError`.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

import anthropic
from anthropic.types import Message, MessageParam, TextBlockParam, ToolUnionParam
from pydantic import BaseModel, ConfigDict

from agent.errors import ModelError
from policy.config import AgentSettings

__all__ = ["AnthropicBackend", "ModelBackend", "ModelRequest", "check_model_access"]


class ModelRequest(BaseModel):
    """One Messages API request, in the API's JSON shape (so it records and replays as plain JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    max_tokens: int
    system: list[dict[str, Any]]  # text blocks (the place for a cache breakpoint)
    tools: list[dict[str, Any]]
    messages: list[dict[str, Any]]


class ModelBackend(Protocol):
    """Something that answers model requests.

    `create` returns the assistant message, or raises `ModelError` when no answer can be had (after
    whatever bounded retries the back-end does) or `ScriptError` when a scripted session is exhausted.
    """

    async def create(self, request: ModelRequest) -> Message:
        """Answer one request."""
        ...


def _classify(exc: anthropic.AnthropicError) -> ModelError:
    """Translate an SDK exception into a `ModelError` (by type, never by message text)."""
    if isinstance(exc, anthropic.CredentialsError):
        return ModelError("Model API error: no usable credentials.", kind="auth")
    if isinstance(exc, anthropic.APITimeoutError):
        return ModelError("Model API error: the request timed out after retries.", kind="timeout")
    if isinstance(exc, anthropic.APIConnectionError):
        return ModelError("Model API error: could not connect after retries.", kind="connection")
    if isinstance(exc, anthropic.APIResponseValidationError):
        return ModelError("Model API error: the response did not match the schema.", kind="invalid_response")
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        kind = "bad_request"
        if isinstance(exc, anthropic.OverloadedError) or status == 529:
            kind = "overloaded"
        elif isinstance(exc, anthropic.RateLimitError):
            kind = "rate_limited"
        elif isinstance(exc, anthropic.AuthenticationError | anthropic.PermissionDeniedError):
            kind = "auth"
        elif status >= 500:
            kind = "server_error"
        return ModelError(f"Model API error: {kind} after retries: status {status}.", kind=kind, status_code=status)
    return ModelError(f"Model API error: {type(exc).__name__}.", kind="connection")


class AnthropicBackend:
    """The real Messages API through the `anthropic` SDK, with its bounded retries and timeout."""

    def __init__(self, settings: AgentSettings, *, api_key: str, base_url: str | None = None) -> None:
        # Security: the key is handed to the SDK only; it never enters a request body or transcript.
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url if base_url is not None else settings.base_url,
            max_retries=settings.max_retries,
            timeout=settings.timeout_seconds,
        )

    async def create(self, request: ModelRequest) -> Message:
        """Send `request`; raises `ModelError` once the SDK has given up retrying."""
        try:
            return await self._client.messages.create(
                model=request.model,
                max_tokens=request.max_tokens,
                system=cast(list[TextBlockParam], request.system),
                tools=cast(list[ToolUnionParam], request.tools),
                messages=cast(list[MessageParam], request.messages),
            )
        except anthropic.AnthropicError as exc:
            raise _classify(exc) from exc

    async def aclose(self) -> None:
        """Close the SDK's HTTP client."""
        await self._client.close()

    async def __aenter__(self) -> AnthropicBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def check_model_access(
    settings: AgentSettings, *, api_key: str, base_url: str | None = None, timeout_seconds: float = 15.0
) -> None:
    """Ask the Messages API whether `api_key` works, before any work is started on it.

    One token count (free, no model output) with a single retry: a wrong key, a key without access or an
    unreachable endpoint answers at once instead of after every attempt has failed on it.

    Raises:
        ModelError: the API refused the key (`kind` auth) or could not be reached (connection, timeout).
    """
    client = anthropic.AsyncAnthropic(
        api_key=api_key,
        base_url=base_url if base_url is not None else settings.base_url,
        max_retries=1,
        timeout=timeout_seconds,
    )
    try:
        await client.messages.count_tokens(model=settings.model, messages=[{"role": "user", "content": "ping"}])
    except anthropic.AnthropicError as exc:
        raise _classify(exc) from exc
    finally:
        await client.close()

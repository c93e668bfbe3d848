"""Prompt caching: where the loop puts cache breakpoints, and a model of the API's prefix cache.

The Messages API caches a request's prefix (the tools, then the system blocks, then the messages' content
blocks, in that order) up to each block marked `"cache_control": {"type": "ephemeral"}`, at most
`MAX_BREAKPOINTS` of them. A later request whose prefix is the same up to a marked block, or up to a block
at most `LOOKBACK_BLOCKS` before one, reads those tokens from the cache (`cache_read_input_tokens`, priced
at 0.1x the base input price); the tokens from there to the last breakpoint are written to the cache
(`cache_creation_input_tokens`, 1.25x); tokens after the last breakpoint are plain input. Prefixes shorter
than the model's minimum (1,024 tokens for Sonnet and Opus) are not cached. Entries live five minutes,
renewed by each hit.

`with_breakpoints` marks a request the way the loop sends it: the last tool (the tool list is the same for
every attempt, so it is shared across attempts), the system prompt, the block the previous request ended
with (an exact hit even after a turn with many parallel tool calls) and the conversation's last block.

`PrefixCache` is that cache, simulated for the scripted back-end and the fake Messages API, so the token
figures of tests and benchmarks follow the real pricing rules: what was marked and seen before is a read,
a new marked prefix is a creation.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "CACHE_CONTROL",
    "LOOKBACK_BLOCKS",
    "MAX_BREAKPOINTS",
    "CacheUsage",
    "PrefixCache",
    "estimate_tokens",
    "request_blocks",
    "with_breakpoints",
]

CACHE_CONTROL: dict[str, str] = {"type": "ephemeral"}
MAX_BREAKPOINTS = 4
LOOKBACK_BLOCKS = 20
MIN_CACHEABLE_TOKENS = 1024
TTL_SECONDS = 300.0

CacheUsage = dict[str, int]
"""`input_tokens`, `cache_creation_input_tokens` and `cache_read_input_tokens` of one request."""


def estimate_tokens(obj: Any) -> int:
    """A rough token count (4 characters a token) for scripted and fake responses."""
    text = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, default=str)
    return max(1, len(text) // 4)


def _marked(block: Mapping[str, Any]) -> dict[str, Any]:
    return {**block, "cache_control": dict(CACHE_CONTROL)}


def _mark_last_block(message: Mapping[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list) or not content:
        return dict(message)
    return {**message, "content": [*content[:-1], _marked(content[-1])]}


def with_breakpoints(
    tools: Sequence[Mapping[str, Any]],
    system: Sequence[Mapping[str, Any]],
    messages: Sequence[Mapping[str, Any]],
    *,
    previous_last: int | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Copies of `tools`, `system` and `messages` with cache breakpoints; the inputs are not changed.

    Breakpoints go on the last tool, the last system block, the last block of message `previous_last`
    (the message the previous request ended with) and the last block of the last message: at most four.
    """
    new_tools = [dict(t) for t in tools]
    if new_tools:
        new_tools[-1] = _marked(new_tools[-1])
    new_system = [dict(b) for b in system]
    if new_system:
        new_system[-1] = _marked(new_system[-1])
    new_messages = [dict(m) for m in messages]
    last = len(new_messages) - 1
    marks = {last} if last >= 0 else set()
    if previous_last is not None and 0 <= previous_last < last:
        marks.add(previous_last)
    for i in marks:
        new_messages[i] = _mark_last_block(new_messages[i])
    return new_tools, new_system, new_messages


def request_blocks(body: Mapping[str, Any]) -> list[tuple[dict[str, Any], bool]]:
    """The request's cacheable blocks in prefix order, each without its `cache_control` and with a flag
    saying whether it carried one. Message blocks carry their message's role."""
    blocks: list[tuple[dict[str, Any], bool]] = []

    def add(block: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
        plain = {k: v for k, v in block.items() if k != "cache_control"}
        blocks.append(({**extra, **plain}, block.get("cache_control") is not None))

    for tool in body.get("tools") or []:
        if isinstance(tool, Mapping):
            add(tool, {"_part": "tool"})
    system = body.get("system")
    for block in [{"type": "text", "text": system}] if isinstance(system, str) and system else system or []:
        if isinstance(block, Mapping):
            add(block, {"_part": "system"})
    for message in body.get("messages") or []:
        if not isinstance(message, Mapping):
            continue
        content = message.get("content")
        role = message.get("role")
        for block in [{"type": "text", "text": content}] if isinstance(content, str) else content or []:
            if isinstance(block, Mapping):
                add(block, {"_part": "message", "_role": role})
    return blocks


class PrefixCache:
    """A simulation of the Messages API's prompt cache (see the module doc), keyed by model and prefix.

    Tokens are estimated per block with `estimate_tokens`; the plain input is what the request holds
    beyond its cached and written prefix.
    """

    def __init__(
        self,
        *,
        min_tokens: int = MIN_CACHEABLE_TOKENS,
        ttl_seconds: float = TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._min_tokens = min_tokens
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: dict[str, float] = {}  # prefix hash -> expiry

    def usage(self, body: Mapping[str, Any]) -> CacheUsage:
        """Account one request: what it reads from the cache, what it writes, what is plain input."""
        now = self._clock()
        self._entries = {k: t for k, t in self._entries.items() if t > now}
        blocks = request_blocks(body)
        digest = hashlib.sha256(str(body.get("model", "")).encode())
        hashes: list[str] = []
        cumulative: list[int] = []
        total = 0
        for block, _ in blocks:
            encoded = json.dumps(block, sort_keys=True, default=str)
            digest.update(encoded.encode())
            hashes.append(digest.copy().hexdigest())
            total += estimate_tokens({k: v for k, v in block.items() if not k.startswith("_")})
            cumulative.append(total)
        marks = [i for i, (_, marked) in enumerate(blocks) if marked]
        hit = -1
        for mark in marks:
            for i in range(mark, max(-1, mark - LOOKBACK_BLOCKS - 1), -1):
                if i > hit and hashes[i] in self._entries:
                    hit = i
                    break
        read = cumulative[hit] if hit >= 0 else 0
        if hit >= 0:
            self._entries[hashes[hit]] = now + self._ttl
        written = 0
        for mark in marks:
            if cumulative[mark] >= self._min_tokens:
                self._entries[hashes[mark]] = now + self._ttl
                written = max(written, cumulative[mark] - read)
        return {
            "input_tokens": total - read - written,
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": read,
        }

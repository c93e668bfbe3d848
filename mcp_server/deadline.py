"""Keeping the MCP server responsive: worker threads for blocking work, and one deadline per tool call.

The server is one event loop shared by every session (under `serve-http`, every project's). Anything that
can take long on the CPU or block on the disk (reading a file, listing and matching paths, redacting or
scoring a large text, hashing content) runs through `off_loop` in a worker thread, so one session's heavy
call never stalls another's. Each tool call runs under `call_deadline`: past it, the call is stopped and the
caller gets a `ToolRefused` saying it took too long; the server goes on serving.

A worker thread can't be killed: when the deadline cancels the wait, the thread finishes its (bounded) work
in the background and its result is dropped. Subprocesses (git) are killed on cancellation by their owner.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import anyio
import anyio.to_thread

from mcp_server.errors import ToolRefused

__all__ = ["DEFAULT_CALL_DEADLINE_SECONDS", "CallTookTooLong", "call_deadline", "off_loop"]

# Longer than any one outside call a tool makes (git and forge requests time out at 60 s), short enough
# that a stuck call is noticed before the agent's own turn timeout.
DEFAULT_CALL_DEADLINE_SECONDS = 120.0

_P = ParamSpec("_P")
_R = TypeVar("_R")


class CallTookTooLong(ToolRefused):
    """A tool call ran past its deadline and was stopped."""


async def off_loop(fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """`fn(*args, **kwargs)` in a worker thread; the event loop keeps serving meanwhile.

    Cancellation (the call's deadline) stops the wait at once; the thread runs to its end unobserved.
    """
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), abandon_on_cancel=True)


@contextmanager
def call_deadline(seconds: float, tool: str) -> Iterator[None]:
    """Run the block under a deadline of `seconds`; past it, raise `CallTookTooLong` for `tool`.

    Raises:
        CallTookTooLong: the block was cancelled at its deadline.
    """
    with anyio.move_on_after(seconds) as scope:
        yield
    if scope.cancelled_caught:
        raise CallTookTooLong(
            f"Took too long: {tool} was stopped after its {seconds:g} s limit and returned nothing. Try a "
            "narrower request (a smaller file window, a more specific glob or directory)."
        )

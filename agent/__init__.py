"""The remediation agent: a model loop that acts only through the MCP server's tools.

Entry point: `run_attempt(backend, session, task, budgets, ...) -> AttemptOutcome` (agent.loop).
"""

from __future__ import annotations

from agent.errors import AgentError, ModelError, ReplayMismatch, ScriptError, ToolSessionError
from agent.loop import AttemptOutcome, ToolSession, run_attempt
from agent.models import AnthropicBackend, ModelBackend, ModelRequest
from agent.recording import RecordingBackend, ReplayBackend
from agent.scripted import ScriptedBackend
from agent.types import AttemptTask, StopReason

__all__ = [
    "AgentError",
    "AnthropicBackend",
    "AttemptOutcome",
    "AttemptTask",
    "ModelBackend",
    "ModelError",
    "ModelRequest",
    "RecordingBackend",
    "ReplayBackend",
    "ReplayMismatch",
    "ScriptError",
    "ScriptedBackend",
    "StopReason",
    "ToolSession",
    "ToolSessionError",
    "run_attempt",
]

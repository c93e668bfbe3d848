"""Errors raised by the rules.

PolicyError
├── ConfigError          the configuration is invalid (message names file, key, problem)
└── PolicyViolation      a request the rules refuse
    └── PathRefused      a path outside the workspace, under .git/, denied by a glob, ...
"""

from __future__ import annotations

__all__ = ["ConfigError", "PathRefused", "PolicyError", "PolicyViolation"]


class PolicyError(Exception):
    """Base class of every error in `policy`."""


class ConfigError(PolicyError):
    """The configuration is invalid; the message is one line fit for a terminal."""


class PolicyViolation(PolicyError):
    """A request the rules refuse. The message is safe to show to the model."""


class PathRefused(PolicyViolation):
    """A path the agent may not read or write.

    `reason` is machine-readable: absolute, traversal, nul_byte, backslash, drive, git_dir, outside_root,
    denied_glob, not_allowed, empty, too_long, invalid.
    """

    def __init__(self, message: str, *, reason: str, path: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.path = path

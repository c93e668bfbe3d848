"""Moved to `infra.jsonlog` (shared by every package); this alias keeps older imports working."""

from infra.jsonlog import *  # noqa: F403
from infra.jsonlog import __all__ as __all__

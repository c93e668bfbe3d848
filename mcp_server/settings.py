"""Moved to `infra.settings` (shared by every package); this alias keeps older imports working."""

from infra.settings import *  # noqa: F403
from infra.settings import __all__ as __all__

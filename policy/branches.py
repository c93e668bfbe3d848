"""Fix-branch names: `greenloop/fix/<job-slug>-<attempt_id>`, always a valid git branch name.

The agent may create and push only branches of this shape; the MCP server checks with `is_fix_branch`.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "ATTEMPT_ID_RE",
    "FIX_BRANCH_PREFIX",
    "MAX_BRANCH_LENGTH",
    "attempt_id_of",
    "fix_branch_name",
    "is_fix_branch",
]

FIX_BRANCH_PREFIX = "greenloop/fix/"
MAX_BRANCH_LENGTH = 100
ATTEMPT_ID_RE = re.compile(r"[a-z0-9]{6,32}")

_SLUG_MAX = MAX_BRANCH_LENGTH - len(FIX_BRANCH_PREFIX) - 1 - 32
# Only lowercase ASCII letters, digits and single inner hyphens: none of git check-ref-format's forbidden
# sequences ('..', '@{', '.lock', leading '.', control characters, ' ~^:?*[\\') can occur.
_FIX_BRANCH_RE = re.compile(r"greenloop/fix/(?P<slug>[a-z0-9]+(?:-[a-z0-9]+)*)-(?P<attempt>[a-z0-9]{6,32})")


def _slug(job: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", job).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-")
    slug = slug[:_SLUG_MAX].rstrip("-")
    return slug or "job"


def fix_branch_name(job: str, attempt_id: str) -> str:
    """The branch an attempt's fix goes on: `greenloop/fix/<job-slug>-<attempt_id>`, at most 100 characters.

    The slug is the job name lowercased, transliterated to ASCII, with every other run of characters turned
    into one '-' ('job' when nothing is left).

    Raises:
        ValueError: `attempt_id` is not 6-32 lowercase letters or digits.
    """
    if not isinstance(attempt_id, str) or not ATTEMPT_ID_RE.fullmatch(attempt_id):
        raise ValueError(f"Invalid attempt id: expected 6-32 lowercase letters or digits: {attempt_id!r}.")
    return f"{FIX_BRANCH_PREFIX}{_slug(job)}-{attempt_id}"


def is_fix_branch(name: str) -> bool:
    """True when `name` has exactly the shape `fix_branch_name` produces."""
    return len(name) <= MAX_BRANCH_LENGTH and _FIX_BRANCH_RE.fullmatch(name) is not None


def attempt_id_of(name: str) -> str | None:
    """The attempt id encoded in fix branch `name`, or None when `name` is not a fix branch."""
    if len(name) > MAX_BRANCH_LENGTH:
        return None
    match = _FIX_BRANCH_RE.fullmatch(name)
    return match.group("attempt") if match else None

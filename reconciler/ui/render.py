"""Rendering for the operators' pages: Jinja2 templates with every value escaped, Markdown without raw HTML.

Everything shown comes from the store, and much of it is hostile by nature (model output, job logs, file
names chosen by whoever pushed): templates autoescape every value, and the only markup that is not escaped
is what `markdown()` makes from a report, with raw HTML in the source rendered as text and links limited to
safe schemes (markdown-it's `validateLink`).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup

__all__ = ["CSP", "SECURITY_HEADERS", "markdown", "render"]

_HERE: Final = Path(__file__).resolve().parent
TEMPLATES: Final = _HERE / "templates"
STATIC: Final = _HERE / "static"

# Security: no script runs on these pages (none is served), styles and images come from this origin only,
# forms post back here only, and no other site may frame them.
CSP: Final = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

_MD: Final = MarkdownIt("commonmark", {"html": False}).enable("table")


def markdown(text: str | None) -> Markup:
    """`text` rendered from Markdown; raw HTML in it is shown as text, never interpreted."""
    return Markup(_MD.render(text or ""))


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "—"


def _pretty(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _web_url(value: object) -> bool:
    # Security: only http(s) links are made from stored URLs (never javascript:, data:, ...).
    return isinstance(value, str) and value.lower().startswith(("https://", "http://"))


def _money(value: float | None) -> str:
    return f"${value or 0.0:,.4f}"


def _count(value: int | None) -> str:
    return f"{value or 0:,}"


_ENV: Final = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters.update(when=_when, pretty=_pretty, money=_money, count=_count, markdown=markdown)
_ENV.tests["web_url"] = _web_url


def render(template: str, **values: Any) -> str:
    """The page `template` filled with `values` (every value escaped unless it is `Markup`)."""
    return _ENV.get_template(template).render(**values)

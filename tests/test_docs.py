"""The docs tell the truth: the config reference matches the model, the example config loads, and every file,
symbol and test the architecture and security pages name exists."""

from __future__ import annotations

import re
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from policy.config import GreenloopConfig, load_config_text

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
OPERATIONS = DOCS / "operations.md"
EXAMPLE = ROOT / "greenloop.example.toml"
CHECKED_PAGES = ("architecture.md", "security.md")

_HEADING_RE = re.compile(r"^#{2,4} `(\[\[?[a-z_.]+\]\]?)`\s*$")
_CODE_RE = re.compile(r"`([^`\n]+)`")
_LINK_RE = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
_PATH_RE = re.compile(r"^(?:[\w.-]+/)*[\w.-]+\.(?:py|md|toml|ya?ml|json|ini|txt)$|^(?:[\w.-]+/)+$")
_ENV_RE = re.compile(r"\bGREENLOOP_([A-Z]+)__([A-Z_]+)\b")
_OPTIONAL_KEY_RE = re.compile(r"(?m)^# ([a-z_]+ = )")


# --------------------------------------------------------------------------------------------------------------
# Helpers: the model's sections, the doc's tables.


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (directly, or as the items of a tuple), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is tuple:
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if len(args) == 1:
            return _model_of(args[0])
    return None


def _expected_sections() -> dict[str, type[BaseModel]]:
    """Every TOML table of greenloop.toml and the model it is parsed into, walked from `GreenloopConfig`."""
    sections: dict[str, type[BaseModel]] = {}

    def walk(prefix: str, model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            sub = _model_of(field.annotation)
            if sub is None:
                continue
            if typing.get_origin(field.annotation) is tuple:
                key = name.removesuffix("s")  # `projects` is written `[[project]]`
                sections[f"[[{prefix}{key}]]"] = sub
                walk(f"{prefix}{key}.", sub)
            else:
                sections[f"[{prefix}{name}]"] = sub
                walk(f"{prefix}{name}.", sub)

    walk("", GreenloopConfig)
    return sections


def _tables_anywhere(markdown: str) -> list[tuple[tuple[str, ...], list[dict[str, str]]]]:
    """Every table in a page: its lowercased header and its rows."""
    found: list[tuple[tuple[str, ...], list[dict[str, str]]]] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("|"):
            i += 1
            continue
        header = tuple(c.strip().lower() for c in lines[i].strip().strip("|").split("|"))
        rows: list[dict[str, str]] = []
        i += 2  # header and separator
        while i < len(lines) and lines[i].startswith("|"):
            cells = [c.strip() for c in _split_row(lines[i])]
            rows.append(dict(zip(header, cells, strict=True)))
            i += 1
        found.append((header, rows))
    return found


def _split_row(line: str) -> list[str]:
    """Split a table row on '|' outside backticks (code spans may hold a '|')."""
    cells, current, in_code = [], "", False
    for ch in line.strip().strip("|"):
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append(current)
            current = ""
        else:
            current += ch
    cells.append(current)
    return cells


def _tables(markdown: str) -> dict[str, list[dict[str, str]]]:
    """Each "### `[section]`" heading's first table, as rows keyed by lowercased column names."""
    out: dict[str, list[dict[str, str]]] = {}
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        match = _HEADING_RE.match(line)
        if not match:
            continue
        section = match.group(1)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("|") and not lines[j].startswith("#"):
            j += 1
        rows: list[dict[str, str]] = []
        header: list[str] | None = None
        while j < len(lines) and lines[j].startswith("|"):
            cells = [c.strip() for c in _split_row(lines[j])]
            if header is None:
                header = [c.lower() for c in cells]
            elif not all(set(c) <= set("-: ") for c in cells):
                rows.append(dict(zip(header, cells, strict=True)))
            j += 1
        out[section] = rows
    return out


def _config_tables() -> dict[str, list[dict[str, str]]]:
    return _tables(OPERATIONS.read_text(encoding="utf-8"))


def _key(row: dict[str, str]) -> str:
    match = re.fullmatch(r"`([a-z_]+)`", row["key"])
    if not match:
        raise AssertionError(f"key cell is not one backticked name: {row['key']!r}")
    return match.group(1)


def _plain(value: Any) -> Any:
    """A model default as TOML would parse it: enums as values, tuples as lists, mappings as dicts."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, BaseModel):
        return {k: _plain(v) for k, v in value.model_dump().items()}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _bounds(field: FieldInfo) -> set[float]:
    found: set[float] = set()
    for meta in field.metadata:
        for kind, attr in ((Ge, "ge"), (Gt, "gt"), (Le, "le"), (Lt, "lt")):
            if isinstance(meta, kind):
                found.add(float(getattr(meta, attr)))
    return found


def _base_type(annotation: Any) -> Any:
    """`str | None` -> str; anything else unchanged."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _doc_rows() -> Iterator[tuple[str, str, dict[str, str]]]:
    tables = _config_tables()
    for section in _expected_sections():
        for row in tables.get(section, []):
            yield section, _key(row), row


# --------------------------------------------------------------------------------------------------------------
# The configuration reference in docs/operations.md.


def test_every_config_section_has_a_table_and_no_table_is_stale() -> None:
    documented = set(_config_tables())
    expected = set(_expected_sections())
    assert expected - documented == set(), "sections missing from docs/operations.md"
    assert documented - expected == set(), "docs/operations.md documents sections the model doesn't have"


@pytest.mark.parametrize("section", sorted(_expected_sections()))
def test_config_table_lists_exactly_the_model_fields(section: str) -> None:
    model = _expected_sections()[section]
    rows = _config_tables().get(section, [])
    keys = [_key(r) for r in rows]
    assert len(keys) == len(set(keys)), f"{section}: a key is documented twice"
    assert sorted(set(model.model_fields) - set(keys)) == [], f"{section}: fields not documented"
    assert sorted(set(keys) - set(model.model_fields)) == [], f"{section}: documented keys that don't exist"


@pytest.mark.parametrize(("section", "key", "row"), list(_doc_rows()), ids=lambda v: v if isinstance(v, str) else "")
def test_documented_default_matches_the_model(section: str, key: str, row: dict[str, str]) -> None:
    field = _expected_sections()[section].model_fields[key]
    cell = row["default"]
    if cell == "required":
        assert field.is_required(), f"{section}.{key} has a default but is documented as required"
        return
    assert not field.is_required(), f"{section}.{key} is required but documented with a default"
    default = field.get_default(call_default_factory=True)
    if cell == "unset":
        assert default is None
    elif cell == "table":
        assert _model_of(field.annotation) is not None, f"{section}.{key} is not a table"
    else:
        literal = re.fullmatch(r"`([^`]+)`", cell)
        assert literal, f"{section}.{key}: default cell is not a TOML literal, 'required', 'unset' or 'table'"
        assert tomllib.loads(f"v = {literal.group(1)}")["v"] == _plain(default)


@pytest.mark.parametrize(("section", "key", "row"), list(_doc_rows()), ids=lambda v: v if isinstance(v, str) else "")
def test_documented_type_and_bounds_match_the_model(section: str, key: str, row: dict[str, str]) -> None:
    field = _expected_sections()[section].model_fields[key]
    cell = row["type"]
    words = {"int": int, "float": float, "bool": bool, "string": str}
    first = cell.split()[0]
    if first in words:
        assert _base_type(field.annotation) is words[first], f"{section}.{key}: documented as {first}"
    numbers = {float(n.replace("_", "")) for n in re.findall(r"\d[\d_]*(?:\.\d+)?", cell.replace("`", " "))}
    assert numbers == _bounds(field), f"{section}.{key}: documented bounds {cell!r} differ from the model"


def test_env_overrides_named_in_the_docs_and_manifests_are_real_keys() -> None:
    texts = [p.read_text(encoding="utf-8") for p in (*DOCS.glob("*.md"), *(ROOT / "deploy").glob("*.yaml"))]
    found = {m.groups() for text in texts for m in _ENV_RE.finditer(text)}
    assert found, "the docs name no GREENLOOP_<SECTION>__<KEY> example"
    sections = _expected_sections()
    for section, key in sorted(found):
        model = sections.get(f"[{section.lower()}]")
        assert model is not None and section.lower() in ("server", "forge", "agent"), section
        assert key.lower() in model.model_fields, f"GREENLOOP_{section}__{key} names no key"


def test_the_documented_env_override_form_works() -> None:
    config = load_config_text("", env={"GREENLOOP_SERVER__KILL_SWITCH": "true", "GREENLOOP_AGENT__MAX_RETRIES": "4"})
    assert config.server.kill_switch is True
    assert config.agent.max_retries == 4


# --------------------------------------------------------------------------------------------------------------
# greenloop.example.toml.


def test_example_config_loads() -> None:
    config = load_config_text(EXAMPLE.read_text(encoding="utf-8"), source=EXAMPLE.name, env={})
    assert len(config.projects) >= 2
    assert {p.autonomy.value for p in config.projects} >= {"propose", "auto_merge"}


def test_example_config_with_its_optional_keys_uncommented_loads_and_sets_every_key() -> None:
    text = _OPTIONAL_KEY_RE.sub(r"\1", EXAMPLE.read_text(encoding="utf-8"))
    load_config_text(text, source=EXAMPLE.name, env={})
    data = tomllib.loads(text)
    for section, model in _expected_sections().items():
        path = section.strip("[]").split(".")
        nodes: list[Any] = [data]
        for part in path:
            nxt: list[Any] = []
            for node in nodes:
                value = node.get(part) if isinstance(node, dict) else None
                nxt.extend(value if isinstance(value, list) else [value] if value is not None else [])
            nodes = nxt
        assert nodes, f"{section} is missing from {EXAMPLE.name}"
        present = set().union(*(set(n) for n in nodes))
        assert sorted(set(model.model_fields) - present) == [], f"{section}: keys missing from {EXAMPLE.name}"


def test_example_config_top_level_defaults_match_the_model() -> None:
    """The example says its plain [server]/[forge]/[agent] values are the defaults: keep that true."""
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    sections = _expected_sections()
    for name in ("server", "forge", "agent"):
        model = sections[f"[{name}]"]
        for key, value in data[name].items():
            if key == "prices" or key not in model.model_fields:
                continue
            if name == "server" and key == "database_url":
                continue  # shown as the SQLite default; documented alternatives are in comments
            assert _plain(model.model_fields[key].get_default(call_default_factory=True)) == value, f"{name}.{key}"


# --------------------------------------------------------------------------------------------------------------
# References in the architecture and security pages.


def _references(page: str) -> list[str]:
    text = (DOCS / page).read_text(encoding="utf-8")
    refs = [m.group(1) for m in _CODE_RE.finditer(text)]
    refs += [m.group(1) for m in _LINK_RE.finditer(text) if "://" not in m.group(1)]
    return refs


def _resolve(page: str, ref: str) -> Path | None:
    """The file a reference names (repository-relative, or relative to docs/ for links), if it looks like one."""
    path = ref.split("::", 1)[0]
    if not _PATH_RE.match(path):
        return None
    for base in (ROOT, DOCS):
        candidate = (base / path).resolve()
        if candidate.exists():
            return candidate
    return ROOT / path


def _has_symbol(text: str, symbol: str) -> bool:
    if symbol.startswith("test_"):
        return re.search(rf"^(?:async )?def {re.escape(symbol)}\(", text, re.MULTILINE) is not None
    name = re.escape(symbol)
    return re.search(rf"\b(?:def|class)\s+{name}\b|^\s*{name}\s*[:=]|[\"']{name}[\"']", text, re.MULTILINE) is not None


@pytest.mark.parametrize("page", CHECKED_PAGES)
def test_every_file_and_symbol_a_page_names_exists(page: str) -> None:
    missing: list[str] = []
    checked = 0
    for ref in _references(page):
        target = _resolve(page, ref)
        if target is None:
            continue
        checked += 1
        if not target.exists():
            missing.append(ref)
            continue
        if "::" in ref:
            text = target.read_text(encoding="utf-8")
            for symbol in ref.split("::", 1)[1].split("."):
                if not _has_symbol(text, symbol):
                    missing.append(ref)
    assert checked > 0, f"{page} names no file at all"
    assert missing == [], f"{page} names files or symbols that don't exist"


def test_every_test_security_md_cites_exists_and_every_wall_has_a_test_cell() -> None:
    tables = _tables_anywhere((DOCS / "security.md").read_text(encoding="utf-8"))
    walls = [rows for header, rows in tables if "which test proves it" in header]
    assert len(walls) == 1, "security.md must have exactly one table of walls"
    rows = walls[0]
    assert len(rows) >= 15
    cited = 0
    for row in rows:
        cell = row["which test proves it"]
        tests = re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", cell)
        assert tests or cell.strip() == "no test yet", f"wall {row['what it stops']!r}: no test and not 'no test yet'"
        for file, name in tests:
            text = (ROOT / file).read_text(encoding="utf-8")
            assert _has_symbol(text, name), f"{file}::{name} does not exist"
            cited += 1
    assert cited >= len(rows) // 2


# --------------------------------------------------------------------------------------------------------------
# Links between the pages.

_MD_LINK_RE = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to '-'."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", page.read_text(encoding="utf-8"), re.MULTILINE)}


@pytest.mark.parametrize("page", [*sorted(p.name for p in DOCS.glob("*.md")), "../deploy/README.md"])
def test_relative_links_and_anchors_resolve(page: str) -> None:
    source = (DOCS / page).resolve()
    broken: list[str] = []
    for match in _MD_LINK_RE.finditer(source.read_text(encoding="utf-8")):
        target = match.group(1)
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        file = (source.parent / path).resolve() if path else source
        missing_anchor = bool(anchor) and file.exists() and file.suffix == ".md" and anchor not in _anchors(file)
        if not file.exists() or missing_anchor:
            broken.append(target)
    assert broken == []


# --------------------------------------------------------------------------------------------------------------
# The metrics table.


def test_the_metrics_table_lists_exactly_what_get_metrics_serves() -> None:
    from reconciler.metrics import Metrics

    served = dict(re.findall(r"^# TYPE (\S+) (\S+)$", Metrics().render(), re.MULTILINE))
    tables = _tables_anywhere(OPERATIONS.read_text(encoding="utf-8"))
    rows = next(rows for header, rows in tables if header[:2] == ("metric", "type"))
    documented = {re.fullmatch(r"`(\w+)`", r["metric"]).group(1): r["type"] for r in rows}  # type: ignore[union-attr]
    assert documented == served

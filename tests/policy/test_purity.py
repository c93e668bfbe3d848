"""`policy` is pure: importing it loads no I/O library, and its sources open nothing."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import policy

POLICY_DIR = Path(policy.__file__).resolve().parent
REPO_ROOT = POLICY_DIR.parent
MODULES = sorted(["policy"] + [f"policy.{p.stem}" for p in POLICY_DIR.glob("*.py") if p.stem != "__init__"])

FORBIDDEN = (
    "sqlalchemy",
    "httpx2",
    "httpx",
    "git",
    "subprocess",
    "socket",
    "asyncio",
    "aiosqlite",
    "asyncpg",
    "mcp",
    "anthropic",
    "urllib.request",
    "http.client",
    "requests",
    "sqlite3",
    "ssl",
)

# pydantic is the one third-party library policy may use, and importing it already loads `socket` (through
# importlib.metadata -> email.utils). So the baseline is a fresh interpreter that has imported pydantic and
# built one model; whatever a policy module loads beyond that is policy's own doing.
_PROBE = """
import json, sys
import pydantic
class _Warm(pydantic.BaseModel):
    x: int = 0
before = set(sys.modules)
import importlib
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(set(sys.modules) - before)))
"""

_BARE_PROBE = "import json, sys; print(json.dumps(sorted(sys.modules)))"


def _run(code: str, *args: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded: list[str] = json.loads(result.stdout)
    return loaded


def _forbidden(names: list[str] | set[str]) -> list[str]:
    return sorted(n for n in names for f in FORBIDDEN if n == f or n.startswith(f + "."))


def test_every_policy_module_is_probed() -> None:
    assert {"policy.paths", "policy.gate", "policy.branches", "policy.config", "policy.types"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_importing_policy_module_loads_no_io_library(module: str) -> None:
    loaded = _run(_PROBE, module)
    assert module in loaded or module == "policy"
    assert _forbidden(loaded) == []


def test_baseline_explains_every_forbidden_module_policy_brings() -> None:
    # Against `python -c pass`, the only forbidden modules importing all of policy brings are pydantic's.
    bare = set(_run(_BARE_PROBE))
    with_policy = set(
        _run("import json, sys\nimport " + ", ".join(MODULES) + "\nprint(json.dumps(sorted(sys.modules)))")
    )
    pydantic_only = "import json, sys, pydantic\nclass _Warm(pydantic.BaseModel):\n    x: int = 0\n"
    with_pydantic = set(_run(pydantic_only + "print(json.dumps(sorted(sys.modules)))"))
    assert set(_forbidden(with_policy - bare)) <= set(_forbidden(with_pydantic - bare))


# Top-level modules policy sources may import: pure standard library, pydantic, and policy itself.
_ALLOWED_IMPORTS = frozenset(
    {
        "__future__", "abc", "base64", "bisect", "collections", "copy", "dataclasses", "datetime", "decimal",
        "enum", "fnmatch", "functools", "hashlib", "hmac", "ipaddress", "itertools", "json", "math", "numbers",
        "operator", "os.path", "pathlib", "posixpath", "pydantic", "policy", "re", "string", "textwrap",
        "tomllib", "types", "typing", "typing_extensions", "unicodedata", "urllib.parse", "uuid",
    }
)  # fmt: skip


def _imports(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _allowed(name: str) -> bool:
    return any(name == ok or name.startswith(ok + ".") for ok in _ALLOWED_IMPORTS)


@pytest.mark.parametrize("path", sorted(POLICY_DIR.glob("*.py")), ids=lambda p: p.name)
def test_policy_sources_import_only_pure_modules(path: Path) -> None:
    bad = sorted(n for n in _imports(path.read_text(encoding="utf-8")) if not _allowed(n))
    assert bad == [], f"{path.name} imports {bad}"


_IO_CALL = re.compile(r"\bopen\s*\(|\.(read_text|write_text|read_bytes|write_bytes|unlink|mkdir)\s*\(")


@pytest.mark.parametrize("path", sorted(POLICY_DIR.glob("*.py")), ids=lambda p: p.name)
def test_policy_sources_do_no_file_io(path: Path) -> None:
    hits = [
        f"{path.name}:{n}: {line.strip()}"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _IO_CALL.search(line)
    ]
    assert hits == []


def test_the_purity_checks_can_fail() -> None:
    assert _forbidden(["socket", "urllib.request", "git.repo", "gitdb", "urllib.parse"]) == [
        "git.repo",
        "socket",
        "urllib.request",
    ]
    assert not _allowed("subprocess") and not _allowed("os") and not _allowed("urllib.request")
    assert _allowed("os.path") and _allowed("policy.types") and _allowed("collections.abc")
    assert _IO_CALL.search("data = open(path)") and _IO_CALL.search("p.write_text(x)")

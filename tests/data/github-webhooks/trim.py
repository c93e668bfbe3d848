"""Regenerate `subset.json` from the full webhook schema: `python tests/data/github-webhooks/trim.py SCHEMA`.

Only the definitions of the events and actions `reconciler.webhooks` handles are kept, and in each only the
property paths in `PATHS` (the ones the receiver reads, plus `action`), with their `type`, `enum` and
`required` as upstream has them; `$ref` and `allOf` are resolved inline. See NOTICE.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

_PR = ["action", "number", "repository.full_name", "pull_request.number", "pull_request.merged"]
_INST = ["action", "repositories_added[].full_name", "repositories_removed[].full_name"]
PATHS: dict[str, list[str]] = {
    "workflow_run$completed": [
        "action",
        "repository.full_name",
        "workflow_run.id",
        "workflow_run.head_sha",
        "workflow_run.conclusion",
    ],
    "check_run$completed": [
        "action",
        "repository.full_name",
        "check_run.id",
        "check_run.head_sha",
        "check_run.conclusion",
    ],
    "check_suite$completed": [
        "action",
        "repository.full_name",
        "check_suite.id",
        "check_suite.head_sha",
        "check_suite.conclusion",
    ],
    "pull_request$closed": _PR,
    "pull_request$synchronize": _PR,
    "installation_repositories$added": _INST,
    "installation_repositories$removed": _INST,
    "ping$event": ["zen", "hook_id"],
}


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """`node` with `$ref` followed and `allOf` merged (properties and required lists)."""
    if "$ref" in node:
        return _resolve(defs[node["$ref"].rsplit("/", 1)[1]], defs)
    if "allOf" in node:
        merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
        for part in node["allOf"]:
            got = _resolve(part, defs)
            for name, sub in got.get("properties", {}).items():
                merged["properties"][name] = sub
            merged["required"] += [r for r in got.get("required", []) if r not in merged["required"]]
        return merged
    return node


def _trim(node: dict[str, Any], paths: list[list[str]], defs: dict[str, Any]) -> dict[str, Any]:
    node = _resolve(node, defs)
    if not paths or paths == [[]]:
        return {k: node[k] for k in ("type", "enum") if k in node}
    if node.get("type") == "array":
        return {"type": "array", "items": _trim(node["items"], paths, defs)}
    out: dict[str, Any] = {"type": node.get("type", "object"), "properties": {}}
    for name in dict.fromkeys(p[0] for p in paths):
        key = name.removesuffix("[]")
        rest = [p[1:] for p in paths if p[0] == name]
        out["properties"][key] = _trim(node["properties"][key], [r for r in rest if r], defs)
    out["required"] = [r for r in node.get("required", []) if r in out["properties"]]
    return out


def main(source: str) -> None:
    defs = json.loads(Path(source).read_text())["definitions"]
    subset = {
        "$schema": "http://json-schema.org/draft-07/schema",
        "definitions": {name: _trim(defs[name], [p.split(".") for p in paths], defs) for name, paths in PATHS.items()},
    }
    out = Path(__file__).with_name("subset.json")
    out.write_text(json.dumps(subset, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])

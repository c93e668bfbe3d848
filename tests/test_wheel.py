"""The wheel is the product as users get it: built, installed into a fresh venv, `greenloop demo` works.

The venv gets only the wheel and its declared dependencies (from the configured package index), and the
demo runs from an empty directory, so nothing from this source tree is importable by accident.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(argv: list[str], *, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "PYTHONPATH", "VIRTUAL_ENV", "GREENLOOP_CONFIG")
    }
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.slow
def test_the_installed_wheel_runs_the_demo(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)], cwd=tmp_path, timeout=600
    )
    assert built.returncode == 0, built.stderr[-4000:]
    (wheel,) = dist.glob("greenloop-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "demo = fixtures.demo:demo_command" in archive.read(entry_points).decode()
    assert "fixtures/scripts/bug-lib.json" in names and "fixtures/forge/server.py" in names
    assert not any(n.startswith("tests/") for n in names)

    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, timeout=300)
    assert made.returncode == 0, made.stderr[-4000:]
    installed = _run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], cwd=tmp_path, timeout=900)
    assert installed.returncode == 0, installed.stderr[-4000:]
    listed = _run([str(venv / "bin" / "pip"), "list", "--format=json"], cwd=tmp_path, timeout=120)
    assert "gitpython" not in {p["name"].lower() for p in json.loads(listed.stdout)}  # no dead dependency

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    demo = _run([str(venv / "bin" / "greenloop"), "demo", "--json", "--deadline", "180"], cwd=workdir, timeout=400)
    assert demo.returncode == 0, demo.stderr[-4000:]
    result = json.loads(demo.stdout)
    assert result["ok"] is True and result["model"] == "scripted model"
    assert {p["name"] for p in result["projects"]} >= {"bug-lib", "stale-import", "protected-workflow"}

"""The import-linter contracts in pyproject.toml hold for the package, and they catch an upward import
even when it hides inside a function (docs/architecture.md, "Layers")."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
LINT = Path(sys.executable).with_name("lint-imports")


def lint(src_parent: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src_parent / "src")}
    return subprocess.run(
        [str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        env=env,
        cwd=src_parent,
        timeout=300,
    )


def test_the_package_keeps_its_layers():
    proc = lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "2 kept, 0 broken" in proc.stdout


def test_an_upward_import_inside_a_function_breaks_the_contract(tmp_path):
    shutil.copytree(
        ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
    )
    model = tmp_path / "src" / "lmforge" / "model" / "transformer.py"
    model.write_text(
        model.read_text() + "\n\ndef _upward():\n    from lmforge.train.trainer import Trainer\n\n"
        "    return Trainer\n"
    )
    proc = lint(tmp_path)
    assert proc.returncode == 1
    assert "lmforge.model is not allowed to import lmforge.train" in proc.stdout
    assert "lmforge.model.transformer -> lmforge.train.trainer" in proc.stdout


def test_a_cycle_between_sibling_modules_breaks_the_contract(tmp_path):
    shutil.copytree(
        ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
    )
    data = tmp_path / "src" / "lmforge" / "data"
    for module, other in (("pii", "normalize"), ("normalize", "pii")):  # same layer, each importing the other
        path = data / f"{module}.py"
        path.write_text(
            path.read_text() + f"\n\ndef _sideways():\n    from lmforge.data import {other}\n\n"
            f"    return {other}\n"
        )
    proc = lint(tmp_path)
    assert proc.returncode == 1
    assert "No cycles are allowed in lmforge.data" in proc.stdout
    assert "1 kept, 1 broken" in proc.stdout  # the layers still hold: only the cycle is wrong

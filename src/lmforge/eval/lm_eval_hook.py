"""Startup hook that makes `lm_eval --model lmforge` work (installed by `lmforge eval --register-lm-eval`).

A `.pth` file in site-packages imports this module when Python starts. It imports nothing heavy:
it only waits for `lm_eval.models` to be imported (lm-eval does that when it resolves a model
name) and then registers "lmforge" as a lazy placeholder for lmforge.eval.harness:LmforgeLM.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import sysconfig
from pathlib import Path

PTH_NAME = "lmforge-lm-eval.pth"
PTH_LINE = "import lmforge.eval.lm_eval_hook\n"
TARGET = "lmforge.eval.harness:LmforgeLM"


def _register() -> None:
    from lm_eval.api.registry import model_registry

    if "lmforge" not in model_registry:
        model_registry.register("lmforge", target=TARGET)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of lm_eval.models to register afterwards."""

    def find_spec(self, name, path, target=None):
        if name != "lm_eval.models":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module) -> None:
            exec_module(module)
            _register()

        spec.loader.exec_module = exec_and_register  # type: ignore[method-assign]
        return spec


def install_hook() -> None:
    if "lm_eval.models" in sys.modules:
        _register()
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())


def write_pth(site_dir: str | Path | None = None) -> Path:
    """Write the .pth file into `site_dir` (default: this interpreter's site-packages)."""
    from lmforge.fileio import atomic_write_text

    target = Path(site_dir or sysconfig.get_paths()["purelib"]) / PTH_NAME
    atomic_write_text(target, PTH_LINE)
    return target


install_hook()

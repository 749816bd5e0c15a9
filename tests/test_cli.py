import subprocess
import sys

import pytest
import torch

from lmforge.cli import VERBS, main
from lmforge.errors import LmforgeError


def test_help_lists_every_verb(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for verb, _, _ in VERBS:
        assert verb in out


def test_every_verb_has_help(capsys):
    for verb, _, _ in VERBS:
        try:
            main([verb, "--help"])
        except SystemExit as e:
            assert e.code == 0
        assert "usage: lmforge" in capsys.readouterr().out


def test_user_error_is_clean_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lmforge", "run", str(tmp_path / "nope.yaml")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "nope.yaml" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_clear_error():
    from lmforge.distributed import pick_device

    with pytest.raises(LmforgeError, match=r"device 'cuda': CUDA is not available .* --device cpu"):
        pick_device("cuda")
    with pytest.raises(LmforgeError, match="not a torch device"):
        pick_device("gpu0")
    assert pick_device("auto").type == "cpu"


def test_the_verb_table_and_recipes_load_without_torch():
    """`lmforge --help` and every verb's parser stay fast: building them imports no torch."""
    code = (
        "import sys; from lmforge.cli import build_parser; from lmforge.recipe import load_recipe; "
        "build_parser(); load_recipe(None); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

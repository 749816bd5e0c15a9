import subprocess
import sys

from lmforge.cli import VERBS, main


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

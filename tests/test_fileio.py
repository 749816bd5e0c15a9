import os
import stat

import pytest

from lmforge.errors import LmforgeError
from lmforge.fileio import atomic_write, atomic_write_json, atomic_write_text, read_json


def test_atomic_write_replaces_whole_file_with_normal_mode(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask
    assert [f.name for f in tmp_path.iterdir()] == ["a.txt"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_json(p, {"x": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(p) as f:
            f.write("partial")
            raise RuntimeError("killed")
    assert read_json(p) == {"x": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]


def test_read_json_errors_name_file(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{nope")
    with pytest.raises(LmforgeError, match="bad.json: line 1"):
        read_json(p)
    with pytest.raises(LmforgeError, match="not found"):
        read_json(tmp_path / "missing.json")

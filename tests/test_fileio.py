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


def dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


def test_stale_temps_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    from lmforge.fileio import owned_temp_dir, remove_stale_temps

    live = owned_temp_dir(tmp_path, "step_000002")
    host = live.name.split("@", 1)[1].split("-", 1)[0]
    dead = tmp_path / f".tmp-step_000001-{dead_pid()}@{host}-abc123"
    other_host = tmp_path / f".tmp-step_000001-{dead_pid()}@elsewhere-abc123"
    ownerless = tmp_path / ".tmp-step_000003-x"  # lmforge before owned temp names
    unrelated = tmp_path / ".tmp-notes"
    for d in (dead, other_host, ownerless, unrelated):
        d.mkdir()
    (dead / "model.safetensors").write_bytes(b"x" * 100)
    removed = remove_stale_temps(tmp_path, "step_")
    assert sorted(removed) == sorted([dead, ownerless])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other_host.name, unrelated.name])


def test_check_replaceable_needs_a_manifest_that_lists_everything(tmp_path):
    from lmforge.fileio import MANIFEST, check_replaceable, write_manifest

    check_replaceable(tmp_path / "absent", "lmforge export")
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", "lmforge export")
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(LmforgeError, match=f"out is not empty.*no {MANIFEST}.*--force"):
        check_replaceable(out, "lmforge export")
    check_replaceable(out, "lmforge export", force=True)
    write_manifest(out, "lmforge export")
    check_replaceable(out, "lmforge export")
    with pytest.raises(LmforgeError, match="written by 'lmforge export'"):
        check_replaceable(out, "lmforge import")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(LmforgeError, match="did not write: notes.txt"):
        check_replaceable(out, "lmforge export")
    (tmp_path / "file").write_text("x")
    with pytest.raises(LmforgeError, match="is a file"):
        check_replaceable(tmp_path / "file", "lmforge export", force=True)


def test_atomic_write_temps_are_owned_and_removed_once_their_writer_is_gone(tmp_path):
    from lmforge.fileio import atomic_write, remove_stale_temps

    (tmp_path / "sub").mkdir()
    with atomic_write(tmp_path / "sub" / "a.txt") as f:
        f.write("x")
        live = [p.name for p in (tmp_path / "sub").iterdir() if p.name.startswith(".tmp-a.txt-")]
        assert len(live) == 1 and f"-{os.getpid()}@" in live[0]
        assert remove_stale_temps(tmp_path, recursive=True) == []  # its writer (this process) runs
    dead = tmp_path / "sub" / f".tmp-b.txt-999999999@{live[0].split('@')[1]}"  # same host, dead pid
    dead.write_text("half")
    legacy = tmp_path / ".c.txt.abcd1234.tmp"
    legacy.write_text("half")
    removed = remove_stale_temps(tmp_path, recursive=True)
    assert sorted(p.name for p in removed) == sorted([dead.name, legacy.name])
    assert (tmp_path / "sub" / "a.txt").read_text() == "x"

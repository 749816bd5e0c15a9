"""The one way lmforge writes files: atomically (temp name, fsync, rename).

A killed process never leaves a torn file where a good one is expected. Files and directories are
written under a temp name that says which process owns it (`.tmp-<name>-<pid>@<host>-<random>`,
from `atomic_write` and `owned_temp_dir`), so the next writer can remove what a killed one left
(`remove_stale_temps`) without touching a write in progress. Outputs that
replace a user-named path carry a manifest (`write_manifest`), and only those are replaced without
being told to (`check_replaceable`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file beside `path`; on success fsync and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-{_owner()}-", dir=path.parent)
    binary = "b" in mode
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_rename_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> None:
    """Publish a fully written directory under its final name (replacing an old one)."""
    import shutil

    final_dir = Path(final_dir)
    if final_dir.exists():
        old = final_dir.with_name(final_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)


def read_json(path: str | os.PathLike) -> Any:
    from lmforge.errors import LmforgeError

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise LmforgeError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise LmforgeError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None


# ---------------------------------------------------------------------------- temp directories


def _owner() -> str:
    """`<pid>@<host>`: the process that owns a temp name (host letters and digits only)."""
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
    return f"{os.getpid()}@{host}"


_OWNED = re.compile(r"-(\d+)@([A-Za-z0-9]+)-[A-Za-z0-9_]+$")
_LEGACY_FILE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def owned_temp_name(label: str) -> str:
    """`.tmp-<label>-<pid>@<host>-<random>`, for a temp directory someone else creates (DCP's writer)."""
    return f".tmp-{label}-{_owner()}-{os.urandom(4).hex()}"


def owned_temp_dir(parent: str | os.PathLike, label: str) -> Path:
    """Create `parent/.tmp-<label>-<pid>@<host>-<random>` (and parent) and return it."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".tmp-{label}-{_owner()}-", dir=parent))


def remove_stale_temps(parent: str | os.PathLike, label: str = "", recursive: bool = False) -> list[Path]:
    """Delete the `.tmp-<label>*` entries in `parent` (and its subfolders with `recursive`) whose writer
    is gone: its pid no longer runs on this host, or the name has no owner (lmforge before owned temp
    names, including atomic_write's old `.NAME.XXXXXXXX.tmp`). Temps of running processes
    and of other hosts (which this one cannot check) are kept. Returns what was removed."""
    import shutil

    parent = Path(parent)
    if not parent.is_dir():
        return []
    host = _owner().split("@", 1)[1]
    removed = []
    if recursive:
        for sub in sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".tmp-")):
            removed += remove_stale_temps(sub, label, recursive=True)
    for entry in parent.iterdir():
        legacy_file = not label and _LEGACY_FILE.match(entry.name)  # atomic_write before owned names
        if not entry.name.startswith(f".tmp-{label}") and not legacy_file:
            continue
        m = _OWNED.search(entry.name)
        if m and (m.group(2) != host or _running(int(m.group(1)))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


# ---------------------------------------------------------------------------- consent to replace

MANIFEST = "lmforge-manifest.json"


def write_manifest(directory: str | os.PathLike, writer: str) -> None:
    """Record in `directory` that `writer` made it and which entries it holds (call it last)."""
    directory = Path(directory)
    entries = sorted(p.name for p in directory.iterdir() if p.name != MANIFEST)
    atomic_write_json(directory / MANIFEST, {"written_by": writer, "entries": entries})


def check_replaceable(path: str | os.PathLike, writer: str, force: bool = False) -> None:
    """Raise LmforgeError unless the directory `path` may be replaced as a whole: it does not exist, is
    empty, or `writer` wrote it (its manifest names the writer and lists every entry), or `force`.
    A file is never replaced by a directory."""
    from lmforge.errors import LmforgeError

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise LmforgeError(f"{path} is a file; the output is a directory, choose another path")
    if force or not any(path.iterdir()):
        return
    why = f"it has no {MANIFEST}"
    if (path / MANIFEST).is_file():
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
            listed = set(manifest["entries"]) | {MANIFEST}
            foreign = sorted(p.name for p in path.iterdir() if p.name not in listed)
            if manifest["written_by"] == writer and not foreign:
                return
            why = (
                f"it holds files {writer} did not write: {', '.join(foreign[:5])}"
                if foreign
                else (f"{MANIFEST} says it was written by {manifest['written_by']!r}")
            )
        except (OSError, ValueError, TypeError, KeyError):
            why = f"its {MANIFEST} is unreadable"
    raise LmforgeError(
        f"{path} is not empty and was not written by {writer} ({why}); "
        "choose another output path or pass --force to replace it"
    )

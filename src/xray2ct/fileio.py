"""Atomic writes: never leave a half-written file under its final name, nor for long beside it.

A file is written under a hidden temporary name beside its target, flushed to the disk
(fsync), given the permissions a plain open() would give, then renamed over the target in
one step; the folder is fsynced too, so after a power cut the target is either the old
file or the whole new one. A temp name carries its writer's process id
(`.{stem}.{pid}-{random}{suffix}`): when a process is killed mid-write (SIGKILL, power
cut) its temp file stays behind, and the next write of the same target removes it once
that process is gone.
"""
from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

UNNAMED_TEMP_AGE_S = 600  # temps of the older naming (no pid) count as stale after this long


def _split(path: Path) -> tuple[str, str]:
    """'case.nii.gz' -> ('case', '.nii.gz'): the temp keeps the full suffix for format sniffing."""
    suffix = "".join(path.suffixes)
    return path.name.removesuffix(suffix), suffix


def temp_prefix(path: Path) -> str:
    """The hidden name prefix of this process's temp files (and folders) for `path`."""
    return f".{_split(Path(path))[0]}.{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else (or we cannot tell): keep its file
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove temp files/folders left beside `path` by killed writers of the same target."""
    path = Path(path)
    stem, suffix = _split(path)
    # mkstemp/mkdtemp add 8 characters from [a-z0-9_]; "old-" marks a replaced folder
    named = re.compile(rf"^\.{re.escape(stem)}\.(\d+)-(?:old-)?[a-z0-9_]{{8}}{re.escape(suffix)}$")
    unnamed = re.compile(rf"^\.{re.escape(stem)}\.(?:old\.)?[a-z0-9_]{{8}}{re.escape(suffix)}$")
    removed = []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.glob(f".{glob.escape(stem)}.*"):
        m = named.match(p.name)
        try:
            stale = (not _pid_alive(int(m[1]))) if m else (
                bool(unnamed.match(p.name)) and time.time() - p.lstat().st_mtime > UNNAMED_TEMP_AGE_S)
            if stale:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p)
        except OSError:
            pass  # raced with another cleaner, or not ours to remove: leave it
    return removed


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def fsync(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's entries') data to the disk; folders are skipped where the OS can't."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (IsADirectoryError, PermissionError):  # Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        if not Path(path).is_dir():  # some filesystems refuse fsync on a folder; a file must succeed
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    The temp file keeps the final suffix (e.g. `.nii.gz`, `.png`) so libraries that pick a
    format from the name still work. On any error the temp file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=_split(path)[1], dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fsync(tmp)  # the data on disk before the name points at it
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private (0600); give it open()'s mode
        os.replace(tmp, path)
        fsync(path.parent)  # the rename itself
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def new_temp_folder(path: str | os.PathLike, tag: str = "") -> Path:
    """A fresh hidden folder beside `path` for building a folder output (stale ones removed),
    with the permissions os.mkdir would give (mkdtemp makes it private, 0700)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path) + tag, suffix=_split(path)[1], dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file in a folder, then the folder."""
    for p in Path(folder).iterdir():
        if p.is_file():
            fsync(p)
    fsync(folder)

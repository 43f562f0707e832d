"""Writing files atomically: a temporary file in the same folder, flushed to disk, then renamed.

Whatever happens while writing (an exception, a crash, ``kill -9``), the target is either absent,
the old file, or the complete new one. A write makes exactly one temporary file, named
``.NAME.jvpcli-PID-TOKEN.tmp``; one that a killed writer left is removed by the next write of the
same target. Every file jvpcli writes (results, goldens, JUnit reports)
goes through :func:`write_atomically`. This module does not import torch.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "file_identity",
    "remove_stale_temporaries",
    "same_file",
    "temporaries",
    "write_atomically",
]


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Create or replace ``path`` with what ``write`` writes, atomically.

    Missing parent folders are created. The new file gets the mode the umask gives a new file.

    Args:
        path: the file to write.
        write: called with a temporary path in the same folder (an empty file already there),
            which it fills.

    Raises:
        OSError: the folder or file cannot be written.
        Exception: whatever ``write`` raises; the temporary file is removed and ``path`` is left
            as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    temporary = path.with_name(f"{_prefix(path)}{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        # O_EXCL: never clobber another writer's temporary file. The mode the umask gives this
        # empty file is restored after ``write`` (which may write files private) has run.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        mode = stat.S_IMODE(os.fstat(descriptor).st_mode)
        os.close(descriptor)
        write(temporary)
        os.chmod(temporary, mode)
        with temporary.open("rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def file_identity(path: Path) -> tuple[object, ...]:
    """What makes two paths one file: its device and inode when it exists (so that a symbolic or
    hard link to it is the same file), else its resolved path."""
    try:
        status = path.stat()
    except OSError:
        return ("path", str(path.resolve()))
    return ("inode", status.st_dev, status.st_ino)


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file, by :func:`file_identity`."""
    return file_identity(a) == file_identity(b)


def temporaries(path: Path) -> list[Path]:
    """The temporary files jvpcli's writers of ``path`` have left beside it (a writer that was
    killed cannot remove its own): ``.NAME.jvpcli-PID-TOKEN.tmp``."""
    try:
        return sorted(path.parent.glob(f"{glob.escape(_prefix(path))}*.tmp"))
    except OSError:
        return []


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files of ``path`` whose writer is no longer running, so that the
    debris of killed commands does not pile up; a live writer's file is left alone."""
    for temporary in temporaries(path):
        pid = temporary.name.removeprefix(_prefix(path)).split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            with contextlib.suppress(OSError):
                temporary.unlink()


def _prefix(path: Path) -> str:
    return f".{path.name}.jvpcli-"


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not writing it now: an earlier interrupted write was
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable; not every platform can open a folder.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)

"""Writing files atomically: a temporary file in the same folder, flushed to disk, then renamed.

Whatever happens while writing (an exception, a crash, ``kill -9``), the target is either absent,
the old file, or the complete new one. Every file jvpcli writes (results, goldens, JUnit reports)
goes through :func:`write_atomically`. This module does not import torch.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomically"]


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
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
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

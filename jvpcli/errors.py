"""jvpcli's exceptions: the class of an error decides the command's exit code.

- :class:`UsageError` and its subclasses (exit 2): the command line, the config or an input file is
  unusable. They are raised before any computation starts.
- :class:`ComputeError` (exit 1): a run failed while computing: the function raised, or the engine
  refused (a strict-mode violation, ``v`` that does not fit the outputs, ...).
- :class:`VerificationError` (exit 1): a run computed, but its results failed a check (a golden
  mismatch, finite differences, non-finite values with ``fail_on_nonfinite``).
- :class:`JvpcliError` itself (exit 1): any other failed run, e.g. an output that cannot be written.
- :class:`RunsFailed` (exit 1): runs of a sweep failed (each with its own error).
- :class:`Interrupted` (exit 130, as for a shell command stopped by Ctrl-C; 143 for SIGTERM): the
  user (or a scheduler) interrupted.

Each message is one paragraph a user can act on, without a Python traceback. This module imports
nothing heavy: the command line imports it to answer ``--help``.
"""

from __future__ import annotations

import os
import sysconfig
import traceback
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ComputeError",
    "ConfigError",
    "FunctionLoadError",
    "Interrupted",
    "JvpcliError",
    "OverwriteError",
    "RunsFailed",
    "SourceLocation",
    "TensorFileError",
    "Terminated",
    "UsageError",
    "VerificationError",
    "display_path",
    "format_shape",
    "is_library_file",
    "user_location",
]


class JvpcliError(Exception):
    """Base of jvpcli's errors: a run failed (exit code 1).

    Attributes:
        message: the paragraph shown to the user.
        location: where in the user's code the problem arose, when known.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, location: SourceLocation | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.location = location

    def __str__(self) -> str:
        if self.location is None:
            return self.message
        return f"{self.message}\n  at {self.location}"

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled with its attributes, not by calling the class again (a subclass's __init__
        # may take other arguments): how a worker's failure reaches the driver.
        return (_rebuilt, (type(self), self.message, self.__dict__))


def _rebuilt(cls: type[JvpcliError], message: str, state: dict[str, object]) -> JvpcliError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class UsageError(JvpcliError):
    """The command line, config or an input file is unusable (exit code 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """The config (file, ``--set`` or option) is malformed or names something that does not fit."""


class OverwriteError(ConfigError):
    """The command would write over a file it reads (exit code 2).

    Attributes:
        target: the file that would be written.
    """

    def __init__(self, message: str, *, target: Path) -> None:
        super().__init__(message)
        self.target = target


class FunctionLoadError(UsageError):
    """The function cannot be loaded: its module fails to import, the name is missing, the weights
    do not fit the model, ..."""


class TensorFileError(UsageError):
    """A safetensors file is missing, corrupt, or holds tensors that do not fit the function."""


class ComputeError(JvpcliError):
    """A run failed while computing (exit code 1)."""


class VerificationError(JvpcliError):
    """A run's results failed a check: they differ from the golden, from finite differences, or
    hold non-finite values with ``fail_on_nonfinite`` (exit code 1)."""


class RunsFailed(JvpcliError):
    """Some runs of a sweep failed; the others ran (exit code 1)."""


class Interrupted(JvpcliError):
    """The user interrupted the command with Ctrl-C (exit code 130), or it was sent SIGTERM
    (exit code 143: the shell's 128 + 15, what Slurm, ``timeout`` and CI cancellation expect)."""

    exit_code = 130

    def __init__(self, message: str, *, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM, so that it stops as for
    Ctrl-C: temporary files removed, what finished reported."""


@dataclass(frozen=True)
class SourceLocation:
    """A line of the user's code: where an exception was raised or passed through."""

    path: Path
    line: int
    function: str
    code: str

    def __str__(self) -> str:
        where = f"{display_path(self.path)}:{self.line}, in {self.function}"
        return f"{where}: {self.code}" if self.code else where


def display_path(path: Path) -> str:
    """Return ``path`` relative to the working directory when it lies below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def format_shape(shape: Sequence[int]) -> str:
    """Write a shape as Python writes a tuple: ``(3, 4)``, ``(5,)``, ``()``."""
    return "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def user_location(error: BaseException, user_files: Collection[Path]) -> SourceLocation | None:
    """Find where in the user's code ``error`` was raised.

    Args:
        error: an exception caught while importing or calling the user's function.
        user_files: the source files the user's function came from (may be empty).

    Returns:
        The innermost traceback frame that is in one of ``user_files`` (which may be installed
        packages) or outside Python's standard library, installed packages and jvpcli itself (a
        helper module of the user's); for a :class:`SyntaxError`, the offending line. ``None``
        when the error passed through no such code (e.g. an exported program).
    """
    if isinstance(error, SyntaxError) and error.filename and error.lineno:
        return SourceLocation(
            Path(error.filename), error.lineno, "<module>", (error.text or "").strip()
        )
    wanted = {os.path.realpath(path) for path in user_files}
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if os.path.realpath(frame.filename) in wanted or not is_library_file(frame.filename):
            return _location(frame)
    return None


def _location(frame: traceback.FrameSummary) -> SourceLocation:
    return SourceLocation(
        Path(frame.filename), frame.lineno or 0, frame.name, (frame.line or "").strip()
    )


_LIBRARY_ROOTS = tuple(
    os.path.realpath(root)
    for root in {
        sysconfig.get_paths()["stdlib"],
        sysconfig.get_paths()["purelib"],
        sysconfig.get_paths()["platlib"],
        os.path.dirname(__file__),
    }
)


def is_library_file(filename: str) -> bool:
    """Whether ``filename`` belongs to Python, an installed package or jvpcli (not the user)."""
    if filename.startswith("<"):
        return True
    real = os.path.realpath(filename)
    return any(real == root or real.startswith(root + os.sep) for root in _LIBRARY_ROOTS)

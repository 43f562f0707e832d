"""Containing user code: what a function, a model's constructor or a module import may do to the
process stays inside the run that called it.

- :data:`INTERRUPTS` are the exceptions that stop the command (Ctrl-C, SIGTERM); every other
  exception user code raises, ``SystemExit`` included, is that run's failure: call sites catch
  :func:`failures` and describe them with :func:`describe`, so that ``sys.exit(0)`` in a
  function can never end the command with exit code 0.
- :func:`contained` runs a block with what it prints to stdout sent to stderr (stdout carries
  ``--json`` and tables), and restores torch's global state afterwards (default dtype and device,
  grad mode, thread count, deterministic flags, attention backends, anomaly mode, matmul
  precision, autocast, flushing denormals, the CPU random number generator), so that one run
  cannot change another's numbers.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

from jvpcli.errors import Terminated

__all__ = ["INTERRUPTS", "contained", "describe", "failures"]

INTERRUPTS: tuple[type[BaseException], ...] = (KeyboardInterrupt, Terminated)
"""What stops the whole command rather than failing one run (``Terminated`` is SIGTERM)."""


def failures(error: BaseException) -> bool:
    """Whether ``error``, raised by user code, fails the run (everything but an interrupt)."""
    return not isinstance(error, INTERRUPTS)


def describe(error: BaseException) -> str:
    """``error`` as messages show it: ``TypeError: ...``, or ``sys.exit(0) was called``."""
    if isinstance(error, SystemExit):
        return f"sys.exit({error.code!r}) was called"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@contextlib.contextmanager
def contained() -> Iterator[None]:
    """Run user code with its stdout on stderr, and torch's global state restored after.

    The redirection is made at the file-descriptor level too, so that what user code writes to
    descriptor 1 directly (``os.write(1, ...)``, ``sys.__stdout__``, a C extension's printf)
    reaches stderr as well.
    """
    saved = _save_state()
    try:
        with contextlib.redirect_stdout(sys.stderr), _descriptor_one_on_two():
            yield
    finally:
        for restore in saved:
            restore()


@contextlib.contextmanager
def _descriptor_one_on_two() -> Iterator[None]:
    try:
        for stream in (sys.__stdout__, sys.stdout):
            if stream is not None:
                stream.flush()
        original = os.dup(1)
    except (OSError, ValueError):  # no descriptor 1 (closed), or a stream without one
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            if sys.__stdout__ is not None:
                sys.__stdout__.flush()
        os.dup2(original, 1)
        os.close(original)


def _save_state() -> list[Callable[[], Any]]:
    """Functions that put back torch's global settings as they are now, each only when it
    changed (some setters are not free: use_deterministic_algorithms imports torch._dynamo)."""
    settings: list[tuple[Callable[[], Any], Callable[[Any], Any]]] = [
        (torch.get_default_dtype, torch.set_default_dtype),
        (torch.get_default_device, torch.set_default_device),
        (torch.is_grad_enabled, torch.set_grad_enabled),
        (torch.get_num_threads, torch.set_num_threads),
        (
            lambda: (
                torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
            ),
            lambda state: torch.use_deterministic_algorithms(state[0], warn_only=state[1]),
        ),
        (
            lambda: (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()),
            lambda state: torch.autograd.set_detect_anomaly(*state),
        ),
        (torch.get_float32_matmul_precision, torch.set_float32_matmul_precision),
        (torch.backends.mha.get_fastpath_enabled, torch.backends.mha.set_fastpath_enabled),
        (torch._C._get_mkldnn_enabled, torch._C._set_mkldnn_enabled),
        (
            lambda: (
                torch.backends.cudnn.enabled,
                torch.backends.cudnn.benchmark,
                torch.backends.cudnn.deterministic,
            ),
            lambda state: _set_cudnn(*state),
        ),
        (torch.is_autocast_cache_enabled, torch.set_autocast_cache_enabled),
        (_flushes_denormals, torch.set_flush_denormal),
    ]
    for device in ("cpu", "cuda"):
        settings.append(
            (
                lambda d=device: (torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)),
                lambda state, d=device: _set_autocast(d, *state),
            )
        )
    cuda = torch.backends.cuda
    for name in ("flash", "mem_efficient", "math", "cudnn"):
        if hasattr(cuda, f"enable_{name}_sdp"):
            settings.append(
                (getattr(cuda, f"{name}_sdp_enabled"), getattr(cuda, f"enable_{name}_sdp"))
            )
    restore: list[Callable[[], Any]] = []
    for get, put in settings:
        saved = get()
        restore.append(lambda get=get, put=put, saved=saved: get() != saved and put(saved))
    rng = torch.get_rng_state()
    restore.append(lambda: torch.set_rng_state(rng))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda_rng = torch.cuda.get_rng_state_all()
        restore.append(lambda: torch.cuda.set_rng_state_all(cuda_rng))
    return restore


def _set_autocast(device: str, enabled: bool, dtype: torch.dtype) -> None:
    torch.set_autocast_enabled(device, enabled)
    torch.set_autocast_dtype(device, dtype)


def _flushes_denormals() -> bool:
    # torch has a setter and no getter: a denormal times one is zero when they are flushed.
    return (torch.tensor([1e-39], dtype=torch.float32) * 1.0).item() == 0.0


def _set_cudnn(enabled: bool, benchmark: bool, deterministic: bool) -> None:
    torch.backends.cudnn.enabled = enabled
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cudnn.deterministic = deterministic

"""glibc's malloc tuned for the CLI's processes: freed tensors are reused, not faulted in again.

PyTorch allocates CPU tensors with the C library's ``malloc``. glibc maps a block with ``mmap``
(and unmaps it when freed) above a threshold that it raises as such blocks are freed (to 32 MiB at
most), and hands the top of its heap back to the operating system whenever more than twice that
threshold lies free there. A jvp allocates and frees more large tensors than the forward pass (the
tangents beside the activations), so the heap keeps shrinking under it and growing again: on a
``TransformerEncoderLayer(256, 8)`` at 8 x 128 tokens, 6,000-7,000 pages of each call were handed
back and faulted in again (zero-filled by the kernel), where the forward pass faults none, and the
call ran 10-25% slower for it; LSTMs alike (``python benchmarks/malloc.py`` measures it). Fixed
thresholds (a block of up to 32 MiB from the heap, the heap trimmed only above 1 GiB free) keep
those pages for the next tensor, at the cost of a process that holds up to 1 GiB of freed memory
until it exits, never more than it used at its peak.

That trade suits a process that computes and exits, so ``jvpcli compute`` and ``jvpcli bench``
(and their Ray tasks) make it at start-up; the library never changes its host process's allocator
behind its back (the README's Performance section gives the variables that do the same). A process
that has chosen already is left as it is: ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_TOP_PAD_`` or ``MALLOC_MMAP_MAX_`` set, or the same tunables in ``GLIBC_TUNABLES``,
another allocator in ``LD_PRELOAD`` (jemalloc, tcmalloc, mimalloc), or ``JVPCLI_MALLOC=default``
(``tuned``, empty or unset: jvpcli's thresholds; any other value is an error).
Elsewhere than on glibc, nothing is done.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping

MMAP_THRESHOLD = 32 << 20
"""Blocks smaller than this come from the heap (glibc's largest accepted value, 32 MiB)."""
TRIM_THRESHOLD = 1 << 30
"""The heap is handed back to the operating system only above this much free at its top."""

_M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3


_THRESHOLDS = ("MMAP_THRESHOLD", "TRIM_THRESHOLD", "TOP_PAD", "MMAP_MAX")


def chosen_already(environ: Mapping[str, str] = os.environ) -> str | None:
    """The setting by which the process chose its allocator's thresholds already, or None.

    Raises:
        ConfigError: ``JVPCLI_MALLOC`` is set to something else than ``default`` or ``tuned``.
    """
    choice = environ.get("JVPCLI_MALLOC", "").strip().lower() or "tuned"
    if choice == "default":
        return "JVPCLI_MALLOC=default"
    if choice != "tuned":
        from jvpcli.errors import ConfigError

        raise ConfigError(
            f"JVPCLI_MALLOC is {environ['JVPCLI_MALLOC']!r}: set it to 'default' (glibc's own "
            "allocator thresholds) or 'tuned' (jvpcli's, the default), or unset it."
        )
    for name in _THRESHOLDS:
        if f"MALLOC_{name}_" in environ:
            return f"MALLOC_{name}_"
    tunables = environ.get("GLIBC_TUNABLES", "")
    if any(f"glibc.malloc.{name.lower()}" in tunables for name in _THRESHOLDS):
        return "GLIBC_TUNABLES"
    if "malloc" in environ.get("LD_PRELOAD", "").lower():
        return "LD_PRELOAD"
    return None


@functools.cache
def tune() -> bool:
    """Fix glibc's mmap and trim thresholds for this process, once; whether they were set.

    False where the process chose its allocator already (:func:`chosen_already`), or its C
    library is not glibc.
    """
    if not sys.platform.startswith("linux") or chosen_already() is not None:
        return False
    import ctypes  # here: the CLI's --help needs none of it

    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: no such thresholds
        return False
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )

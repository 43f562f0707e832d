"""Reproducible runs: seeded random number generators, deterministic algorithms.

Both are context managers that leave the process as they found it, so that one run's ``seed`` or
``deterministic`` does not leak into the next run of a sweep (nor into a library caller's code).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["deterministic_algorithms", "seeded"]


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run the block with torch's random number generators seeded with ``seed``.

    The CPU generator's state (and ``device``'s, for a CUDA device) is restored afterwards.

    Args:
        seed: what ``torch.manual_seed`` gets; ``None`` leaves the generators alone.
        device: the device the block computes on.
    """
    if seed is None:
        yield
        return
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Run the block with ``torch.use_deterministic_algorithms(True)`` when ``enabled``.

    The previous setting (and its ``warn_only``) is restored afterwards. An operation that has no
    deterministic implementation then raises a RuntimeError inside the block.
    """
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)

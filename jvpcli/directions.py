"""Random directions for ``v`` / ``v_params``: Hutchinson estimators and forward gradients.

A config may ask for a random direction instead of naming a file, e.g.
``v_params: {random: normal, seed: 0, match: ["*.weight"], k: 32}``. This module says which
tensors such a spec selects and draws their directions.

Draws are reproducible across machines and processes for the same torch version, and each
tensor's direction depends only on ``(seed, name)``, its shape and ``k``: every tensor has its own
CPU generator seeded from a stable hash of the seed and its name, and values are drawn in float64
and then cast to the target's dtype. Selecting more tensors, or another dtype, never changes the
direction of a tensor already selected (beyond the final cast). This module imports only torch and
the standard library.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Mapping, Sequence

import torch

from jvpcli.config import DISTRIBUTIONS, RandomDirections

__all__ = ["DISTRIBUTIONS", "RandomDirections", "draw", "select"]


def select(spec: RandomDirections, candidates: Sequence[str]) -> tuple[str, ...]:
    """Pick the names a spec's ``match`` patterns select.

    Args:
        spec: the spec.
        candidates: the names that could get a direction (inputs, or state-dict names).

    Returns:
        The selected names, in the order of ``candidates``; all of them when ``match`` is unset.

    Raises:
        ValueError: a pattern matches none of the candidates (the message shows a few of them).
    """
    if spec.match is None:
        return tuple(candidates)
    unmatched = [p for p in spec.match if not any(fnmatch.fnmatchcase(n, p) for n in candidates)]
    if unmatched:
        shown = ", ".join(repr(n) for n in candidates[:6])
        more = f" and {len(candidates) - 6} more" if len(candidates) > 6 else ""
        names = f"the names are {shown}{more}" if candidates else "there are no names to match"
        raise ValueError(
            f"match pattern {unmatched[0]!r} selects nothing: {names}. Patterns are "
            "case-sensitive globs on whole names, e.g. '*.weight' or 'encoder.*'."
        )
    return tuple(n for n in candidates if any(fnmatch.fnmatchcase(n, p) for p in spec.match))


def draw(
    spec: RandomDirections, targets: Mapping[str, tuple[tuple[int, ...], torch.dtype]]
) -> dict[str, torch.Tensor]:
    """Draw one direction per target tensor.

    Args:
        spec: the spec (its ``match`` is not applied here: pass the :func:`select`\\ ed names).
        targets: for each name, the shape and dtype of the tensor the direction is for.

    Returns:
        For each name of ``targets``, a CPU tensor of the target's dtype, shaped
        ``(k, *shape)`` when ``spec.k`` is set, else ``shape``.

    Raises:
        ValueError: a target's dtype is not a real floating-point dtype.
    """
    directions = {}
    for name, (shape, dtype) in targets.items():
        if not dtype.is_floating_point:
            raise ValueError(
                f"cannot draw a direction for {name!r}: its dtype {dtype} is not floating point "
                "(tangents exist only for real floating-point tensors)."
            )
        size = (spec.k, *shape) if spec.k is not None else tuple(shape)
        generator = torch.Generator(device="cpu").manual_seed(_tensor_seed(spec.seed, name))
        if spec.distribution == "normal":
            values = torch.randn(size, generator=generator, dtype=torch.float64)
        else:
            bits = torch.randint(0, 2, size, generator=generator, dtype=torch.int64)
            values = bits.to(torch.float64).mul_(2).sub_(1)
        directions[name] = values.to(dtype)
    return directions


def _tensor_seed(seed: int, name: str) -> int:
    # Python's hash() of a str changes between processes; sha256 does not.
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little")

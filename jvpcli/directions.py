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
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["DISTRIBUTIONS", "RandomDirections", "draw", "select"]

DISTRIBUTIONS = ("normal", "rademacher")
"""The distributions a direction can be drawn from: standard normal, or ±1 with equal odds."""

_KEYS = ("random", "seed", "match", "k")


@dataclass(frozen=True)
class RandomDirections:
    """A spec for random directions: ``{random: normal|rademacher, seed, match, k}``.

    Attributes:
        distribution: ``"normal"`` (standard normal entries) or ``"rademacher"`` (±1 entries).
        seed: the seed; with a tensor's name it decides that tensor's direction.
        match: ``fnmatch`` glob patterns on tensor names (case-sensitive); a name is selected
            when any pattern matches it. ``None``: every candidate.
        k: with ``batched_v``, how many directions per tensor (a leading dimension of size
            ``k``). ``None``: one direction, shaped like the tensor.

    Raises:
        ValueError: from the constructor, when a field is not of the kind described above.
    """

    distribution: str
    seed: int
    match: tuple[str, ...] | None = None
    k: int | None = None

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"random must be one of {', '.join(DISTRIBUTIONS)}; got {self.distribution!r}."
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer; got {self.seed!r}.")
        if self.match is not None:
            if not isinstance(self.match, tuple) or not all(
                isinstance(p, str) and p for p in self.match
            ):
                raise ValueError(
                    "match must be a glob pattern or a list of them, e.g. ['*.weight']; "
                    f"got {self.match!r}."
                )
            if not self.match:
                raise ValueError("match must name at least one glob pattern (or be left out).")
        if self.k is not None and (
            isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1
        ):
            raise ValueError(f"k must be a positive integer; got {self.k!r}.")

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any]) -> RandomDirections:
        """Build a spec from a config's mapping, e.g. ``{random: normal, seed: 0, k: 8}``.

        Args:
            value: the mapping; ``random`` and ``seed`` are required, ``match`` (a glob or a list
                of globs) and ``k`` optional.

        Returns:
            The spec.

        Raises:
            ValueError: a key is missing or unknown, or a value is not of the right kind.
        """
        unknown = [key for key in value if key not in _KEYS]
        if unknown:
            raise ValueError(
                f"unknown key {unknown[0]!r} in a random direction; the keys are "
                f"{', '.join(_KEYS)}."
            )
        for key in ("random", "seed"):
            if key not in value:
                raise ValueError(
                    f"a random direction needs {key!r}, e.g. {{random: normal, seed: 0}}."
                )
        match = value.get("match")
        if isinstance(match, str):
            match = (match,)
        elif isinstance(match, list):
            match = tuple(match)
        return cls(value["random"], value["seed"], match, value.get("k"))

    def spec_text(self) -> str:
        """The spec as canonical JSON, for a result's metadata.

        Returns:
            Compact JSON with keys in a fixed order, leaving out ``match`` and ``k`` when unset,
            e.g. ``{"random":"normal","seed":0,"match":["*.weight"],"k":32}``.
        """
        spec: dict[str, Any] = {"random": self.distribution, "seed": self.seed}
        if self.match is not None:
            spec["match"] = list(self.match)
        if self.k is not None:
            spec["k"] = self.k
        return json.dumps(spec, separators=(",", ":"))


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

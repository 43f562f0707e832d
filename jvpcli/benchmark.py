"""Side-by-side timing of JVP methods on one function: the core of ``jvpcli bench`` and the suite.

Candidates run interleaved (round-robin, one call each per round) in one process, so that machine
noise hits all of them alike, and are compared by their medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from jvpcli import engine
from jvpcli.containment import failures

FORWARD = "forward pass"
"""The plain forward pass, without any derivative: the baseline every ratio is taken against."""

PYTORCH_PEERS = ("torch.autograd.functional.jvp", "torch.func.jvp")


@dataclass(frozen=True)
class Timing:
    """How one candidate fared.

    Attributes:
        name: the candidate.
        times: seconds per call, one per round (empty when it failed).
        error: the first line of the error it raised, or None.
    """

    name: str
    times: tuple[float, ...]
    error: str | None = None

    @property
    def median(self) -> float | None:
        """Median seconds per call, or None when the candidate failed."""
        return statistics.median(self.times) if self.times else None


def candidates(
    func: Callable[..., object],
    inputs: tuple[Tensor, ...],
    v: tuple[Tensor, ...],
    *,
    methods: tuple[str, ...] = engine.METHODS,
    peers: bool = True,
    create_graph: bool = False,
    strict: bool = False,
    batched_v: bool = False,
) -> dict[str, Callable[[], object]]:
    """The calls to compare on ``func`` at ``inputs`` along ``v``, with the given flags.

    Returns:
        name → zero-argument callable: the plain forward pass, ``jvpcli <method>`` for each of
        ``methods``, and (if ``peers``) those of PyTorch's two jvp APIs that take the flags:
        ``torch.autograd.functional.jvp`` unless ``batched_v``, ``torch.func.jvp`` only
        without any flag.
    """

    def forward_pass() -> object:
        with torch.no_grad():
            return func(*inputs)

    calls: dict[str, Callable[[], object]] = {FORWARD: forward_pass}
    for method in methods:
        calls[f"jvpcli {method}"] = _jvpcli_call(
            func, inputs, v, method, create_graph, strict, batched_v
        )
    if peers and not batched_v:
        calls["torch.autograd.functional.jvp"] = lambda: torch.autograd.functional.jvp(
            func, inputs, v, create_graph=create_graph, strict=strict
        )
        if not (create_graph or strict):
            calls["torch.func.jvp"] = lambda: torch.func.jvp(func, inputs, v)
    return calls


def _jvpcli_call(
    func: Callable[..., object],
    inputs: tuple[Tensor, ...],
    v: tuple[Tensor, ...],
    method: str,
    create_graph: bool,
    strict: bool,
    batched_v: bool,
) -> Callable[[], object]:
    return lambda: engine.jvp(
        func, inputs, v, create_graph, strict, method=method, batched_v=batched_v
    )


def compare(
    calls: dict[str, Callable[[], object]], *, repeats: int = 11, warmup: int = 1
) -> dict[str, Timing]:
    """Time each call ``repeats`` times, interleaved, after ``warmup`` untimed rounds.

    A call that raises is timed no further; its Timing carries the error instead.
    """
    errors: dict[str, str] = {}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(warmup + repeats):
        for name, call in calls.items():
            if name in errors:
                continue
            start = time.perf_counter()
            try:
                call()
            except BaseException as error:  # a peer failing is a result, not a crash
                if not failures(error):
                    raise
                errors[name] = _first_line(error)
                times[name] = []
                continue
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: Timing(name, tuple(times[name]), errors.get(name)) for name in calls}


def fastest(timings: dict[str, Timing], prefix: str = "jvpcli ") -> Timing | None:
    """The fastest successful candidate whose name starts with ``prefix``."""
    ran = [t for t in timings.values() if t.name.startswith(prefix) and t.median is not None]
    return min(ran, key=lambda t: t.median, default=None)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")

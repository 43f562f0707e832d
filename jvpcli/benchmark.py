"""Side-by-side timing of JVP methods on one function: the core of ``jvpcli bench`` and the suite.

Candidates run interleaved (round-robin, one call each per round, the order rotated from round to
round) in one process, so that machine noise hits all of them alike, and are compared by their
medians. Noise is read off the rounds themselves: a candidate's spread is the width of the middle
half of its rounds (the interquartile range) relative to its median, and one candidate beats
another only when their middle halves do not overlap; closer than that, they are within noise.
"""

from __future__ import annotations

import math
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

NOISY_SPREAD = 0.20
"""A spread above which a candidate's rounds disagree too much to trust (a busy machine)."""


@dataclass(frozen=True)
class Timing:
    """How one candidate fared.

    Attributes:
        name: the candidate.
        times: seconds per call, one per timed round (empty when it failed).
        error: the first line of the error it raised, or None.
        first_call: seconds its first (untimed warm-up) call took, or None: with a compiled
            candidate, about its compile time.
    """

    name: str
    times: tuple[float, ...]
    error: str | None = None
    first_call: float | None = None

    @property
    def median(self) -> float | None:
        """Median seconds per call, or None when the candidate failed."""
        return statistics.median(self.times) if self.times else None

    @property
    def min(self) -> float | None:
        """The fastest round, or None when the candidate failed."""
        return min(self.times, default=None)

    @property
    def max(self) -> float | None:
        """The slowest round, or None when the candidate failed."""
        return max(self.times, default=None)

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile of the rounds (linear interpolation between the sorted rounds, as
        numpy's default), or None when the candidate failed."""
        if not self.times:
            return None
        ordered = sorted(self.times)
        position = q * (len(ordered) - 1)
        below = math.floor(position)
        above = min(below + 1, len(ordered) - 1)
        return ordered[below] + (position - below) * (ordered[above] - ordered[below])

    @property
    def spread(self) -> float | None:
        """The interquartile range relative to the median (0.1: the middle half of the rounds
        lie within 10% of the median's size), or None when the candidate failed. Unlike the
        range, one round disturbed by the machine does not move it."""
        if not self.times or not self.median:
            return None
        return (self.quantile(0.75) - self.quantile(0.25)) / self.median

    @property
    def uncertainty(self) -> float | None:
        """Half the width of an approximate 95% confidence interval of the median, relative to
        it: 1.57 x the interquartile range / sqrt(rounds), a box plot's notch (McGill, Tukey and
        Larsen, 1978). None when the candidate failed."""
        spread = self.spread
        return None if spread is None else 1.57 * spread / math.sqrt(len(self.times))


def relative(timing: Timing, base: Timing) -> Timing:
    """``timing`` as multiples of ``base``, round by round (both from one :func:`compare`, so the
    i-th rounds ran side by side): slow spells of the machine that hit both cancel out."""
    if not timing.times or len(timing.times) != len(base.times):
        return Timing(timing.name, (), timing.error or base.error, timing.first_call)
    ratios = tuple(t / b for t, b in zip(timing.times, base.times, strict=True))
    return Timing(timing.name, ratios, None, timing.first_call)


def noisy(timings: dict[str, Timing]) -> list[Timing]:
    """The candidates whose rounds disagree by more than :data:`NOISY_SPREAD`."""
    return [t for t in timings.values() if t.spread is not None and t.spread > NOISY_SPREAD]


def within_noise(a: Timing, b: Timing) -> bool:
    """Whether neither of two successful candidates is clearly faster: the middle halves of
    their rounds overlap."""
    return a.quantile(0.25) <= b.quantile(0.75) and b.quantile(0.25) <= a.quantile(0.75)


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
    calls: dict[str, Callable[[], object]],
    *,
    repeats: int = 11,
    warmup: int = 1,
    budget: float = 0.0,
    precision: float = 0.03,
    max_rounds: int = 1000,
    min_seconds: float = 0.0,
) -> dict[str, Timing]:
    """Time the calls interleaved: ``warmup`` untimed rounds, then ``repeats`` timed ones, then
    (up to ``max_rounds`` timed rounds in all) more while the timed rounds have taken less than
    ``min_seconds``, then more while they have taken less than ``budget`` seconds, until every
    candidate's median is known to within ``precision`` (:attr:`Timing.uncertainty`; of its
    ratio to the forward pass where there is one, since that is what is reported).

    ``min_seconds`` spreads the rounds over time: a shared machine's slow and quiet spells last
    seconds, and a few rounds taken inside one of them agree with each other (a precise median)
    but not with the next run.

    A call that raises is timed no further; its Timing carries the error instead.
    """
    errors: dict[str, str] = {}
    first_calls: dict[str, float] = {}
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    timed_seconds = 0.0
    round_index = 0
    while round_index < warmup + repeats or (
        round_index < warmup + max_rounds
        and (
            timed_seconds < min_seconds
            or (timed_seconds < budget and not _precise(times, errors, precision))
        )
    ):
        shift = round_index % len(names)
        round_start = time.perf_counter()
        for name in names[shift:] + names[:shift]:
            if name in errors:
                continue
            start = time.perf_counter()
            try:
                calls[name]()
            except BaseException as error:  # a peer failing is a result, not a crash
                if not failures(error):
                    raise
                errors[name] = _first_line(error)
                times[name] = []
                continue
            seconds = time.perf_counter() - start
            if round_index >= warmup:
                times[name].append(seconds)
            else:
                first_calls.setdefault(name, seconds)
        if round_index >= warmup:
            timed_seconds += time.perf_counter() - round_start
        round_index += 1
    return {
        name: Timing(name, tuple(times[name]), errors.get(name), first_calls.get(name))
        for name in calls
    }


def _precise(times: dict[str, list[float]], errors: dict[str, str], precision: float) -> bool:
    timings = {name: Timing(name, tuple(t)) for name, t in times.items() if name not in errors}
    base = timings.get(FORWARD)
    for timing in timings.values():
        if base is not None and timing is not base:
            timing = relative(timing, base)
        if timing.uncertainty is None or timing.uncertainty > precision:
            return False
    return True


def fastest(timings: dict[str, Timing], prefix: str = "jvpcli ") -> Timing | None:
    """The successful candidate with the lowest median whose name starts with ``prefix``."""
    ran = [t for t in timings.values() if t.name.startswith(prefix) and t.median is not None]
    return min(ran, key=lambda t: t.median, default=None)


def tied(timings: dict[str, Timing], prefix: str = "jvpcli ") -> list[Timing]:
    """The :func:`fastest` candidate whose name starts with ``prefix`` and every other such
    candidate within noise of it (:func:`within_noise`), the fastest first: one candidate when
    there is a clear winner, none when every candidate failed."""
    best = fastest(timings, prefix)
    if best is None:
        return []
    rest = [
        t
        for t in timings.values()
        if t is not best and t.name.startswith(prefix) and t.median is not None
    ]
    return [best, *sorted((t for t in rest if within_noise(best, t)), key=lambda t: t.median)]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")

"""Attention's cost and the per-call overhead of jvpcli.jvp, as ratios measured side by side.

Run:  python benchmarks/attention_overhead.py [--rounds 41] [--only transformer|overhead]

Three measurements, each timed interleaved (one call of every contender per round, round-robin, in
one process) and reported as the median / min / max over rounds of the per-round ratio:

- ``transformer``: ``nn.TransformerEncoderLayer(256, 8)`` in eval mode on 8 x 128 tokens,
  ``jvpcli.jvp`` against the layer's own (fused, fast-path) forward under ``no_grad``;
- ``tiny ops``: 200 tiny elementwise ops (``sin``, ``* 0.9``, ``+ 0.1``) on 64 values,
  ``jvpcli.jvp`` against hand-written forward AD (``fwAD.dual_level``, ``make_dual``,
  ``unpack_dual``) and against the plain forward; and, for the floor of jvpcli's design, the same
  ops written with the ATen Scalar overloads that jvpcli's rules call (forward AD's lean path: no
  mode), then under an empty ``TorchFunctionMode`` (what any Python mode costs before it does
  anything);
- ``overhead``: one ``x.sin()`` on 64 values, where the difference between ``jvpcli.jvp`` and
  hand-written forward AD is jvpcli's fixed cost per call (reported in microseconds).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.autograd.forward_ad as fwAD
from torch.overrides import TorchFunctionMode

from jvpcli import jvp


def _hand_written(func: Callable, x: torch.Tensor, v: torch.Tensor) -> Callable[[], object]:
    def call() -> object:
        with fwAD.dual_level():
            out = fwAD.unpack_dual(func(fwAD.make_dual(x, v)))
        return out.primal, out.tangent

    return call


def _tiny_ops(x: torch.Tensor) -> torch.Tensor:
    for _ in range(200):
        x = torch.sin(x) * 0.9 + 0.1
    return x


def _tiny_ops_scalar_overloads(x: torch.Tensor) -> torch.Tensor:
    mul, add = torch.ops.aten.mul.Scalar, torch.ops.aten.add.Scalar
    for _ in range(200):
        x = add(mul(torch.sin(x), 0.9), 0.1)
    return x


class _EmptyMode(TorchFunctionMode):
    def __torch_function__(
        self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None
    ) -> object:
        return func(*args, **(kwargs or {}))


def _under_empty_mode(x: torch.Tensor) -> torch.Tensor:
    with _EmptyMode():
        return _tiny_ops_scalar_overloads(x)


def _interleaved(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(rounds + 2):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if round_index >= 2:  # two warm-up rounds
                times[name].append(time.perf_counter() - start)
    return times


def _spread(values: list[float], unit: str = "x", scale: float = 1.0) -> str:
    scaled = [value * scale for value in values]
    return (
        f"median {statistics.median(scaled):7.2f}{unit}  "
        f"min {min(scaled):7.2f}{unit}  max {max(scaled):7.2f}{unit}"
    )


def _ratios(times: dict[str, list[float]], numerator: str, denominator: str) -> list[float]:
    return [a / b for a, b in zip(times[numerator], times[denominator], strict=True)]


def transformer(rounds: int) -> None:
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(256, 8, batch_first=True).eval()
    layer.requires_grad_(False)
    x, v = torch.randn(8, 128, 256), torch.randn(8, 128, 256)

    def fused_forward() -> object:
        with torch.no_grad():
            return layer(x)

    times = _interleaved({"forward": fused_forward, "jvp": lambda: jvp(layer, x, v)}, rounds)
    print(
        f"transformer layer (256, 8), 8x128   jvp / fused forward  "
        f"{_spread(_ratios(times, 'jvp', 'forward'))}   "
        f"(forward {statistics.median(times['forward']) * 1e3:.2f} ms)"
    )


def overhead(rounds: int) -> None:
    torch.manual_seed(0)
    x, v = torch.randn(64), torch.randn(64)
    tiny = _interleaved(
        {
            "forward": lambda: _tiny_ops(x),
            "hand-written": _hand_written(_tiny_ops, x, v),
            "Scalar overloads": _hand_written(_tiny_ops_scalar_overloads, x, v),
            "empty mode": _hand_written(_under_empty_mode, x, v),
            "jvp": lambda: jvp(_tiny_ops, x, v),
        },
        rounds,
    )
    print(
        f"200 tiny ops on 64 values           jvp / hand-written   "
        f"{_spread(_ratios(tiny, 'jvp', 'hand-written'))}"
    )
    print(
        f"                                    jvp / forward        "
        f"{_spread(_ratios(tiny, 'jvp', 'forward'))}"
    )
    # The floor of a Python mode's design: forward AD alone, then under a mode that does nothing.
    for name in ("Scalar overloads", "empty mode"):
        print(
            f"                                    {name + ' / forward':20s} "
            f"{_spread(_ratios(tiny, name, 'forward'))}"
        )
    calls = {"hand-written": _hand_written(torch.sin, x, v), "jvp": lambda: jvp(torch.sin, x, v)}
    # One op is a few microseconds: time batches of calls, so that the clock's own cost is noise.
    batched = {
        name: (lambda call=call: [call() for _ in range(50)]) for name, call in calls.items()
    }
    single = _interleaved(batched, rounds)
    extra = [(a - b) / 50 for a, b in zip(single["jvp"], single["hand-written"], strict=True)]
    print(f"one sin on 64 values                jvp - hand-written   {_spread(extra, ' us', 1e6)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--only", choices=("transformer", "overhead"))
    options = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {options.rounds} rounds")
    if options.only != "overhead":
        transformer(options.rounds)
    if options.only != "transformer":
        overhead(options.rounds)


if __name__ == "__main__":
    main()

"""What a cached ``compile=True`` call costs around its graph, against compile(torch.func.jvp).

    python benchmarks/compiled_overhead.py [--rounds 300]

The function is the suite's "many tiny ops" (200 x (sin, *0.9, +0.1) on 64 values), whose compiled
graph is one small C++ kernel either way, so what differs is the call around it. Two measures,
each jvpcli's time as a multiple of ``torch.compile(torch.func.jvp)``'s (median over rounds):

- *between other work*: one call each per round, rotated with the eager forward and jvpcli's
  eager jvp, as the suite calls them (caches cold from the other calls' work);
- *warm*: 100 calls in a row each, interleaved round by round.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from suite import _many_tiny_ops

import jvpcli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    tiny_ops, inputs = _many_tiny_ops()
    v = tuple(torch.randn_like(x) for x in inputs)
    func_jvp = torch.compile(lambda p, t: torch.func.jvp(tiny_ops, p, t))
    calls = {
        "forward": lambda: tiny_ops(inputs[0]),
        "jvpcli eager": lambda: jvpcli.jvp(tiny_ops, inputs, v),
        "jvpcli compile=True": lambda: jvpcli.jvp(tiny_ops, inputs, v, compile=True),
        "torch.compile(torch.func.jvp)": lambda: func_jvp(inputs, v),
    }
    for call in calls.values():  # compiles both, once
        call()
    names = list(calls)
    between: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        for name in names[round_ % 4 :] + names[: round_ % 4]:
            start = time.perf_counter()
            calls[name]()
            between[name].append(time.perf_counter() - start)
    compared = names[2:]
    warm: dict[str, list[float]] = {name: [] for name in compared}
    for _ in range(30):
        for name in compared:
            start = time.perf_counter()
            for _ in range(100):
                calls[name]()
            warm[name].append((time.perf_counter() - start) / 100)
    for label, times in (("between other work", between), ("warm", warm)):
        ours, theirs = (times[name] for name in compared)
        ratio = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
        print(
            f"{label}: jvpcli compile=True {statistics.median(ours) * 1e6:.0f} µs, "
            f"torch.compile(torch.func.jvp) {statistics.median(theirs) * 1e6:.0f} µs, "
            f"ratio {ratio:.2f}"
        )


if __name__ == "__main__":
    main()

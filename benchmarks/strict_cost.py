"""What strict mode costs: jvpcli.jvp with and without strict=True, side by side in one process.

Run:  python benchmarks/strict_cost.py [--repeats 21]

Each workload is timed interleaved (forward, jvp, strict jvp, PyTorch's jvp, PyTorch's strict
jvp, round-robin), and the medians are reported as ratios to the plain forward.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.autograd.functional import jvp as torch_jvp

from jvpcli import jvp


def mlp(width: int, depth: int) -> torch.nn.Module:
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers).eval().requires_grad_(False)


def many_tiny_ops(x: torch.Tensor) -> torch.Tensor:
    for _ in range(200):
        x = torch.sin(x) * 0.9 + 0.1
    return x


def workloads() -> dict[str, tuple[Callable, torch.Tensor]]:
    torch.manual_seed(0)
    return {
        "MLP 4x1024, batch 256": (mlp(1024, 4), torch.randn(256, 1024)),
        "MLP 16x256, batch 64": (mlp(256, 16), torch.randn(64, 256)),
        "200 tiny ops on 64 values": (many_tiny_ops, torch.randn(64)),
    }


def _candidates(func: Callable, x: torch.Tensor, v: torch.Tensor) -> dict[str, Callable]:
    return {
        "forward": lambda: func(x),
        "jvp": lambda: jvp(func, x, v),
        "strict": lambda: jvp(func, x, v, strict=True),
        "torch": lambda: torch_jvp(func, x, v),
        "torch strict": lambda: torch_jvp(func, x, v, strict=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    repeats = parser.parse_args().repeats
    torch.set_num_threads(torch.get_num_threads())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {repeats} repeats")
    print(
        f"{'workload':28} {'forward':>8} {'jvp':>7} {'strict':>7} {'torch':>7} {'torch strict':>12}"
    )
    for name, (func, x) in workloads().items():
        v = torch.randn_like(x)
        candidates = _candidates(func, x, v)
        times: dict[str, list[float]] = {key: [] for key in candidates}
        for _ in range(repeats):
            for key, call in candidates.items():
                with torch.no_grad() if key == "forward" else torch.enable_grad():
                    start = time.perf_counter()
                    call()
                    times[key].append(time.perf_counter() - start)
        base = statistics.median(times["forward"])
        ratios = {key: statistics.median(ts) / base for key, ts in times.items()}
        print(
            f"{name:28} {base * 1e3:6.2f}ms {ratios['jvp']:6.2f}x {ratios['strict']:6.2f}x "
            f"{ratios['torch']:6.2f}x {ratios['torch strict']:11.2f}x"
        )


if __name__ == "__main__":
    main()

"""jvpcli on recurrent layers, as a ratio to the layer's own (fused) eager forward.

    python benchmarks/recurrent.py [--rounds 15] [--batch 32] [--steps 50]

Each workload times, interleaved in one process and round after round, the eager forward of the
module (PyTorch's fused kernel: oneDNN's LSTM where it applies), ``jvpcli.jvp`` and, for
reference, ``torch.func.jvp`` (PyTorch's own forward-mode rules, oneDNN off as forward mode
requires). Each round gives a ratio to that round's forward; the table shows their median, min and
max. Threads are left at torch's default.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

import jvpcli


def _workloads(batch: int, steps: int) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    x = torch.randn(steps, batch, 128)
    return {
        "LSTM(128->256, 2 layers)": (nn.LSTM(128, 256, num_layers=2), x),
        "GRU(128->256, 2 layers)": (nn.GRU(128, 256, num_layers=2), x),
        "LSTM(128->256), bidirectional": (nn.LSTM(128, 256, bidirectional=True), x),
        "RNN(128->256, tanh, 2 layers)": (nn.RNN(128, 256, num_layers=2), x),
    }


def _torch_func_jvp(func: Callable, x: torch.Tensor, v: torch.Tensor) -> object:
    enabled = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)  # oneDNN's RNN kernel has no forward-mode rule
    try:
        return torch.func.jvp(func, (x,), (v,))
    finally:
        torch._C._set_mkldnn_enabled(enabled)


def _time(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description="jvpcli on recurrent layers")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)

    table = Table(title=f"jvp / fused forward, batch {args.batch} x {args.steps} steps")
    table.add_column("workload")
    table.add_column("forward", justify="right")
    for name in ("jvpcli.jvp", "torch.func.jvp"):
        table.add_column(f"{name} median", justify="right")
        table.add_column("min-max", justify="right")
    for title, (module, x) in _workloads(args.batch, args.steps).items():
        module = module.eval().requires_grad_(False)

        def func(t: torch.Tensor, module: nn.Module = module) -> torch.Tensor:
            return module(t)[0]

        v = torch.randn_like(x)
        contenders = {
            "jvpcli.jvp": lambda func=func, v=v, x=x: jvpcli.jvp(func, x, v),
            "torch.func.jvp": lambda func=func, v=v, x=x: _torch_func_jvp(func, x, v),
        }
        forwards: list[float] = []
        ratios: dict[str, list[float]] = {name: [] for name in contenders}
        with torch.no_grad():
            for round_index in range(args.rounds + 1):
                forward = _time(lambda func=func, x=x: func(x))
                times = {name: _time(call) for name, call in contenders.items()}
                if round_index:  # the first round warms up
                    forwards.append(forward)
                    for name, seconds in times.items():
                        ratios[name].append(seconds / forward)
        row = [title, f"{statistics.median(forwards) * 1e3:.1f} ms"]
        for name in contenders:
            row += [
                f"{statistics.median(ratios[name]):.2f}x",
                f"{min(ratios[name]):.2f}-{max(ratios[name]):.2f}",
            ]
        table.add_row(*row)
    Console().print(table)


if __name__ == "__main__":
    main()

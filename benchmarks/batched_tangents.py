"""Throughput of many tangents at once: jvp(..., batched_v=True) against one call per direction.

    python benchmarks/batched_tangents.py [--directions 32] [--batch 16] [--width 512] [--repeats 7]

On an MLP-like function, K directions are pushed through (a) one call of jvpcli with
batched_v=True, (b) K calls of torch.autograd.functional.jvp, (c) torch.vmap of torch.func.jvp,
(d) K calls of jvpcli. All run interleaved in one process; the table gives each one's throughput
relative to (b), from the medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from jvpcli import jvp


def main() -> None:
    parser = argparse.ArgumentParser(description="batched_v throughput")
    parser.add_argument("--directions", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(4):
        layers += [torch.nn.Linear(args.width, args.width), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers).eval().requires_grad_(False)
    x = torch.randn(args.batch, args.width)
    directions = torch.randn(args.directions, *x.shape)

    candidates = {
        "jvpcli, batched_v=True": lambda: jvp(model, x, directions, batched_v=True),
        f"torch.autograd.functional.jvp x {args.directions}": lambda: [
            torch.autograd.functional.jvp(model, x, d) for d in directions
        ],
        "torch.vmap(torch.func.jvp)": lambda: torch.vmap(
            lambda d: torch.func.jvp(model, (x,), (d,)), out_dims=(None, 0)
        )(directions),
        f"jvpcli x {args.directions}": lambda: [jvp(model, x, d) for d in directions],
    }
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_index in range(args.repeats + 1):
        for name, call in candidates.items():
            start = time.perf_counter()
            call()
            if round_index:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    baseline = medians[f"torch.autograd.functional.jvp x {args.directions}"]

    table = Table(
        title=f"{args.directions} tangents of a 4 x Linear({args.width})+tanh MLP, "
        f"batch {args.batch}"
    )
    table.add_column("how")
    table.add_column("median", justify="right")
    table.add_column("throughput vs autograd.functional", justify="right")
    for name, median in medians.items():
        table.add_row(name, f"{median * 1e3:.1f} ms", f"{baseline / median:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()

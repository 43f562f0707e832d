"""oneDNN's float32 matmul against MKL's (``torch.mm``) here, for the shapes jvpcli meets.

    python benchmarks/matmul.py

Prints, per (rows, in, out), the median time of each over interleaved rounds and oneDNN's time as a
multiple of MKL's. :mod:`jvpcli._onednn` sends a tangent's product to oneDNN for weights of
``MIN_WEIGHT`` values or more, where this grid showed it faster.
"""

from __future__ import annotations

import statistics
import time

import torch

from jvpcli import _onednn

SHAPES = [  # (rows, in, out)
    (16, 256, 256),
    (1024, 256, 256),
    (16, 768, 768),
    (512, 768, 768),
    (512, 1536, 1536),
    (1024, 256, 768),
    (1024, 256, 2048),
    (1024, 2048, 256),
    (64, 256, 1024),
    (8, 1024, 1024),
]


def main() -> None:
    if _onednn.OPS is None:
        raise SystemExit("this build of torch has no oneDNN")
    linear = _onednn.OPS[0]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; times in µs, median of 15"
    )
    print(f"{'rows':>5} {'in':>5} {'out':>5} {'weight':>8} {'mm':>9} {'oneDNN':>9} {'ratio':>6}")
    for rows, k, n in SHAPES:
        x, weight = torch.randn(rows, k), torch.randn(n, k)
        calls = {
            "mm": lambda x=x, weight=weight: torch.mm(x, weight.t()),
            "onednn": lambda x=x, weight=weight: linear(x, weight, None, "none", [], ""),
        }
        repeats = max(1, int(2e8 / (rows * k * n)))
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(15):
            for name, call in calls.items():
                start = time.perf_counter()
                for _ in range(repeats):
                    call()
                times[name].append((time.perf_counter() - start) / repeats * 1e6)
        mm, onednn = (statistics.median(times[name]) for name in calls)
        print(f"{rows:5d} {k:5d} {n:5d} {k * n:8d} {mm:9.1f} {onednn:9.1f} {onednn / mm:6.2f}")


if __name__ == "__main__":
    main()

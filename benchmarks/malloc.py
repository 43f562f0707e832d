"""What glibc's fixed thresholds (jvpcli._malloc, as the CLI sets them) do to jvpcli's speed.

    python benchmarks/malloc.py [--processes 4] [--rounds 15]

Each workload runs in fresh processes, glibc's default and tuned ones alternating (the
allocator's state is a process's own). A process times the eager forward and ``jvpcli.jvp``
interleaved, and counts the minor page faults of each call. Printed per workload: the median over
processes of jvpcli's time as a multiple of the forward's, its faults per call, and the median
ratio of the tuned processes' jvpcli time to the default ones'.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import suite
import torch

import jvpcli
from jvpcli import _malloc

WORKLOADS = {
    "transformer layer, 8 heads": suite._transformer_8_heads,
    "transformer layer": suite._transformer,
    "LSTM, 2 layers": lambda: suite._recurrent("LSTM"),
    "CNN": suite._cnn,
    "deep MLP": lambda: suite._mlp(768, 16, 512),
}


def _measure(name: str, rounds: int) -> dict[str, float]:
    """In this process: the median forward and jvpcli times, and jvpcli's faults per call."""
    func, inputs = WORKLOADS[name]()
    v = tuple(torch.randn_like(x) for x in inputs)

    def forward() -> None:
        with torch.no_grad():
            func(*inputs)

    def jvp() -> None:
        jvpcli.jvp(func, inputs, v)

    for _ in range(2):
        forward(), jvp()
    times: dict[str, list[float]] = {"forward": [], "jvpcli": []}
    faults: list[int] = []
    for _ in range(rounds):
        for label, call in (("forward", forward), ("jvpcli", jvp)):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            call()
            times[label].append(time.perf_counter() - start)
            if label == "jvpcli":
                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {
        "forward": statistics.median(times["forward"]),
        "jvpcli": statistics.median(times["jvpcli"]),
        "faults": statistics.median(faults),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4, help="per setting and workload (4)")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per process (15)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        setting, name = args.child
        if setting == "tuned" and not _malloc.tune():
            raise SystemExit(f"could not tune glibc's malloc ({_malloc.chosen_already()})")
        print(json.dumps(_measure(name, args.rounds)))
        return
    if _malloc.chosen_already() is not None:
        raise SystemExit(f"unset {_malloc.chosen_already()}: this compares glibc's defaults")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    header = (
        f"{'workload':28} {'default: ratio':>15} {'faults':>7} "
        f"{'tuned: ratio':>13} {'faults':>7} {'tuned/default':>14}"
    )
    print(header)
    for name in WORKLOADS:
        runs: dict[str, list[dict[str, float]]] = {"default": [], "tuned": []}
        for _ in range(args.processes):
            for setting in runs:
                child = ["--rounds", str(args.rounds), "--child", setting, name]
                done = subprocess.run(
                    [sys.executable, __file__, *child],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs[setting].append(json.loads(done.stdout))
        ratio, faults = {}, {}
        for setting, measured in runs.items():
            ratio[setting] = statistics.median(run["jvpcli"] / run["forward"] for run in measured)
            faults[setting] = statistics.median(run["faults"] for run in measured)
        gain = statistics.median(
            tuned["jvpcli"] / default["jvpcli"]
            for tuned, default in zip(runs["tuned"], runs["default"], strict=True)
        )
        print(
            f"{name:28} {ratio['default']:>15.2f} {faults['default']:>7.0f} "
            f"{ratio['tuned']:>13.2f} {faults['tuned']:>7.0f} {gain:>14.2f}"
        )


if __name__ == "__main__":
    main()

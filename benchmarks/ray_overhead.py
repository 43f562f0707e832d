"""What running a sweep on Ray costs and gains against the local executor, side by side in one
process, on one in-process local Ray instance.

Run:  python benchmarks/ray_overhead.py [--rounds 5] [--workers 2]

Both arms run ``jvpcli compute sweep.yaml`` through the typer app in this process, interleaved
(local, ray, local, ray, ...) after a warm-up of each (Ray's workers are then started, their
modules imported). Outputs go to /dev/shm when there is one.

- Machinery per run: a 60-run sweep of a tiny function (``x.sin() * x`` on 64 numbers), each run
  asking for all the workers' CPUs (``resources.num_cpus``), so that Ray runs one task at a time
  as the local loop does: ``(median(ray) - median(local)) / 60`` is what a Ray task adds to a run
  (submitting, scheduling, sending the run and its outcome, the driver's checks). Target: under
  20 ms.
- Speed-up: a 16-run sweep of a CPU-bound function (a 300-step tanh recurrence over 256 x 256
  matrices), each run asking for 1 CPU, so Ray runs ``--workers`` at once, each task with
  ``torch.set_num_threads(1)`` (what jvpcli sets: as many threads as CPUs asked for). Against the
  local executor with torch's default threads (``torch.get_num_threads()``, the cores) and with 1
  thread. Target: at least 1.7x on 2 cores with 2 workers.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

import ray
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from jvpcli.cli import app

TINY_RUNS = 60
HEAVY_RUNS = 16

FUNCTIONS = """
import torch

W = torch.linspace(-1, 1, 256 * 256).reshape(256, 256) / 16


def tiny(x):
    return x.sin() * x


def heavy(x):
    for _ in range(300):
        x = torch.tanh(x @ W)
    return x
"""


def workspace(root: Path, workers: int) -> tuple[Path, Path]:
    (root / "fns.py").write_text(FUNCTIONS)
    save_file({"x": torch.randn(64)}, root / "tiny.safetensors")
    save_file({"x": torch.randn(256, 256)}, root / "heavy.safetensors")
    tiny = root / "tiny.yaml"
    tiny.write_text(
        textwrap.dedent(
            f"""\
            function: fns.py:tiny
            inputs: tiny.safetensors
            output: out/tiny/{{name}}.safetensors
            resources: {{num_cpus: {workers}}}
            sweep:
              v: [{", ".join(f"{{random: normal, seed: {s}}}" for s in range(TINY_RUNS))}]
            """
        )
    )
    heavy = root / "heavy.yaml"
    heavy.write_text(
        textwrap.dedent(
            f"""\
            function: fns.py:heavy
            inputs: heavy.safetensors
            output: out/heavy/{{name}}.safetensors
            resources: {{num_cpus: 1}}
            sweep:
              v: [{", ".join(f"{{random: normal, seed: {s}}}" for s in range(HEAVY_RUNS))}]
            """
        )
    )
    return tiny, heavy


def timed(config: Path, *args: str) -> float:
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["compute", str(config), "--quiet", *args])
    seconds = time.perf_counter() - started
    if result.exit_code != 0:
        raise SystemExit(f"jvpcli compute {config.name} {' '.join(args)} failed:\n{result.output}")
    return seconds


def summary(samples: list[float]) -> str:
    low, high = min(samples), max(samples)
    return f"median {statistics.median(samples):.3f} s (min {low:.3f}, max {high:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    options = parser.parse_args()
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="jvpcli-ray-", dir=shm if shm.is_dir() else None))
    try:
        tiny, heavy = workspace(root, options.workers)
        ray.init(
            address="local",
            num_cpus=options.workers,
            include_dashboard=False,
            logging_level="WARNING",
            log_to_driver=False,
        )
        threads = torch.get_num_threads()
        # Two phases, each interleaving its own arms: tasks of one resource shape keep their
        # workers warm (Ray keeps an idle pool per shape, of about one worker per CPU).
        phases = [
            {"tiny local": (tiny, ()), "tiny ray": (tiny, ("--executor", "ray"))},
            {
                f"heavy local ({threads} threads)": (heavy, ()),
                "heavy local (1 thread)": (heavy, ("--set", "executor=local")),
                f"heavy ray ({options.workers} workers x 1 thread)": (heavy, ("--executor", "ray")),
            },
        ]
        samples: dict[str, list[float]] = {}
        for arms in phases:
            for round_ in range(options.rounds + 1):  # round 0 warms up
                for name, (config, args) in arms.items():
                    torch.set_num_threads(1 if "1 thread)" in name else threads)
                    seconds = timed(config, *args)
                    if round_:
                        samples.setdefault(name, []).append(seconds)
        torch.set_num_threads(threads)
        for name, values in samples.items():
            print(f"{name:40} {summary(values)}")
        local, remote = (statistics.median(samples[k]) for k in ("tiny local", "tiny ray"))
        print(
            f"\nRay machinery per run: {(remote - local) / TINY_RUNS * 1000:.1f} ms (target < 20)"
        )
        ray_heavy = statistics.median(samples[f"heavy ray ({options.workers} workers x 1 thread)"])
        for name in (f"heavy local ({threads} threads)", "heavy local (1 thread)"):
            print(f"speed-up against {name}: {statistics.median(samples[name]) / ray_heavy:.2f}x")
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

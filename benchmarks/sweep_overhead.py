"""What the sweep machinery costs per run: a 200-run sweep of a tiny function, against the bare
work it wraps (reading the tensors, the JVPs, writing the results), side by side in one process.

Run:  python benchmarks/sweep_overhead.py [--repeats 7]

Two arms, each writing 200 outputs into a fresh folder, interleaved (A, B, A, B, ...) after a
warm-up of each:

- A, the sweep: ``jvpcli compute sweep.yaml`` through the typer app, in this process: expansion,
  validation, checks, the JVPs, digests and metadata, atomic writes, one log line per run and the
  final table (stdout and stderr captured, as in a CI log).
- B, the bare work: for the same 200 runs, each tensor file read once, ``jvp_with_info`` with the
  run's arguments, and ``write_tensors`` of the results (the same atomic write: temporary file,
  fsync, rename) without metadata.

The overhead per run is ``median(A) - median(B)``, divided by 200: what jvpcli adds around the JVP
and the file I/O. Parts of it are also timed alone: expansion + validation (``load_sweep``), checks
(``plan_runs``) and rendering the final table (``sweep_view``, 80 columns). The folder is
in /dev/shm when there is one, so that fsync times (the same in both arms, but noisy on disks) do
not drown the difference.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from jvpcli import jvp_with_info
from jvpcli.cli import app
from jvpcli.config import load_sweep
from jvpcli.report import sweep_view
from jvpcli.runner import WorkerCache, plan_runs, run_locally
from jvpcli.tensors import write_tensors

DIRECTIONS = 50
METHODS = ("forward", "double-backward")
STRICT = (False, True)
RUNS = DIRECTIONS * len(METHODS) * len(STRICT)


def tiny(x: torch.Tensor) -> torch.Tensor:
    return x.sin() * x


def workspace(root: Path) -> Path:
    """fns.py, x.safetensors, v00..v49.safetensors and sweep.yaml (50 v x 2 methods x 2 strict)."""
    (root / "fns.py").write_text("def tiny(x):\n    return x.sin() * x\n")
    generator = torch.Generator().manual_seed(0)
    save_file({"x": torch.randn(16, generator=generator)}, root / "x.safetensors")
    for k in range(DIRECTIONS):
        save_file({"x": torch.randn(16, generator=generator)}, root / f"v{k:02}.safetensors")
    listing = ", ".join(f"v{k:02}.safetensors" for k in range(DIRECTIONS))
    (root / "sweep.yaml").write_text(
        textwrap.dedent(
            f"""\
            function: fns.py:tiny
            inputs: x.safetensors
            output: out/{{name}}.safetensors
            sweep:
              v: [{listing}]
              method: [{", ".join(METHODS)}]
              strict: [{", ".join(str(s).lower() for s in STRICT)}]
            """
        )
    )
    return root


def sweep_arm(root: Path) -> float:
    shutil.rmtree(root / "out", ignore_errors=True)
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["compute", str(root / "sweep.yaml")])
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    assert len(list((root / "out").iterdir())) == RUNS
    return elapsed


def bare_arm(root: Path) -> float:
    shutil.rmtree(root / "out", ignore_errors=True)
    started = time.perf_counter()
    x = load_file(root / "x.safetensors")["x"]
    for k in range(DIRECTIONS):
        v = load_file(root / f"v{k:02}.safetensors")["x"]
        for method in METHODS:
            for strict in STRICT:
                result = jvp_with_info(tiny, x, v, False, strict, method=method)
                name = f"v{k:02}-{method}-{'strict' if strict else 'no-strict'}"
                write_tensors(
                    root / "out" / f"{name}.safetensors",
                    {"func_output": result.func_output, "jvp": result.jvp},
                    {},
                )
    elapsed = time.perf_counter() - started
    assert len(list((root / "out").iterdir())) == RUNS
    return elapsed


def timed(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    repeats = parser.parse_args().repeats
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as folder:
        root = workspace(Path(folder))
        sweep_arm(root), bare_arm(root)  # warm-up: imports, first JVPs
        sweep_times, bare_times = [], []
        for _ in range(repeats):
            sweep_times.append(sweep_arm(root))
            bare_times.append(bare_arm(root))
        expansion = timed(lambda: load_sweep(root / "sweep.yaml"), repeats)
        specs = load_sweep(root / "sweep.yaml").runs
        checks = timed(lambda: plan_runs(specs, WorkerCache(), name_runs=True), repeats)
        cache = WorkerCache()
        outcomes = list(run_locally(plan_runs(specs, cache), cache))
        console = Console(file=io.StringIO(), width=80)
        table = timed(lambda: console.print(sweep_view(specs, outcomes)), repeats)

    sweep, bare = statistics.median(sweep_times), statistics.median(bare_times)
    per_run = 1000 / RUNS
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {repeats} repeats")
    print(f"folder: {'/dev/shm' if shm.is_dir() else tempfile.gettempdir()}")
    print(
        f"{RUNS}-run sweep ({DIRECTIONS} v files x {len(METHODS)} methods x "
        f"{len(STRICT)} strict), function x.sin() * x on 16 values"
    )
    print(f"  A  jvpcli compute sweep.yaml       {sweep * per_run:7.3f} ms/run  (median)")
    print(f"  B  bare reads, JVPs and writes     {bare * per_run:7.3f} ms/run  (median)")
    print(f"  A - B: the machinery               {(sweep - bare) * per_run:7.3f} ms/run")
    print(f"     of which expansion+validation  {expansion * per_run:7.3f} ms/run  (load_sweep)")
    print(f"     of which checks                {checks * per_run:7.3f} ms/run  (check_all)")
    print(f"     of which the final table       {table * per_run:7.3f} ms/run  (sweep_view)")
    print("  (medians over the repeats, arms interleaved; the rest of A - B is bookkeeping,")
    print("   statistics, digests and metadata, and the per-run log lines)")


if __name__ == "__main__":
    main()

"""jvpcli against PyTorch's two JVP APIs on representative workloads.

    python benchmarks/suite.py    # every workload: tables, and benchmarks/results/suite.json
    python benchmarks/suite.py --only "wide MLP" --repeats 31 --no-memory

Time: for each workload, the plain forward pass, jvpcli ("auto" and "forward"),
torch.autograd.functional.jvp and torch.func.jvp run interleaved in one process (round-robin, one
call each per round); medians are reported as ratios to the forward pass and to the faster PyTorch
API. Memory: each (workload, candidate) pair runs in a fresh process: one warm-up call, then the
peak resident set size is reset (Linux's /proc/self/clear_refs) and one more call reports how far
the peak rose above the resident size before it ("extra peak"), next to the forward pass's.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import jvpcli
from jvpcli.benchmark import FORWARD, PYTORCH_PEERS, Timing, candidates, compare

RESULTS = Path(__file__).parent / "results" / "suite.json"


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    build: Callable[[], tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]]
    # The calls to compare, when they are not jvpcli.jvp and its peers on build()'s inputs.
    calls: Callable[[], dict[str, Callable[[], object]]] | None = None


def _mlp(width: int, depth: int, batch: int):
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers).eval().requires_grad_(False)
    return model, (torch.randn(batch, width),)


def _cnn():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(64, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(64 * 16, 10),
    )
    return model.eval().requires_grad_(False), (torch.randn(16, 3, 32, 32),)


def _transformer():
    layer = torch.nn.TransformerEncoderLayer(256, 4, 1024, batch_first=True)
    return layer.eval().requires_grad_(False), (torch.randn(8, 128, 256),)


def _lstm():
    lstm = torch.nn.LSTM(64, 256, batch_first=True).eval().requires_grad_(False)
    return (lambda x: lstm(x)[0]), (torch.randn(16, 50, 64),)


def _exp_reducer():
    return (lambda x: x.exp().sum(dim=1)), (torch.rand(2048, 2048),)


def _deep_mlp_every_weight() -> dict[str, Callable[[], object]]:
    """The deep MLP along a tangent for every weight and bias (none for the input): jvp_tree's
    param_tangents against PyTorch's two APIs over torch.func.functional_call."""
    model, (x,) = _mlp(768, 16, 512)
    params = dict(model.named_parameters())
    directions = {name: torch.randn_like(p) for name, p in params.items()}
    primals, tangents = tuple(params.values()), tuple(directions.values())

    def of_params(*values: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, dict(zip(params, values, strict=True)), (x,))

    def forward_pass() -> object:
        with torch.no_grad():
            return model(x)

    calls: dict[str, Callable[[], object]] = {FORWARD: forward_pass}
    for method in ("auto", "forward"):
        calls[f"jvpcli {method}"] = lambda method=method: jvpcli.jvp_tree(
            model, (x,), param_tangents=directions, method=method
        )
    calls["torch.autograd.functional.jvp"] = lambda: torch.autograd.functional.jvp(
        of_params, primals, tangents
    )
    calls["torch.func.jvp"] = lambda: torch.func.jvp(of_params, primals, tangents)
    return calls


GPT2_SAMPLE = Path(__file__).parents[1] / "samples" / "models" / "tiny-gpt2"


def _gpt2_sample():
    """The shipped tiny GPT-2 (2 layers, 32 wide, SDPA attention), 8 sequences of 64 random
    inputs_embeds, the last 4 padded at the end (8, 16, 24, 32 zeros in the attention mask)."""
    import transformers  # here, not at the top: only this workload needs it

    transformers.utils.logging.disable_progress_bar()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        GPT2_SAMPLE, attn_implementation="sdpa", local_files_only=True
    )
    model = model.eval().requires_grad_(False)
    embeds = torch.randn(8, 64, model.config.n_embd)
    mask = torch.ones(8, 64, dtype=torch.int64)
    for row in range(4, 8):
        mask[row, 64 - 8 * (row - 3) :] = 0
    return model, embeds, mask


def _gpt2_logits():
    model, embeds, mask = _gpt2_sample()
    return (lambda e: model(inputs_embeds=e, attention_mask=mask).logits), (embeds,)


def _gpt2_along_embeds() -> dict[str, Callable[[], object]]:
    """The GPT-2 sample's logits along inputs_embeds: jvp_tree on the model's keyword arguments
    against PyTorch's two APIs over the logits closure, on the math SDPA backend (the fused CPU
    kernel has neither a double backward nor a forward-mode derivative)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model, embeds, mask = _gpt2_sample()
    direction = torch.randn_like(embeds)
    kwargs = {"inputs_embeds": embeds, "attention_mask": mask}

    def logits(e: torch.Tensor) -> torch.Tensor:
        return model(inputs_embeds=e, attention_mask=mask).logits

    def forward_pass() -> object:
        with torch.no_grad():
            return logits(embeds)

    def autograd_functional() -> object:
        with sdpa_kernel(SDPBackend.MATH):
            return torch.autograd.functional.jvp(logits, (embeds,), (direction,))

    def func_jvp() -> object:
        with sdpa_kernel(SDPBackend.MATH):
            return torch.func.jvp(logits, (embeds,), (direction,))

    calls: dict[str, Callable[[], object]] = {FORWARD: forward_pass}
    for method in ("auto", "forward"):
        calls[f"jvpcli {method}"] = lambda method=method: jvpcli.jvp_tree(
            model,
            (),
            kwargs,
            kwarg_tangents={"inputs_embeds": direction},
            outputs=["logits"],
            method=method,
        )
    calls["torch.autograd.functional.jvp"] = autograd_functional
    calls["torch.func.jvp"] = func_jvp
    return calls


def _many_tiny_ops():
    def func(x):
        for _ in range(200):
            x = torch.sin(x) * 0.9 + 0.1
        return x

    return func, (torch.randn(64),)


WORKLOADS = {
    w.name: w
    for w in [
        Workload("deep MLP", "16 x Linear(768)+tanh, batch 512", lambda: _mlp(768, 16, 512)),
        Workload(
            "deep MLP, tangent on every weight",
            "the deep MLP, param_tangents for all 32 weights and biases, none for the input; "
            "PyTorch's APIs over functional_call",
            lambda: _mlp(768, 16, 512),
            _deep_mlp_every_weight,
        ),
        Workload("wide MLP", "4 x Linear(1536)+tanh, batch 512", lambda: _mlp(1536, 4, 512)),
        Workload("CNN", "3 conv + pool + linear, 16x3x32x32", _cnn),
        Workload("transformer layer", "TransformerEncoderLayer(256, 4), eval, 8x128", _transformer),
        Workload(
            "GPT-2 sample (2 layers, 32 wide), logits along inputs_embeds, 8x64, padded mask",
            "samples/models/tiny-gpt2 (SDPA attention), eval, random inputs_embeds, int64 "
            "attention_mask with the last 4 of 8 rows padded at the end; jvpcli via jvp_tree's "
            "kwarg_tangents with outputs=['logits'], as is; PyTorch's APIs over the logits "
            "closure inside sdpa_kernel(SDPBackend.MATH), since the fused CPU SDPA kernel has no "
            "double backward (autograd.functional) and no forward derivative (torch.func)",
            _gpt2_logits,
            _gpt2_along_embeds,
        ),
        Workload("LSTM", "LSTM(64->256), 16x50", _lstm),
        Workload("exp_reducer", "x.exp().sum(1), 2048x2048", _exp_reducer),
        Workload("many tiny ops", "200 x (sin, *0.9, +0.1) on 64 values", _many_tiny_ops),
    ]
}

JVPCLI = ("jvpcli auto", "jvpcli forward")


def _calls(workload: Workload) -> dict[str, Callable[[], object]]:
    torch.manual_seed(0)
    if workload.calls is not None:
        return workload.calls()
    func, inputs = workload.build()
    v = tuple(torch.randn_like(x) for x in inputs)
    return candidates(func, inputs, v, methods=("auto", "forward"))


def time_workload(workload: Workload, repeats: int) -> dict[str, Timing]:
    return compare(_calls(workload), repeats=repeats, warmup=2)


def peak_memory_mib(workload_name: str, candidate: str) -> float | None:
    """Extra peak resident memory of one call, measured in a fresh process (None if it failed)."""
    probe = subprocess.run(
        [sys.executable, __file__, "--memory-probe", workload_name, candidate],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return None
    return float(probe.stdout.strip().splitlines()[-1])


def _memory_probe(workload_name: str, candidate: str) -> None:
    call = _calls(WORKLOADS[workload_name])[candidate]
    call()  # one-time costs (lazy initialisation, kernel caches) are not the method's memory
    ctypes.CDLL(None).malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    before = _proc_status_mib("VmRSS")
    call()
    print(_proc_status_mib("VmHWM") - before)


def _proc_status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or denominator is None:
        return "fails"
    return f"{numerator / denominator:.2f}x"


def _markdown(table: Table) -> str:
    """``table`` as a Markdown table, for the README: the same title, headings and cells."""
    headings = [str(column.header) for column in table.columns]
    cells = [[str(cell) for cell in column.cells] for column in table.columns]
    align = ["---:" if column.justify == "right" else "---" for column in table.columns]
    lines = [f"{table.title}:", "", "| " + " | ".join(headings) + " |"]
    lines.append("| " + " | ".join(align) + " |")
    lines += ["| " + " | ".join(row) + " |" for row in zip(*cells, strict=True)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="jvpcli vs PyTorch's JVP APIs.")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--only", action="append", choices=sorted(WORKLOADS), default=None)
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument(
        "--markdown", action="store_true", help="print the tables as Markdown (the README's)"
    )
    parser.add_argument("--memory-probe", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        _memory_probe(*args.memory_probe)
        return

    console = Console(width=max(Console().width, 120))  # tables stay whole in logs and pipes
    machine = (
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"jvpcli {jvpcli.__version__}, Python {platform.python_version()}"
    )
    console.print(f"jvpcli benchmark suite: {machine}; medians of {args.repeats} rounds")
    names = args.only or list(WORKLOADS)
    times = Table(title="Time, as a multiple of the forward pass (lower is better)")
    times.add_column("workload")
    times.add_column("forward", justify="right")
    for column in ("jvpcli auto", "jvpcli forward", "autograd.functional", "torch.func"):
        times.add_column(column, justify="right")
    times.add_column("auto vs best PyTorch", justify="right")
    memory = Table(title="Extra peak memory of one call, MiB (x the forward pass's)")
    memory.add_column("workload")
    for column in ("forward", "jvpcli auto", "autograd.functional", "torch.func"):
        memory.add_column(column, justify="right")

    report: dict = {"machine": machine, "repeats": args.repeats, "workloads": {}}
    for name in names:
        workload = WORKLOADS[name]
        timings = time_workload(workload, args.repeats)
        base = timings[FORWARD].median
        best_peer = min((t for p in PYTORCH_PEERS if (t := timings[p].median)), default=None)
        auto = timings["jvpcli auto"].median
        times.add_row(
            name,
            f"{base * 1e3:.2f} ms",
            *(_ratio(timings[c].median, base) for c in (*JVPCLI, *PYTORCH_PEERS)),
            "PyTorch fails" if best_peer is None else f"{best_peer / auto:.2f}x faster",
        )
        entry: dict = {
            "description": workload.description,
            "median_seconds": {c: t.median for c, t in timings.items()},
            "errors": {c: t.error for c, t in timings.items() if t.error},
        }
        if args.memory:
            peaks = {c: peak_memory_mib(name, c) for c in (FORWARD, *JVPCLI[:1], *PYTORCH_PEERS)}
            forward_peak = peaks[FORWARD]
            memory.add_row(
                name,
                *(
                    "fails"
                    if peak is None
                    else f"{peak:.1f}"
                    + ("" if c == FORWARD or not forward_peak else f" ({peak / forward_peak:.1f}x)")
                    for c, peak in peaks.items()
                ),
            )
            entry["extra_peak_mib"] = peaks
        report["workloads"][name] = entry
    tables = [times, memory] if args.memory else [times]
    for table in tables:
        if args.markdown:
            console.print(_markdown(table), soft_wrap=True, highlight=False, markup=False)
        else:
            console.print(table)
    for name in names:
        console.print(f"  {name}: {WORKLOADS[name].description}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"results written to {args.json}")


if __name__ == "__main__":
    main()

"""jvpcli against PyTorch's JVP APIs, eager and compiled, on representative workloads.

    python benchmarks/suite.py --markdown    # every workload; about 10 minutes on 2 cores
    python benchmarks/suite.py --quick       # a smoke test: few rounds, nothing compiled
    python benchmarks/suite.py --only "wide MLP" --budget 60 --no-memory
    python benchmarks/compare.py A.json B.json   # how far two runs' cells differ

Time: for each workload the contenders (the plain forward pass, jvpcli's "auto" and "forward",
jvpcli with compile=True where jvpcli.jvp takes it, torch.autograd.functional.jvp,
torch.func.jvp and torch.compile of torch.func.jvp) run interleaved in one process, a fresh one
for each workload (a tracer that fails half-way can leave PyTorch's state behind, such as a
forward-AD level still open, which would fail or slow every later workload): one call each per
round, the order rotated from round to round, after warm-up rounds. Each cell is the
contender's time as a multiple of the forward pass, round by round (so that a slow spell of the
machine, which hits both, cancels out), given as the median and the range (fastest-slowest
round). The number of rounds adapts to the noise: at least --rounds, and at least
--min-seconds of them (so that they span more than one of the slow or quiet spells of a shared
machine, which last seconds: a few rounds inside one agree with each other but not with the next
run), then more until every cell's median is known to within --precision (a box plot's notch: an
approximate 95% interval, 1.57 x IQR / sqrt(rounds)) or --budget seconds of rounds are spent. A
compiled contender's first call (compiling it) is reported apart, as its compile time, and timed
no further than any other warm-up call; each process first compiles a trivial function, so that
no workload's compile time carries inductor's start-up.

Allocator: each workload times with glibc's malloc thresholds as `jvpcli compute` sets them
(jvpcli._malloc: blocks of up to 32 MiB from the heap, the heap trimmed only above 1 GiB free),
for every contender alike. With glibc's own moving thresholds a process hands its heap back and
faults it in again on every call or on none, depending on what it freed before: the same
workload read 2.36x one run and 2.68x the next. --allocator as-is times as the environment
leaves it, and so does an environment that chose its allocator already, as `jvpcli compute`
leaves it (benchmarks/malloc.py measures the difference).

Memory: each (workload, contender) pair runs in a fresh process, with glibc's allocator pinned
(MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ at 128 KiB). Unpinned, glibc raises its mmap
threshold (up to 32 MiB) the first time a large block is freed, after which large tensors come
from the heap, whose pages are kept or returned depending on what was freed before: the same
call then measures one of two values from run to run. Pinned, every block of 128 KiB or more is
mapped when allocated and unmapped when freed, so the resident set follows the live tensors.
The probe makes one warm-up call, then three times: trims the heap, resets the peak resident
set to the current one (Linux's /proc/self/clear_refs; getrusage's maxrss cannot be reset, so
the warm-up call's peak would hide the measured call's), makes one call and reports how far the
peak rose ("extra peak", MiB), as the median and range of the three. The resident set counts
everything the call costs (tensors, oneDNN scratch buffers, the autograd graph), which a count
of PyTorch's own allocations would not. Compiled contenders are not probed (each probe would
compile again).
"""

from __future__ import annotations

import argparse
import ctypes
import inspect
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import jvpcli
from jvpcli._malloc import MMAP_THRESHOLD, TRIM_THRESHOLD, chosen_already
from jvpcli.benchmark import (
    FORWARD,
    PYTORCH_PEERS,
    Timing,
    candidates,
    compare,
    fastest,
    relative,
    within_noise,
)

RESULTS = Path(__file__).parent / "results" / "suite.json"

JVPCLI_COMPILED = "jvpcli compile=True"
FUNC_COMPILED = "torch.compile(torch.func.jvp)"
COMPILED = (JVPCLI_COMPILED, FUNC_COMPILED)
CONTENDERS = {  # every contender, in the tables' order, and its column heading
    FORWARD: "forward",
    "jvpcli auto": "jvpcli auto",
    "jvpcli forward": "jvpcli forward",
    JVPCLI_COMPILED: "jvpcli compile",
    "torch.autograd.functional.jvp": "autograd.functional",
    "torch.func.jvp": "torch.func",
    FUNC_COMPILED: "compile(torch.func)",
}
PROBED = (FORWARD, "jvpcli auto", "torch.autograd.functional.jvp", "torch.func.jvp")
PINNED_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
TIMING_ALLOCATOR = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
}
"""What ``jvpcli compute`` sets with ``mallopt``, as the environment variables that set it."""
ALLOCATOR_KEYS = (*PINNED_ALLOCATOR, "MALLOC_ARENA_MAX", "LD_PRELOAD")


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    calls: Callable[[bool], dict[str, Callable[[], object]]]
    """The contenders' calls, the compiled ones only if the argument is True."""


def _takes_compile(api: Callable[..., object]) -> bool:
    """Whether this jvpcli's ``api`` has the compiled path (jvpcli.jvp(..., compile=True))."""
    return "compile" in inspect.signature(api).parameters


def _jvp_calls(build: Callable[[], tuple[Callable[..., object], tuple[torch.Tensor, ...]]]):
    """The contenders on ``build()``'s function and inputs along random tangents."""

    def calls(compiled: bool) -> dict[str, Callable[[], object]]:
        func, inputs = build()
        v = tuple(torch.randn_like(x) for x in inputs)
        calls = candidates(func, inputs, v, methods=("auto", "forward"))
        if compiled:
            if _takes_compile(jvpcli.jvp):
                calls[JVPCLI_COMPILED] = lambda: jvpcli.jvp(func, inputs, v, compile=True)
            func_jvp = torch.compile(lambda p, t: torch.func.jvp(func, p, t))
            calls[FUNC_COMPILED] = lambda: func_jvp(inputs, v)
        return calls

    return calls


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


def _transformer_8_heads():
    layer = torch.nn.TransformerEncoderLayer(256, 8, batch_first=True)
    return layer.eval().requires_grad_(False), (torch.randn(8, 128, 256),)


def _lstm():
    lstm = torch.nn.LSTM(64, 256, batch_first=True).eval().requires_grad_(False)
    return (lambda x: lstm(x)[0]), (torch.randn(16, 50, 64),)


def _recurrent(kind: str, bidirectional: bool = False):
    """A 2-layer ``kind`` (torch.nn.LSTM or GRU), 128 -> 256, on 32 sequences of 50 steps."""
    layer = getattr(torch.nn, kind)(128, 256, 2, batch_first=True, bidirectional=bidirectional)
    layer = layer.eval().requires_grad_(False)
    return (lambda x: layer(x)[0]), (torch.randn(32, 50, 128),)


def _exp_reducer():
    return (lambda x: x.exp().sum(dim=1)), (torch.rand(2048, 2048),)


def _deep_mlp_every_weight(compiled: bool) -> dict[str, Callable[[], object]]:
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
    if compiled:
        if _takes_compile(jvpcli.jvp_tree):
            calls[JVPCLI_COMPILED] = lambda: jvpcli.jvp_tree(
                model, (x,), param_tangents=directions, compile=True
            )
        func_jvp = torch.compile(lambda p, t: torch.func.jvp(of_params, p, t))
        calls[FUNC_COMPILED] = lambda: func_jvp(primals, tangents)
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


def _gpt2_along_embeds(compiled: bool) -> dict[str, Callable[[], object]]:
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
    if compiled:
        if _takes_compile(jvpcli.jvp_tree):
            calls[JVPCLI_COMPILED] = lambda: jvpcli.jvp_tree(
                model,
                (),
                kwargs,
                kwarg_tangents={"inputs_embeds": direction},
                outputs=["logits"],
                compile=True,
            )
        calls[FUNC_COMPILED] = torch.compile(func_jvp)
    return calls


def _batched_tangents(compiled: bool) -> dict[str, Callable[[], object]]:
    """32 tangents of a 4 x Linear(512)+tanh MLP at batch 16 at once: jvpcli's batched_v against
    32 calls of torch.autograd.functional.jvp and torch.vmap of torch.func.jvp."""
    model, (x,) = _mlp(512, 4, 16)
    directions = torch.randn(32, *x.shape)

    def forward_pass() -> object:
        with torch.no_grad():
            return model(x)

    def vmapped(tangents: torch.Tensor) -> object:
        jvp_one = lambda t: torch.func.jvp(model, (x,), (t,))  # noqa: E731
        return torch.vmap(jvp_one, out_dims=(None, 0))(tangents)

    calls: dict[str, Callable[[], object]] = {FORWARD: forward_pass}
    for method in ("auto", "forward"):
        calls[f"jvpcli {method}"] = lambda method=method: jvpcli.jvp(
            model, x, directions, method=method, batched_v=True
        )
    calls["torch.autograd.functional.jvp"] = lambda: [
        torch.autograd.functional.jvp(model, x, d) for d in directions
    ]
    calls["torch.func.jvp"] = lambda: vmapped(directions)
    if compiled:
        if _takes_compile(jvpcli.jvp):
            calls[JVPCLI_COMPILED] = lambda: jvpcli.jvp(
                model, x, directions, batched_v=True, compile=True
            )
        compiled_vmap = torch.compile(vmapped)
        calls[FUNC_COMPILED] = lambda: compiled_vmap(directions)
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
        Workload(
            "deep MLP", "16 x Linear(768)+tanh, batch 512", _jvp_calls(lambda: _mlp(768, 16, 512))
        ),
        Workload(
            "deep MLP, tangent on every weight",
            "the deep MLP, param_tangents for all 32 weights and biases, none for the input; "
            "PyTorch's APIs over functional_call",
            _deep_mlp_every_weight,
        ),
        Workload(
            "wide MLP", "4 x Linear(1536)+tanh, batch 512", _jvp_calls(lambda: _mlp(1536, 4, 512))
        ),
        Workload("CNN", "3 conv + pool + linear, 16x3x32x32", _jvp_calls(_cnn)),
        Workload(
            "transformer layer",
            "TransformerEncoderLayer(256, 4, 1024), eval, 8x128",
            _jvp_calls(_transformer),
        ),
        Workload(
            "transformer layer, 8 heads",
            "TransformerEncoderLayer(256, 8) (feed-forward 2048), eval, 8x128",
            _jvp_calls(_transformer_8_heads),
        ),
        Workload(
            "GPT-2 sample (2 layers, 32 wide), logits along inputs_embeds, 8x64, padded mask",
            "samples/models/tiny-gpt2 (SDPA attention), eval, random inputs_embeds, int64 "
            "attention_mask with the last 4 of 8 rows padded at the end; jvpcli via jvp_tree's "
            "kwarg_tangents with outputs=['logits'], as is; PyTorch's APIs over the logits "
            "closure inside sdpa_kernel(SDPBackend.MATH), since the fused CPU SDPA kernel has no "
            "double backward (autograd.functional) and no forward derivative (torch.func)",
            _gpt2_along_embeds,
        ),
        Workload("LSTM", "LSTM(64->256), 16x50", _jvp_calls(_lstm)),
        Workload(
            "LSTM, 2 layers",
            "LSTM(128->256, 2 layers), batch_first, 32x50",
            _jvp_calls(lambda: _recurrent("LSTM")),
        ),
        Workload(
            "bidirectional LSTM",
            "LSTM(128->256, 2 layers, bidirectional), batch_first, 32x50",
            _jvp_calls(lambda: _recurrent("LSTM", bidirectional=True)),
        ),
        Workload(
            "GRU",
            "GRU(128->256, 2 layers), batch_first, 32x50",
            _jvp_calls(lambda: _recurrent("GRU")),
        ),
        Workload("exp_reducer", "x.exp().sum(1), 2048x2048", _jvp_calls(_exp_reducer)),
        Workload(
            "many tiny ops", "200 x (sin, *0.9, +0.1) on 64 values", _jvp_calls(_many_tiny_ops)
        ),
        Workload(
            "32 tangents at once",
            "4 x Linear(512)+tanh, batch 16, 32 tangents: jvpcli with batched_v=True; "
            "autograd.functional: 32 calls; torch.func: torch.vmap of torch.func.jvp (and "
            "torch.compile of that vmap)",
            _batched_tangents,
        ),
    ]
}


@dataclass(frozen=True)
class Settings:
    """How hard to sample: see the module docstring and ``--help``."""

    rounds: int
    warmup: int
    budget: float
    precision: float
    compile: bool
    min_seconds: float = 0.0
    allocator: str = "tuned"  # or "as-is": see the module docstring


def time_workload(workload: Workload, settings: Settings) -> dict[str, Timing]:
    """Every contender's rounds on ``workload``, keyed as :data:`CONTENDERS`."""
    if settings.compile:
        from torch import _dynamo  # here: it takes seconds, which the memory probes need not spend

        # Each workload compiles afresh: its compile time is its own, and the compiled lambdas,
        # one code object for every workload, never reach dynamo's per-function recompile limit.
        _dynamo.reset()
    torch.manual_seed(0)
    calls = workload.calls(settings.compile)
    return compare(
        calls,
        repeats=settings.rounds,
        warmup=settings.warmup,
        budget=settings.budget,
        precision=settings.precision,
        min_seconds=settings.min_seconds,
    )


def timed_in_a_fresh_process(name: str, settings: Settings) -> tuple[dict, float | None]:
    """:func:`time_workload` of ``WORKLOADS[name]`` in a process of its own: its
    :func:`workload_entry` and the seconds of inductor's start-up there (None: nothing compiled).

    Each workload times in a fresh process, so that none can change another's numbers: a tracer
    that fails half-way (``torch.compile`` of ``torch.func.jvp`` on an op without a forward
    rule) can leave PyTorch's state behind, such as a forward-AD level still open, after which
    every forward-mode contender of every later workload in the process fails or falls back.

    Raises:
        SystemExit: the worker itself failed (not a contender: their errors are in the entry).
    """
    worker = subprocess.run(
        [sys.executable, __file__, "--time-workload", name, json.dumps(asdict(settings))],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **TIMING_ALLOCATOR} if _tunes_allocator(settings) else None,
    )
    if worker.returncode != 0:
        sys.stderr.write(worker.stderr)
        raise SystemExit(f"timing {name!r} failed (exit code {worker.returncode}): see above")
    result = json.loads(worker.stdout.strip().splitlines()[-1])
    return result["entry"], result["inductor_startup_seconds"]


def _tunes_allocator(settings: Settings) -> bool:
    """Whether the timing processes get jvpcli compute's thresholds: asked for, and the
    environment did not choose its allocator already (a MALLOC_* variable, another allocator in
    LD_PRELOAD), which jvpcli compute too would leave as it is."""
    return settings.allocator == "tuned" and chosen_already() is None


def _time_workload_here(name: str, settings_json: str) -> None:
    """The worker of :func:`timed_in_a_fresh_process`: one JSON line on stdout."""
    settings = Settings(**json.loads(settings_json))
    inductor_startup = _start_inductor() if settings.compile else None
    timings = time_workload(WORKLOADS[name], settings)
    entry = workload_entry(WORKLOADS[name], timings)
    entry["allocator"] = {key: os.environ.get(key) for key in ALLOCATOR_KEYS}
    print(json.dumps({"entry": entry, "inductor_startup_seconds": inductor_startup}))


def peak_memory(workload_name: str, contender: str) -> dict:
    """Extra peak resident memory (MiB) of one call, measured in a fresh process with the
    allocator pinned: ``{"min", "median", "max"}`` over three calls, or ``{"error": ...}``."""
    probe = subprocess.run(
        [sys.executable, __file__, "--memory-probe", workload_name, contender],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **PINNED_ALLOCATOR},
    )
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines() or [f"exit code {probe.returncode}"]
        return {"error": lines[-1]}
    peaks = json.loads(probe.stdout.strip().splitlines()[-1])
    return {"min": min(peaks), "median": statistics.median(peaks), "max": max(peaks)}


def _memory_probe(workload_name: str, contender: str) -> None:
    torch.manual_seed(0)
    call = WORKLOADS[workload_name].calls(False)[contender]
    call()  # one-time costs (lazy initialisation, kernel caches) are not the method's memory
    peaks = []
    for _ in range(3):
        ctypes.CDLL(None).malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
        before = _proc_status_mib("VmRSS")
        call()
        peaks.append(_proc_status_mib("VmHWM") - before)
    print(json.dumps(peaks))


def _proc_status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _summary(values: tuple[float, ...]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def workload_entry(workload: Workload, timings: dict[str, Timing]) -> dict:
    """One workload's measurements as the JSON report keeps them (and the tables show them)."""
    base = timings[FORWARD]
    contenders = {}
    for name, timing in timings.items():
        ratios = relative(timing, base).times
        contenders[name] = {
            "seconds": _summary(timing.times) if timing.times else None,
            "ratio": _summary(ratios) if ratios else None,
            "ratio_quartiles": [relative(timing, base).quantile(q) for q in (0.25, 0.75)],
            "first_call_seconds": timing.first_call,
            "error": timing.error,
        }
    return {
        "description": workload.description,
        "rounds": len(base.times),
        "contenders": contenders,
    }


class Footnotes:
    """Numbered notes for the cells that say "fails": one per distinct error."""

    def __init__(self) -> None:
        self.notes: dict[str, list[str]] = {}

    def mark(self, error: str, where: str) -> str:
        error = error if len(error) <= 240 else error[:239] + "…"
        self.notes.setdefault(error, []).append(where)
        return f"fails [{list(self.notes).index(error) + 1}]"

    def lines(self) -> list[str]:
        return [
            f"[{number}] {error} ({'; '.join(where)})"
            for number, (error, where) in enumerate(self.notes.items(), start=1)
        ]


def _range(summary: dict[str, float], digits: int, unit: str = "") -> str:
    low, median, high = (f"{summary[k]:.{digits}f}" for k in ("min", "median", "max"))
    return f"{median}{unit} ({low}-{high})"


def _versus(entry: dict) -> str:
    """jvpcli auto against the faster eager PyTorch API, or "within noise"."""
    ratios = {name: _as_timing(name, cell) for name, cell in entry["contenders"].items()}
    auto = ratios.get("jvpcli auto")
    peer = fastest({p: t for p, t in ratios.items() if p in PYTORCH_PEERS}, prefix="torch.")
    if auto is None or auto.median is None:
        return "jvpcli fails"
    if peer is None:
        return "PyTorch fails"
    if within_noise(auto, peer):
        return "within noise"
    ratio = peer.median / auto.median
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def _as_timing(name: str, cell: dict) -> Timing:
    """A Timing standing for a cell's ratios, with its median and middle half (what fastest
    and within_noise read); no times if the contender failed."""
    if cell["ratio"] is None:
        return Timing(name, (), cell["error"])
    low, high = cell["ratio_quartiles"]
    return Timing(name, (low, cell["ratio"]["median"], high))


def tables(report: dict) -> tuple[list[Table], list[str]]:
    """The report's tables (time; compile time, if anything compiled; memory, if probed) and
    the footnotes their "fails" cells point to."""
    workloads = report["workloads"]
    notes = Footnotes()
    present = [c for c in CONTENDERS if any(c in w["contenders"] for w in workloads.values())]
    times = Table(
        title="Time, as a multiple of the forward pass: median (fastest-slowest round), "
        "lower is better"
    )
    times.add_column("workload")
    times.add_column("forward, ms", justify="right")
    times.add_column("rounds", justify="right")
    for contender in present[1:]:
        times.add_column(CONTENDERS[contender], justify="right")
    times.add_column("auto vs best eager PyTorch", justify="right")
    compiled = [c for c in present if c in COMPILED]
    compile_times = Table(title="Compile time: the first call, seconds")
    compile_times.add_column("workload")
    for contender in compiled:
        compile_times.add_column(CONTENDERS[contender], justify="right")
    probed = [c for c in PROBED if any("extra_peak_mib" in w for w in workloads.values())]
    memory = Table(title="Extra peak memory of one call, MiB: median (range of 3), x the forward's")
    memory.add_column("workload")
    for contender in probed:
        memory.add_column(CONTENDERS[contender], justify="right")

    for name, entry in workloads.items():
        cells = entry["contenders"]

        def cell(contender: str, show: Callable[[dict], str], name=name, cells=cells) -> str:
            return _cell(notes, name, cells, contender, show)

        forward = cell(FORWARD, lambda c: _range(_scaled(c["seconds"], 1e3), 2))
        times.add_row(
            name,
            forward,
            str(entry["rounds"]),
            *(cell(c, lambda c: _range(c["ratio"], 2, "x")) for c in present[1:]),
            _versus(entry),
        )
        if compiled:
            compile_times.add_row(
                name, *(cell(c, lambda c: f"{c['first_call_seconds']:.1f}") for c in compiled)
            )
        if "extra_peak_mib" in entry:
            memory.add_row(name, *_memory_cells(name, entry["extra_peak_mib"], notes))
    shown = [times]
    if compiled:
        shown.append(compile_times)
    if probed:
        shown.append(memory)
    return shown, notes.lines()


def _cell(
    notes: Footnotes, workload: str, cells: dict, contender: str, show: Callable[[dict], str]
) -> str:
    """A contender's cell: ``show(its entry)``, "fails [n]" or "-" (not run)."""
    if contender not in cells:
        return "-"
    if cells[contender]["error"]:
        return notes.mark(cells[contender]["error"], f"{workload}: {CONTENDERS[contender]}")
    return show(cells[contender])


def _scaled(summary: dict[str, float], factor: float) -> dict[str, float]:
    return {k: v * factor for k, v in summary.items()}


def _memory_cells(workload: str, peaks: dict[str, dict], notes: Footnotes) -> list[str]:
    forward = peaks.get(FORWARD, {}).get("median")
    cells = []
    for contender, peak in peaks.items():
        if "error" in peak:
            cells.append(notes.mark(peak["error"], f"{workload}: memory of {contender}"))
            continue
        text = f"{peak['median']:.1f}"
        if peak["max"] - peak["min"] >= 0.05:
            text += f" ({peak['min']:.1f}-{peak['max']:.1f})"
        if contender != FORWARD and forward:
            text += f", {peak['median'] / forward:.1f}x"
        cells.append(text)
    return cells


def _markdown(table: Table) -> str:
    """``table`` as a Markdown table, for the README: the same title, headings and cells."""
    headings = [str(column.header) for column in table.columns]
    cells = [[str(cell) for cell in column.cells] for column in table.columns]
    align = ["---:" if column.justify == "right" else "---" for column in table.columns]
    lines = [f"{table.title}:", "", "| " + " | ".join(headings) + " |"]
    lines.append("| " + " | ".join(align) + " |")
    lines += ["| " + " | ".join(row) + " |" for row in zip(*cells, strict=True)]
    return "\n".join(lines) + "\n"


def header(settings: Settings) -> dict:
    """What the numbers depend on: the command, machine, versions, threads and allocator."""
    allocator = {key: os.environ.get(key) for key in ALLOCATOR_KEYS}
    compiled_path = _takes_compile(jvpcli.jvp)
    return {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()}, {_cpu_model()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at the start",
        "versions": f"torch {torch.__version__}, jvpcli {jvpcli.__version__}, "
        f"Python {platform.python_version()}",
        "threads": f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} "
        f"inter-op (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})",
        "allocator": (
            "timing with jvpcli compute's thresholds ("
            + " ".join(f"{k}={v}" for k, v in TIMING_ALLOCATOR.items())
            if _tunes_allocator(settings)
            else "timing as the environment leaves it ("
            + ", ".join(f"{k}={v}" for k, v in allocator.items())
        )
        + "); memory probes with "
        + " ".join(f"{k}={v}" for k, v in PINNED_ALLOCATOR.items()),
        "rounds": f"interleaved, order rotated, {settings.warmup} warm-up; at least "
        f"{settings.rounds} timed and {settings.min_seconds:g} s of them, then more until every "
        f"median ratio is known to +-{settings.precision:.0%} (95%) or {settings.budget:g} s of "
        "rounds are spent",
        "compiled": "not run"
        if not settings.compile
        else f"{FUNC_COMPILED}; {JVPCLI_COMPILED}: "
        + ("yes" if compiled_path else "not in this jvpcli (jvpcli.jvp takes no compile)"),
        "isolation": "each workload times in a fresh process",
        "baseline": FORWARD,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _start_inductor() -> float:
    """Seconds of inductor's one-time start-up (imports, worker pool), spent on a trivial
    function so that no workload's compile time carries it."""
    start = time.perf_counter()
    torch.compile(lambda x: x.sin() + 1)(torch.randn(3))
    return time.perf_counter() - start


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="jvpcli vs PyTorch's JVP APIs.")
    parser.add_argument(
        "--rounds", type=int, default=7, help="timed rounds at least, per workload (7)"
    )
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=10.0,
        help="seconds of timed rounds at least, per workload (10)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=20.0,
        help="seconds of timed rounds per workload past --rounds, while a median is imprecise",
    )
    parser.add_argument(
        "--precision",
        type=float,
        default=0.03,
        help="stop adding rounds once every median ratio is known to this fraction (0.03)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (2)")
    parser.add_argument(
        "--allocator",
        choices=("tuned", "as-is"),
        default="tuned",
        help="glibc's thresholds while timing: jvpcli compute's (tuned), or the environment's",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test: 2 rounds after 1 warm-up, no budget, nothing compiled",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the compiled contenders (default: yes, but not with --quick)",
    )
    parser.add_argument("--only", action="append", choices=sorted(WORKLOADS), default=None)
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"default: {RESULTS}")
    parser.add_argument(
        "--markdown", action="store_true", help="print the tables as Markdown (the README's)"
    )
    parser.add_argument("--memory-probe", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--time-workload", nargs=2, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    if args.memory_probe:
        _memory_probe(*args.memory_probe)
        return
    if args.time_workload:
        _time_workload_here(*args.time_workload)
        return
    if args.quick:
        settings = Settings(2, 1, 0.0, args.precision, bool(args.compile), 0.0, args.allocator)
    else:
        compiled = args.compile is None or args.compile
        settings = Settings(
            args.rounds,
            args.warmup,
            args.budget,
            args.precision,
            compiled,
            args.min_seconds,
            args.allocator,
        )

    console = Console(width=max(Console().width, 240))  # tables stay whole in logs and pipes
    report: dict = {"header": header(settings), "workloads": {}}
    for key, value in report["header"].items():
        console.print(f"{key}: {value}", soft_wrap=True, highlight=False, markup=False)
    names = args.only or list(WORKLOADS)
    startups = []
    for name in names:
        start = time.perf_counter()
        report["workloads"][name], startup = timed_in_a_fresh_process(name, settings)
        if startup is not None:
            startups.append(startup)
        console.print(f"  timed {name} in {time.perf_counter() - start:.0f} s", highlight=False)
    if startups:
        startup = _summary(tuple(startups))
        report["header"]["inductor_startup_seconds"] = startup
        console.print(
            "inductor start-up (a trivial compile first in each process, so that no workload's "
            f"compile time carries it): {_range(startup, 1, ' s')}",
            highlight=False,
        )
    if args.memory:
        probes = [(name, contender) for name in names for contender in PROBED]
        # Each probe is its own process measuring its own resident set: two at a time do not
        # disturb each other's numbers, and halve the wait on 2 cores.
        with ThreadPoolExecutor(max_workers=2) as pool:
            peaks = list(pool.map(lambda probe: peak_memory(*probe), probes))
        for (name, contender), peak in zip(probes, peaks, strict=True):
            report["workloads"][name].setdefault("extra_peak_mib", {})[contender] = peak
    shown, notes = tables(report)
    for table in shown:
        if args.markdown:
            console.print(_markdown(table), soft_wrap=True, highlight=False, markup=False)
        else:
            console.print(table)
    for line in [*notes, *(f"  {name}: {WORKLOADS[name].description}" for name in names)]:
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"results written to {args.json}", highlight=False)


if __name__ == "__main__":
    main()

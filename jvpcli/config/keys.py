"""The keys a config may hold: one declarative table, :data:`KEYS`.

Each :class:`Key` declares a run key's kind, help text, default, choices and whether it may be
swept. Validation (:mod:`jvpcli.config.validate`) and the JSON Schema (:mod:`jvpcli.config.schema`)
are both driven by this table, so a new key is one entry here (plus, for a new kind, its validator
and its schema), and the checks the command makes cannot drift from what editors are told.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CHECKS",
    "DEVICE",
    "DIRECTION_KEYS",
    "DTYPES",
    "EXECUTORS",
    "FUNCTION_KEYS",
    "IDENTIFIERS",
    "KEYS",
    "MAX_SEED",
    "METHODS",
    "RESOURCE_KEYS",
    "SWEEP_KEYS",
    "TOLERANCE_KEYS",
    "Key",
]

METHODS: tuple[str, ...] = ("auto", "forward", "double-backward")
"""The values ``method`` accepts: :data:`jvpcli.engine.METHODS`, repeated here so that reading and
checking a config does not import torch (a test keeps the two equal)."""

DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64")
"""The values ``dtype`` accepts: the floating-point dtypes inputs and ``v`` can be cast to."""

CHECKS: tuple[str, ...] = ("none", "finite-differences")
"""The values ``check`` accepts: no check, or each JVP against central finite differences."""

EXECUTORS: tuple[str, ...] = ("local", "ray")
"""The values ``executor`` accepts: runs in this process, in order; or as Ray tasks."""

TOLERANCE_KEYS = re.compile(r"(func_output|jvp)(\.[^.\s]+)*")
"""The names ``tolerances`` accepts: a tensor of the output file (``jvp.1``, ``jvp.logits``), or
every tensor of a kind (``jvp``: ``jvp``, ``jvp.0``, ``jvp.logits``, ...)."""

MAX_SEED = 2**64 - 1  # torch.manual_seed's largest seed

DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
IDENTIFIERS = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


@dataclass(frozen=True)
class Key:
    """One run key of a config.

    Attributes:
        kind: how its value is validated and described in the schema: ``string``, ``path``,
            ``direction`` (a path or random directions), ``boolean``, ``choice``, ``names``,
            ``device``, ``function``, ``number``, ``integer``, ``tolerances`` or ``resources``.
        description: its help text (the schema's description, the README's reference).
        required: whether every run must set it.
        default: its value when not set.
        choices: the values a ``choice`` accepts.
        positive: for a ``number``, whether it must be above 0 rather than at least 0.
        sweepable: whether ``sweep`` may list values for it.
    """

    kind: str
    description: str
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    positive: bool = False
    sweepable: bool = True


KEYS: dict[str, Key] = {
    "name": Key(
        "string",
        "The run's label in summaries. Default: the config file's name.",
        sweepable=False,
    ),
    "function": Key(
        "function",
        "What to differentiate: FILE.py:NAME or package.module:NAME; "
        "{target, init, weights} to build an nn.Module; or {exported: ARCHIVE.pt2}.",
        required=True,
    ),
    "inputs": Key(
        "path",
        "Safetensors file with the point at which to differentiate. Its tensors (of any dtype) "
        "bind to the function's parameters by name: positional, keyword-only or **kwargs.",
        required=True,
    ),
    "v": Key(
        "direction",
        "The direction for the inputs: a safetensors file of tangents for some of them, by "
        "name, with their shapes and dtypes (the inputs it leaves out are constants), or random "
        "directions {random: normal|rademacher, seed: 0, match: [GLOB, ...], k: K}. Omit to hold "
        "every input constant (or, without v_params, for a single one-element input along 1).",
    ),
    "v_params": Key(
        "direction",
        "The direction for the model's parameters, by state-dict name: a safetensors file of "
        "tangents for some of them (the others are constants), or random directions like v's. "
        "The JVP is taken along v and v_params together.",
    ),
    "outputs": Key(
        "names",
        "Keep only these output leaves, by dotted path (logits, hidden_states.2; a path keeps "
        "everything below it). Default: every tensor the function returns.",
    ),
    "save_v": Key(
        "boolean",
        "Also write the directions into the output file, as v.NAME and v_params.NAME.",
        default=False,
    ),
    "output": Key(
        "path", "Safetensors file to write func_output and jvp to (atomically).", required=True
    ),
    "order": Key(
        "names",
        "The tensor names of inputs in the order the function takes them, when their names do "
        "not match its parameters.",
    ),
    "strict": Key(
        "boolean",
        "Fail when an output does not depend on the inputs, or an input on no output.",
        default=False,
    ),
    "create_graph": Key(
        "boolean", "Compute with an autograd graph (values are saved detached).", default=False
    ),
    "method": Key(
        "choice",
        "auto: forward-mode AD with fallbacks; forward: forward mode only; "
        "double-backward: the reverse-of-reverse trick.",
        default="auto",
        choices=METHODS,
    ),
    "compile": Key(
        "boolean",
        "Compute with a compiled function: jvpcli's forward method traced by torch.compile and "
        "compiled by inductor. The first run for a function and input shapes pays the compile "
        "time (seconds), later ones in the same process (a sweep's) reuse it. Where the function "
        "cannot be traced, or with create_graph or strict, the run computes eagerly and says why.",
        default=False,
    ),
    "dtype": Key("choice", "Cast inputs and v to this dtype before computing.", choices=DTYPES),
    "device": Key(
        "device",
        "Where to compute: cpu, cuda, cuda:N, mps, or auto (cuda if available, else cpu).",
        default="cpu",
    ),
    "executor": Key(
        "choice",
        "Where the runs execute: local (in this process, one after another) or ray (as Ray "
        "tasks, on the cluster RAY_ADDRESS or --ray-address names, else on a local instance). "
        "The same for every run.",
        default="local",
        choices=EXECUTORS,
        sweepable=False,
    ),
    "resources": Key(
        "resources",
        "What each run asks Ray for: {num_cpus: 1, num_gpus: 0.5, memory: 4GB}. Defaults: 1 CPU "
        "(and as many torch threads), 1 GPU for a cuda run, no memory reservation. Ignored by "
        "the local executor.",
    ),
    "batched_v": Key(
        "boolean",
        "Treat the first dimension of every v tensor as K directions: v has the shape "
        "(K, *input shape), the same K for every tensor, and jvp gets that leading dimension.",
        default=False,
    ),
    "expect": Key(
        "path",
        "Safetensors file of reference results (a golden): func_output and jvp must match it "
        "within rtol/atol, or the run fails. --update-golden writes it instead. Like output, it "
        "may contain {name} and {KEY}.",
    ),
    "rtol": Key(
        "number",
        "Relative tolerance of the golden comparison, for every tensor: |result - golden| <= "
        "atol + rtol * |golden|. Default: torch.testing.assert_close's for the tensor's dtype.",
    ),
    "atol": Key("number", "Absolute tolerance of the golden comparison, for every tensor."),
    "tolerances": Key(
        "tolerances",
        "rtol and atol per tensor name (jvp.1) or kind (jvp: every jvp tensor), over rtol and "
        "atol, e.g. {jvp: {rtol: 1.0e-4}, func_output.1: {atol: 1.0e-6}}.",
    ),
    "check": Key(
        "choice",
        "finite-differences: check each JVP against central differences of the function "
        "along v, computed in float64; none: no check.",
        default="none",
        choices=CHECKS,
    ),
    "fd_step": Key(
        "number",
        "The finite-difference step h: the function is evaluated at x + h*v and x - h*v. "
        "Default: cbrt(float64 eps) * max(1, max |x|) / max |v|.",
        positive=True,
    ),
    "fd_rtol": Key(
        "number",
        "The finite-difference check's tolerance, relative to the largest |J*v| of each output. "
        "Default: the square root of the run dtype's eps (3.5e-4 for float32).",
        positive=True,
    ),
    "fail_on_nonfinite": Key(
        "boolean",
        "Fail the run when func_output or jvp holds NaN or infinite values (otherwise they are "
        "flagged as warnings).",
        default=False,
    ),
    "seed": Key(
        "integer",
        "Seed torch's random number generators (torch.manual_seed) before building the function "
        "and before each evaluation. Recorded in the output's metadata.",
    ),
    "deterministic": Key(
        "boolean",
        "Compute with torch.use_deterministic_algorithms(True) (restored afterwards). Recorded in "
        "the output's metadata.",
        default=False,
    ),
}

SWEEP_KEYS: dict[str, str] = {
    "sweep": "A mapping of run keys to lists of values: one run per combination (the cartesian "
    "product), each named after its values.",
    "runs": "A list of runs, each a mapping of keys that override the top level (and an optional "
    "name).",
}

DIRECTION_KEYS: dict[str, str] = {
    "random": "The distribution: normal (standard normal) or rademacher (±1 with equal odds).",
    "seed": "With each tensor's name, decides its direction: the same on every machine for one "
    "torch version.",
    "match": "Glob patterns (fnmatch) choosing the tensors that get a direction, e.g. "
    "['*.weight']. Default: every floating-point input, or every parameter.",
    "k": "With batched_v: how many directions per tensor.",
}

RESOURCE_KEYS: dict[str, str] = {
    "num_cpus": "CPUs per run (a fraction allowed); the run computes with as many torch threads, "
    "at least one. Default: 1.",
    "num_gpus": "GPUs per run; a fraction shares one GPU between runs. Default: 1 with device "
    "cuda or cuda:N, else 0 (so device auto computes on the CPU). Ray sets CUDA_VISIBLE_DEVICES: "
    "cuda is the first GPU it gave the run.",
    "memory": "Memory Ray reserves for the run when it schedules it (not a cap): bytes, or a "
    "size such as 512MiB or 4GB.",
}

FUNCTION_KEYS: dict[str, str] = {
    "target": "FILE.py:NAME or package.module:NAME of an nn.Module class or factory.",
    "init": "Keyword arguments target is called with.",
    "weights": "Safetensors state dict, loaded strictly; the model is then put in eval mode "
    "with its weights frozen.",
    "weights_prefix": "With weights: a prefix its names carry and the model's do not (e.g. "
    "'module.' from DataParallel, 'model.'), stripped before loading.",
    "exported": "A torch.export archive (.pt2): no Python source needed.",
    "pretrained": "A model folder as save_pretrained writes it (config.json and safetensors "
    "weights), loaded offline, in eval mode with its weights frozen.",
    "class": "With pretrained: the class whose from_pretrained loads the folder, "
    "package.module:NAME or FILE.py:NAME. Default: transformers:AutoModel.",
}

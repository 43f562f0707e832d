"""The value types a config is validated into: :class:`RunSpec` (one run, every path absolute),
the function it differentiates (:data:`FunctionSpec`), :class:`Sweep` and :class:`Shard`.

They are frozen dataclasses of plain values (paths, strings, numbers), so a run can be pickled and
shipped to another process as it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from jvpcli.errors import ConfigError, display_path

__all__ = [
    "DISTRIBUTIONS",
    "Direction",
    "ExportedFunction",
    "FunctionSpec",
    "ModelFunction",
    "PlainFunction",
    "PretrainedFunction",
    "RandomDirections",
    "Reference",
    "Resources",
    "RunSpec",
    "Shard",
    "Sweep",
    "Tolerance",
]

_T = TypeVar("_T")


@dataclass(frozen=True)
class Reference:
    """A Python object named as ``FILE.py:NAME`` or ``package.module:NAME``.

    Attributes:
        module: the absolute path of a ``.py`` file, or a dotted module name.
        name: the object's name in the module (dots reach attributes of attributes).
        search_dir: for a dotted module, the folder put first on ``sys.path`` while importing it
            (the config's folder), so a package next to the config imports like an installed one.
    """

    module: str
    name: str
    search_dir: Path

    @property
    def is_file(self) -> bool:
        """Whether :attr:`module` is a file path (else a dotted module name)."""
        return self.module.endswith(".py")

    def __str__(self) -> str:
        module = display_path(Path(self.module)) if self.is_file else self.module
        return f"{module}:{self.name}"


@dataclass(frozen=True)
class PlainFunction:
    """``function: FILE.py:NAME``: a callable used as it is."""

    ref: Reference

    def __str__(self) -> str:
        return str(self.ref)


@dataclass(frozen=True)
class ModelFunction:
    """``function: {target, init, weights}``: an ``nn.Module`` built by calling ``target(**init)``,
    its state dict (if ``weights``) loaded strictly from a safetensors file."""

    ref: Reference
    init: Mapping[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    weights_prefix: str | None = None

    def __str__(self) -> str:
        return str(self.ref)


@dataclass(frozen=True)
class ExportedFunction:
    """``function: {exported: archive.pt2}``: a ``torch.export`` archive."""

    archive: Path

    def __str__(self) -> str:
        return display_path(self.archive)


@dataclass(frozen=True)
class PretrainedFunction:
    """``function: {pretrained: FOLDER, class, init}``: a model folder as ``save_pretrained``
    writes it (``config.json`` and safetensors weights), loaded offline with
    ``CLASS.from_pretrained(FOLDER, **init)``.

    Attributes:
        folder: the model folder.
        cls: the class whose ``from_pretrained`` loads it, or ``None`` for
            ``transformers:AutoModel``.
        init: keyword arguments for ``from_pretrained``.
    """

    folder: Path
    cls: Reference | None = None
    init: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return display_path(self.folder)


FunctionSpec = PlainFunction | ModelFunction | ExportedFunction | PretrainedFunction

DISTRIBUTIONS: tuple[str, ...] = ("normal", "rademacher")
"""The distributions random directions are drawn from: standard normal, or ±1 with equal odds."""


@dataclass(frozen=True)
class RandomDirections:
    """``v`` or ``v_params`` given as ``{random: normal|rademacher, seed, match, k}``: a random
    direction for every candidate tensor (floating-point inputs, or parameters) that ``match``
    selects.

    Attributes:
        distribution: one of :data:`DISTRIBUTIONS`.
        seed: with a tensor's name, it decides that tensor's direction.
        match: ``fnmatch`` glob patterns on tensor names; ``None``: every candidate.
        k: with ``batched_v``, how many directions per tensor; ``None``: one.
    """

    distribution: str
    seed: int
    match: tuple[str, ...] | None = None
    k: int | None = None

    def as_json(self) -> dict[str, Any]:
        """The spec as the config writes it, for metadata and fingerprints."""
        spec: dict[str, Any] = {"random": self.distribution, "seed": self.seed}
        if self.match is not None:
            spec["match"] = list(self.match)
        if self.k is not None:
            spec["k"] = self.k
        return spec

    def spec_text(self) -> str:
        """:meth:`as_json` as compact JSON text, its keys in a fixed order."""
        return json.dumps(self.as_json(), separators=(",", ":"))

    def __str__(self) -> str:
        return self.spec_text()


Direction = Path | RandomDirections
"""A direction for inputs or parameters: a safetensors file of tangents, or random ones."""


@dataclass(frozen=True)
class Tolerance:
    """Bounds for comparing a tensor with its golden: ``|result - golden| <= atol + rtol *
    |golden|`` element-wise.

    Attributes:
        rtol, atol: the bounds; ``None`` where not set (a wider setting applies, and last the
            defaults of the tensor's dtype).
    """

    rtol: float | None = None
    atol: float | None = None


@dataclass(frozen=True)
class Resources:
    """``resources: {num_cpus, num_gpus, memory}``: what one run asks a Ray cluster for (the
    local executor ignores it).

    Attributes:
        num_cpus: CPUs (a fraction allowed); ``None``: 1. The run computes with as many torch
            threads (at least one).
        num_gpus: GPUs (a fraction shares one); ``None``: 1 for a CUDA run, else 0.
        memory: bytes of memory reserved (Ray's scheduling, not a cap); ``None``: none.
    """

    num_cpus: float | None = None
    num_gpus: float | None = None
    memory: int | None = None

    def as_json(self) -> dict[str, Any]:
        """The keys that are set, as the config writes them (memory in bytes)."""
        fields = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "memory": self.memory}
        return {key: value for key, value in fields.items() if value is not None}


@dataclass(frozen=True)
class RunSpec:
    """One run, validated, with every path absolute.

    Attributes:
        name: the run's label in summaries (the config file's stem unless the config sets it).
        function: what to differentiate.
        inputs: the safetensors file holding the point at which to differentiate.
        v: the direction for the inputs: a safetensors file of tangents for some of them (the
            others are constants), or random directions; ``None``: no input is differentiated
            (or, without ``v_params``, a single one-element input along 1).
        v_params: the direction for the model's parameters, by state-dict name: a safetensors
            file or random directions; ``None``: the parameters are constants.
        outputs: the dotted paths of the output leaves to keep (``logits``), or ``None``: all.
        save_v: also write the directions into the output (``v.NAME``, ``v_params.NAME``).
        output: where ``func_output`` and ``jvp`` are written.
        order: the order in which the tensors in ``inputs`` are passed, when their names do not
            match the function's parameters.
        strict, create_graph, method, batched_v, compile: passed to the engine.
        dtype: a floating-point dtype name to cast inputs and ``v`` to, or ``None`` to keep theirs.
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``.
        config: the config file the run came from (``None`` for a config-free command line).
        config_sha256: the sha256 of the config's bytes as they were read.
        expect: a safetensors file of reference results (a golden) to compare the results with,
            or to write with ``--update-golden``; ``None`` for no comparison.
        rtol, atol: the golden comparison's bounds for every tensor (``None``: not set).
        tolerances: bounds per tensor name (``jvp.1``) or kind (``jvp``), over ``rtol``/``atol``.
        check: ``"finite-differences"`` to check each JVP against central differences of the
            function in float64, or ``"none"``.
        fd_step: the finite-difference step h (x ± h·v), or ``None`` to choose it.
        fd_rtol: the finite-difference check's relative tolerance, or ``None`` for the run
            dtype's default.
        fail_on_nonfinite: fail the run when a result holds NaN or infinite values.
        seed: seed torch's random number generators with this before building the function and
            before computing, or ``None`` not to.
        deterministic: compute with ``torch.use_deterministic_algorithms(True)``.
        executor: where the runs execute: ``"local"`` (in this process) or ``"ray"`` (as Ray
            tasks); the same for every run of a command. Not a setting: results do not depend
            on it.
        resources: what the run asks a Ray cluster for; ``None``: the defaults.
    """

    name: str
    function: FunctionSpec
    inputs: Path
    output: Path
    v: Direction | None = None
    v_params: Direction | None = None
    outputs: tuple[str, ...] | None = None
    save_v: bool = False
    order: tuple[str, ...] | None = None
    strict: bool = False
    create_graph: bool = False
    method: str = "auto"
    compile: bool = False
    dtype: str | None = None
    device: str = "cpu"
    batched_v: bool = False
    config: Path | None = None
    config_sha256: str | None = None
    expect: Path | None = None
    rtol: float | None = None
    atol: float | None = None
    tolerances: Mapping[str, Tolerance] = field(default_factory=dict)
    check: str = "none"
    fd_step: float | None = None
    fd_rtol: float | None = None
    fail_on_nonfinite: bool = False
    seed: int | None = None
    deterministic: bool = False
    executor: str = "local"
    resources: Resources | None = None

    def settings(self) -> dict[str, Any]:
        """Everything that determines the run's result, as JSON-ready values (paths absolute).

        Recorded in the output's metadata, so a result says exactly how it was produced. The
        verification keys (``expect``, tolerances, ``check``, ...) are left out: they judge a
        result, and do not change it.
        """
        function: dict[str, Any]
        if isinstance(self.function, ExportedFunction):
            function = {"exported": str(self.function.archive)}
        elif isinstance(self.function, ModelFunction):
            function = {
                "target": _reference_text(self.function.ref),
                "init": dict(self.function.init),
                "weights": None if self.function.weights is None else str(self.function.weights),
            }
            if self.function.weights_prefix is not None:
                function["weights_prefix"] = self.function.weights_prefix
        elif isinstance(self.function, PretrainedFunction):
            function = {
                "pretrained": str(self.function.folder),
                "class": None if self.function.cls is None else _reference_text(self.function.cls),
                "init": dict(self.function.init),
            }
        else:
            function = {"target": _reference_text(self.function.ref)}
        settings = {
            "function": function,
            "inputs": str(self.inputs),
            "v": _direction_json(self.v),
            "order": None if self.order is None else list(self.order),
            "strict": self.strict,
            "create_graph": self.create_graph,
            "method": self.method,
            "dtype": self.dtype,
            "device": self.device,
            "batched_v": self.batched_v,
            "seed": self.seed,
            "deterministic": self.deterministic,
        }
        # Keys added later are recorded only when set, so that results written before them
        # keep their fingerprint.
        if self.v_params is not None:
            settings["v_params"] = _direction_json(self.v_params)
        if self.outputs is not None:
            settings["outputs"] = list(self.outputs)
        if self.save_v:
            settings["save_v"] = True
        if self.compile:
            settings["compile"] = True
        return settings

    def tolerance(self, key: str) -> Tolerance:
        """The golden comparison's bounds for the output file's tensor ``key`` (e.g. ``jvp.1``):
        each bound from ``tolerances[key]``, else ``tolerances`` of its kind (``jvp``), else
        ``rtol`` / ``atol``; ``None`` where none of them sets it."""
        kind = key.split(".")[0]
        candidates = (
            self.tolerances.get(key, Tolerance()),
            self.tolerances.get(kind, Tolerance()),
            Tolerance(self.rtol, self.atol),
        )
        return Tolerance(
            next((c.rtol for c in candidates if c.rtol is not None), None),
            next((c.atol for c in candidates if c.atol is not None), None),
        )

    def read_files(self) -> dict[str, Path]:
        """The files the run reads, by the key that names them (``inputs``, ``v``, ``v_params``,
        ``function`` for a ``.py`` file, ``function.weights``, ``function.exported``,
        ``function.pretrained`` (a folder), ``expect``)."""
        files = {
            "inputs": self.inputs,
            "v": self.v if isinstance(self.v, Path) else None,
            "v_params": self.v_params if isinstance(self.v_params, Path) else None,
            "expect": self.expect,
        }
        if isinstance(self.function, ExportedFunction):
            files["function.exported"] = self.function.archive
        elif isinstance(self.function, PretrainedFunction):
            files["function.pretrained"] = self.function.folder
            if self.function.cls is not None and self.function.cls.is_file:
                files["function.class"] = Path(self.function.cls.module)
        else:
            if self.function.ref.is_file:
                files["function"] = Path(self.function.ref.module)
            if isinstance(self.function, ModelFunction):
                files["function.weights"] = self.function.weights
        return {role: path for role, path in files.items() if path is not None}


def _reference_text(ref: Reference) -> str:
    return f"{ref.module}:{ref.name}"


def _direction_json(direction: Direction | None) -> Any:
    if isinstance(direction, RandomDirections):
        return direction.as_json()
    return None if direction is None else str(direction)


@dataclass(frozen=True)
class Sweep:
    """The runs a config describes, validated, in a stable order.

    Attributes:
        runs: every run: each ``runs`` entry in order (or the top level alone), crossed with
            every combination of the swept values, the last swept key varying fastest.
        is_sweep: whether the config has ``sweep`` or ``runs``, rather than describing one run.
    """

    runs: tuple[RunSpec, ...]
    is_sweep: bool


@dataclass(frozen=True)
class Shard:
    """``--shard K/N``: the K-th of N slices of a sweep, which together hold every run once.

    Runs are dealt round-robin in the sweep's order: run ``i`` (from 0) belongs to shard
    ``i % N + 1``, so shards differ in size by at most one run, whatever the machine.

    Attributes:
        index: K, from 1 to ``count``.
        count: N.
    """

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """Read ``K/N``.

        Raises:
            ConfigError: ``text`` is not two whole numbers ``K/N`` with ``1 <= K <= N``.
        """
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if match is None or not 1 <= int(match[1]) <= int(match[2]):
            raise ConfigError(
                f"--shard {text}: expected K/N with 1 <= K <= N, e.g. --shard 2/4 for the second "
                "of four slices."
            )
        return cls(int(match[1]), int(match[2]))

    def select(self, runs: Sequence[_T]) -> tuple[_T, ...]:
        """This shard's runs, in their order."""
        return tuple(runs[self.index - 1 :: self.count])

"""The value types a config is validated into: :class:`RunSpec` (one run, every path absolute),
the function it differentiates (:data:`FunctionSpec`), :class:`Sweep` and :class:`Shard`.

They are frozen dataclasses of plain values (paths, strings, numbers), so a run can be pickled and
shipped to another process as it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from jvpcli.errors import ConfigError, display_path

__all__ = [
    "ExportedFunction",
    "FunctionSpec",
    "ModelFunction",
    "PlainFunction",
    "Reference",
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

    def __str__(self) -> str:
        return str(self.ref)


@dataclass(frozen=True)
class ExportedFunction:
    """``function: {exported: archive.pt2}``: a ``torch.export`` archive."""

    archive: Path

    def __str__(self) -> str:
        return display_path(self.archive)


FunctionSpec = PlainFunction | ModelFunction | ExportedFunction


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
class RunSpec:
    """One run, validated, with every path absolute.

    Attributes:
        name: the run's label in summaries (the config file's stem unless the config sets it).
        function: what to differentiate.
        inputs: the safetensors file holding the point at which to differentiate.
        v: the safetensors file holding the direction, with the same tensor names as ``inputs``;
            ``None`` only for a single one-element input.
        output: where ``func_output`` and ``jvp`` are written.
        order: the order in which the tensors in ``inputs`` are passed, when their names do not
            match the function's parameters.
        strict, create_graph, method, batched_v: passed to the engine.
        dtype: a floating-point dtype name to cast inputs and ``v`` to, or ``None`` to keep theirs.
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``.
        config: the config file the run came from (``None`` for a config-free command line).
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
    """

    name: str
    function: FunctionSpec
    inputs: Path
    output: Path
    v: Path | None = None
    order: tuple[str, ...] | None = None
    strict: bool = False
    create_graph: bool = False
    method: str = "auto"
    dtype: str | None = None
    device: str = "cpu"
    batched_v: bool = False
    config: Path | None = None
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
        else:
            function = {"target": _reference_text(self.function.ref)}
        return {
            "function": function,
            "inputs": str(self.inputs),
            "v": None if self.v is None else str(self.v),
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
        """The files the run reads, by the key that names them (``inputs``, ``v``, ``function``
        for a ``.py`` file, ``function.weights``, ``function.exported``, ``expect``)."""
        files = {"inputs": self.inputs, "v": self.v, "expect": self.expect}
        if isinstance(self.function, ExportedFunction):
            files["function.exported"] = self.function.archive
        else:
            if self.function.ref.is_file:
                files["function"] = Path(self.function.ref.module)
            if isinstance(self.function, ModelFunction):
                files["function.weights"] = self.function.weights
        return {role: path for role, path in files.items() if path is not None}


def _reference_text(ref: Reference) -> str:
    return f"{ref.module}:{ref.name}"


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

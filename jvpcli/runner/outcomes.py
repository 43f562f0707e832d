"""What a run produces, as plain records for :mod:`jvpcli.report` and :mod:`jvpcli.junit` to
render: :class:`RunResult`, :class:`RunFailure`, :class:`BenchResult`, :class:`InspectedFile`.

Records hold numbers and strings only (statistics, not tensors), so they are cheap to keep for a
whole sweep and can be sent back from another process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from jvpcli.benchmark import Timing
from jvpcli.config import RunSpec
from jvpcli.engine import Fallback
from jvpcli.errors import JvpcliError
from jvpcli.tensors import TensorFileHeader, TensorStats, tensor_stats
from jvpcli.verify import Check

__all__ = [
    "BenchResult",
    "InspectedFile",
    "OutputRecord",
    "RunFailure",
    "RunResult",
    "output_keys",
    "output_records",
]


@dataclass(frozen=True)
class OutputRecord:
    """One output of the function, and its tangent, as written to the output file.

    Attributes:
        path: where it sits in what the function returned, dotted (``0``, ``logits``,
            ``hidden_states.2``); ``""`` for a single Tensor.
        shape: the output's shape.
        dtype: of both tensors (a tangent has its output's dtype).
        jvp_shape: the tangent's shape: ``shape``, or ``(K, *shape)`` with ``batched_v``.
        func_output, jvp: statistics of the output and of its tangent J·v.
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    func_output: TensorStats
    jvp: TensorStats
    jvp_shape: tuple[int, ...]

    @property
    def keys(self) -> tuple[str, str]:
        """The names of the output and its tangent in the output file."""
        return output_keys(self.path)

    @property
    def index(self) -> int | None:
        """Its position in the tuple the function returned, or ``None`` for another output."""
        return int(self.path) if self.path.isdigit() else None


@dataclass(frozen=True)
class RunResult:
    """What a successful run did (or, when ``skipped``, what the run that wrote its output did).

    Attributes:
        spec: the run.
        device: the device it computed on.
        method_used: "forward", "forward (compiled)" or "double-backward".
        fallbacks: the engine's attempts that failed before, in order.
        description: the engine's one-line account of the method, e.g. "forward".
        seconds: the engine's wall time.
        total_seconds: the run's wall time: loading, computing and writing (or, when skipped,
            checking the existing output).
        carried_graph: whether the results carried an autograd graph (saved detached).
        outputs: one record per output of the function.
        skipped: whether the output was already there, from the same run (``resume``), and
            nothing was computed.
        checks: the checks of the results, in the order they ran: ``finite`` always, then
            ``finite-differences`` and ``golden`` when the run asks for them. (A run whose
            results fail one is a :class:`RunFailure` holding this result.)
        roles: each input's name and role, ``"differentiated"`` or ``"constant"``.
        params: the parameters (state-dict names) differentiated along ``v_params``.
        notes: what the user should know: output leaves dropped (not tensors), weights a
            pretrained folder lacks.
        compile_seconds: with ``compile``, how much of ``seconds`` went to tracing and
            compiling (0.0 when a function compiled by an earlier run was reused); ``None`` when
            nothing compiled computed the result.
    """

    spec: RunSpec
    device: str
    method_used: str
    fallbacks: tuple[Fallback, ...]
    description: str
    seconds: float
    total_seconds: float
    carried_graph: bool
    outputs: tuple[OutputRecord, ...]
    skipped: bool = False
    checks: tuple[Check, ...] = ()
    roles: tuple[tuple[str, str], ...] = ()
    params: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    compile_seconds: float | None = None

    @property
    def status(self) -> str:
        """``"ok"``, or ``"skipped"``."""
        return "skipped" if self.skipped else "ok"


@dataclass(frozen=True)
class RunFailure:
    """A run that failed while computing or writing, or whose results failed a check.

    Attributes:
        spec: the run.
        error: why, as the user is told.
        total_seconds: how long it ran before failing.
        result: for a run whose results failed a check, its result (outputs and checks);
            ``None`` for one that failed before it had results.
    """

    spec: RunSpec
    error: JvpcliError
    total_seconds: float
    result: RunResult | None = None

    @property
    def status(self) -> str:
        """``"failed"``."""
        return "failed"


RunOutcome = RunResult | RunFailure


@dataclass(frozen=True)
class InspectedFile:
    """A safetensors file's header, and statistics of each of its tensors."""

    header: TensorFileHeader
    stats: Mapping[str, TensorStats]


@dataclass(frozen=True)
class BenchResult:
    """What ``jvpcli bench`` measured for one run.

    Attributes:
        spec: the run.
        timings: candidate name → its timing (:mod:`jvpcli.benchmark`), the forward pass first.
    """

    spec: RunSpec
    timings: Mapping[str, Timing]


def output_keys(path: str | int | None) -> tuple[str, str]:
    """The output file's names for an output and its tangent: ``func_output`` and ``jvp`` for a
    single Tensor (path ``""`` or ``None``), ``func_output.PATH`` and ``jvp.PATH`` for a leaf of
    a tuple (``jvp.0``) or of any nested output (``jvp.logits``, ``jvp.hidden_states.2``)."""
    suffix = "" if path is None or path == "" else f".{path}"
    return f"func_output{suffix}", f"jvp{suffix}"


def output_records(
    tensors: Mapping[str, torch.Tensor], paths: Sequence[str]
) -> tuple[OutputRecord, ...]:
    """Records of the outputs at ``paths`` and their tangents, keyed in ``tensors`` as
    :func:`output_keys` says."""
    records = []
    for path in paths:
        output_key, jvp_key = output_keys(path)
        output, tangent = tensors[output_key], tensors[jvp_key]
        records.append(
            OutputRecord(
                path=path,
                shape=tuple(output.shape),
                dtype=str(output.dtype).removeprefix("torch."),
                func_output=tensor_stats(output),
                jvp=tensor_stats(tangent),
                jvp_shape=tuple(tangent.shape),
            )
        )
    return tuple(records)

"""Runs: check a :class:`~jvpcli.config.RunSpec` against its files, compute, write, summarize.

:func:`check` does everything that can fail before computing (files, names, shapes, dtypes, the
function, the device) and raises :class:`~jvpcli.errors.UsageError` subclasses; :func:`execute`
computes and writes, raising :class:`~jvpcli.errors.ComputeError` when the computation fails;
:func:`run` does both. Results come back as plain records for :mod:`jvpcli.report` to render.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from jvpcli import __version__
from jvpcli.config import RunSpec
from jvpcli.engine import Fallback, JvpInfo, jvp_with_info
from jvpcli.errors import ComputeError, ConfigError, JvpcliError, display_path, user_location
from jvpcli.loading import LoadedFunction, load_function
from jvpcli.tensors import (
    TensorFileHeader,
    TensorStats,
    bind_inputs,
    check_differentiable,
    check_tangents,
    read_header,
    read_tensors,
    sha256_file,
    tensor_stats,
    write_tensors,
)

__all__ = [
    "CheckedRun",
    "InspectedFile",
    "OutputRecord",
    "RunResult",
    "check",
    "execute",
    "inspect_file",
    "output_keys",
    "run",
]


@dataclass(frozen=True)
class CheckedRun:
    """A run whose config, files and function have been checked: ready to compute.

    Attributes:
        spec: the run.
        function: the loaded function.
        inputs: the header of the inputs file.
        v: the header of the v file, or ``None``.
        order: the input tensor names, in the order they are passed to the function.
        device: the device it computes on (``auto`` resolved).
    """

    spec: RunSpec
    function: LoadedFunction
    inputs: TensorFileHeader
    v: TensorFileHeader | None
    order: tuple[str, ...]
    device: torch.device


@dataclass(frozen=True)
class OutputRecord:
    """One output of the function, and its tangent, as written to the output file.

    Attributes:
        index: its position in the tuple the function returned, or ``None`` for a single Tensor.
        shape, dtype: of both tensors (a tangent has its output's shape and dtype).
        func_output, jvp: statistics of the output and of its tangent J·v.
    """

    index: int | None
    shape: tuple[int, ...]
    dtype: str
    func_output: TensorStats
    jvp: TensorStats

    @property
    def keys(self) -> tuple[str, str]:
        """The names of the output and its tangent in the output file."""
        return output_keys(self.index)


@dataclass(frozen=True)
class RunResult:
    """What a successful run did.

    Attributes:
        spec: the run.
        device: the device it computed on.
        method_used: "forward" or "double-backward".
        fallbacks: the engine's attempts that failed before, in order.
        description: the engine's one-line account of the method, e.g. "forward".
        seconds: the engine's wall time.
        total_seconds: the run's wall time: loading, computing and writing.
        carried_graph: whether the results carried an autograd graph (saved detached).
        outputs: one record per output of the function.
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


@dataclass(frozen=True)
class InspectedFile:
    """A safetensors file's header, and statistics of each of its tensors."""

    header: TensorFileHeader
    stats: Mapping[str, TensorStats]


def output_keys(index: int | None) -> tuple[str, str]:
    """The output file's names for an output and its tangent: ``func_output`` and ``jvp`` for a
    single Tensor, ``func_output.N`` and ``jvp.N`` for item N of a tuple."""
    suffix = "" if index is None else f".{index}"
    return f"func_output{suffix}", f"jvp{suffix}"


def check(spec: RunSpec) -> CheckedRun:
    """Check everything about a run that can be checked without computing.

    Reads the headers of the inputs and v files (not their data), loads the function, binds the
    input tensors to its parameters and resolves the device.

    Raises:
        UsageError: a file is missing or corrupt; tensors are integer, misnamed or do not fit each
            other or the function; the function cannot be loaded; the device is not available;
            the output is a folder.
    """
    inputs = read_header(spec.inputs, "inputs")
    v = None if spec.v is None else read_header(spec.v, "v")
    check_differentiable(inputs, spec.dtype)
    check_tangents(inputs, v, spec.dtype)
    if spec.output.is_dir():
        raise ConfigError(f"output {display_path(spec.output)} is a folder; name a file.")
    device = _device(spec.device)
    function = load_function(spec.function)
    order = bind_inputs(inputs, function.parameters, function.required, spec.order, function.name)
    return CheckedRun(spec, function, inputs, v, order, device)


def execute(checked: CheckedRun, started: float | None = None) -> RunResult:
    """Compute a checked run and write its output file.

    Args:
        checked: what :func:`check` returned.
        started: when the run started (``time.perf_counter()``), for the total time; default now.

    Returns:
        The run's record.

    Raises:
        TensorFileError: a tensor file changed since it was checked.
        ComputeError: the function or the engine raised; the message names where in the user's
            code, when it passed through it.
        JvpcliError: the output file cannot be written.
    """
    started = time.perf_counter() if started is None else started
    spec, function = checked.spec, checked.function
    dtype = None if spec.dtype is None else getattr(torch, spec.dtype)
    if isinstance(function.func, torch.nn.Module):
        function.func.to(device=checked.device, dtype=dtype)
    inputs = _load(checked.inputs, checked.order, checked.device, dtype)
    v = None if checked.v is None else _load(checked.v, checked.order, checked.device, dtype)
    try:
        result = jvp_with_info(
            function.func,
            inputs[0] if len(inputs) == 1 else inputs,
            None if v is None else (v[0] if len(v) == 1 else v),
            spec.create_graph,
            spec.strict,
            method=spec.method,
        )
    except Exception as error:
        raise ComputeError(
            f"computing the JVP of {function.name} failed: {type(error).__name__}: {error}",
            location=user_location(error, function.source_files),
        ) from error
    is_tuple = isinstance(result.func_output, tuple)
    outputs = result.func_output if is_tuple else (result.func_output,)
    tangents = result.jvp if is_tuple else (result.jvp,)
    tensors: dict[str, torch.Tensor] = {}
    records = []
    for position, (output, tangent) in enumerate(zip(outputs, tangents, strict=True)):
        index = position if is_tuple else None
        output_key, jvp_key = output_keys(index)
        tensors[output_key], tensors[jvp_key] = output, tangent
        records.append(
            OutputRecord(
                index,
                tuple(output.shape),
                str(output.dtype).removeprefix("torch."),
                tensor_stats(output),
                tensor_stats(tangent),
            )
        )
    try:
        write_tensors(spec.output, tensors, _metadata(checked, result.info))
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise JvpcliError(
            f"cannot write the output {display_path(spec.output)}: {reason}."
        ) from error
    return RunResult(
        spec=spec,
        device=str(checked.device),
        method_used=result.info.method_used,
        fallbacks=result.info.fallbacks,
        description=str(result.info),
        seconds=result.info.seconds,
        total_seconds=time.perf_counter() - started,
        carried_graph=any(t.requires_grad for t in (*outputs, *tangents)),
        outputs=tuple(records),
    )


def run(spec: RunSpec) -> RunResult:
    """Check, compute and write one run: :func:`check` then :func:`execute`.

    Raises:
        UsageError: from :func:`check`, before anything is computed or written.
        JvpcliError: from :func:`execute`.
    """
    started = time.perf_counter()
    return execute(check(spec), started)


def inspect_file(path: Path) -> InspectedFile:
    """Read a safetensors file and compute statistics of each tensor.

    Raises:
        TensorFileError: the file is missing or corrupt.
    """
    header = read_header(path, "safetensors")
    tensors = read_tensors(header)
    return InspectedFile(header, {name: tensor_stats(t) for name, t in tensors.items()})


def _device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(
                f"device {name!r} is not available: this machine's torch {torch.__version__} "
                f"sees {count} CUDA device{'s' if count != 1 else ''}. Use device: cpu or auto."
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} is not available here. Use device: cpu or auto.")
    return device


def _load(
    header: TensorFileHeader,
    order: tuple[str, ...],
    device: torch.device,
    dtype: torch.dtype | None,
) -> tuple[torch.Tensor, ...]:
    tensors = read_tensors(header)
    return tuple(tensors[name].to(device=device, dtype=dtype) for name in order)


def _metadata(checked: CheckedRun, info: JvpInfo) -> dict[str, str]:
    spec = checked.spec
    files: dict[str, Path | None] = {
        "config": spec.config,
        "inputs": spec.inputs,
        "v": spec.v,
        **checked.function.files,
    }
    metadata = {
        "format": "pt",
        "jvpcli.version": __version__,
        "torch.version": torch.__version__,
        "jvpcli.function": str(spec.function),
        "jvpcli.method": spec.method,
        "jvpcli.method_used": info.method_used,
        "jvpcli.fallbacks": json.dumps(
            [{"method": f.method, "reason": f.reason, "remedy": f.remedy} for f in info.fallbacks]
        ),
        "jvpcli.seconds": f"{info.seconds:.6f}",
        "jvpcli.strict": json.dumps(spec.strict),
        "jvpcli.create_graph": json.dumps(spec.create_graph),
        "jvpcli.device": str(checked.device),
        "jvpcli.settings": json.dumps(spec.settings(), sort_keys=True),
    }
    if spec.dtype is not None:
        metadata["jvpcli.dtype"] = spec.dtype
    for role, path in files.items():
        if path is not None:
            metadata[f"jvpcli.sha256.{role}"] = sha256_file(path)
    return metadata

"""Planning: every run of a command checked against its files before any computes.

:func:`check_run` does everything that can fail before computing (files, names, shapes, dtypes,
the function, the device) and returns a :class:`CheckedRun`: a picklable description of the run
that :func:`~jvpcli.runner.execution.execute_run` needs, with a per-process
:class:`~jvpcli.runner.cache.WorkerCache`, to compute it anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from jvpcli.config import RunSpec
from jvpcli.errors import ConfigError, JvpcliError, TensorFileError, display_path
from jvpcli.runner.cache import WorkerCache
from jvpcli.tensors import (
    TensorFileHeader,
    bind_inputs,
    check_differentiable,
    check_tangents,
)

__all__ = ["CheckedRun", "check_run", "golden_header", "plan_runs"]


@dataclass(frozen=True)
class CheckedRun:
    """A run whose config, files and function have been checked: ready to compute.

    Plain values only, so that it can be sent to another process.

    Attributes:
        spec: the run.
        function_name: how messages name its function.
        parameters: the function's positional parameter names, or ``None`` when unknown.
        inputs: the header of the inputs file.
        v: the header of the v file, or ``None``.
        order: the input tensor names, in the order they are passed to the function.
        device: the device it computes on (``auto`` resolved), e.g. ``"cpu"``.
        update_golden: write the results to the run's ``expect`` file (when its other checks
            pass) instead of comparing them with it.
    """

    spec: RunSpec
    function_name: str
    parameters: tuple[str, ...] | None
    inputs: TensorFileHeader
    v: TensorFileHeader | None
    order: tuple[str, ...]
    device: str
    update_golden: bool = False


def check_run(spec: RunSpec, cache: WorkerCache, *, update_golden: bool = False) -> CheckedRun:
    """Check everything about a run that can be checked without computing.

    Reads the headers of the inputs, v and golden files (not their data), loads the function
    (into ``cache``), binds the input tensors to its parameters and resolves the device.

    Raises:
        UsageError: a file is missing or corrupt (the golden too, unless ``update_golden``);
            tensors are integer, misnamed or do not fit each other or the function; the
            function cannot be loaded; the device is not available; the output or the golden
            is a folder.
    """
    inputs = cache.files.header(spec.inputs, "inputs")
    v = None if spec.v is None else cache.files.header(spec.v, "v")
    check_differentiable(inputs, spec.dtype)
    check_tangents(inputs, v, spec.dtype, spec.batched_v)
    for role, path in (("output", spec.output), ("expect", spec.expect)):
        if path is not None and path.is_dir():
            raise ConfigError(f"{role} {display_path(path)} is a folder; name a file.")
    if spec.expect is not None and not update_golden:
        golden_header(cache, spec.expect)
    device = cache.device(spec.device)
    function = cache.function(spec)
    order = bind_inputs(inputs, function.parameters, function.required, spec.order, function.name)
    return CheckedRun(
        spec, function.name, function.parameters, inputs, v, order, str(device), update_golden
    )


def plan_runs(
    specs: Sequence[RunSpec],
    cache: WorkerCache,
    *,
    update_golden: bool = False,
    name_runs: bool = False,
) -> tuple[CheckedRun, ...]:
    """:func:`check_run` every run, before any computes.

    Args:
        specs: the runs.
        cache: where the functions and headers checked are kept, for executing locally.
        update_golden: as for :func:`check_run`.
        name_runs: start each error's message with the name of the run at fault.

    Raises:
        UsageError: from :func:`check_run`, for the first unusable run.
    """
    checked = []
    for spec in specs:
        try:
            checked.append(check_run(spec, cache, update_golden=update_golden))
        except JvpcliError as error:
            if not name_runs:
                raise
            raise type(error)(
                f"run {spec.name!r}: {error.message}", location=error.location
            ) from error
    return tuple(checked)


def golden_header(cache: WorkerCache, path: Path) -> TensorFileHeader:
    """The header of a run's golden, with a hint to write it when it does not exist.

    Raises:
        TensorFileError: the golden is missing or corrupt.
    """
    try:
        return cache.files.header(path, "expect")
    except TensorFileError as error:
        if path.exists():
            raise
        raise TensorFileError(
            f"{error.message} Write it with jvpcli compute CONFIG --update-golden."
        ) from None

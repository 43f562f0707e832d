"""Planning: every run of a command checked against its files before any computes.

:func:`check_run` does everything that can fail before computing (files, names, shapes, dtypes,
the function, the device) and returns a :class:`CheckedRun`: a picklable description of the run
that :func:`~jvpcli.runner.execution.execute_run` needs, with a per-process
:class:`~jvpcli.runner.cache.WorkerCache`, to compute it anywhere.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from jvpcli.config import RandomDirections, RunSpec
from jvpcli.containment import contained, describe, failures
from jvpcli.directions import select
from jvpcli.errors import (
    ConfigError,
    FunctionLoadError,
    JvpcliError,
    OverwriteError,
    TensorFileError,
    display_path,
    format_shape,
    user_location,
)
from jvpcli.files import file_identity
from jvpcli.loading import LoadedFunction
from jvpcli.runner.cache import WorkerCache
from jvpcli.tensors import TensorFileHeader, bind_inputs, check_tangents, is_floating

__all__ = [
    "CheckedRun",
    "check_run",
    "differentiable_parameters",
    "golden_header",
    "plan_runs",
]


@dataclass(frozen=True)
class CheckedRun:
    """A run whose config, files and function have been checked: ready to compute.

    Plain values only, so that it can be sent to another process.

    Attributes:
        spec: the run.
        function_name: how messages name its function.
        parameters: the function's positional parameter names, or ``None`` when unknown.
        inputs: the header of the inputs file.
        v: the header of the v file, or ``None`` (omitted, or random directions).
        v_params: the header of the v_params file, or ``None``.
        order: the input tensors passed positionally, in order.
        keyword: the input tensors passed by keyword.
        differentiated: the inputs that get a tangent; every other input is a constant.
        params: the parameters (state-dict names) that get a tangent.
        device: the device it computes on (``auto`` resolved), e.g. ``"cpu"``.
        update_golden: write the results to the run's ``expect`` file (when its other checks
            pass) instead of comparing them with it.
    """

    spec: RunSpec
    function_name: str
    parameters: tuple[str, ...] | None
    inputs: TensorFileHeader
    v: TensorFileHeader | None
    v_params: TensorFileHeader | None
    order: tuple[str, ...]
    keyword: tuple[str, ...]
    differentiated: tuple[str, ...]
    params: tuple[str, ...]
    device: str
    update_golden: bool = False

    def role(self, name: str) -> str:
        """``"differentiated"`` or ``"constant"``: what the run does with input ``name``."""
        return "differentiated" if name in self.differentiated else "constant"


def check_run(spec: RunSpec, cache: WorkerCache, *, update_golden: bool = False) -> CheckedRun:
    """Check everything about a run that can be checked without computing.

    Reads the headers of the inputs, v, v_params and golden files (not their data), loads the
    function (into ``cache``), binds the input tensors to its parameters, decides which inputs
    and parameters get a tangent, and resolves the device.

    Raises:
        UsageError: a file is missing or corrupt (the golden too, unless ``update_golden``);
            tensors are misnamed or do not fit each other or the function; a tangent is given
            for an integer input or an unknown parameter; nothing is differentiated; the
            function cannot be loaded; the device is not available; the output or the golden
            is a folder.
    """
    inputs = cache.files.header(spec.inputs, "inputs")
    v = cache.files.header(spec.v, "v") if isinstance(spec.v, Path) else None
    v_params = (
        cache.files.header(spec.v_params, "v_params") if isinstance(spec.v_params, Path) else None
    )
    if isinstance(spec.v, RandomDirections):
        floating = [n for n, info in inputs.tensors.items() if is_floating(info.dtype)]
        differentiated = _select(spec.v, floating, "v", "floating-point input")
    else:
        differentiated = check_tangents(
            inputs, v, spec.dtype, spec.batched_v, parameters_too=spec.v_params is not None
        )
    check_writable(spec.output, "output")
    if update_golden and spec.expect is not None:
        check_writable(spec.expect, "expect")
    for role, path in (("output", spec.output), ("expect", spec.expect)):
        if path is not None and path.is_dir():
            raise ConfigError(f"{role} {display_path(path)} is a folder; name a file.")
    if spec.expect is not None and not update_golden:
        golden_header(cache, spec.expect)
    device = cache.device(spec.device)
    function = cache.function(spec)
    binding = bind_inputs(
        inputs,
        function.parameters,
        function.required,
        spec.order,
        function.name,
        keywords=function.keywords,
        var_keyword=function.var_keyword,
    )
    params = _check_params(spec, function, v_params)
    if not differentiated and not params:
        raise ConfigError(
            f"run {spec.name!r} differentiates nothing: v gives no tangent for any input and "
            "v_params none for any parameter."
        )
    _check_directions_agree(spec, v, v_params, differentiated, params)
    return CheckedRun(
        spec,
        function.name,
        function.parameters,
        inputs,
        v,
        v_params,
        binding.positional,
        binding.keyword,
        differentiated,
        params,
        str(device),
        update_golden,
    )


def differentiable_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state-dict entries of ``model`` that can carry a tangent (floating point), by name."""
    return {
        name: tensor
        for name, tensor in model.state_dict(keep_vars=True).items()
        if tensor.is_floating_point() or tensor.is_complex()
    }


def _check_params(
    spec: RunSpec, function: LoadedFunction, v_params: TensorFileHeader | None
) -> tuple[str, ...]:
    """The parameters that get a tangent, checked against the model."""
    if spec.v_params is None:
        return ()
    if not isinstance(function.func, torch.nn.Module):
        raise ConfigError(
            f"v_params gives tangents for a model's parameters, but {function.name} is a "
            f"{type(function.func).__name__}, not an nn.Module. Name a model: function: "
            "{target, init, weights}, {pretrained: FOLDER}, or a module-level nn.Module."
        )
    entries = differentiable_parameters(function.func)
    if isinstance(spec.v_params, RandomDirections):
        names = [n for n, _ in function.func.named_parameters()]
        return _select(spec.v_params, names, "v_params", "parameter")
    assert v_params is not None
    unknown = [n for n in v_params.tensors if n not in entries]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(entries), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        shown = ", ".join(repr(n) for n in list(entries)[:6])
        more = f" and {len(entries) - 6} more" if len(entries) > 6 else ""
        raise TensorFileError(
            f"{v_params.shown} holds {unknown[0]!r}, which is not a floating-point parameter of "
            f"{function.name}.{hint} Its state-dict names are {shown}{more}."
        )
    if not v_params.tensors:
        raise TensorFileError(f"{v_params.shown} holds no tensors.")
    for name, info in v_params.tensors.items():
        entry = entries[name]
        expected = tuple(entry.shape)
        shape = info.shape[1:] if spec.batched_v else info.shape
        if shape != expected or (spec.batched_v and info.shape[:1] in ((), (0,))):
            wanted = f"(K, *{format_shape(expected)})" if spec.batched_v else format_shape(expected)
            raise TensorFileError(
                f"{v_params.shown}: tensor {name!r} has shape {format_shape(info.shape)}, but "
                f"the parameter {name!r} needs {wanted}."
            )
        dtype = str(entry.dtype).removeprefix("torch.")
        if spec.dtype is None and info.dtype != dtype:
            raise TensorFileError(
                f"{v_params.shown}: tensor {name!r} is {info.dtype}, but the parameter {name!r} "
                f"is {dtype}. Store them with one dtype, or set dtype to cast both."
            )
    return tuple(n for n in entries if n in v_params.tensors)


def _select(spec: RandomDirections, candidates: Sequence[str], key: str, what: str) -> tuple:
    if not candidates:
        raise ConfigError(f"{key}: random directions need a {what}, and there is none.")
    try:
        return select(spec, candidates)
    except ValueError as error:
        raise ConfigError(f"{key}.match: {error}") from None


def _check_directions_agree(
    spec: RunSpec,
    v: TensorFileHeader | None,
    v_params: TensorFileHeader | None,
    differentiated: Sequence[str],
    params: Sequence[str],
) -> None:
    """With batched_v, every tangent holds the same number K of directions."""
    if not spec.batched_v:
        return
    counts: dict[str, int] = {}
    for key, direction, header, names in (
        ("v", spec.v, v, differentiated),
        ("v_params", spec.v_params, v_params, params),
    ):
        if isinstance(direction, RandomDirections) and direction.k is not None:
            counts[key] = direction.k
        elif header is not None and names:
            counts[key] = header.tensors[names[0]].shape[0]
    if len(set(counts.values())) > 1:
        raise ConfigError(
            f"with batched_v, v holds {counts['v']} directions but v_params {counts['v_params']}: "
            "the JVP is taken along both together, so they must hold the same number K."
        )


def plan_runs(
    specs: Sequence[RunSpec],
    cache: WorkerCache,
    *,
    update_golden: bool = False,
    name_runs: bool = False,
    writes: Mapping[str, Path] | None = None,
) -> tuple[CheckedRun, ...]:
    """:func:`check_run` every run, before any computes, and check that nothing the command
    writes is a file it reads.

    Args:
        specs: the runs.
        cache: where the functions and headers checked are kept, for executing locally.
        update_golden: as for :func:`check_run`.
        name_runs: start each error's message with the name of the run at fault.
        writes: other files the command writes, by the option that names them
            (``{"--junit-xml": path}``).

    Raises:
        UsageError: from :func:`check_run`, for the first unusable run; a file written is one
            read (the same file under another name too: a symbolic or hard link).
    """
    _reject_missing(specs, name_runs)
    checked = []
    for spec in specs:
        try:
            with contained():
                checked.append(check_run(spec, cache, update_golden=update_golden))
        except JvpcliError as error:
            if not name_runs:
                raise
            raise type(error)(
                f"run {spec.name!r}: {error.message}", location=error.location
            ) from error
        except BaseException as error:
            if not failures(error):
                raise
            # The model's own code (state_dict(), named_parameters()) raised or exited.
            prefix = f"run {spec.name!r}: " if name_runs else ""
            raise FunctionLoadError(
                f"{prefix}checking {spec.function} failed: {describe(error)}",
                location=user_location(error, ()),
            ) from error
    _reject_overwrites(checked, cache, writes or {}, update_golden)
    return tuple(checked)


def _reject_missing(specs: Sequence[RunSpec], name_runs: bool) -> None:
    """Name every file the runs read that does not exist, all at once (a golden, which
    ``--update-golden`` writes, is checked on its own)."""
    missing: dict[Path, tuple[str, RunSpec]] = {}
    for spec in specs:
        for role, path in spec.read_files().items():
            if role == "expect":
                continue
            try:
                present = path.exists() or path.is_symlink()
            except OSError as error:  # a name too long, say: it cannot be read either
                raise ConfigError(
                    f"cannot read {role} file {display_path(path)}: {error.strerror or error}."
                ) from None
            if not present:
                missing.setdefault(path, (role, spec))
    if not missing:
        return
    entries = [
        (f"run {spec.name!r}: " if name_runs else "") + f"{role} file {display_path(path)}"
        for path, (role, spec) in missing.items()
    ]
    relative = {
        spec.config.parent
        for path, (_, spec) in missing.items()
        if spec.config is not None and path.is_relative_to(spec.config.parent)
    }
    hint = ""
    if relative:
        folders = ", ".join(sorted(display_path(folder) or "." for folder in relative))
        hint = (
            f" Relative paths in a config resolve against the config's folder ({folders}), not "
            "the current directory."
        )
    if len(entries) == 1:
        raise ConfigError(f"{entries[0]} does not exist.{hint}")
    raise ConfigError(f"{len(entries)} files do not exist: {'; '.join(entries)}.{hint}")


def _reject_overwrites(
    runs: Sequence[CheckedRun],
    cache: WorkerCache,
    extra: Mapping[str, Path],
    update_golden: bool,
) -> None:
    """Refuse a command that would write over a file it reads: compared as files (resolved, and
    by device and inode where they exist), so that a symbolic or hard link to an input counts."""
    reads: dict[tuple[object, ...], tuple[str, Path]] = {}
    for run in runs:
        spec = run.spec
        named = dict(spec.read_files())
        if update_golden:
            named.pop("expect", None)
        if spec.config is not None and spec.config.is_file():
            named["config"] = spec.config
        named.update(cache.function(spec).files)
        for role, path in named.items():
            reads.setdefault(file_identity(path), (f"run {spec.name!r} reads as {role!r}", path))
    # The reports first: when a run's output is refused, the report is still safe to write.
    writes: list[tuple[str, Path]] = list(extra.items())
    writes += [(f"the output of run {run.spec.name!r}", run.spec.output) for run in runs]
    if update_golden:
        writes += [
            (f"the golden of run {run.spec.name!r}", run.spec.expect)
            for run in runs
            if run.spec.expect is not None
        ]
    written: dict[tuple[object, ...], str] = {}
    for what, path in writes:
        key = file_identity(path)
        if key in reads:
            reader, read = reads[key]
            same = "" if read == path else f" (the same file as {display_path(read)})"
            raise OverwriteError(
                f"{what}, {display_path(path)}, is a file {reader}{same}: writing it would "
                "destroy it. Write elsewhere.",
                target=path,
            )
        shared_golden = what.startswith("the golden") and written.get(key, "").startswith(
            "the golden"
        )
        if key in written and not shared_golden:
            raise OverwriteError(
                f"{what}, {display_path(path)}, is also {written[key]}: one would overwrite the "
                "other.",
                target=path,
            )
        written[key] = what


def check_writable(path: Path, role: str) -> None:
    """Check, before anything computes, that ``path`` can be created: each of its names fits the
    file system, and its nearest existing folder is a folder this process may write in.

    Raises:
        ConfigError: a name is too long, a parent is a file, or the folder is not writable.
    """
    shown = display_path(path)
    existing = path.parent
    while not _exists(existing) and existing != existing.parent:
        existing = existing.parent
    try:
        longest = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        longest = 255
    for part in path.relative_to(existing).parts:
        if len(os.fsencode(part)) > longest:
            raise ConfigError(
                f"{role} {display_path(existing / part[:40])}...: a name of "
                f"{len(os.fsencode(part))} bytes; the file system allows {longest}."
            )
    if not existing.is_dir():
        raise ConfigError(
            f"{role} {shown} cannot be created: {display_path(existing)} is a file, not a folder."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{role} {shown} cannot be written: permission denied in {display_path(existing)}."
        )


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long for the file system: nothing there
        return False


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

"""Executing one checked run: :func:`execute_run` loads its tensors, computes, writes its output
atomically and verifies the results (or reuses a finished output with ``resume``).

It is a plain function of a picklable :class:`~jvpcli.runner.planning.CheckedRun` and a
per-process :class:`~jvpcli.runner.cache.WorkerCache`: what any executor (the local loop, a
worker process) calls. Failures come back as :class:`~jvpcli.runner.outcomes.RunFailure`, never
raised, except Ctrl-C.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from jvpcli import __version__, _pytree
from jvpcli._tree_jvp import jvp_tree
from jvpcli.benchmark import candidates, compare, fastest
from jvpcli.config import Direction, RandomDirections, RunSpec
from jvpcli.containment import INTERRUPTS, contained, describe, failures
from jvpcli.directions import draw
from jvpcli.engine import Fallback, JvpInfo
from jvpcli.errors import (
    ComputeError,
    ConfigError,
    JvpcliError,
    TensorFileError,
    VerificationError,
    display_path,
    user_location,
)
from jvpcli.files import write_atomically
from jvpcli.loading import LoadedFunction, first_on_path, user_sources
from jvpcli.reproducibility import deterministic_algorithms, seeded
from jvpcli.runner.cache import WorkerCache
from jvpcli.runner.outcomes import (
    BenchResult,
    InspectedFile,
    OutputRecord,
    RunFailure,
    RunOutcome,
    RunResult,
    output_keys,
    output_records,
)
from jvpcli.runner.planning import CheckedRun, differentiable_parameters, golden_header
from jvpcli.tensors import (
    TensorFileHeader,
    read_header,
    read_tensors,
    tensor_stats,
    tensors_sha256,
    write_tensors,
)
from jvpcli.verify import (
    Check,
    check_finite,
    check_finite_differences,
    compare_with_golden,
    float64_copy,
)

__all__ = ["bench_run", "execute_run", "inspect_file"]


def execute_run(checked: CheckedRun, cache: WorkerCache, *, resume: bool = False) -> RunOutcome:
    """Run one checked run: compute it (or, with ``resume``, reuse its finished output), write
    its output file, and verify its results.

    A run that fails, or whose results fail a check, comes back as a :class:`RunFailure` (with a
    :class:`~jvpcli.errors.VerificationError` and the result for a failed check). A
    KeyboardInterrupt propagates: the run leaves no file (outputs are written atomically).

    Args:
        checked: what :func:`~jvpcli.runner.planning.check_run` returned.
        cache: this process's cache; the function is loaded into it if it is not there yet.
        resume: reuse the output when :func:`_reuse` accepts it, instead of computing.
    """
    started = time.perf_counter()
    try:
        with contained():
            outcome: RunOutcome = (_reuse(checked, cache, started) if resume else None) or _compute(
                checked, cache, started
            )
        failed = [check.message for check in outcome.checks if check.failed]
        if failed:
            outcome = RunFailure(
                checked.spec, VerificationError(" ".join(failed)), outcome.total_seconds, outcome
            )
    except JvpcliError as error:
        outcome = RunFailure(checked.spec, error, time.perf_counter() - started)
        _drop_locals(error)
    except BaseException as error:
        if not failures(error):
            raise
        # User code reached outside the engine's call (moving a model: its to(), say).
        wrapped = JvpcliError(describe(error), location=user_location(error, ()))
        wrapped.__cause__ = error
        outcome = RunFailure(checked.spec, wrapped, time.perf_counter() - started)
        _drop_locals(error)
    return outcome


@dataclass(frozen=True)
class _Arguments:
    """A run's call, ready for :func:`~jvpcli.jvp_tree`: the values on the run's device, floating
    ones cast to its dtype, and the tangents of what is differentiated."""

    values: dict[str, torch.Tensor]
    tangents: dict[str, torch.Tensor]
    param_tangents: dict[str, torch.Tensor]

    def call(self, checked: CheckedRun) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """The positional and keyword arguments."""
        return [self.values[n] for n in checked.order], {n: self.values[n] for n in checked.keyword}


def _compute(checked: CheckedRun, cache: WorkerCache, started: float) -> RunResult:
    """Compute a checked run and write its output file.

    Raises:
        TensorFileError: a tensor file changed since it was checked.
        ComputeError: the function or the engine raised; the message names where in the
            user's code, when it passed through it.
        JvpcliError: the output file (or, with ``update_golden``, the golden) cannot be written.
    """
    spec = checked.spec
    function = cache.function(spec)
    device = cache.device(spec.device)
    arguments = _arguments(checked, cache, function)
    args, kwargs = arguments.call(checked)
    imported = set(sys.modules)
    try:
        with (
            contextlib.ExitStack() as stack,
            deterministic_algorithms(spec.deterministic),
            seeded(spec.seed, device),
        ):
            for folder in function.search_path:  # imports made when called find the siblings
                stack.enter_context(first_on_path(folder))
            result = jvp_tree(
                function.func,
                args,
                kwargs,
                tangents=[arguments.tangents.get(n) for n in checked.order] or None,
                kwarg_tangents={
                    n: arguments.tangents[n] for n in checked.keyword if n in arguments.tangents
                },
                param_tangents=arguments.param_tangents or None,
                create_graph=spec.create_graph,
                strict=spec.strict,
                method=spec.method,
                batched_v=spec.batched_v,
                outputs=spec.outputs,
                compile=spec.compile,
            )
    except BaseException as error:
        if not failures(error):
            raise
        raise ComputeError(
            f"computing the JVP of {function.name} failed: {describe(error)}",
            location=user_location(error, function.source_files),
        ) from error
    known = set(function.files.values())
    sources = [
        path
        for path in user_sources(sys.modules[name] for name in set(sys.modules) - imported)
        if path not in known
    ]
    leaves = tuple(leaf.path for leaf in result.leaves)
    by_path = {leaf.path: leaf for leaf in result.leaves}
    tensors: dict[str, torch.Tensor] = {}
    for path in leaves:
        output_key, jvp_key = output_keys(path)
        tensors[output_key], tensors[jvp_key] = by_path[path].output, by_path[path].tangent
    carried_graph = any(t.requires_grad for t in tensors.values())
    written = dict(tensors)
    if spec.save_v:
        written.update({f"v.{n}": t for n, t in arguments.tangents.items()})
        written.update({f"v_params.{n}": t for n, t in arguments.param_tangents.items()})
    dropped = tuple(f"{path or '(the output)'} ({kind})" for path, kind in result.dropped)
    try:
        write_tensors(
            spec.output,
            written,
            _metadata(
                checked, cache, function, result.info, written, carried_graph, leaves, sources
            ),
        )
    except (OSError, ValueError) as error:
        raise _write_error("output", spec.output, error) from error
    records = output_records(tensors, leaves)
    try:
        checks = _verify(checked, cache, tensors, records, leaves, arguments)
    except INTERRUPTS:
        # Stopped before the run was done: it is reported as not run, so it leaves no output.
        spec.output.unlink(missing_ok=True)
        raise
    return RunResult(
        spec=spec,
        device=checked.device,
        method_used=result.info.method_used,
        fallbacks=result.info.fallbacks,
        description=str(result.info),
        seconds=result.info.seconds,
        total_seconds=time.perf_counter() - started,
        carried_graph=carried_graph,
        outputs=records,
        checks=checks,
        roles=_roles(checked),
        params=checked.params,
        notes=(*function.notes, *(f"dropped {d}: not a tensor" for d in dropped)),
        compile_seconds=result.info.compile_seconds,
    )


def _roles(checked: CheckedRun) -> tuple[tuple[str, str], ...]:
    return tuple((name, checked.role(name)) for name in (*checked.order, *checked.keyword))


def _reuse(checked: CheckedRun, cache: WorkerCache, started: float) -> RunResult | None:
    """The result of a run whose output is already written, or ``None`` to compute it.

    An output is reused only when it is intact (its header checks out and its tensors match
    the digest it records) and comes from the same run: the same settings and the same
    bytes of every file the run reads (the config file itself may change, e.g. to add
    runs). Anything else (missing, torn, corrupt, other settings, changed inputs) is
    ``None``: never trusted. A reused result is verified as a computed one is.
    """
    spec = checked.spec
    if not spec.output.is_file():
        return None
    function = cache.function(spec)
    try:
        header = read_header(spec.output, "output")
        sources = [Path(path) for path in json.loads(header.metadata.get("jvpcli.sources", "[]"))]
        fingerprint = _fingerprint(checked, cache, function, sources)
        if header.metadata.get("jvpcli.fingerprint") != fingerprint:
            return None
        tensors = read_tensors(header)
    except (TensorFileError, OSError, TypeError, ValueError):
        return None  # torn, foreign, or a source it names is gone: never trusted
    metadata = header.metadata
    if metadata.get("jvpcli.content_sha256") != tensors_sha256(tensors):
        return None
    try:
        leaves = _written_paths(metadata, tensors)
    except ValueError:
        return None
    results = {}
    for path in leaves:
        for key in output_keys(path):
            results[key] = tensors[key]
    try:
        fallbacks = tuple(Fallback(**f) for f in json.loads(metadata["jvpcli.fallbacks"]))
        info = JvpInfo(
            spec.method,
            metadata["jvpcli.method_used"],
            fallbacks,
            float(metadata["jvpcli.seconds"]),
        )
        carried_graph = json.loads(metadata["jvpcli.carried_graph"]) is True
        device = metadata["jvpcli.device"]
    except (KeyError, TypeError, ValueError):
        return None
    records = output_records(results, leaves)
    checks = _verify(checked, cache, results, records, leaves)
    return RunResult(
        spec=spec,
        device=device,
        method_used=info.method_used,
        fallbacks=info.fallbacks,
        description=str(info),
        seconds=info.seconds,
        total_seconds=time.perf_counter() - started,
        carried_graph=carried_graph,
        outputs=records,
        skipped=True,
        checks=checks,
        roles=_roles(checked),
        params=checked.params,
    )


def _written_paths(metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """The output paths an output file holds, in the order they were written.

    Raises:
        ValueError: the file does not hold exactly the outputs and tangents it records.
    """
    if "jvpcli.outputs" in metadata:
        paths = json.loads(metadata["jvpcli.outputs"])
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise ValueError("malformed jvpcli.outputs")
    else:  # written before jvpcli.outputs: a Tensor, or a tuple of them
        count = len(tensors) // 2
        paths = [""] if "func_output" in tensors else [str(i) for i in range(count)]
    expected = {key for path in paths for key in output_keys(path)}
    results = {key for key in tensors if not key.startswith(("v.", "v_params."))}
    if results != expected:
        raise ValueError("the file's tensors are not the outputs it records")
    return paths


def _arguments(checked: CheckedRun, cache: WorkerCache, function: LoadedFunction) -> _Arguments:
    """The run's inputs and tangents, as passed to the engine: on its device, floating-point
    tensors cast to its dtype (integer and bool tensors as they are); a model is moved and cast
    likewise."""
    spec = checked.spec
    device = cache.device(spec.device)
    dtype = None if spec.dtype is None else getattr(torch, spec.dtype)
    model = function.func if isinstance(function.func, torch.nn.Module) else None
    if model is not None:
        model.to(device=device, dtype=dtype)
    stored = cache.files.tensors(checked.inputs)
    values = {
        name: _place(stored[name], device, dtype) for name in (*checked.order, *checked.keyword)
    }
    targets = {name: values[name] for name in checked.differentiated}
    tangents = _directions(spec.v, checked.v, targets, spec.batched_v, cache, device, dtype)
    param_tangents: dict[str, torch.Tensor] = {}
    if checked.params:
        assert model is not None
        entries = differentiable_parameters(model)
        param_targets = {name: entries[name].detach() for name in checked.params}
        param_tangents = _directions(
            spec.v_params, checked.v_params, param_targets, spec.batched_v, cache, device, dtype
        )
    return _Arguments(values, tangents, param_tangents)


def _directions(
    direction: Direction | None,
    header: TensorFileHeader | None,
    targets: Mapping[str, torch.Tensor],
    batched: bool,
    cache: WorkerCache,
    device: torch.device,
    dtype: torch.dtype | None,
) -> dict[str, torch.Tensor]:
    """The tangents of ``targets``: read from their file, drawn at random, or (``v`` omitted for
    a single one-element input) one."""
    if isinstance(direction, RandomDirections):
        shapes = {name: (tuple(t.shape), t.dtype) for name, t in targets.items()}
        return {n: t.to(device) for n, t in draw(direction, shapes).items()}
    if header is None:
        ones = {name: torch.ones_like(t) for name, t in targets.items()}
        return {n: t.unsqueeze(0) if batched else t for n, t in ones.items()}
    stored = cache.files.tensors(header)
    return {name: _place(stored[name], device, dtype) for name in targets}


def _place(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    """``tensor`` on ``device``; cast to ``dtype`` when it is floating point."""
    if dtype is not None and (tensor.is_floating_point() or tensor.is_complex()):
        return tensor.to(device=device, dtype=dtype)
    return tensor.to(device=device)


def _verify(
    checked: CheckedRun,
    cache: WorkerCache,
    tensors: Mapping[str, torch.Tensor],
    records: Sequence[OutputRecord],
    paths: Sequence[str],
    arguments: _Arguments | None = None,
) -> tuple[Check, ...]:
    """Check a run's results (already in its output file): finiteness, then finite
    differences and the golden when the run asks. With ``update_golden``, the golden is
    written from the output file when the other checks pass. ``arguments``: the run's, when it
    has just computed with them (a reused output has none: they are loaded for the check).

    Raises:
        TensorFileError: the golden changed since it was checked.
        JvpcliError: the golden cannot be written.
    """
    spec = checked.spec
    stats = {key: s for r in records for key, s in zip(r.keys, (r.func_output, r.jvp), strict=True)}
    checks = [check_finite(stats, spec.fail_on_nonfinite)]
    if spec.check == "finite-differences":
        function = cache.function(spec)
        if arguments is None:
            arguments = _arguments(checked, cache, function)
        with deterministic_algorithms(spec.deterministic):
            checks.append(_finite_differences(checked, function, arguments, tensors, paths))
    if spec.expect is not None:
        passed = not any(check.failed for check in checks)
        checks.append(_golden(checked, cache, spec.expect, tensors, passed))
    return tuple(checks)


def _finite_differences(
    checked: CheckedRun,
    function: LoadedFunction,
    arguments: _Arguments,
    tensors: Mapping[str, torch.Tensor],
    paths: Sequence[str],
) -> Check:
    """:func:`~jvpcli.verify.check_finite_differences` along the run's tangents (inputs and
    parameters), on a float64 copy of the model with the constants as they are (floating
    ones in float64)."""
    spec = checked.spec
    names = list(arguments.tangents)
    params = list(arguments.param_tangents)
    points = [arguments.values[n] for n in names]
    if params:
        entries = differentiable_parameters(function.func)
        points += [entries[n].detach() for n in params]
    directions = [*arguments.tangents.values(), *arguments.param_tangents.values()]
    wide = float64_copy(function.func, points[0].device)  # something is always differentiated
    constants = {
        n: value.double() if value.is_floating_point() else value
        for n, value in arguments.values.items()
        if n not in arguments.tangents
    }

    def evaluate(*shifted: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values = {**constants, **dict(zip(names, shifted, strict=False))}
        args = [values[n] for n in checked.order]
        kwargs = {n: values[n] for n in checked.keyword}
        if params:
            replaced = dict(zip(params, shifted[len(names) :], strict=True))
            output = torch.func.functional_call(wide, replaced, tuple(args), kwargs, strict=False)
        else:
            output = wide(*args, **kwargs)
        leaves, _ = _pytree.flatten(output)
        found = {_pytree.dotted(path): leaf for path, leaf in leaves}
        return tuple(found[p] for p in paths)

    ordered = {key: tensors[key] for path in paths for key in output_keys(path)}
    return check_finite_differences(
        evaluate,
        points,
        directions,
        ordered,
        batched=spec.batched_v,
        step=spec.fd_step,
        rtol=spec.fd_rtol,
        seed=spec.seed,
        name=function.name,
    )


def _golden(
    checked: CheckedRun,
    cache: WorkerCache,
    expect: Path,
    tensors: Mapping[str, torch.Tensor],
    passed: bool,
) -> Check:
    """Compare the results with the golden ``expect``; or, with ``update_golden``, write it
    from the output file when the other checks ``passed``."""
    spec = checked.spec
    shown = display_path(expect)
    if not checked.update_golden:
        golden = read_tensors(golden_header(cache, expect))
        return compare_with_golden(tensors, golden, spec.tolerance, shown, spec.tolerances)
    if not passed:
        return Check(
            "golden",
            "skipped",
            f"the golden {shown} was not written: the results failed another check.",
        )
    try:
        write_atomically(expect, lambda temporary: shutil.copyfile(spec.output, temporary))
    except OSError as error:
        raise _write_error("golden", expect, error) from error
    return Check("golden", "updated", f"wrote the golden {shown}.")


def bench_run(checked: CheckedRun, cache: WorkerCache, repeats: int) -> BenchResult:
    """Time every method on a checked run's function and tensors, side by side.

    Writes nothing.

    Raises:
        ComputeError: every jvpcli method failed.
    """
    spec = checked.spec
    function = cache.function(spec)
    arguments = _arguments(checked, cache, function)
    if checked.keyword or checked.params or len(arguments.tangents) != len(checked.order):
        raise ConfigError(
            "jvpcli bench compares PyTorch's jvp APIs, which take positional floating-point "
            "inputs only: it cannot time a run with keyword inputs, constants or v_params. "
            "Time it with jvpcli compute (the summary shows the time)."
        )
    inputs = tuple(arguments.values[n] for n in checked.order)
    v = tuple(arguments.tangents[n] for n in checked.order)
    calls = candidates(
        function.func,
        inputs,
        v,
        create_graph=spec.create_graph,
        strict=spec.strict,
        batched_v=spec.batched_v,
    )
    with (
        contained(),
        deterministic_algorithms(spec.deterministic),
        seeded(spec.seed, cache.device(spec.device)),
    ):
        timings = compare(calls, repeats=repeats)
    if fastest(timings) is None:
        failures = "; ".join(
            f"{t.name}: {t.error}" for t in timings.values() if t.name.startswith("jvpcli ")
        )
        raise ComputeError(f"every method failed on {function.name}: {failures}")
    return BenchResult(spec, timings)


def inspect_file(path: Path) -> InspectedFile:
    """Read a safetensors file and compute statistics of each tensor.

    Raises:
        TensorFileError: the file is missing or corrupt.
    """
    header = read_header(path, "safetensors")
    tensors = read_tensors(header)
    return InspectedFile(header, {name: tensor_stats(t) for name, t in tensors.items()})


def _fingerprint(
    checked: CheckedRun,
    cache: WorkerCache,
    function: LoadedFunction,
    sources: Sequence[Path] = (),
) -> str:
    # What identifies a run's result; the config file is left out, so that editing it (to
    # add runs, say) does not make finished runs look stale. ``sources``: the user's modules
    # the function imported only when called.
    spec = checked.spec
    files = {**_data_files(spec), **function.files, **_called(sources)}
    identity = {
        "versions": {"jvpcli": __version__, "torch": torch.__version__},
        "settings": spec.settings(),
        "sha256": {role: cache.files.sha256(p) for role, p in files.items() if p is not None},
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _metadata(
    checked: CheckedRun,
    cache: WorkerCache,
    function: LoadedFunction,
    info: JvpInfo,
    tensors: Mapping[str, torch.Tensor],
    carried_graph: bool,
    paths: Sequence[str],
    sources: Sequence[Path],
) -> dict[str, str]:
    spec = checked.spec
    files: dict[str, Path | None] = {**_data_files(spec), **function.files, **_called(sources)}
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
        "jvpcli.batched_v": json.dumps(spec.batched_v),
        "jvpcli.compile": json.dumps(spec.compile),
        "jvpcli.carried_graph": json.dumps(carried_graph),
        "jvpcli.device": checked.device,
        "jvpcli.executor": cache.executor,
        "jvpcli.node": cache.node,
        "jvpcli.settings": json.dumps(spec.settings(), sort_keys=True),
        "jvpcli.fingerprint": _fingerprint(checked, cache, function, sources),
        "jvpcli.sources": json.dumps([str(path) for path in sources]),
        "jvpcli.content_sha256": tensors_sha256(tensors),
    }
    if spec.dtype is not None:
        metadata["jvpcli.dtype"] = spec.dtype
    if spec.seed is not None:
        metadata["jvpcli.seed"] = str(spec.seed)
    metadata["jvpcli.deterministic"] = json.dumps(spec.deterministic)
    metadata["jvpcli.outputs"] = json.dumps(list(paths))
    metadata["jvpcli.inputs"] = json.dumps(dict(_roles(checked)))
    if checked.params:
        metadata["jvpcli.v_params"] = json.dumps(list(checked.params))
    for key, direction in (("v", spec.v), ("v_params", spec.v_params)):
        if isinstance(direction, RandomDirections):
            metadata[f"jvpcli.{key}.random"] = direction.spec_text()
    if spec.config_sha256 is not None:
        metadata["jvpcli.sha256.config"] = spec.config_sha256
    for role, path in files.items():
        if path is not None:
            metadata[f"jvpcli.sha256.{role}"] = cache.files.sha256(path)
    return metadata


def _write_error(role: str, path: Path, error: OSError | ValueError) -> JvpcliError:
    reason = error.strerror if isinstance(error, OSError) and error.strerror else error
    return JvpcliError(f"cannot write the {role} {display_path(path)}: {reason}.")


def _drop_locals(error: BaseException) -> None:
    # A failure is kept until the sweep ends: its traceback must not keep the tensors of its
    # frames (activations, a CUDA out-of-memory's) alive meanwhile. Its lines stay printable.
    chain: BaseException | None = error
    cleared: set[int] = set()
    while chain is not None and id(chain) not in cleared:
        cleared.add(id(chain))
        traceback.clear_frames(chain.__traceback__)
        chain = chain.__cause__ or chain.__context__


def _called(sources: Sequence[Path]) -> dict[str, Path]:
    return {f"function.calls:{path}": path for path in sources}


def _data_files(spec: RunSpec) -> dict[str, Path]:
    """The tensor files a run's data is loaded from, by role."""
    files = {"inputs": spec.inputs, "v": spec.v, "v_params": spec.v_params}
    return {role: path for role, path in files.items() if isinstance(path, Path)}


def tensor_files(spec: RunSpec) -> tuple[Path, ...]:
    """The tensor files a run's data is loaded from (whose tensors a cache may drop after)."""
    return tuple(_data_files(spec).values())

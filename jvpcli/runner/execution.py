"""Executing one checked run: :func:`execute_run` loads its tensors, computes, writes its output
atomically and verifies the results (or reuses a finished output with ``resume``).

It is a plain function of a picklable :class:`~jvpcli.runner.planning.CheckedRun` and a
per-process :class:`~jvpcli.runner.cache.WorkerCache`: what any executor (the local loop, a
worker process) calls. Failures come back as :class:`~jvpcli.runner.outcomes.RunFailure`, never
raised, except Ctrl-C.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from jvpcli import __version__
from jvpcli.benchmark import candidates, compare, fastest
from jvpcli.config import RunSpec
from jvpcli.engine import Fallback, JvpInfo, jvp_with_info
from jvpcli.errors import (
    ComputeError,
    JvpcliError,
    TensorFileError,
    VerificationError,
    display_path,
    user_location,
)
from jvpcli.files import write_atomically
from jvpcli.loading import LoadedFunction
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
from jvpcli.runner.planning import CheckedRun, golden_header
from jvpcli.tensors import (
    TensorFileHeader,
    read_header,
    read_tensors,
    tensor_stats,
    tensors_sha256,
    write_tensors,
)
from jvpcli.verify import Check, check_finite, check_finite_differences, compare_with_golden

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
    except Exception as error:
        wrapped = JvpcliError(f"{type(error).__name__}: {error}")
        wrapped.__cause__ = error
        outcome = RunFailure(checked.spec, wrapped, time.perf_counter() - started)
        _drop_locals(error)
    return outcome


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
    inputs, v = _arguments(checked, cache, function)
    try:
        with deterministic_algorithms(spec.deterministic), seeded(spec.seed, device):
            result = jvp_with_info(
                function.func,
                inputs[0] if len(inputs) == 1 else inputs,
                None if v is None else (v[0] if len(v) == 1 else v),
                spec.create_graph,
                spec.strict,
                method=spec.method,
                batched_v=spec.batched_v,
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
    for position, (output, tangent) in enumerate(zip(outputs, tangents, strict=True)):
        output_key, jvp_key = output_keys(position if is_tuple else None)
        tensors[output_key], tensors[jvp_key] = output, tangent
    carried_graph = any(t.requires_grad for t in tensors.values())
    try:
        write_tensors(
            spec.output,
            tensors,
            _metadata(checked, cache, function, result.info, tensors, carried_graph),
        )
    except (OSError, ValueError) as error:
        raise _write_error("output", spec.output, error) from error
    records = output_records(tensors, is_tuple)
    checks = _verify(checked, cache, tensors, records)
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
    )


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
        if header.metadata.get("jvpcli.fingerprint") != _fingerprint(checked, cache, function):
            return None
        tensors = read_tensors(header)
    except TensorFileError:
        return None
    metadata = header.metadata
    if metadata.get("jvpcli.content_sha256") != tensors_sha256(tensors):
        return None
    is_tuple = "func_output" not in tensors
    expected = {k for i in range(len(tensors) // 2) for k in output_keys(i if is_tuple else None)}
    if set(tensors) != expected:
        return None
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
    records = output_records(tensors, is_tuple)
    checks = _verify(checked, cache, tensors, records)
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
    )


def _arguments(
    checked: CheckedRun, cache: WorkerCache, function: LoadedFunction
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
    """The run's inputs and v (``None`` when omitted), as passed to the engine: on its
    device, cast to its dtype; a model is moved and cast likewise."""
    spec = checked.spec
    device = cache.device(spec.device)
    dtype = None if spec.dtype is None else getattr(torch, spec.dtype)
    if isinstance(function.func, torch.nn.Module):
        function.func.to(device=device, dtype=dtype)
    inputs = _load(cache, checked.inputs, checked.order, device, dtype)
    v = None if checked.v is None else _load(cache, checked.v, checked.order, device, dtype)
    return inputs, v


def _load(
    cache: WorkerCache,
    header: TensorFileHeader,
    order: tuple[str, ...],
    device: torch.device,
    dtype: torch.dtype | None,
) -> tuple[torch.Tensor, ...]:
    tensors = cache.files.tensors(header)
    return tuple(tensors[name].to(device=device, dtype=dtype) for name in order)


def _verify(
    checked: CheckedRun,
    cache: WorkerCache,
    tensors: Mapping[str, torch.Tensor],
    records: Sequence[OutputRecord],
) -> tuple[Check, ...]:
    """Check a run's results (already in its output file): finiteness, then finite
    differences and the golden when the run asks. With ``update_golden``, the golden is
    written from the output file when the other checks pass.

    Raises:
        TensorFileError: the golden changed since it was checked.
        JvpcliError: the golden cannot be written.
    """
    spec = checked.spec
    stats = {key: s for r in records for key, s in zip(r.keys, (r.func_output, r.jvp), strict=True)}
    checks = [check_finite(stats, spec.fail_on_nonfinite)]
    if spec.check == "finite-differences":
        function = cache.function(spec)
        inputs, v = _arguments(checked, cache, function)
        with deterministic_algorithms(spec.deterministic):
            checks.append(
                check_finite_differences(
                    function.func,
                    inputs,
                    v if v is not None else tuple(torch.ones_like(x) for x in inputs),
                    tensors,
                    batched=spec.batched_v,
                    step=spec.fd_step,
                    rtol=spec.fd_rtol,
                    seed=spec.seed,
                    name=function.name,
                )
            )
    if spec.expect is not None:
        passed = not any(check.failed for check in checks)
        checks.append(_golden(checked, cache, spec.expect, tensors, passed))
    return tuple(checks)


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
    inputs, v = _arguments(checked, cache, function)
    if v is None:  # a single one-element input: v is 1
        one = torch.ones_like(inputs[0])
        v = (one.unsqueeze(0) if spec.batched_v else one,)
    calls = candidates(
        function.func,
        inputs,
        v,
        create_graph=spec.create_graph,
        strict=spec.strict,
        batched_v=spec.batched_v,
    )
    with (
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


def _fingerprint(checked: CheckedRun, cache: WorkerCache, function: LoadedFunction) -> str:
    # What identifies a run's result; the config file is left out, so that editing it (to
    # add runs, say) does not make finished runs look stale.
    spec = checked.spec
    files = {"inputs": spec.inputs, "v": spec.v, **function.files}
    identity = {
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
) -> dict[str, str]:
    spec = checked.spec
    files: dict[str, Path | None] = {
        "config": spec.config,
        "inputs": spec.inputs,
        "v": spec.v,
        **function.files,
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
        "jvpcli.batched_v": json.dumps(spec.batched_v),
        "jvpcli.carried_graph": json.dumps(carried_graph),
        "jvpcli.device": checked.device,
        "jvpcli.settings": json.dumps(spec.settings(), sort_keys=True),
        "jvpcli.fingerprint": _fingerprint(checked, cache, function),
        "jvpcli.content_sha256": tensors_sha256(tensors),
    }
    if spec.dtype is not None:
        metadata["jvpcli.dtype"] = spec.dtype
    if spec.seed is not None:
        metadata["jvpcli.seed"] = str(spec.seed)
    metadata["jvpcli.deterministic"] = json.dumps(spec.deterministic)
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


def tensor_files(spec: RunSpec) -> tuple[Path, ...]:
    """The tensor files a run's data is loaded from (whose tensors a cache may drop after)."""
    return (spec.inputs,) if spec.v is None else (spec.inputs, spec.v)

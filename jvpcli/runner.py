"""Runs: check :class:`~jvpcli.config.RunSpec` s against their files, compute, write, summarize.

A :class:`Session` runs one run or a whole sweep in one process, sharing what runs have in
common: each function module is imported once, each function built once (per device and dtype),
each tensor file read once. :meth:`Session.check` does everything that can fail before computing
(files, names, shapes, dtypes, the function, the device) and raises
:class:`~jvpcli.errors.UsageError` subclasses; :meth:`Session.execute` computes and writes,
raising :class:`~jvpcli.errors.ComputeError` when the computation fails; :meth:`Session.run` runs
checked runs in order, failures isolated, finished outputs reused with ``resume``. Each result
is then verified (:mod:`jvpcli.verify`: finiteness, finite differences, the golden), and a run
whose results fail a check fails with a :class:`~jvpcli.errors.VerificationError`; with
``update_golden`` the goldens are written instead of compared. Results come back as plain records
for :mod:`jvpcli.report` to render.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from jvpcli import __version__
from jvpcli.benchmark import Timing, candidates, compare, fastest
from jvpcli.config import RunSpec
from jvpcli.engine import Fallback, JvpInfo, jvp_with_info
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
from jvpcli.loading import LoadedFunction, load_function
from jvpcli.reproducibility import deterministic_algorithms, seeded
from jvpcli.tensors import (
    FileCache,
    TensorFileHeader,
    TensorStats,
    bind_inputs,
    check_differentiable,
    check_tangents,
    read_header,
    read_tensors,
    tensor_stats,
    tensors_sha256,
    write_tensors,
)
from jvpcli.verify import Check, check_finite, check_finite_differences, compare_with_golden

__all__ = [
    "BenchResult",
    "CheckedRun",
    "InspectedFile",
    "OutputRecord",
    "RunFailure",
    "RunResult",
    "Session",
    "inspect_file",
    "output_keys",
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
        shape: the output's shape.
        dtype: of both tensors (a tangent has its output's dtype).
        jvp_shape: the tangent's shape: ``shape``, or ``(K, *shape)`` with ``batched_v``.
        func_output, jvp: statistics of the output and of its tangent J·v.
    """

    index: int | None
    shape: tuple[int, ...]
    dtype: str
    func_output: TensorStats
    jvp: TensorStats
    jvp_shape: tuple[int, ...]

    @property
    def keys(self) -> tuple[str, str]:
        """The names of the output and its tangent in the output file."""
        return output_keys(self.index)


@dataclass(frozen=True)
class RunResult:
    """What a successful run did (or, when ``skipped``, what the run that wrote its output did).

    Attributes:
        spec: the run.
        device: the device it computed on.
        method_used: "forward" or "double-backward".
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


@dataclass(frozen=True)
class BenchResult:
    """What ``jvpcli bench`` measured for one run.

    Attributes:
        spec: the run.
        timings: candidate name → its timing (:mod:`jvpcli.benchmark`), the forward pass first.
    """

    spec: RunSpec
    timings: Mapping[str, Timing]


class Session:
    """Checks and runs the runs of a sweep (or a single run) in one process.

    Each function module is imported once, each function built once per device, dtype and seed
    (so a model is never cast under another run's feet), and each file's header, tensors and
    digest read once, by path.

    Args:
        update_golden: write each run's results to its ``expect`` file (when its other checks
            pass) instead of comparing them with it.
    """

    def __init__(self, update_golden: bool = False) -> None:
        self.update_golden = update_golden
        self.files = FileCache()
        self._modules: dict[str, ModuleType] = {}
        self._functions: dict[tuple[str, str, str | None], LoadedFunction] = {}
        self._devices: dict[str, torch.device] = {}

    def check(self, spec: RunSpec) -> CheckedRun:
        """Check everything about a run that can be checked without computing.

        Reads the headers of the inputs, v and golden files (not their data), loads the function,
        binds the input tensors to its parameters and resolves the device.

        Raises:
            UsageError: a file is missing or corrupt (the golden too, unless ``update_golden``);
                tensors are integer, misnamed or do not fit each other or the function; the
                function cannot be loaded; the device is not available; the output or the
                golden is a folder.
        """
        inputs = self.files.header(spec.inputs, "inputs")
        v = None if spec.v is None else self.files.header(spec.v, "v")
        check_differentiable(inputs, spec.dtype)
        check_tangents(inputs, v, spec.dtype, spec.batched_v)
        for role, path in (("output", spec.output), ("expect", spec.expect)):
            if path is not None and path.is_dir():
                raise ConfigError(f"{role} {display_path(path)} is a folder; name a file.")
        if spec.expect is not None and not self.update_golden:
            self._golden_header(spec.expect)
        device = self._devices.get(spec.device)
        if device is None:
            device = self._devices[spec.device] = _device(spec.device)
        key = (
            json.dumps(spec.settings()["function"], sort_keys=True),
            str(device),
            spec.dtype,
            spec.seed,
        )
        function = self._functions.get(key)
        if function is None:
            with seeded(spec.seed, device):
                function = load_function(spec.function, self._modules)
            self._functions[key] = function
        order = bind_inputs(
            inputs, function.parameters, function.required, spec.order, function.name
        )
        return CheckedRun(spec, function, inputs, v, order, device)

    def check_all(
        self, specs: Sequence[RunSpec], *, name_runs: bool = False
    ) -> tuple[CheckedRun, ...]:
        """:meth:`check` every run, before any computes.

        Args:
            specs: the runs.
            name_runs: start each error's message with the name of the run at fault.

        Raises:
            UsageError: from :meth:`check`, for the first unusable run.
        """
        checked = []
        for spec in specs:
            try:
                checked.append(self.check(spec))
            except JvpcliError as error:
                if not name_runs:
                    raise
                raise type(error)(
                    f"run {spec.name!r}: {error.message}", location=error.location
                ) from error
        return tuple(checked)

    def execute(self, checked: CheckedRun, started: float | None = None) -> RunResult:
        """Compute a checked run and write its output file.

        Args:
            checked: what :meth:`check` returned.
            started: when the run started (``time.perf_counter()``), for the total time;
                default now.

        Returns:
            The run's record, with the checks of its results (which may have failed).

        Raises:
            TensorFileError: a tensor file changed since it was checked.
            ComputeError: the function or the engine raised; the message names where in the
                user's code, when it passed through it.
            JvpcliError: the output file (or, with ``update_golden``, the golden) cannot be
                written.
        """
        started = time.perf_counter() if started is None else started
        spec, function = checked.spec, checked.function
        inputs, v = self._arguments(checked)
        try:
            with deterministic_algorithms(spec.deterministic), seeded(spec.seed, checked.device):
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
                spec.output, tensors, self._metadata(checked, result.info, tensors, carried_graph)
            )
        except (OSError, ValueError) as error:
            raise _write_error("output", spec.output, error) from error
        records = _records(tensors, is_tuple)
        checks = self._verify(checked, tensors, records)
        return RunResult(
            spec=spec,
            device=str(checked.device),
            method_used=result.info.method_used,
            fallbacks=result.info.fallbacks,
            description=str(result.info),
            seconds=result.info.seconds,
            total_seconds=time.perf_counter() - started,
            carried_graph=carried_graph,
            outputs=records,
            checks=checks,
        )

    def reuse(self, checked: CheckedRun, started: float | None = None) -> RunResult | None:
        """The result of a run whose output is already written, or ``None`` to compute it.

        An output is reused only when it is intact (its header checks out and its tensors match
        the digest it records) and comes from the same run: the same settings and the same
        bytes of every file the run reads (the config file itself may change, e.g. to add
        runs). Anything else (missing, torn, corrupt, other settings, changed inputs) is
        ``None``: never trusted. A reused result is verified as a computed one is.

        Args:
            checked: what :meth:`check` returned.
            started: when the run started (``time.perf_counter()``); default now.
        """
        started = time.perf_counter() if started is None else started
        spec = checked.spec
        if not spec.output.is_file():
            return None
        try:
            header = read_header(spec.output, "output")
            if header.metadata.get("jvpcli.fingerprint") != self._fingerprint(checked):
                return None
            tensors = read_tensors(header)
        except TensorFileError:
            return None
        metadata = header.metadata
        if metadata.get("jvpcli.content_sha256") != tensors_sha256(tensors):
            return None
        is_tuple = "func_output" not in tensors
        if set(tensors) != {k for i in range(len(tensors) // 2) for k in _keys(i, is_tuple)}:
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
        records = _records(tensors, is_tuple)
        checks = self._verify(checked, tensors, records)
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

    def run(
        self, runs: Sequence[CheckedRun], *, resume: bool = False, fail_fast: bool = False
    ) -> Iterator[RunResult | RunFailure]:
        """Run checked runs in order, yielding each one's outcome as it finishes.

        A run that fails, or whose results fail a check, is yielded as a :class:`RunFailure`
        (with a :class:`~jvpcli.errors.VerificationError` and the result) and the next one
        starts. A
        KeyboardInterrupt propagates at once: the outputs of the runs yielded so far are
        complete, and the run in progress leaves no file (outputs are written atomically).
        Each tensor file's tensors are dropped after the last run that reads them.

        Args:
            runs: what :meth:`check` returned for each run.
            resume: reuse the outputs :meth:`reuse` accepts instead of computing them.
            fail_fast: stop after the first failure.

        Yields:
            A :class:`RunResult` (``skipped`` when reused) or a :class:`RunFailure` per run.
        """
        readers = Counter(path for run in runs for path in _tensor_files(run))
        for checked in runs:
            started = time.perf_counter()
            try:
                outcome: RunResult | RunFailure = (
                    self.reuse(checked, started) if resume else None
                ) or self.execute(checked, started)
                failed = [check.message for check in outcome.checks if check.failed]
                if failed:
                    outcome = RunFailure(
                        checked.spec,
                        VerificationError(" ".join(failed)),
                        outcome.total_seconds,
                        outcome,
                    )
            except JvpcliError as error:
                outcome = RunFailure(checked.spec, error, time.perf_counter() - started)
                _drop_locals(error)
            except Exception as error:
                wrapped = JvpcliError(f"{type(error).__name__}: {error}")
                wrapped.__cause__ = error
                outcome = RunFailure(checked.spec, wrapped, time.perf_counter() - started)
                _drop_locals(error)
            for path in _tensor_files(checked):
                readers[path] -= 1
                if not readers[path]:
                    self.files.release(path)
            yield outcome
            if fail_fast and isinstance(outcome, RunFailure):
                return

    def _arguments(
        self, checked: CheckedRun
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
        """The run's inputs and v (``None`` when omitted), as passed to the engine: on its
        device, cast to its dtype; a model is moved and cast likewise."""
        spec, function = checked.spec, checked.function
        dtype = None if spec.dtype is None else getattr(torch, spec.dtype)
        if isinstance(function.func, torch.nn.Module):
            function.func.to(device=checked.device, dtype=dtype)
        inputs = self._load(checked.inputs, checked.order, checked.device, dtype)
        v = (
            None
            if checked.v is None
            else self._load(checked.v, checked.order, checked.device, dtype)
        )
        return inputs, v

    def _verify(
        self,
        checked: CheckedRun,
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
        stats = {
            key: s for r in records for key, s in zip(r.keys, (r.func_output, r.jvp), strict=True)
        }
        checks = [check_finite(stats, spec.fail_on_nonfinite)]
        if spec.check == "finite-differences":
            inputs, v = self._arguments(checked)
            with deterministic_algorithms(spec.deterministic):
                checks.append(
                    check_finite_differences(
                        checked.function.func,
                        inputs,
                        v if v is not None else tuple(torch.ones_like(x) for x in inputs),
                        tensors,
                        batched=spec.batched_v,
                        step=spec.fd_step,
                        rtol=spec.fd_rtol,
                        seed=spec.seed,
                        name=checked.function.name,
                    )
                )
        if spec.expect is not None:
            passed = not any(check.failed for check in checks)
            checks.append(self._golden(spec, spec.expect, tensors, passed))
        return tuple(checks)

    def _golden(
        self, spec: RunSpec, expect: Path, tensors: Mapping[str, torch.Tensor], passed: bool
    ) -> Check:
        """Compare the results with the golden ``expect``; or, with ``update_golden``, write it
        from the output file when the other checks ``passed``."""
        shown = display_path(expect)
        if not self.update_golden:
            golden = read_tensors(self._golden_header(expect))
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

    def _golden_header(self, path: Path) -> TensorFileHeader:
        try:
            return self.files.header(path, "expect")
        except TensorFileError as error:
            if path.exists():
                raise
            raise TensorFileError(
                f"{error.message} Write it with jvpcli compute CONFIG --update-golden."
            ) from None

    def bench(self, checked: CheckedRun, repeats: int) -> BenchResult:
        """Time every method on a checked run's function and tensors, side by side.

        Writes nothing.

        Raises:
            ComputeError: every jvpcli method failed.
        """
        inputs, v = self._arguments(checked)
        if v is None:  # a single one-element input: v is 1
            one = torch.ones_like(inputs[0])
            v = (one.unsqueeze(0) if checked.spec.batched_v else one,)
        spec = checked.spec
        calls = candidates(
            checked.function.func,
            inputs,
            v,
            create_graph=spec.create_graph,
            strict=spec.strict,
            batched_v=spec.batched_v,
        )
        with deterministic_algorithms(spec.deterministic), seeded(spec.seed, checked.device):
            timings = compare(calls, repeats=repeats)
        if fastest(timings) is None:
            failures = "; ".join(
                f"{t.name}: {t.error}" for t in timings.values() if t.name.startswith("jvpcli ")
            )
            raise ComputeError(f"every method failed on {checked.function.name}: {failures}")
        return BenchResult(spec, timings)

    def _load(
        self,
        header: TensorFileHeader,
        order: tuple[str, ...],
        device: torch.device,
        dtype: torch.dtype | None,
    ) -> tuple[torch.Tensor, ...]:
        tensors = self.files.tensors(header)
        return tuple(tensors[name].to(device=device, dtype=dtype) for name in order)

    def _fingerprint(self, checked: CheckedRun) -> str:
        # What identifies a run's result; the config file is left out, so that editing it (to
        # add runs, say) does not make finished runs look stale.
        files = {"inputs": checked.spec.inputs, "v": checked.spec.v, **checked.function.files}
        identity = {
            "settings": checked.spec.settings(),
            "sha256": {role: self.files.sha256(p) for role, p in files.items() if p is not None},
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def _metadata(
        self,
        checked: CheckedRun,
        info: JvpInfo,
        tensors: Mapping[str, torch.Tensor],
        carried_graph: bool,
    ) -> dict[str, str]:
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
                [
                    {"method": f.method, "reason": f.reason, "remedy": f.remedy}
                    for f in info.fallbacks
                ]
            ),
            "jvpcli.seconds": f"{info.seconds:.6f}",
            "jvpcli.strict": json.dumps(spec.strict),
            "jvpcli.create_graph": json.dumps(spec.create_graph),
            "jvpcli.batched_v": json.dumps(spec.batched_v),
            "jvpcli.carried_graph": json.dumps(carried_graph),
            "jvpcli.device": str(checked.device),
            "jvpcli.settings": json.dumps(spec.settings(), sort_keys=True),
            "jvpcli.fingerprint": self._fingerprint(checked),
            "jvpcli.content_sha256": tensors_sha256(tensors),
        }
        if spec.dtype is not None:
            metadata["jvpcli.dtype"] = spec.dtype
        if spec.seed is not None:
            metadata["jvpcli.seed"] = str(spec.seed)
        metadata["jvpcli.deterministic"] = json.dumps(spec.deterministic)
        for role, path in files.items():
            if path is not None:
                metadata[f"jvpcli.sha256.{role}"] = self.files.sha256(path)
        return metadata


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


def _tensor_files(checked: CheckedRun) -> tuple[Path, ...]:
    return (
        (checked.spec.inputs,) if checked.spec.v is None else (checked.spec.inputs, checked.spec.v)
    )


def _keys(index: int, is_tuple: bool) -> tuple[str, str]:
    return output_keys(index if is_tuple else None)


def _records(tensors: Mapping[str, torch.Tensor], is_tuple: bool) -> tuple[OutputRecord, ...]:
    """Records of the outputs and tangents in ``tensors``, keyed as :func:`output_keys` says."""
    records = []
    for position in range(len(tensors) // 2):
        output_key, jvp_key = _keys(position, is_tuple)
        output, tangent = tensors[output_key], tensors[jvp_key]
        records.append(
            OutputRecord(
                index=position if is_tuple else None,
                shape=tuple(output.shape),
                dtype=str(output.dtype).removeprefix("torch."),
                func_output=tensor_stats(output),
                jvp=tensor_stats(tangent),
                jvp_shape=tuple(tangent.shape),
            )
        )
    return tuple(records)

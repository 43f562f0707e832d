"""Checks of a run's results: against a golden file, against finite differences, for finiteness.

Each check returns a :class:`Check`: its status, a one-paragraph message, and how each tensor fared
(:class:`TensorCheck`). Nothing here reads or writes files: the runner hands the tensors in.

**Golden** (:func:`compare_with_golden`): every tensor of the results must be in the golden with
the same dtype and shape, and none more; values must satisfy ``|result - golden| <= atol + rtol *
|golden|`` element-wise (NaN matches NaN, an infinity the same infinity). Bounds not set default
to ``torch.testing.assert_close``'s for the dtype (:data:`GOLDEN_DEFAULTS`); other dtypes must
match exactly.

**Finite differences** (:func:`check_finite_differences`): the function is evaluated in float64
(a float64 copy of a model; the inputs, at the very values the run used, cast to float64) at
``x ± h·v`` and ``x ± 2h·v``, giving the central differences ``D(h)`` and ``D(2h)``. With no step
set, ``h = cbrt(eps64) * max(1, max|x|) / max|v|`` (about 6.1e-6 times the inputs' scale, over
the largest component of v): the step that balances the truncation error (h²) against rounding
(eps64 / h) for central differences. Element i of an output's J·v passes when

    |jvp_i - D(h)_i| <= rtol * max_k |D(h)_k| + |D(h)_i - D(2h)_i|

where ``rtol`` defaults to ``sqrt(eps)`` of the coarsest floating dtype among the inputs, the
model's parameters and the output: 3.5e-4 for float32, 1.5e-8 for float64, 0.031 for float16,
0.088 for bfloat16. The first term is the rounding of the run's own arithmetic, relative to the
output's scale (element-wise relative bounds would flag the entries that cancel to near zero).
The second estimates the finite differences' own error (about three times their truncation error;
large where a kink such as ReLU's lies within the step, which excuses that element alone). A
correct float32 model (the samples) errs by about 1e-7 relative (eps32 = 1.2e-7): 3000 times
under the bound; a rule wrong by 3 % errs by 3e-2: 90 times over it. With ``batched_v``, at most
:data:`FD_DIRECTIONS` directions are checked, evenly spaced from the first to the last. Integer
outputs are skipped.

**Finite** (:func:`check_finite`): NaN and infinite values in the results are a warning, or a
failure with ``fail_on_nonfinite``.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from jvpcli.config import TOLERANCE_KEYS, Tolerance
from jvpcli.containment import describe, failures
from jvpcli.errors import format_shape
from jvpcli.reproducibility import seeded
from jvpcli.tensors import TensorStats

__all__ = [
    "FD_DIRECTIONS",
    "GOLDEN_DEFAULTS",
    "Check",
    "TensorCheck",
    "check_finite",
    "check_finite_differences",
    "compare_with_golden",
    "default_fd_rtol",
    "float64_copy",
]

GOLDEN_DEFAULTS: dict[str, tuple[float, float]] = {
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float32": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7),
    "complex64": (1.3e-6, 1e-5),
}
"""``(rtol, atol)`` of the golden comparison by dtype, where the config sets none: those of
``torch.testing.assert_close``. Other dtypes (integers, bool, float8) must match exactly."""

FD_DIRECTIONS = 8
"""With ``batched_v``, the most directions the finite-difference check evaluates."""

_EPS64 = torch.finfo(torch.float64).eps


@dataclass(frozen=True)
class TensorCheck:
    """How one tensor fared in a check.

    Attributes:
        name: the tensor's key in the output file, e.g. ``jvp.1``.
        status: ``"passed"``, ``"failed"``, ``"warning"`` (non-finite values, not a failure) or
            ``"skipped"`` (not compared; ``message`` says why).
        max_abs_error: the largest absolute difference from the reference (``inf`` where one is
            NaN or infinite and the other is not); ``None`` when nothing was compared.
        max_abs_index: where it is: the element's index (with ``batched_v``, its first entry is
            the direction).
        max_rel_error: the largest relative difference: over ``|reference|`` element-wise for a
            golden, over the output's largest ``|J·v|`` for finite differences.
        max_rel_index: where it is.
        rtol, atol: the bounds applied (for finite differences, ``atol`` is ``rtol * max |J·v|``
            of the direction with the largest error, to which each element's finite-difference
            error estimate is added).
        mismatched: how many elements exceed their bound.
        elements: how many elements were compared.
        got, expected: the result and the reference at ``max_abs_index``.
        message: what went wrong or why nothing was compared; ``None`` when there is nothing
            to add.
    """

    name: str
    status: str
    max_abs_error: float | None = None
    max_abs_index: tuple[int, ...] | None = None
    max_rel_error: float | None = None
    max_rel_index: tuple[int, ...] | None = None
    rtol: float | None = None
    atol: float | None = None
    mismatched: int = 0
    elements: int = 0
    got: complex | None = None
    expected: complex | None = None
    message: str | None = None


@dataclass(frozen=True)
class Check:
    """One check of a run's results.

    Attributes:
        name: ``"finite"``, ``"golden"`` or ``"finite-differences"``.
        status: ``"passed"``, ``"failed"``, ``"warning"`` (non-finite values without
            ``fail_on_nonfinite``), ``"updated"`` (``--update-golden`` wrote the golden) or
            ``"skipped"`` (the golden was not written: the results failed another check).
        message: one paragraph: what was checked, and what differs.
        tensors: how each tensor fared.
        directions: the directions of a batched ``v`` that finite differences checked.
        steps: the finite-difference step h of each direction checked.
    """

    name: str
    status: str
    message: str
    tensors: tuple[TensorCheck, ...] = ()
    directions: tuple[int, ...] | None = None
    steps: tuple[float, ...] | None = None

    @property
    def failed(self) -> bool:
        """Whether the check failed (and so the run does)."""
        return self.status == "failed"


# --------------------------------------------------------------------------------------------
# Finite values


def check_finite(stats: Mapping[str, TensorStats], fail: bool) -> Check:
    """Check that every value of the results is finite.

    Args:
        stats: statistics of each tensor of the results, by name.
        fail: whether non-finite values fail the check (``fail_on_nonfinite``), rather than
            warn.

    Returns:
        ``"passed"``, or ``"failed"`` / ``"warning"`` naming each tensor with NaN or Inf values.
    """
    bad = "failed" if fail else "warning"
    tensors = []
    for name, stat in stats.items():
        counts = ", ".join(
            f"{count} {label}" for count, label in ((stat.nan, "NaN"), (stat.inf, "Inf")) if count
        )
        tensors.append(
            TensorCheck(name, bad, message=f"{counts} values")
            if counts
            else TensorCheck(name, "passed")
        )
    flagged = [f"{t.name} has {t.message}" for t in tensors if t.status != "passed"]
    if not flagged:
        return Check("finite", "passed", "every value is finite.", tuple(tensors))
    reason = " (fail_on_nonfinite)" if fail else ""
    return Check("finite", bad, f"non-finite values{reason}: {'; '.join(flagged)}.", tuple(tensors))


# --------------------------------------------------------------------------------------------
# Goldens


def compare_with_golden(
    results: Mapping[str, Tensor],
    golden: Mapping[str, Tensor],
    tolerance: Callable[[str], Tolerance],
    reference: str,
    named: Collection[str] = (),
) -> Check:
    """Compare a run's results with its golden, tensor by tensor.

    Args:
        results: the output file's tensors, by name (``func_output``, ``jvp``, ``jvp.1``, ...).
        golden: the golden file's tensors, by name.
        tolerance: the configured bounds for a tensor name (``None`` bounds take the dtype's
            defaults, :data:`GOLDEN_DEFAULTS`).
        reference: how messages name the golden file.
        named: the names ``tolerances`` sets bounds for: one naming a tensor the results do not
            hold fails the check (a typo would otherwise loosen nothing, silently).

    Returns:
        ``"passed"``, or ``"failed"`` with each tensor that is missing, extra, of another dtype or
        shape, or differs beyond its bounds, and by how much, where.
    """
    tensors: list[TensorCheck] = []
    for name, result in results.items():
        expected = golden.get(name)
        dtype = _dtype_name(result)
        if expected is None:
            tensors.append(TensorCheck(name, "failed", message="it is not in the golden"))
        elif _dtype_name(expected) != dtype:
            tensors.append(
                TensorCheck(
                    name,
                    "failed",
                    message=f"it is {dtype}, but the golden's is {_dtype_name(expected)}",
                )
            )
        elif expected.shape != result.shape:
            tensors.append(
                TensorCheck(
                    name,
                    "failed",
                    message=f"it has shape {format_shape(result.shape)}, but the golden's has "
                    f"{format_shape(expected.shape)}",
                )
            )
        else:
            tensors.append(_compare_with_golden(name, result, expected, tolerance(name)))
    for name in golden:
        if name not in results:
            tensors.append(
                TensorCheck(name, "failed", message="it is in the golden, but not in the results")
            )
    problems = [_describe(t) for t in tensors if t.status == "failed"]
    problems += [
        f"tolerances sets {name!r}, but the results hold no such tensor"
        for name in named
        if TOLERANCE_KEYS.fullmatch(name) and "." in name and name not in results
    ]
    if problems:
        return Check(
            "golden",
            "failed",
            f"the results differ from the golden {reference}: " + "; ".join(problems) + ".",
            tuple(tensors),
        )
    return Check("golden", "passed", f"the results match the golden {reference}.", tuple(tensors))


def _compare_with_golden(
    name: str, result: Tensor, expected: Tensor, configured: Tolerance
) -> TensorCheck:
    default_rtol, default_atol = GOLDEN_DEFAULTS.get(_dtype_name(result), (0.0, 0.0))
    rtol = default_rtol if configured.rtol is None else configured.rtol
    atol = default_atol if configured.atol is None else configured.atol
    got, want = _wide(result.detach().cpu()), _wide(expected.detach().cpu())
    magnitude = want.abs()
    # An infinite golden value is matched only by itself: no bound reaches it.
    bound = torch.where(torch.isfinite(magnitude), atol + rtol * magnitude, 0.0)
    compared = torch.ones(got.shape, dtype=torch.bool)
    return _tensor_check(name, got, want, bound, compared, magnitude, rtol, atol)


# --------------------------------------------------------------------------------------------
# Finite differences


def default_fd_rtol(dtypes: Collection[torch.dtype]) -> float:
    """The finite-difference check's default relative tolerance: ``sqrt(eps)`` of the coarsest
    floating dtype among ``dtypes`` (float64's when there is none)."""
    eps = max(
        (torch.finfo(_real(d)).eps for d in dtypes if d.is_floating_point or d.is_complex),
        default=_EPS64,
    )
    return math.sqrt(eps)


def check_finite_differences(
    func: Callable[..., object],
    inputs: Sequence[Tensor],
    v: Sequence[Tensor],
    results: Mapping[str, Tensor],
    *,
    batched: bool = False,
    step: float | None = None,
    rtol: float | None = None,
    seed: int | None = None,
    name: str = "the function",
) -> Check:
    """Check each output's J·v against central differences of ``func`` along ``v``, in float64.

    The rule is in this module's docstring. ``func`` is not modified: a model is copied to
    float64. Random number generators are seeded with ``seed`` (when given) before each
    evaluation, so that a function that draws random numbers draws the same ones each time.

    Args:
        func: the function, as the run called it.
        inputs: the inputs, as the run passed them (cast to the run's dtype, on its device).
        v: the direction, one tensor per input; with ``batched``, each holds K directions.
        results: the run's results by name: ``func_output`` and ``jvp`` (or ``func_output.N``
            and ``jvp.N`` for a tuple), as :func:`jvpcli.runner.output_keys` names them.
        batched: whether ``v`` holds K directions along its first dimension.
        step: the step h, or ``None`` to choose it from the inputs' scale.
        rtol: the relative tolerance, or ``None`` for :func:`default_fd_rtol` of the inputs',
            parameters' and outputs' dtypes.
        seed: the run's seed, or ``None``.
        name: how messages name the function.

    Returns:
        ``"passed"``; ``"failed"`` naming each output whose J·v differs beyond the bound, by
        how much, where; or ``"failed"`` when the function cannot be evaluated in float64.
    """
    jvp_names = [key for key in results if key.startswith("jvp")]
    outputs = [results["func_output" + key.removeprefix("jvp")] for key in jvp_names]
    jvps = [results[key] for key in jvp_names]
    device = inputs[0].device if inputs[0].device.type != "mps" else torch.device("cpu")
    parameters = func.parameters() if isinstance(func, torch.nn.Module) else ()
    dtypes = {t.dtype for t in (*inputs, *outputs, *parameters)}
    rtol = default_fd_rtol(dtypes) if rtol is None else rtol
    count = v[0].shape[0] if batched else 1
    directions = _spread(count, FD_DIRECTIONS) if batched else [0]
    points = tuple(_wide(x).to(device) for x in inputs)
    scale = max(1.0, *(_max_abs(x) for x in points))
    steps: list[float] = []
    central: list[list[Tensor]] = []
    estimates: list[list[Tensor]] = []
    try:
        wide = float64_copy(func, device)
        for direction in directions:
            tangent = tuple(_wide(t[direction] if batched else t).to(device) for t in v)
            largest = max(_max_abs(t) for t in tangent)
            h = step if step is not None else _EPS64 ** (1 / 3) * scale / (largest or 1.0)
            values = [
                _evaluate(wide, points, tangent, multiple * h, seed) for multiple in (1, -1, 2, -2)
            ]
            steps.append(h)
            near = _central(values[0], values[1], 2 * h)
            far = _central(values[2], values[3], 4 * h)
            central.append(near)
            estimates.append(
                [(a - b).abs() if _floating(a) else a for a, b in zip(near, far, strict=True)]
            )
    except BaseException as error:
        if not failures(error):
            raise
        return Check(
            "finite-differences",
            "failed",
            f"finite differences: evaluating {name} in float64 failed: {describe(error)}.",
        )
    tensors = []
    for position, (key, output, jvp) in enumerate(zip(jvp_names, outputs, jvps, strict=True)):
        tangents = jvp[directions] if batched else jvp.unsqueeze(0)
        tensors.append(
            _check_output(
                key,
                output,
                tangents,
                [c[position] if position < len(c) else None for c in central],
                [e[position] if position < len(e) else None for e in estimates],
                rtol,
                directions if batched else None,
            )
        )
    reported_directions = tuple(directions) if batched else None
    problems = [_describe(t) for t in tensors if t.status == "failed"]
    if problems:
        listing = "; ".join(problems)
        message = f"J·v differs from central differences of {name} in float64: {listing}."
        status = "failed"
    else:
        checked = ", ".join(t.name for t in tensors if t.status == "passed") or "nothing"
        message = f"J·v matches central differences of {name} in float64 ({checked})."
        status = "passed"
    return Check(
        "finite-differences",
        status,
        message,
        tuple(tensors),
        directions=reported_directions,
        steps=tuple(steps),
    )


def _check_output(
    key: str,
    output: Tensor,
    tangents: Tensor,
    central: Sequence[Tensor | None],
    estimates: Sequence[Tensor | None],
    rtol: float,
    directions: Sequence[int] | None,
) -> TensorCheck:
    """One output's J·v (``tangents``: one per direction) against its central differences."""
    if not _floating(output):
        return TensorCheck(
            key, "skipped", message=f"the output is {_dtype_name(output)}: nothing to differentiate"
        )
    if any(c is None for c in central):
        return TensorCheck(key, "failed", message="the function returned fewer outputs in float64")
    near = torch.stack([c for c in central if c is not None])
    if near.dtype not in (torch.float64, torch.complex128):
        return TensorCheck(
            key,
            "skipped",
            message=f"the function returns it as {_dtype_name(near)} even from float64 inputs: "
            "finite differences would be no more precise than that",
        )
    if near.shape != tangents.shape:
        return TensorCheck(
            key,
            "failed",
            message=f"in float64 the output has shape {format_shape(near.shape[1:])}, but the "
            f"jvp {format_shape(tangents.shape[1:])}",
        )
    estimate = torch.stack([e for e in estimates if e is not None])
    got = _wide(tangents.detach()).to(near.device)
    finite = torch.isfinite(near) & torch.isfinite(estimate)
    magnitudes = torch.where(finite, near.abs(), 0.0).reshape(len(near), -1)
    largest = magnitudes.amax(dim=1) if magnitudes.numel() else magnitudes.new_zeros(len(near))
    shape = (len(near),) + (1,) * (near.dim() - 1)
    scale = largest.reshape(shape).expand(near.shape)
    bound = rtol * scale + torch.where(finite, estimate, 0.0)
    checked = _tensor_check(key, got, near, bound, finite, scale, rtol, None)
    skipped = int((~finite).sum())
    if checked.max_abs_index is None:
        return checked
    index = checked.max_abs_index
    rel_index = checked.max_rel_index or index
    if directions is None:
        index, rel_index = index[1:], rel_index[1:]
    else:
        index = (directions[index[0]], *index[1:])
        rel_index = (directions[rel_index[0]], *rel_index[1:])
    atol = rtol * float(largest[checked.max_abs_index[0]])
    note = (
        f"{skipped} elements not compared: the finite differences are not finite there"
        if skipped
        else None
    )
    return TensorCheck(
        key,
        checked.status,
        checked.max_abs_error,
        index,
        checked.max_rel_error,
        rel_index,
        rtol,
        atol,
        checked.mismatched,
        checked.elements,
        checked.got,
        checked.expected,
        note,
    )


def float64_copy(func: Callable[..., object], device: torch.device) -> Callable[..., object]:
    """``func`` for evaluating in float64: a model is copied to float64 on ``device`` (never cast
    in place: the run's model is shared with other runs); any other callable as it is."""
    if not isinstance(func, torch.nn.Module):
        return func
    with warnings.catch_warnings():
        # Copying an exported program's module trips a deprecation inside torch's own pytree
        # code, which the user can do nothing about.
        warnings.simplefilter("ignore", FutureWarning)
        duplicate = copy.deepcopy(func)
    return duplicate.to(device=device, dtype=torch.float64)


def _evaluate(
    func: Callable[..., object],
    points: tuple[Tensor, ...],
    tangent: tuple[Tensor, ...],
    h: float,
    seed: int | None,
) -> list[Tensor]:
    shifted = tuple(x + h * t for x, t in zip(points, tangent, strict=True))
    with torch.no_grad(), seeded(seed, points[0].device):
        value = func(*shifted)
    values = value if isinstance(value, (tuple, list)) else (value,)
    if not all(isinstance(t, Tensor) for t in values):
        raise TypeError("the function returned something other than a Tensor or a tuple of them")
    return list(values)


def _central(plus: Sequence[Tensor], minus: Sequence[Tensor], width: float) -> list[Tensor]:
    """``(plus - minus) / width`` for each floating output; other outputs as they are."""
    return [(p - m) / width if _floating(p) else p for p, m in zip(plus, minus, strict=True)]


def _spread(count: int, most: int) -> list[int]:
    """Up to ``most`` indices from 0 to ``count - 1``, evenly spaced, first and last included."""
    if count <= most:
        return list(range(count))
    return sorted({round(i * (count - 1) / (most - 1)) for i in range(most)})


# --------------------------------------------------------------------------------------------
# Element-wise comparison


def _tensor_check(
    name: str,
    got: Tensor,
    expected: Tensor,
    bound: Tensor,
    compared: Tensor,
    scale: Tensor,
    rtol: float,
    atol: float | None,
) -> TensorCheck:
    """Compare ``got`` with ``expected`` where ``compared``: an element fails when its absolute
    error exceeds ``bound``; relative errors are over ``scale``; ``rtol`` and ``atol`` are what
    the result reports of the bound. NaN matches NaN, and an infinity the same infinity; any
    other non-finite difference is an infinite error."""
    same = (got == expected) | (torch.isnan(got) & torch.isnan(expected))
    error = torch.nan_to_num((got - expected).abs(), nan=math.inf)
    error = torch.where(same | ~compared, 0.0, error)
    relative = torch.where(error == 0, 0.0, error / scale)
    mismatched = int((compared & (error > bound)).sum())
    elements = int(compared.sum())
    if elements == 0:
        return TensorCheck(name, "passed", rtol=rtol, atol=atol)
    worst = int(error.reshape(-1).argmax())
    worst_relative = int(torch.nan_to_num(relative, nan=math.inf).reshape(-1).argmax())
    return TensorCheck(
        name,
        "failed" if mismatched else "passed",
        float(error.reshape(-1)[worst]),
        _unravel(worst, got.shape),
        float(relative.reshape(-1)[worst_relative]),
        _unravel(worst_relative, got.shape),
        rtol,
        atol,
        mismatched,
        elements,
        _item(got.reshape(-1)[worst]),
        _item(expected.reshape(-1)[worst]),
    )


def _describe(check: TensorCheck) -> str:
    """One clause about a failed tensor, for a check's message."""
    if check.max_abs_error is None or check.mismatched == 0:
        return f"{check.name}: {check.message}"
    bounds = f"rtol={check.rtol:.3g}" + ("" if check.atol is None else f", atol={check.atol:.3g}")
    return (
        f"{check.name}: {check.mismatched} of {check.elements} elements beyond the bound "
        f"({bounds}); largest absolute error {check.max_abs_error:.3g} at index "
        f"{format_shape(check.max_abs_index or ())} (got {_number(check.got)}, expected "
        f"{_number(check.expected)}), largest relative error {check.max_rel_error:.3g} at index "
        f"{format_shape(check.max_rel_index or ())}"
    )


def _unravel(position: int, shape: torch.Size) -> tuple[int, ...]:
    index = []
    for size in reversed(shape):
        position, rest = divmod(position, size)
        index.append(rest)
    return tuple(reversed(index))


def _item(value: Tensor) -> complex:
    number = value.item()
    return number if isinstance(number, complex) else float(number)


def _number(value: complex | None) -> str:
    return "—" if value is None else f"{value:.6g}"


def _wide(tensor: Tensor) -> Tensor:
    """``tensor`` in double precision: float64, or complex128 for a complex tensor."""
    return tensor.to(torch.complex128 if tensor.is_complex() else torch.float64)


def _max_abs(tensor: Tensor) -> float:
    """The largest finite |value| of ``tensor`` (0 for an empty one)."""
    magnitudes = tensor.detach().abs()
    finite = magnitudes[torch.isfinite(magnitudes)]
    return float(finite.max()) if finite.numel() else 0.0


def _floating(tensor: Tensor) -> bool:
    return tensor.is_floating_point() or tensor.is_complex()


def _real(dtype: torch.dtype) -> torch.dtype:
    return dtype.to_real() if dtype.is_complex else dtype


def _dtype_name(tensor: Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")

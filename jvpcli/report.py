"""Summaries of runs and files: rich renderables for people, JSON-ready dicts for machines.

Nothing here prints: the command line prints what these functions build, on its console. The JSON
documents' keys are stable (documented in the README); new keys may be added, none renamed.
This module does not import torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from jvpcli import __version__
from jvpcli.config import RandomDirections
from jvpcli.errors import JvpcliError, display_path, format_shape

if TYPE_CHECKING:
    from jvpcli.config import RunSpec
    from jvpcli.convert import ConvertResult
    from jvpcli.runner import BenchResult, CheckedRun, InspectedFile, RunFailure, RunResult
    from jvpcli.tensors import TensorStats
    from jvpcli.verify import Check

    RunOutcome = RunResult | RunFailure

__all__ = [
    "check_json",
    "check_view",
    "checks_view",
    "convert_view",
    "document",
    "inspect_json",
    "inspect_view",
    "progress_line",
    "run_json",
    "run_view",
    "sweep_json",
    "sweep_progress",
    "sweep_view",
]


def run_view(result: RunResult) -> RenderableType:
    """A run's summary: a table with one row per tensor written, then how it was computed, then
    the checks of the results (golden, finite differences), one row per tensor.

    Non-finite values are flagged in red, and again below the table.
    """
    spec = result.spec
    table = _stats_table(f"{spec.name}: {spec.function}")
    warnings = []
    for output in result.outputs:
        rows = zip(
            output.keys,
            (output.shape, output.jvp_shape),
            (output.func_output, output.jvp),
            strict=True,
        )
        for key, shape, stats in rows:
            table.add_row(key, format_shape(shape), output.dtype, *_stats_cells(stats))
            if not stats.finite:
                warnings.append(f"{key} has {_non_finite(stats)} values")
        table.add_section()
    details = _details()
    details.add_row("method", result.description)
    if result.skipped:
        details.add_row(
            "time",
            f"{_duration(result.seconds)} computing, when written; nothing computed now: the "
            "output is up to date (--resume)",
        )
    else:
        compiling = (
            f" ({_duration(result.compile_seconds)} of it compiling)"
            if result.compile_seconds
            else ""
        )
        details.add_row(
            "time",
            f"{_duration(result.seconds)} computing{compiling}, "
            f"{_duration(result.total_seconds)} in all",
        )
    details.add_row("device", result.device)
    if result.roles:
        details.add_row("inputs", _roles_text(result.roles))
    if result.params:
        details.add_row("v_params", _params_text(result.params, spec.v_params))
    if result.carried_graph:
        details.add_row("graph", "the results carried an autograd graph; saved detached")
    details.add_row("output", display_path(spec.output))
    if spec.expect is not None:
        details.add_row("golden", display_path(spec.expect))
    if spec.seed is not None or spec.deterministic:
        seed = "none" if spec.seed is None else str(spec.seed)
        details.add_row("seed", f"{seed}{', deterministic algorithms' * spec.deterministic}")
    parts: list[RenderableType] = [table, details]
    parts += [Text(f"note: {note}", style="yellow") for note in result.notes]
    parts += [Text(f"warning: {w}", style="bold red") for w in warnings]
    verifications = [check for check in result.checks if check.name != "finite"]
    if verifications:
        parts.append(_checks_table(verifications))
    return Group(*parts)


def _roles_text(roles: Sequence[tuple[str, str]]) -> str:
    """Each input and its role, so that a misnamed tangent cannot make an input silently
    constant: ``inputs_embeds (differentiated), attention_mask (constant)``."""
    return ", ".join(f"{name} ({role})" for name, role in roles)


def _params_text(params: Sequence[str], direction: object) -> str:
    shown = ", ".join(params[:4]) + (f" and {len(params) - 4} more" if len(params) > 4 else "")
    source = f" from {direction}" if isinstance(direction, RandomDirections) else ""
    return f"{len(params)} differentiated{source}: {shown}"


def _checks_table(checks: Sequence[Check]) -> RenderableType:
    table = _Rows(
        "checks", "check", "tensor", "status", "max abs error", "at", "max rel error",
        right=("max abs error", "max rel error"),
    )  # fmt: skip
    details = _details()
    notes = []
    for check in checks:
        if not check.tensors:
            table.add_row(check.name, "—", _status(check.status), "", "", "")
            notes.append(f"{check.name}: {check.message}")
        for tensor in check.tensors:
            index = tensor.max_abs_index
            table.add_row(
                check.name,
                tensor.name,
                _status(tensor.status),
                _number(tensor.max_abs_error),
                "—" if index is None else format_shape(index),
                _number(tensor.max_rel_error),
            )
            if tensor.message:
                notes.append(f"{check.name}: {tensor.name}: {tensor.message}")
        details.add_row(check.name, _bounds(check))
    return Group(table, details, *(Text(note) for note in notes))


def _bounds(check: Check) -> str:
    """How a check bounds the errors, in a few words."""
    if check.name == "finite-differences":
        rtol = next((t.rtol for t in check.tensors if t.rtol is not None), None)
        steps = ", ".join(f"{h:.3g}" for h in check.steps or ())
        directions = ", ".join(str(d) for d in check.directions or ())
        return (
            f"step h = {steps}"
            + (f" (directions {directions})" if check.directions is not None else "")
            + ("" if rtol is None else f"; bound {rtol:.3g} * max |J·v| + the fd error estimate")
        )
    bounds = [
        f"{t.name} rtol {t.rtol:.3g}, atol {t.atol:.3g}"
        for t in check.tensors
        if t.rtol is not None and t.atol is not None
    ]
    return "; ".join(bounds) or check.message


def _status(status: str) -> Text:
    styles = {"passed": "green", "updated": "cyan", "skipped": "dim", "warning": "bold red"}
    return Text(status, style=styles.get(status, "bold red"))


def run_json(result: RunResult) -> dict[str, Any]:
    """A run's summary as a JSON-ready dict (one entry of the document's ``runs``)."""
    return _run_entry(result.spec, result.status, result)


def sweep_json(runs: Sequence[RunSpec], outcomes: Sequence[RunOutcome]) -> list[dict[str, Any]]:
    """Every run of a sweep as a JSON-ready dict: ``ok`` and ``skipped`` runs as
    :func:`run_json` has them, ``failed`` ones with their ``error``, and those that never
    started (after ``--fail-fast`` or Ctrl-C) as ``not run``; result keys are ``null`` where
    there is no result."""
    finished = {outcome.spec.name: outcome for outcome in outcomes}
    return [_run_entry(spec, *_status_of(finished.get(spec.name))) for spec in runs]


def _status_of(outcome: RunOutcome | None) -> tuple[str, RunOutcome | None]:
    return ("not run", None) if outcome is None else (outcome.status, outcome)


def _run_entry(spec: RunSpec, status: str, outcome: RunOutcome | None) -> dict[str, Any]:
    result = _result_of(outcome)
    error = outcome.error if outcome is not None and outcome.status == "failed" else None
    return {
        "name": spec.name,
        "status": status,
        "function": str(spec.function),
        "config": None if spec.config is None else str(spec.config),
        "inputs": str(spec.inputs),
        "v": _direction_json(spec.v),
        "v_params": _direction_json(spec.v_params),
        "roles": None if result is None else dict(result.roles),
        "params": None if result is None else list(result.params),
        "output": str(spec.output),
        "method": spec.method,
        "method_used": None if result is None else result.method_used,
        "fallbacks": None
        if result is None
        else [
            {"method": f.method, "reason": f.reason, "remedy": f.remedy} for f in result.fallbacks
        ],
        "strict": spec.strict,
        "create_graph": spec.create_graph,
        "batched_v": spec.batched_v,
        "carried_graph": None if result is None else result.carried_graph,
        "dtype": spec.dtype,
        "device": spec.device if result is None else result.device,
        "compile": spec.compile,
        "seconds": None if result is None else result.seconds,
        "compile_seconds": None if result is None else result.compile_seconds,
        "total_seconds": None if outcome is None else outcome.total_seconds,
        "outputs": None
        if result is None
        else [
            {
                "index": output.index,
                "path": output.path,
                "shape": list(output.shape),
                "jvp_shape": list(output.jvp_shape),
                "dtype": output.dtype,
                "func_output": _stats_json(output.keys[0], output.func_output),
                "jvp": _stats_json(output.keys[1], output.jvp),
            }
            for output in result.outputs
        ],
        "seed": spec.seed,
        "deterministic": spec.deterministic,
        "expect": None if spec.expect is None else str(spec.expect),
        "check": spec.check,
        "fail_on_nonfinite": spec.fail_on_nonfinite,
        "checks": None if result is None else [_check_json(check) for check in result.checks],
        "notes": None if result is None else list(result.notes),
        "error": None if error is None else _error_json(error),
    }


def _direction_json(direction: object) -> Any:
    if isinstance(direction, RandomDirections):
        return direction.as_json()
    return None if direction is None else str(direction)


def _result_of(outcome: RunOutcome | None) -> RunResult | None:
    """The result of a run: its own, or the one a run whose results failed a check holds."""
    if outcome is None:
        return None
    return outcome.result if outcome.status == "failed" else outcome


def _check_json(check: Check) -> dict[str, Any]:
    return {
        "check": check.name,
        "status": check.status,
        "message": check.message,
        "directions": None if check.directions is None else list(check.directions),
        "steps": None if check.steps is None else list(check.steps),
        "tensors": [
            {
                "name": tensor.name,
                "status": tensor.status,
                "max_abs_error": _finite_or_none(tensor.max_abs_error),
                "max_abs_index": _index_json(tensor.max_abs_index),
                "max_rel_error": _finite_or_none(tensor.max_rel_error),
                "max_rel_index": _index_json(tensor.max_rel_index),
                "rtol": tensor.rtol,
                "atol": tensor.atol,
                "mismatched": tensor.mismatched,
                "elements": tensor.elements,
                "got": _real_or_none(tensor.got),
                "expected": _real_or_none(tensor.expected),
                "message": tensor.message,
            }
            for tensor in check.tensors
        ],
    }


def _index_json(index: tuple[int, ...] | None) -> list[int] | None:
    return None if index is None else list(index)


def _real_or_none(value: complex | None) -> float | None:
    return _finite_or_none(value) if isinstance(value, float) else None


def sweep_view(runs: Sequence[RunSpec], outcomes: Sequence[RunOutcome]) -> RenderableType:
    """A sweep's summary: one row per run (status, method, time, max |jvp|, the checks when any
    run has some, output), then why each failed run failed, then warnings about non-finite
    values, then the counts."""
    finished = {outcome.spec.name: outcome for outcome in outcomes}
    verified = any(spec.expect is not None or spec.check != "none" for spec in runs)
    headings = ("run", "status", "method", "time", "max |jvp|", *(("checks",) * verified), "output")
    table = _Rows(None, *headings, right=("time", "max |jvp|"))
    failures: list[RenderableType] = []
    warnings: list[RenderableType] = []
    counts = {"ok": 0, "skipped": 0, "failed": 0, "not run": 0}
    for spec in runs:
        status, outcome = _status_of(finished.get(spec.name))
        counts[status] += 1
        result = _result_of(outcome)
        style = {"ok": "green", "skipped": "cyan", "failed": "bold red"}.get(status, "dim")
        if outcome is not None and outcome.status == "failed":
            failures.append(
                Text.assemble((f"{spec.name} failed: ", "bold red"), str(outcome.error))
            )
        if result is None:
            time = "—" if outcome is None else _duration(outcome.total_seconds)
            output = display_path(spec.output) if outcome is None else "—"
            cells = ["—", time, "—", *(["—"] if verified else []), output]
        else:
            time = "—" if result.skipped else _duration(result.total_seconds)
            checks = [_checks_cell(result.checks)] if verified else []
            cells = [
                result.method_used,
                time,
                _number(_max_abs_jvp(result)),
                *checks,
                display_path(spec.output),
            ]
            warnings += [
                Text(f"warning: {spec.name}: {check.message}", style="bold red")
                for check in result.checks
                if check.status == "warning"
            ]
        table.add_row(spec.name, Text(status, style=style), *cells)
    summary = ", ".join(f"{count} {status}" for status, count in counts.items() if count)
    total = f"{len(runs)} run{'s' if len(runs) != 1 else ''}"
    return Group(table, *failures, *warnings, Text(f"{total}: {summary or 'none selected'}"))


def _checks_cell(checks: Sequence[Check]) -> Text:
    """The checks of a run in a word or a few: ``passed``, or those that did not simply pass,
    e.g. ``golden FAILED``, ``golden updated``, ``finite warning``."""
    cell = Text()
    for check in checks:
        if check.status == "passed":
            continue
        if cell:
            cell.append(", ")
        cell.append(f"{check.name} ")
        cell.append_text(_status("FAILED" if check.failed else check.status))
    return cell if cell else Text("passed", style="green")


def progress_line(outcome: RunOutcome, done: int, total: int) -> Text:
    """One line about a finished run, for logs: ``[done/total] status name  details``."""
    width = len(str(total))
    spec = outcome.spec
    line = Text(f"[{done:>{width}}/{total}] ")
    if outcome.status == "failed":
        line.append("failed ", style="bold red")
        return line.append(f" {spec.name}: {' '.join(str(outcome.error).split())}")
    if outcome.status == "skipped":
        line.append("skipped", style="cyan")
        return line.append(f" {spec.name}: {display_path(spec.output)} is up to date")
    line.append("ok     ", style="green")
    largest = _max_abs_jvp(outcome)
    line.append(
        f" {spec.name}: {outcome.method_used}, {_duration(outcome.total_seconds)}, max |jvp| "
        f"{'—' if largest is None else f'{largest:.4g}'} → {display_path(spec.output)}"
    )
    for check in outcome.checks:
        if check.status == "warning":
            line.append(f" (warning: {check.message})", style="bold red")
    return line


def sweep_progress(console: Console) -> Progress:
    """A progress bar for a sweep on a terminal: the current run (a task's ``run`` field), runs
    done / total, elapsed time and ETA. It disappears when done, leaving the summary."""
    return Progress(
        TextColumn("{task.fields[run]}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("runs"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def _max_abs_jvp(result: RunResult) -> float | None:
    extremes = [abs(x) for o in result.outputs for x in (o.jvp.min, o.jvp.max) if x is not None]
    if any(math.isnan(x) for x in extremes):
        return math.nan
    return max(extremes, default=None)


def document(error: JvpcliError | None = None, **payload: Any) -> dict[str, Any]:
    """The document ``--json`` prints: whether the command succeeded, and what it produced.

    Args:
        error: the error the command ended with, if any.
        payload: the command's results: ``runs`` (entries from :func:`run_json` or
            :func:`check_json`) or ``file`` (from :func:`inspect_json`).
    """
    return {
        "jvpcli_version": __version__,
        "ok": error is None,
        "exit_code": 0 if error is None else error.exit_code,
        "error": None if error is None else _error_json(error),
        **payload,
    }


def _error_json(error: JvpcliError) -> dict[str, Any]:
    return {
        "type": type(error).__name__,
        "message": error.message,
        "location": None if error.location is None else str(error.location),
    }


def check_view(checked: CheckedRun) -> RenderableType:
    """What ``jvpcli validate`` found: the tensor each parameter gets, whether it is
    differentiated or constant, and where results go."""
    spec = checked.spec
    table = _Rows(
        f"{spec.name}: {spec.function}", "#", "parameter", "tensor", "shape", "dtype", "role",
        right=("#",),
    )  # fmt: skip
    parameters = checked.parameters or ()
    cast = f" → {spec.dtype}" if spec.dtype else ""
    for position, name in enumerate((*checked.order, *checked.keyword)):
        info = checked.inputs.tensors[name]
        if position >= len(checked.order):
            number, parameter = "—", f"{name}="
        else:
            number = str(position)
            parameter = parameters[position] if position < len(parameters) else "—"
        dtype = info.dtype + (cast if info.dtype.startswith(("float", "bfloat", "complex")) else "")
        role = checked.role(name)
        table.add_row(
            number,
            parameter,
            name,
            format_shape(info.shape),
            dtype,
            Text(role, style="green" if role == "differentiated" else "dim"),
        )
    details = _details()
    details.add_row("inputs", display_path(spec.inputs))
    details.add_row("v", _direction_text(spec.v, checked.differentiated))
    if spec.v_params is not None:
        details.add_row("v_params", _params_text(checked.params, spec.v_params))
    details.add_row("method", spec.method)
    details.add_row("device", str(checked.device))
    details.add_row("output", display_path(spec.output))
    if spec.expect is not None:
        details.add_row("golden", display_path(spec.expect))
    return Group(table, details, Text("valid: ready to run (nothing was computed)", style="green"))


def _direction_text(direction: object, differentiated: Sequence[str]) -> str:
    if direction is None:
        return "(omitted: 1)" if differentiated else "(omitted: every input is constant)"
    if isinstance(direction, RandomDirections):
        return str(direction)
    return display_path(direction)  # type: ignore[arg-type]


def checks_view(checked: Sequence[CheckedRun]) -> RenderableType:
    """What ``jvpcli validate`` found for a sweep: one row per run, with its files and method."""
    table = _Rows(None, "run", "function", "inputs", "v", "method", "output")
    for run in checked:
        spec = run.spec
        table.add_row(
            spec.name,
            str(spec.function),
            display_path(spec.inputs),
            _direction_text(spec.v, run.differentiated),
            spec.method,
            display_path(spec.output),
        )
    count = f"{len(checked)} run{'s' if len(checked) != 1 else ''}"
    return Group(table, Text(f"valid: {count} ready (nothing was computed)", style="green"))


def check_json(checked: CheckedRun) -> dict[str, Any]:
    """What ``jvpcli validate`` found, as a JSON-ready dict (one entry of ``runs``)."""
    spec = checked.spec
    return {
        "name": spec.name,
        "status": "valid",
        "function": str(spec.function),
        "config": None if spec.config is None else str(spec.config),
        "inputs": [
            {
                "name": name,
                "position": position if position < len(checked.order) else None,
                "shape": list(checked.inputs.tensors[name].shape),
                "dtype": checked.inputs.tensors[name].dtype,
                "role": checked.role(name),
            }
            for position, name in enumerate((*checked.order, *checked.keyword))
        ],
        "v": _direction_json(spec.v),
        "v_params": _direction_json(spec.v_params),
        "params": list(checked.params),
        "output": str(spec.output),
        "method": spec.method,
        "batched_v": spec.batched_v,
        "dtype": spec.dtype,
        "device": str(checked.device),
        "expect": None if spec.expect is None else str(spec.expect),
        "check": spec.check,
    }


def inspect_view(inspected: InspectedFile) -> RenderableType:
    """A safetensors file's tensors (name, shape, dtype, statistics) and its metadata."""
    header = inspected.header
    table = _stats_table(display_path(header.path))
    for name, info in header.tensors.items():
        stats = inspected.stats[name]
        table.add_row(name, format_shape(info.shape), info.dtype, *_stats_cells(stats))
    if not header.metadata:
        return Group(table, Text("no metadata", style="dim"))
    metadata = _details()
    for key, value in sorted(header.metadata.items()):
        metadata.add_row(key, value)
    return Group(table, Text("metadata", style="italic"), metadata)


def convert_view(result: ConvertResult, source: Path, target: Path) -> RenderableType:
    """What ``jvpcli convert`` wrote: each tensor, and what it left out."""
    table = _Rows(f"{display_path(source)} → {display_path(target)}", "tensor", "shape", "dtype")
    for name, (shape, dtype) in result.tensors.items():
        table.add_row(name, format_shape(shape), dtype)
    parts: list[RenderableType] = [table]
    if result.note:
        parts.append(Text(f"note: {result.note}", style="yellow"))
    if result.skipped:
        shown = ", ".join(result.skipped[:8]) + (
            f" and {len(result.skipped) - 8} more" if len(result.skipped) > 8 else ""
        )
        parts.append(Text(f"left out (not tensors): {shown}", style="dim"))
    count = len(result.tensors)
    parts.append(Text(f"wrote {count} tensor{'s' * (count != 1)}", style="green"))
    return Group(*parts)


def inspect_json(inspected: InspectedFile) -> dict[str, Any]:
    """A safetensors file's tensors and metadata as a JSON-ready dict."""
    header = inspected.header
    return {
        "path": str(header.path.resolve()),
        "tensors": [
            {
                "name": name,
                "shape": list(info.shape),
                "dtype": info.dtype,
                **_stats_json(name, inspected.stats[name]),
            }
            for name, info in header.tensors.items()
        ],
        "metadata": dict(header.metadata),
    }


def _table(title: str | None) -> Table:
    return Table(
        title=title,
        box=box.SIMPLE_HEAD,
        title_justify="left",
        collapse_padding=True,
        pad_edge=False,
    )


def _stats_table(title: str) -> _Rows:
    return _Rows(title, "tensor", "shape", "dtype", "norm", "min", "max", "finite",
                 right=("norm", "min", "max"))  # fmt: skip


def _stats_cells(stats: TensorStats) -> tuple[Text, ...]:
    return _number(stats.norm), _number(stats.min), _number(stats.max), _finite(stats)


def _details() -> _Details:
    return _Details()


_SHORT_CELL = 24  # in the block layout, a longer cell (a path) gets a line of its own


class _Rows:
    """Rows of cells under headings: a table when it fits the width, else one block per row.

    Names, paths and digests are what people copy, so they are never split: in the table every
    column keeps its width (nothing folds); when the table is wider than the console, each row
    becomes a line headed by its first cell, ``heading value`` for the short cells, and a line of
    its own for each long one (a path), which the terminal may wrap but no renderer splits.
    """

    def __init__(self, title: str | None, *columns: str, right: Sequence[str] = ()) -> None:
        self.title = title
        self.columns = columns
        self.right = set(right)
        self.rows: list[tuple[RenderableType, ...] | None] = []

    def add_row(self, *cells: RenderableType) -> None:
        self.rows.append(cells)

    def add_section(self) -> None:
        self.rows.append(None)

    def table(self) -> Table:
        table = _table(self.title)
        for index, heading in enumerate(self.columns):
            justify = "right" if heading in self.right else "left"
            table.add_column(heading, justify=justify, no_wrap=True, style="bold" * (index == 0))
        for cells in self.rows:
            if cells is None:
                table.add_section()
            else:
                table.add_row(*cells)
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table = self.table()
        natural = Measurement.get(console, options.update_width(1 << 16), table).maximum
        if natural <= options.max_width:
            yield table
            return
        if self.title:
            yield Text(self.title, style="italic")
        for cells in self.rows:
            if cells is None:
                continue
            head, *rest = (_plain(cell) for cell in cells)
            line = Text(head.plain, style="bold")
            for heading, cell in zip(self.columns[1:], rest, strict=True):
                if len(cell) > _SHORT_CELL:
                    continue
                line.append(f"  {heading} ", style="dim")
                line.append_text(cell)
            yield line
            for heading, cell in zip(self.columns[1:], rest, strict=True):
                if len(cell) > _SHORT_CELL:
                    yield Text.assemble((f"  {heading} ", "dim"), cell)


def _plain(cell: RenderableType) -> Text:
    return cell if isinstance(cell, Text) else Text(str(cell))


class _Details:
    """``key  value`` lines, keys aligned: a value (a path, a digest) is never split."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, RenderableType]] = []

    def add_row(self, key: str, value: RenderableType) -> None:
        self.rows.append((key, value))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = max((len(key) for key, _ in self.rows), default=0)
        for key, value in self.rows:
            yield Text.assemble((f"{key:<{width}}  ", "dim"), _plain(value))


def _stats_json(key: str, stats: TensorStats) -> dict[str, Any]:
    return {
        "name": key,
        "norm": _finite_or_none(stats.norm),
        "min": _finite_or_none(stats.min),
        "max": _finite_or_none(stats.max),
        "finite": stats.finite,
        "nan": stats.nan,
        "inf": stats.inf,
    }


def _finite_or_none(value: float | None) -> float | None:
    # JSON has no NaN or Infinity: such values are null, and the nan / inf counts say why.
    return value if value is not None and math.isfinite(value) else None


def _number(value: float | None) -> Text:
    if value is None:
        return Text("—", style="dim")
    if not math.isfinite(value):
        return Text(str(value), style="bold red")
    return Text(f"{value:.4g}")


def _finite(stats: TensorStats) -> Text:
    if stats.finite:
        return Text("yes", style="green")
    return Text(f"NO: {_non_finite(stats)}", style="bold red")


def _non_finite(stats: TensorStats) -> str:
    counts = [(stats.nan, "NaN"), (stats.inf, "Inf")]
    return ", ".join(f"{count} {label}" for count, label in counts if count)


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    return f"{seconds:.3g} s"


def bench_view(results: Sequence[BenchResult]) -> RenderableType:
    """What ``jvpcli bench`` measured: each candidate's median, its range (fastest-slowest round),
    the median as a multiple of the forward pass and the errors of those that failed; which
    jvpcli method is fastest, or that the fastest are within noise of each other; and a warning
    when rounds disagree."""
    from jvpcli.benchmark import FORWARD

    parts: list[RenderableType] = []
    for result in results:
        timings = result.timings
        base = timings[FORWARD].median
        table = _table(f"{result.spec.name}: {result.spec.function}")
        table.add_column("candidate")
        for column in ("median", "range", "x forward"):
            table.add_column(column, justify="right")
        for timing in timings.values():
            median = timing.median
            table.add_row(
                timing.name,
                "fails" if median is None else _duration(median),
                "" if median is None else _duration_range(timing.min, timing.max),
                "" if median is None or not base else f"{median / base:.2f}x",
            )
        parts.append(table)
        parts += [
            Text(f"{t.name} failed: {t.error}", style="red") for t in timings.values() if t.error
        ]
        parts.append(Text(_bench_summary(timings), style="bold"))
        warning = _noise_warning(timings)
        if warning:
            parts.append(Text(warning, style="yellow"))
        parts.append(Text(""))
    return Group(*parts[:-1])


def _duration_range(low: float, high: float) -> str:
    """``0.118-0.136 ms``: two durations in the unit :func:`_duration` gives the larger."""
    if high < 1:
        return f"{low * 1000:.3g}-{high * 1000:.3g} ms"
    return f"{low:.3g}-{high:.3g} s"


def _bench_summary(timings: Any) -> str:
    """``fastest: METHOD`` and how it compares with the faster PyTorch API, naming no winner
    where the candidates are within noise of each other."""
    from jvpcli.benchmark import PYTORCH_PEERS, fastest, tied, within_noise

    leaders = tied(timings)
    if len(leaders) > 1:
        names = ", ".join(t.name.removeprefix("jvpcli ") for t in leaders)
        return f"fastest: none clearly; {names} are within noise of each other"
    (best,) = leaders
    summary = f"fastest: {best.name.removeprefix('jvpcli ')}"
    peer = fastest({n: t for n, t in timings.items() if n in PYTORCH_PEERS}, prefix="torch.")
    if peer is None:
        return summary
    if within_noise(best, peer):
        return summary + f", within noise of the faster PyTorch API ({peer.name})"
    return summary + f", {peer.median / best.median:.2f}x the speed of the faster PyTorch API"


def _noise_warning(timings: Any) -> str | None:
    from jvpcli.benchmark import NOISY_SPREAD, noisy

    spreads = ", ".join(f"{t.name} {t.spread:.0%}" for t in noisy(timings))
    if not spreads:
        return None
    return (
        f"warning: rounds disagree by more than {NOISY_SPREAD:.0%} ({spreads}): the machine "
        "looks busy; rerun on a quiet machine or with more --repeats."
    )


def bench_json(result: BenchResult) -> dict[str, Any]:
    """One run's entry in ``jvpcli bench --json``: median, fastest and slowest round in seconds
    and spread (``null`` for a candidate that failed), errors, the fastest jvpcli method
    (``null`` when the fastest are within noise of each other, then listed in
    ``within_noise``), the candidates whose rounds disagree (``noisy``) and the number of timed
    rounds."""
    from jvpcli.benchmark import noisy, tied

    timings = result.timings
    leaders = [t.name.removeprefix("jvpcli ") for t in tied(timings)]
    return {
        "name": result.spec.name,
        "function": str(result.spec.function),
        "median_seconds": {name: t.median for name, t in timings.items()},
        "min_seconds": {name: t.min for name, t in timings.items()},
        "max_seconds": {name: t.max for name, t in timings.items()},
        "spread": {name: t.spread for name, t in timings.items()},
        "errors": {name: t.error for name, t in timings.items() if t.error},
        "fastest": leaders[0] if len(leaders) == 1 else None,
        "within_noise": leaders if len(leaders) > 1 else [],
        "noisy": [t.name for t in noisy(timings)],
        "rounds": max(len(t.times) for t in timings.values()),
    }

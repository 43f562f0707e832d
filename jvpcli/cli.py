"""The ``jvpcli`` command line: parse, call the library, print, exit with the right code.

Exit codes: 0 success; 1 a run failed while computing; 2 an unusable command line, config or input
file, found before computing; 130 interrupted by Ctrl-C; 143 terminated by SIGTERM (handled like
Ctrl-C). torch is imported inside the commands
only, so ``--help``, ``--version`` and shell completion answer without loading it.
"""

from __future__ import annotations

import contextlib
import json
import platform
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from jvpcli import __version__
from jvpcli._malloc import tune as tune_malloc
from jvpcli.config import (
    DTYPES,
    METHODS,
    Override,
    RunSpec,
    Shard,
    json_schema,
    load_sweep,
    parse_assignment,
)
from jvpcli.errors import (
    ConfigError,
    Interrupted,
    JvpcliError,
    OverwriteError,
    RunsFailed,
    Terminated,
    display_path,
)
from jvpcli.files import same_file
from jvpcli.junit import junit_document, write_junit
from jvpcli.report import (
    bench_json,
    bench_view,
    check_json,
    check_view,
    checks_view,
    convert_view,
    document,
    inspect_json,
    inspect_view,
    progress_line,
    run_json,
    run_view,
    sweep_json,
    sweep_progress,
    sweep_view,
)

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from jvpcli.runner import CheckedRun, RunFailure, RunResult

__all__ = ["app", "main"]


class _PlainFlags:
    """Plain flags (``--json``, ``--help``, ``--install-completion``) show no value placeholder
    in the help: ``<bool>`` after them invites ``--json true``."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class _Command(_PlainFlags, TyperCommand):
    pass


class _Group(_PlainFlags, TyperGroup):
    pass


app = typer.Typer(
    name="jvpcli",
    cls=_Group,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)

ConfigArgument = Annotated[
    Path,
    typer.Argument(help="YAML config file; relative paths in it resolve against its folder."),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override a config key (dotted for nested ones, e.g. function.init.width=64); "
        "VALUE is read as YAML. Repeatable.",
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option("--json", metavar="", help="Print a machine-readable JSON summary to stdout."),
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", metavar="", help="Print nothing on success.")
]
DebugOption = Annotated[
    bool, typer.Option("--debug", metavar="", help="Show Python tracebacks of errors.")
]


PlotOption = Annotated[
    Path | None,
    typer.Option(
        metavar="PNG",
        help="Also draw the tensors into a PNG: a histogram of each, and an image of the last two "
        "dimensions of each with two or more (needs the plot extra: pip install 'jvpcli[plot]').",
    ),
]


def _print_version(value: bool) -> None:
    if not value:
        return
    try:
        torch_version = f"torch {metadata.version('torch')}"
    except metadata.PackageNotFoundError:
        torch_version = "torch not installed"
    typer.echo(f"jvpcli {__version__} ({torch_version}, Python {platform.python_version()})")
    raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            metavar="",
            callback=_print_version,
            is_eager=True,
            help="Print the versions of jvpcli, torch and Python, and exit.",
        ),
    ] = False,
) -> None:
    """Jacobian-vector products J_f(x)·v of PyTorch functions and saved models.

    Exit codes: 0 success, 1 a run failed computing, 2 an unusable command line, config or file,
    130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
    """


@app.command(cls=_Command)
def compute(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="YAML config file; relative paths in it resolve against its folder. "
            "Without one, give --function, --inputs and --output.",
            show_default=False,
        ),
    ] = None,
    function: Annotated[
        str | None,
        typer.Option("--function", "-f", help="FILE.py:NAME or package.module:NAME."),
    ] = None,
    inputs: Annotated[
        Path | None, typer.Option("--inputs", "-i", help="Safetensors file with the inputs.")
    ] = None,
    v: Annotated[
        Path | None, typer.Option("--v", help="Safetensors file with the direction v.")
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help="Safetensors file to write; a folder (ending in /) for one file per run in it.",
        ),
    ] = None,
    method: Annotated[
        str | None, typer.Option(metavar="METHOD", help=f"How to compute: {', '.join(METHODS)}.")
    ] = None,
    strict: Annotated[
        bool | None,
        typer.Option(
            "--strict/--no-strict",
            metavar="",
            help="Fail when outputs and inputs are independent.",
            show_default=False,
        ),
    ] = None,
    create_graph: Annotated[
        bool | None,
        typer.Option(
            "--create-graph/--no-create-graph",
            metavar="",
            help="Compute with an autograd graph.",
            show_default=False,
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(metavar="DEVICE", help="Where to compute: cpu, cuda, cuda:N, mps or auto."),
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(metavar="DTYPE", help=f"Cast inputs and v to {', '.join(DTYPES)}.")
    ] = None,
    set_: SetOption = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            metavar="",
            help="Skip runs whose output exists, intact, from the same settings and input files.",
        ),
    ] = False,
    fail_fast: Annotated[
        bool,
        typer.Option("--fail-fast", metavar="", help="Stop a sweep at its first failed run."),
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            metavar="K/N",
            help="Run only the K-th of N slices of the runs (K from 1), dealt round-robin: N "
            "jobs with K = 1..N cover a sweep exactly once.",
        ),
    ] = None,
    update_golden: Annotated[
        bool,
        typer.Option(
            "--update-golden",
            metavar="",
            help="Write each run's results to its expect file (when its other checks pass) "
            "instead of comparing them with it.",
        ),
    ] = False,
    junit_xml: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="Also write a JUnit XML report: one test case per run, a failure per failed "
            "run or check (written even when runs fail).",
        ),
    ] = None,
    executor: Annotated[
        str | None,
        typer.Option(
            metavar="EXECUTOR",
            help="Where the runs execute: local (this process, in order) or ray (Ray tasks; "
            "needs the ray extra: pip install 'jvpcli[ray]').",
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            metavar="ADDRESS",
            help="With --executor ray: the cluster to run on (default: RAY_ADDRESS, else a "
            "local instance sized to this machine).",
        ),
    ] = None,
    max_retries: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            min=0,
            help="With --executor ray: run a run whose worker died (killed, out of memory, a "
            "lost node) up to N more times. Default: 0.",
        ),
    ] = None,
    ray_upload: Annotated[
        bool,
        typer.Option(
            "--ray-upload",
            metavar="",
            help="With --executor ray: ship the config's folder to the workers (Ray's "
            "working_dir) instead of reading files through a shared filesystem. Outputs must "
            "still be on a path the workers and this machine share.",
        ),
    ] = False,
    plot: PlotOption = None,
    json_: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Compute J_f(x)·v as a config describes, write func_output and jvp, print a summary.

    Options override the config's keys (in every run of a sweep); without a config they describe
    the whole run. A sweep shows its progress on stderr, runs on past a failed run (exit 1 at the
    end) and ends with a table of every run. Results are checked as the config asks (expect,
    check, fail_on_nonfinite): a run whose results fail a check fails (exit 1).
    """
    stdout, stderr = _consoles()
    record = _Record(config, shard, update_golden)
    named: dict[str, Any] = {
        "function": function,
        "inputs": inputs,
        "v": v,
        "output": output,
        "method": method,
        "strict": strict,
        "create_graph": create_graph,
        "device": device,
        "dtype": dtype,
        "executor": executor,
    }
    payload: dict[str, Any] = {"runs": []}
    ray_options = {"--ray-address": ray_address, "--max-retries": max_retries}
    ray_options["--ray-upload"] = ray_upload or None
    with _reporting(stdout, stderr, json_, debug, payload), contextlib.ExitStack() as stack:
        tune_malloc()
        if junit_xml is not None:
            from jvpcli.runner.planning import check_writable

            check_writable(junit_xml.absolute(), "--junit-xml")
            if junit_xml.is_dir():
                raise ConfigError(
                    f"--junit-xml {display_path(junit_xml)} is a folder; name a file."
                )
        with _junit_report(junit_xml, record, stderr):
            overrides = _overrides(set_)
            for key, value in named.items():
                if value is not None:
                    plain = str(value) if isinstance(value, Path) else value
                    overrides.append((key, plain, "--" + key.replace("_", "-")))
            selection = None if shard is None else Shard.parse(shard)
            sweep = load_sweep(config, overrides)
            if update_golden and not any(spec.expect is not None for spec in sweep.runs):
                raise ConfigError(
                    "--update-golden: no run sets expect, so there is no golden to write; add "
                    "e.g. expect: goldens/{name}.safetensors to the config."
                )
            remote = _executor(sweep.runs, ray_options) == "ray"
            if remote:
                from jvpcli.runner.ray_executor import RayExecutor, import_ray

                import_ray()  # before anything is checked: exit 2 at once without it
            runs = sweep.runs if selection is None else selection.select(sweep.runs)
            from jvpcli.runner import WorkerCache, plan_runs, run_locally

            writes = {"--junit-xml": junit_xml, "--plot": plot}
            if plot is not None:
                if sweep.is_sweep:
                    raise ConfigError(
                        "--plot draws the tensors of one run, and this config is a sweep: plot a "
                        "run's output with jvpcli inspect OUTPUT --plot PNG."
                    )
                _check_plot_path(plot, [])
            # With Ray, the runs compute elsewhere: a device this machine lacks is theirs to find.
            cache = WorkerCache(elsewhere=remote)
            checked = plan_runs(
                runs,
                cache,
                update_golden=update_golden,
                name_runs=sweep.is_sweep,
                writes={option: path for option, path in writes.items() if path is not None},
            )
            record.runs = [run.spec for run in checked]
            record.planned = True

            def execute(fail_fast: bool) -> Iterator[RunResult | RunFailure]:
                if not remote:
                    return run_locally(checked, cache, resume=resume, fail_fast=fail_fast)
                ray = RayExecutor(ray_address, max_retries=max_retries or 0, upload=ray_upload)
                stack.callback(ray.close)
                described = ray.connect(checked)
                if not quiet:
                    _show(stderr, Text(described))
                return ray.run(checked, resume=resume, fail_fast=fail_fast)

            if sweep.is_sweep or not checked:
                _compute_sweep(
                    execute(fail_fast) if checked else iter(()),
                    checked,
                    (stdout, stderr),
                    payload,
                    record.outcomes,
                    in_order=not remote,
                    json_output=json_,
                    quiet=quiet,
                )
                return
            with contextlib.closing(execute(True)) as stream:
                (outcome,) = stream
            record.outcomes.append(outcome)
            if outcome.status == "failed":
                if outcome.result is not None:
                    # The run computed, and its results failed a check: show them.
                    payload["runs"] = sweep_json(record.runs, [outcome])
                    if not json_:
                        _show(stdout, run_view(outcome.result))
                raise outcome.error
            if plot is not None:
                from jvpcli.tensors import read_header, read_tensors

                written = read_tensors(read_header(outcome.spec.output, "output"))
                _plot(written, plot, f"{outcome.spec.name}: {outcome.spec.function}")
            if json_:
                _print_json(stdout, document(runs=[run_json(outcome)]))
            elif not quiet:
                _show(stdout, run_view(outcome))


def _executor(runs: Sequence[RunSpec], ray_options: dict[str, Any]) -> str:
    """The executor every run names (``local`` or ``ray``).

    Raises:
        ConfigError: runs name different executors, or Ray's options are given without Ray.
    """
    named = sorted({spec.executor for spec in runs})
    if len(named) > 1:
        raise ConfigError(
            f"the runs of this config name different executors ({', '.join(named)}): one command "
            "runs on one executor. Set executor at the top level, or pass --executor."
        )
    executor = named[0] if named else "local"
    given = [option for option, value in ray_options.items() if value is not None]
    if executor != "ray" and given:
        raise ConfigError(
            f"{', '.join(given)} only applies with --executor ray (or executor: ray in the "
            "config); this command runs locally."
        )
    return executor


@dataclass
class _Record:
    """What a ``compute`` command ran, for its JUnit report: filled as it goes."""

    config: Path | None
    shard: str | None
    update_golden: bool
    runs: list[RunSpec] = field(default_factory=list)
    outcomes: list[RunResult | RunFailure] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    planned: bool = False  # every run checked, the report's path among them


@contextlib.contextmanager
def _junit_report(path: Path | None, record: _Record, stderr: Console) -> Iterator[None]:
    """Write the JUnit report of what ``record`` holds when the block ends, however it ends
    (errors and Ctrl-C propagate after it is written).

    Raises:
        ConfigError: the report cannot be written, when the block succeeded (when it failed,
            that is said on stderr, and its own error propagates).
    """
    if path is None:
        yield
        return
    try:
        yield
    except OverwriteError as refused:
        # The report is checked first: when a run's output is refused, the report is safe.
        if not same_file(refused.target, path):
            record.planned = True
            _write_junit(path, record, refused)
        raise  # else the report itself would destroy a file the command reads: none is written
    except BaseException as caught:
        error = caught if isinstance(caught, JvpcliError) else None
        if isinstance(caught, KeyboardInterrupt):
            error = _interruption(caught)
        elif error is None:
            error = JvpcliError(f"{type(caught).__name__}: {caught}")
        try:
            _write_junit(path, record, error)
        except ConfigError as failure:
            _show(stderr, Text.assemble(("error: ", "bold red"), str(failure)))
        raise
    _write_junit(path, record, None)


def _write_junit(path: Path, record: _Record, error: JvpcliError | None) -> None:
    if not record.planned and path.exists() and not _is_junit_report(path):
        # An error before every file the command reads was known: a report may replace only
        # an earlier report, never a file that may be one of them.
        raise ConfigError(
            f"the JUnit report was not written: {display_path(path)} exists and is not a JUnit "
            "report, and the command stopped before it could tell whether it reads it."
        )
    properties = {"jvpcli.version": __version__, "update_golden": json.dumps(record.update_golden)}
    if record.config is not None:
        properties["config"] = display_path(record.config)
    if record.shard is not None:
        properties["shard"] = record.shard
    report = junit_document(
        "jvpcli" if record.config is None else record.config.stem,
        record.runs,
        record.outcomes,
        error=error,
        seconds=time.perf_counter() - record.started,
        properties=properties,
    )
    try:
        write_junit(path, report)
    except OSError as failure:
        reason = failure.strerror or failure
        raise ConfigError(f"cannot write --junit-xml {display_path(path)}: {reason}.") from None


def _is_junit_report(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            head = file.read(4096)
    except OSError:
        return False
    return head.lstrip().startswith(b"<?xml") and b"<testsuite" in head


def _compute_sweep(
    stream: Iterator[RunResult | RunFailure],
    checked: Sequence[CheckedRun],
    consoles: tuple[Console, Console],
    payload: dict[str, Any],
    outcomes: list[RunResult | RunFailure],
    *,
    in_order: bool,
    json_output: bool,
    quiet: bool,
) -> None:
    """Run the checked runs of a sweep, its progress on stderr, appending each outcome to
    ``outcomes`` as it finishes; fill ``payload["runs"]`` with every run; print the JSON
    document, or the summary table (unless quiet and all went well).

    Args:
        stream: the executor's outcomes, as the runs finish.
        in_order: whether they finish in the order of ``checked`` (the progress bar then names
            the run in progress).

    Raises:
        Interrupted: Ctrl-C, after the summary of what finished.
        RunsFailed: some runs failed, after the summary.
    """
    stdout, stderr = consoles
    runs = [run.spec for run in checked]
    interrupted: KeyboardInterrupt | None = None
    try:
        with _SweepProgress(stderr, runs, quiet, in_order) as progress, contextlib.closing(stream):
            for outcome in stream:
                outcomes.append(outcome)
                progress.finished(outcome)
    except KeyboardInterrupt as caught:
        interrupted = caught
    payload["runs"] = sweep_json(runs, outcomes)
    failed = [outcome for outcome in outcomes if outcome.status == "failed"]
    error: JvpcliError | None = None
    if interrupted is not None:
        error = _interruption(
            interrupted,
            f" after {len(outcomes)} of {len(runs)} runs; run the same command with --resume to "
            "skip the finished ones",
        )
    elif failed:
        names = [outcome.spec.name for outcome in failed]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        stopped = " (--fail-fast: the rest did not run)" if len(outcomes) < len(runs) else ""
        error = RunsFailed(f"{len(failed)} of {len(runs)} runs failed: {shown}{stopped}.")
        # --debug then shows the first failure's traceback too.
        error.__cause__ = failed[0].error
    if json_output:
        if error is None:
            _print_json(stdout, document(**payload))
    elif error is not None or not quiet:
        _show(stdout, sweep_view(runs, outcomes))
    if error is not None:
        raise error


class _SweepProgress:
    """A sweep's progress on stderr: a bar on a terminal, one line per finished run otherwise
    (logs), nothing when quiet."""

    def __init__(
        self, console: Console, runs: Sequence[RunSpec], quiet: bool, in_order: bool = True
    ) -> None:
        self._console = console
        self._runs = runs
        self._quiet = quiet
        self._in_order = in_order
        self._done = 0
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> _SweepProgress:
        if not self._quiet and self._console.is_interactive:
            self._bar = sweep_progress(self._console)
            self._bar.start()
            self._task = self._bar.add_task("", total=len(self._runs), run=self._current())
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def finished(self, outcome: RunResult | RunFailure) -> None:
        """Count a finished run, and show it."""
        self._done += 1
        line = progress_line(outcome, self._done, len(self._runs))
        if self._bar is not None and self._task is not None:
            if outcome.status == "failed":
                # Printed above the bar, so that it stays when the bar goes.
                self._bar.console.print(line)  # on a terminal: wrapped at word boundaries
            self._bar.update(self._task, advance=1, run=self._current())
        elif not self._quiet:
            self._console.print(line, soft_wrap=True, highlight=False)

    def _current(self) -> str:
        if not self._in_order:
            return ""  # runs finish in any order: which run is next is not known
        return self._runs[self._done].name if self._done < len(self._runs) else ""


@app.command(cls=_Command)
def validate(
    config: ConfigArgument,
    set_: SetOption = None,
    json_: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Check a config and every file it names, without computing.

    Checks the keys and values, that each file exists, the tensors' names, shapes and dtypes
    (from the safetensors headers), that the function loads, and how inputs bind to its
    parameters; for a sweep, every run, and lists them.
    """
    stdout, stderr = _consoles()
    with _reporting(stdout, stderr, json_, debug, {"runs": []}):
        sweep = load_sweep(config, _overrides(set_))
        from jvpcli.runner import WorkerCache, plan_runs

        checked = plan_runs(sweep.runs, WorkerCache(), name_runs=sweep.is_sweep)
        if json_:
            _print_json(stdout, document(runs=[check_json(run) for run in checked]))
        elif not quiet:
            _show(stdout, checks_view(checked) if sweep.is_sweep else check_view(checked[0]))


@app.command(cls=_Command)
def schema() -> None:
    """Print the JSON Schema of config files, for editors to complete and check them."""
    stdout, _ = _consoles()
    _print_json(stdout, json_schema())


@app.command("inspect", cls=_Command)
def inspect_command(
    file: Annotated[Path, typer.Argument(help="A safetensors file.")],
    plot: PlotOption = None,
    json_: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Print a safetensors file's tensors (name, shape, dtype, statistics) and metadata."""
    stdout, stderr = _consoles()
    with _reporting(stdout, stderr, json_, debug, {"file": None}):
        from jvpcli.runner import inspect_file

        if plot is not None:
            _check_plot_path(plot, [file])
        inspected = inspect_file(file)
        if plot is not None:
            from jvpcli.tensors import read_tensors

            _plot(read_tensors(inspected.header), plot, display_path(file))
        if json_:
            _print_json(stdout, document(file=inspect_json(inspected)))
        else:
            _show(stdout, inspect_view(inspected))


@app.command(cls=_Command)
def convert(
    source: Annotated[Path, typer.Argument(help="A torch.save file (a state dict of tensors).")],
    target: Annotated[Path, typer.Argument(help="The safetensors file to write.")],
    json_: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Convert a torch.save file of tensors (a state dict, a checkpoint) to safetensors.

    The file is loaded with torch.load(weights_only=True), which builds tensors and plain
    containers only and refuses any other object instead of running the code a pickle names:
    a pickled nn.Module cannot be converted this way; save its state_dict() instead.
    """
    stdout, stderr = _consoles()
    with _reporting(stdout, stderr, json_, debug, {"file": None}):
        from jvpcli.convert import convert_to_safetensors
        from jvpcli.runner.planning import check_writable

        check_writable(target.absolute(), "target")
        result = convert_to_safetensors(source, target)
        if json_:
            _print_json(
                stdout,
                document(
                    file={
                        "path": str(target.absolute()),
                        "tensors": [
                            {"name": name, "shape": list(shape), "dtype": dtype}
                            for name, (shape, dtype) in result.tensors.items()
                        ],
                        "skipped": list(result.skipped),
                        "note": result.note,
                    }
                ),
            )
        else:
            _show(stdout, convert_view(result, source, target))


def _check_plot_path(plot: Path, reads: Sequence[Path]) -> None:
    from jvpcli.runner.planning import check_writable

    check_writable(plot.absolute(), "--plot")
    if plot.is_dir():
        raise ConfigError(f"--plot {display_path(plot)} is a folder; name a PNG file.")
    for read in reads:
        if same_file(plot, read):
            raise ConfigError(
                f"--plot {display_path(plot)} is the file {display_path(read)} the command "
                "reads; writing it would destroy it."
            )


def _plot(tensors: Any, path: Path, title: str) -> None:
    from jvpcli.plots import plot_tensors

    try:
        plot_tensors(tensors, path, title=title)
    except OSError as error:
        reason = error.strerror or error
        raise JvpcliError(f"cannot write --plot {display_path(path)}: {reason}.") from None


@app.command(cls=_Command)
def bench(
    config: ConfigArgument,
    set_: SetOption = None,
    repeats: Annotated[
        int, typer.Option(min=1, help="Timed rounds per candidate, after one warm-up round.")
    ] = 11,
    json_: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Time every method on a config's own function and tensors; say which is fastest.

    Runs the plain forward pass, jvpcli's methods (auto, forward, double-backward) and those of
    PyTorch's two jvp APIs that take the config's flags, interleaved (one call each per round),
    and reports each one's median and range, the median as a multiple of the forward pass. Names
    no winner among methods within noise of each other (the middle halves of their rounds
    overlap) and warns when a candidate's rounds disagree by more than 20%. Writes nothing.
    """
    stdout, stderr = _consoles()
    with _reporting(stdout, stderr, json_, debug, {"runs": []}):
        tune_malloc()  # as compute does: bench times what compute runs
        sweep = load_sweep(config, _overrides(set_))
        from jvpcli.runner import WorkerCache, bench_run, plan_runs

        cache = WorkerCache()
        results = [
            bench_run(checked, cache, repeats)
            for checked in plan_runs(sweep.runs, cache, name_runs=sweep.is_sweep)
        ]
        if json_:
            _print_json(stdout, document(runs=[bench_json(result) for result in results]))
        else:
            _show(stdout, bench_view(results))


def main() -> None:
    """The ``jvpcli`` console script.

    Usage errors (an unknown option, a missing value, an extra argument) are told as jvpcli's own
    errors are: one ``error:`` paragraph on stderr, exit code 2, and with ``--json`` a JSON error
    document on stdout.
    """
    # typer 0.2x vendors click as typer._click (earlier releases used click itself).
    try:
        from typer._click.exceptions import ClickException, UsageError
    except ImportError:  # pragma: no cover - typer with click as a dependency
        from click.exceptions import ClickException, UsageError

    try:
        code = app(prog_name="jvpcli", standalone_mode=False)
    except UsageError as error:
        command = error.ctx.command_path if error.ctx is not None else "jvpcli"
        if not error.format_message():  # no command at all: the help is the answer
            sys.exit(app(prog_name="jvpcli", args=[*sys.argv[1:], "--help"], standalone_mode=False))
        message = error.format_message().rstrip(".")
        _usage_error(f"{message}. See '{command} --help'.", error.exit_code)
    except ClickException as error:
        _usage_error(error.format_message(), error.exit_code)
    except typer.Abort:
        _usage_error("interrupted (Ctrl-C).", 130)
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error(message: str, exit_code: int) -> None:
    stdout, stderr = _consoles()
    error = ConfigError(message[0].lower() + message[1:] if message else message)
    error.exit_code = exit_code
    _show(stderr, Text.assemble(("error: ", "bold red"), str(error)))
    if "--json" in sys.argv[1:]:
        with contextlib.suppress(OutputError):
            _print_json(stdout, document(error, runs=[]))
    sys.exit(exit_code)


def _consoles() -> tuple[Console, Console]:
    # Made per command, so they write to the streams of the moment (tests swap them).
    return Console(file=_Stdout(sys.stdout)), Console(file=_Stderr(sys.stderr), stderr=True)


class OutputError(JvpcliError):
    """Standard output is closed, full or gone: what the command had to say is lost (exit 1)."""


class _Stderr:
    """Standard error, without the trailing spaces tables pad lines with when it is no
    terminal; its failures are ignored (nothing is left to tell them to)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        if self._stream is None:
            return len(text)
        try:
            if not self._stream.isatty():
                text = _TRAILING_SPACES.sub("\n", text)
            return self._stream.write(text)
        except (OSError, ValueError):  # stderr full or closed: the exit code still tells
            return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self._stream is not None:
                self._stream.flush()

    def isatty(self) -> bool:
        return self._stream is not None and self._stream.isatty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


_TRAILING_SPACES = re.compile(r"[ \t]+\n")


class _Stdout:
    """Standard output, whose failures (a full disk, a closed descriptor) are jvpcli errors with
    one clear message rather than tracebacks: writing a result is not done until it is shown."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        if not self.isatty():
            # Tables pad their lines to their width: no trailing spaces in files and logs.
            text = _TRAILING_SPACES.sub("\n", text)
        return self._guarded(lambda stream: stream.write(text))

    def flush(self) -> None:
        self._guarded(lambda stream: stream.flush())

    def isatty(self) -> bool:
        return self._stream is not None and self._stream.isatty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def _guarded(self, action: Any) -> Any:
        if self._stream is None:
            raise OutputError("standard output is closed: the summary cannot be printed.")
        try:
            return action(self._stream)
        except OSError as error:
            raise OutputError(
                f"cannot write to standard output: {error.strerror or error}."
            ) from None


def _overrides(assignments: list[str] | None) -> list[Override]:
    overrides: list[Override] = []
    for text in assignments or ():
        key, value = parse_assignment(text)
        overrides.append((key, value, f"--set {text}"))
    return overrides


def _show(console: Console, renderable: Any) -> None:
    # In files and logs nothing is wrapped (a path stays whole on its line); a terminal wraps
    # prose at word boundaries.
    console.print(renderable, soft_wrap=not console.is_terminal)


def _print_json(console: Console, data: dict[str, Any]) -> None:
    console.out(json.dumps(data, indent=2), highlight=False)


@contextlib.contextmanager
def _reporting(
    stdout: Console,
    stderr: Console,
    json_output: bool,
    debug: bool,
    payload: dict[str, Any],
) -> Iterator[None]:
    """Turn a jvpcli error, or Ctrl-C, into its message on stderr and its exit code (130 for
    Ctrl-C, not click's "Aborted!" and 1); with ``--json``, also into a JSON document on stdout
    carrying ``payload`` (``runs``, ``file``): what the command had produced, as it filled it."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except (JvpcliError, KeyboardInterrupt, Exception) as caught:
        if isinstance(caught, JvpcliError):
            error = caught
        elif isinstance(caught, KeyboardInterrupt):
            error = _interruption(caught)
        else:
            error = JvpcliError(
                f"internal error: {type(caught).__name__}: {caught}. This is a bug in jvpcli; "
                "--debug shows where."
            )
        with contextlib.suppress(OSError):  # a closed stderr must not hide the exit code
            if debug:
                stderr.out("".join(traceback.format_exception(caught)), highlight=False)
            _show(stderr, Text.assemble(("error: ", "bold red"), str(error)))
        if json_output and not isinstance(error, OutputError):
            with contextlib.suppress(OutputError):
                _print_json(stdout, document(error, **payload))
        raise typer.Exit(error.exit_code) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def _interruption(caught: KeyboardInterrupt, detail: str = "") -> Interrupted:
    """What Ctrl-C (exit 130) or SIGTERM (exit 143) ended, as the user is told."""
    if isinstance(caught, Terminated):
        return Interrupted(f"terminated (SIGTERM){detail}.", exit_code=143)
    return Interrupted(f"interrupted (Ctrl-C){detail}.")

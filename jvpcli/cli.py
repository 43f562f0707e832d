"""The ``jvpcli`` command line: parse, call the library, print, exit with the right code.

Exit codes: 0 success; 1 a run failed while computing; 2 an unusable command line, config or input
file, found before computing. torch is imported inside the commands only, so ``--help``,
``--version`` and shell completion answer without loading it.
"""

from __future__ import annotations

import contextlib
import json
import platform
import traceback
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from jvpcli import __version__
from jvpcli.config import DTYPES, METHODS, Override, json_schema, load_spec, parse_assignment
from jvpcli.errors import JvpcliError
from jvpcli.report import (
    check_json,
    check_view,
    document,
    inspect_json,
    inspect_view,
    run_json,
    run_view,
)

__all__ = ["app", "main"]

app = typer.Typer(
    name="jvpcli",
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
    bool, typer.Option("--json", help="Print a machine-readable JSON summary to stdout.")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show Python tracebacks of errors.")]


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
            callback=_print_version,
            is_eager=True,
            help="Print the versions of jvpcli, torch and Python, and exit.",
        ),
    ] = False,
) -> None:
    """Jacobian-vector products J_f(x)·v of PyTorch functions and saved models.

    Exit codes: 0 success, 1 a run failed computing, 2 an unusable command line, config or file.
    """


@app.command()
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
        Path | None, typer.Option("--output", "-o", help="Safetensors file to write.")
    ] = None,
    method: Annotated[
        str | None, typer.Option(metavar="METHOD", help=f"How to compute: {', '.join(METHODS)}.")
    ] = None,
    strict: Annotated[
        bool | None,
        typer.Option(
            "--strict/--no-strict",
            help="Fail when outputs and inputs are independent.",
            show_default=False,
        ),
    ] = None,
    create_graph: Annotated[
        bool | None,
        typer.Option(
            "--create-graph/--no-create-graph",
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
    json_: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Compute J_f(x)·v as a config describes, write func_output and jvp, print a summary.

    Options override the config's keys; without a config they describe the whole run.
    """
    stdout, stderr = _consoles()
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
    }
    with _reporting(stdout, stderr, json_, debug, {"runs": []}):
        overrides = _overrides(set_)
        for key, value in named.items():
            if value is not None:
                plain = str(value) if isinstance(value, Path) else value
                overrides.append((key, plain, "--" + key.replace("_", "-")))
        spec = load_spec(config, overrides)
        from jvpcli.runner import run

        result = run(spec)
        if json_:
            _print_json(stdout, document(runs=[run_json(result)]))
        elif not quiet:
            stdout.print(run_view(result))


@app.command()
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
    parameters.
    """
    stdout, stderr = _consoles()
    with _reporting(stdout, stderr, json_, debug, {"runs": []}):
        spec = load_spec(config, _overrides(set_))
        from jvpcli.runner import check

        checked = check(spec)
        if json_:
            _print_json(stdout, document(runs=[check_json(checked)]))
        elif not quiet:
            stdout.print(check_view(checked))


@app.command()
def schema() -> None:
    """Print the JSON Schema of config files, for editors to complete and check them."""
    stdout, _ = _consoles()
    _print_json(stdout, json_schema())


@app.command("inspect")
def inspect_command(
    file: Annotated[Path, typer.Argument(help="A safetensors file.")],
    json_: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Print a safetensors file's tensors (name, shape, dtype, statistics) and metadata."""
    stdout, stderr = _consoles()
    with _reporting(stdout, stderr, json_, debug, {"file": None}):
        from jvpcli.runner import inspect_file

        inspected = inspect_file(file)
        if json_:
            _print_json(stdout, document(file=inspect_json(inspected)))
        else:
            stdout.print(inspect_view(inspected))


def main() -> None:
    """The ``jvpcli`` console script."""
    app(prog_name="jvpcli")


def _consoles() -> tuple[Console, Console]:
    # Made per command, so they write to the streams of the moment (tests swap them).
    return Console(), Console(stderr=True)


def _overrides(assignments: list[str] | None) -> list[Override]:
    overrides: list[Override] = []
    for text in assignments or ():
        key, value = parse_assignment(text)
        overrides.append((key, value, f"--set {text}"))
    return overrides


def _print_json(console: Console, data: dict[str, Any]) -> None:
    console.out(json.dumps(data, indent=2), highlight=False)


@contextlib.contextmanager
def _reporting(
    stdout: Console,
    stderr: Console,
    json_output: bool,
    debug: bool,
    empty_payload: dict[str, Any],
) -> Iterator[None]:
    """Turn a jvpcli error into its message on stderr and its exit code; with ``--json``, also
    into a JSON document on stdout, its payload keys (``runs``, ``file``) empty."""
    try:
        yield
    except JvpcliError as error:
        if debug:
            stderr.out("".join(traceback.format_exception(error)), highlight=False)
        stderr.print(Text.assemble(("error: ", "bold red"), str(error)), soft_wrap=True)
        if json_output:
            _print_json(stdout, document(error, **empty_payload))
        raise typer.Exit(error.exit_code) from None

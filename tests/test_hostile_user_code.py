"""Hostile tests: user code can never make a failure look like success, and what it prints never
corrupts machine output.

``sys.exit(0)``, ``sys.exit(3)`` and ``raise SystemExit`` in the user's module, constructor or
function fail the run (exit 2 while loading, 1 while computing), named in one message with the
user's file and line; ``--json`` and ``--junit-xml`` say so too. What user code prints goes to
stderr, so that ``--json`` keeps stdout one JSON document. The command line runs in subprocesses
(the jvpcli under test: the one this process imports); cheaper variants run through CliRunner.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hostile_support import forget_user_modules
from safetensors.torch import save_file
from typer.testing import CliRunner

import jvpcli
from jvpcli.cli import app

ROOT = Path(jvpcli.__file__).resolve().parent.parent

EXITS = textwrap.dedent(
    """\
    import os
    import sys

    import torch

    if os.environ.get("HOSTILE_EXIT_AT_IMPORT"):
        sys.exit(0)


    def zero(x):
        sys.exit(0)


    def three(x):
        sys.exit(3)


    def bare(x):
        raise SystemExit


    def message(x):
        raise SystemExit("bye")


    def interrupt(x):
        raise KeyboardInterrupt


    def fine(x):
        return x * 2


    calls = [0]


    def twice(x):
        calls[0] += 1
        if calls[0] > 1:
            sys.exit(0)
        return x * 2


    class Ctor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            sys.exit(0)

        def forward(self, x):
            return x


    class Forward(torch.nn.Module):
        def forward(self, x):
            sys.exit(0)


    forward_model = Forward()


    class Signature:
        @property
        def __signature__(self):
            sys.exit(0)

        def __call__(self, x):
            return x * 4


    signature = Signature()


    class MovedAway(torch.nn.Module):
        def forward(self, x):
            return x * 2

        def to(self, *args, **kwargs):
            sys.exit(0)


    moved_away = MovedAway()


    class NoEval(torch.nn.Module):
        def forward(self, x):
            return x * 2

        def eval(self):
            sys.exit(0)


    no_eval = NoEval()
    """
)


def line_of(source: str, text: str) -> int:
    return next(i for i, line in enumerate(source.splitlines(), 1) if text in line)


NOISY = textwrap.dedent(
    """\
    import sys

    import torch

    import chatty

    print("NOISE-AT-IMPORT")


    def talk(x):
        print("NOISE-IN-CALL")
        sys.stdout.write("NOISE-WRITE\\n")
        sys.stdout.flush()
        return x * 2


    class Talker(torch.nn.Module):
        def __init__(self):
            super().__init__()
            print("NOISE-IN-CONSTRUCTOR")

        def forward(self, x):
            print("NOISE-IN-FORWARD")
            return x.sin()
    """
)

BYPASS = textwrap.dedent(
    """\
    import os
    import sys


    def low_level(x):
        os.write(1, b"NOISE-FD\\n")
        return x * 2


    def original_stdout(x):
        print("NOISE-DUNDER", file=sys.__stdout__, flush=True)
        return x * 2
    """
)


def environment(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "NO_COLOR": "1", "COLUMNS": "200", **extra}


def start(cwd: Path, *args: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "jvpcli", *args],
        cwd=cwd,
        env=environment(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def workspace(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ex.py").write_text(EXITS)
    (folder / "noisy.py").write_text(NOISY)
    (folder / "chatty.py").write_text('print("NOISE-HELPER-IMPORT")\n')
    (folder / "bypass.py").write_text(BYPASS)
    save_file({"x": torch.arange(3.0)}, folder / "x.safetensors")
    save_file({"x": torch.ones(3)}, folder / "v.safetensors")
    (folder / "c.yaml").write_text(
        "function: ex.py:fine\ninputs: x.safetensors\nv: v.safetensors\noutput: out.safetensors\n"
    )
    return folder


@pytest.fixture(scope="module")
def spawned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The command lines of this module, started together (each pays torch's import), then
    waited for: ``{key: (returncode, stdout, stderr, folder)}``."""
    root = tmp_path_factory.mktemp("user_code")
    sweep = workspace(root / "sweep")
    (sweep / "s.yaml").write_text(
        textwrap.dedent(
            """\
            inputs: x.safetensors
            v: v.safetensors
            output: results/{name}.safetensors
            sweep:
              function: [ex.py:zero, ex.py:three, ex.py:bare, ex.py:fine]
            """
        )
    )
    imports = workspace(root / "imports")
    prints = workspace(root / "prints")
    (prints / "s.yaml").write_text(
        textwrap.dedent(
            """\
            inputs: x.safetensors
            v: v.safetensors
            output: results/{name}.safetensors
            sweep:
              function: [noisy.py:talk, {target: noisy.py:Talker}]
            """
        )
    )
    bypass = workspace(root / "bypass")
    (bypass / "s.yaml").write_text(
        textwrap.dedent(
            """\
            inputs: x.safetensors
            v: v.safetensors
            output: results/{name}.safetensors
            sweep:
              function: [bypass.py:low_level, bypass.py:original_stdout]
            """
        )
    )
    started = {
        "sweep": (start(sweep, "compute", "s.yaml", "--json", "--junit-xml", "r.xml"), sweep),
        "import": (
            start(imports, "compute", "c.yaml", "--json", HOSTILE_EXIT_AT_IMPORT="1"),
            imports,
        ),
        "prints": (start(prints, "compute", "s.yaml", "--json"), prints),
        "bypass": (start(bypass, "compute", "s.yaml", "--json"), bypass),
    }
    done = {}
    for key, (process, folder) in started.items():
        try:
            stdout, stderr = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        done[key] = (process.returncode, stdout, stderr, folder)
    return done


# --------------------------------------------------------------------------------------------
# sys.exit, in subprocesses


def test_sys_exit_in_functions_of_a_sweep_fails_those_runs_and_the_others_still_run(
    spawned: dict[str, Any],
) -> None:
    code, stdout, stderr, folder = spawned["sweep"]
    assert code == 1, stderr
    assert "Traceback" not in stderr
    document = json.loads(stdout)
    assert document["ok"] is False
    assert document["exit_code"] == 1
    runs = {run["name"]: run for run in document["runs"]}
    assert {name: run["status"] for name, run in runs.items()} == {
        "zero": "failed",
        "three": "failed",
        "bare": "failed",
        "fine": "ok",
    }
    for name, code_text in (
        ("zero", "sys.exit(0)"),
        ("three", "sys.exit(3)"),
        ("bare", "sys.exit(None)"),
    ):
        error = runs[name]["error"]
        assert code_text in error["message"]
        line = line_of(EXITS, f"def {name}(x):") + 1
        assert error["location"].startswith(f"ex.py:{line}, in {name}")
    assert sorted(p.name for p in (folder / "results").iterdir()) == ["fine.safetensors"]


def test_sys_exit_in_a_sweep_is_a_failure_in_the_junit_report(spawned: dict[str, Any]) -> None:
    code, _, stderr, folder = spawned["sweep"]
    assert code == 1, stderr
    cases = {
        case.get("name"): case for case in ElementTree.parse(folder / "r.xml").iter("testcase")
    }
    failed = {name for name, case in cases.items() if case.find("failure") is not None}
    assert failed == {"zero", "three", "bare"}
    assert "sys.exit(3)" in cases["three"].find("failure").get("message")


def test_sys_exit_at_import_is_an_unusable_config_naming_sys_exit_and_the_file(
    spawned: dict[str, Any],
) -> None:
    code, stdout, stderr, folder = spawned["import"]
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert "sys.exit(0)" in stderr
    assert "ex.py" in stderr
    document = json.loads(stdout)
    assert document["ok"] is False
    assert document["exit_code"] == 2
    assert document["error"]["location"].startswith(
        f"ex.py:{line_of(EXITS, 'sys.exit(0)')}, in <module>"
    )
    assert not (folder / "out.safetensors").exists()


# --------------------------------------------------------------------------------------------
# Prints, in subprocesses


def test_prints_at_import_in_constructors_and_calls_go_to_stderr_under_json(
    spawned: dict[str, Any],
) -> None:
    code, stdout, stderr, _ = spawned["prints"]
    assert code == 0, stderr
    document = json.loads(stdout)  # the whole of stdout is the document
    assert document["ok"] is True
    assert [run["status"] for run in document["runs"]] == ["ok", "ok"]
    assert "NOISE" not in stdout
    for noise in (
        "NOISE-HELPER-IMPORT",
        "NOISE-AT-IMPORT",
        "NOISE-IN-CALL",
        "NOISE-WRITE",
        "NOISE-IN-CONSTRUCTOR",
        "NOISE-IN-FORWARD",
    ):
        assert noise in stderr


def test_prints_that_bypass_sys_stdout_still_leave_json_parseable(
    spawned: dict[str, Any],
) -> None:
    code, stdout, stderr, _ = spawned["bypass"]
    assert code == 0, stderr
    assert json.loads(stdout)["ok"] is True
    assert "NOISE-FD" in stderr
    assert "NOISE-DUNDER" in stderr


# --------------------------------------------------------------------------------------------
# sys.exit and friends, through CliRunner


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(workspace(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    forget_user_modules(tmp_path)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize(
    ("function", "code", "needle", "where"),
    [
        ("{target: ex.py:Ctor}", 2, "sys.exit(0)", "in __init__"),
        ("ex.py:message", 1, "bye", "in message"),
        ("ex.py:forward_model", 1, "sys.exit(0)", "in forward"),
        ("ex.py:zero", 1, "sys.exit(0)", "in zero"),
    ],
)
def test_sys_exit_while_building_or_computing_fails_with_the_users_line(
    function: str, code: int, needle: str, where: str, work: Path
) -> None:
    result = invoke("compute", "c.yaml", "--set", f"function={function}", "--json")
    assert result.exit_code == code, result.output
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert document["exit_code"] == code
    assert needle in document["error"]["message"]
    assert document["error"]["location"].startswith("ex.py:")
    assert where in document["error"]["location"]
    assert not (work / "out.safetensors").exists()


@pytest.mark.parametrize(
    ("module", "function"),
    [("helper module of the function's file", "uses.py:f"), ("package.module", "pkg.mod:f")],
)
def test_sys_exit_while_importing_any_user_module_is_exit_2(
    module: str, function: str, work: Path
) -> None:
    (work / "quitter.py").write_text("import sys\nsys.exit(0)\n")
    (work / "uses.py").write_text("import quitter\n\n\ndef f(x):\n    return x\n")
    (work / "pkg").mkdir()
    (work / "pkg" / "__init__.py").write_text("")
    (work / "pkg" / "mod.py").write_text("import sys\nsys.exit(0)\n")
    result = invoke("compute", "c.yaml", "--set", f"function={function}")
    assert result.exit_code == 2, result.output
    assert "sys.exit(0)" in result.output
    assert "Traceback" not in result.output


def test_sys_exit_during_a_finite_difference_check_fails_the_run(work: Path) -> None:
    result = invoke(
        "compute", "c.yaml", "--set", "function=ex.py:twice", "--set", "check=finite-differences"
    )
    assert result.exit_code == 1, result.output
    assert "sys.exit(0)" in result.output


def test_keyboard_interrupt_raised_by_the_function_is_an_interrupt(work: Path) -> None:
    result = invoke("compute", "c.yaml", "--set", "function=ex.py:interrupt")
    assert result.exit_code == 130, result.output
    assert not (work / "out.safetensors").exists()


@pytest.mark.parametrize(
    "function",
    [
        pytest.param("ex.py:signature", id="__signature__ while reading the parameters"),
        pytest.param("ex.py:missing_name", id="module __getattr__ while looking the name up"),
        pytest.param("ex.py:moved_away", id="Module.to while placing the model"),
        pytest.param("ex.py:no_eval", id="Module.eval while loading"),
    ],
)
def test_sys_exit_anywhere_in_user_code_is_never_a_success(function: str, work: Path) -> None:
    source = (work / "ex.py").read_text()
    (work / "ex.py").write_text(source + "\n\ndef __getattr__(name):\n    sys.exit(0)\n")
    result = invoke("compute", "c.yaml", "--set", f"function={function}", "--json")
    assert result.exit_code in (1, 2), result.output
    assert json.loads(result.stdout)["ok"] is False

"""Hostile tests: nothing a command reads is overwritten by what it writes, and run names and
output templates cannot escape their folder.

Reads are compared with writes as files: by resolved path, through symbolic and hard links, and
through ``..``. A clash is exit 2 before anything computes, with the file read byte-identical
afterwards and no JUnit report written over it.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hostile_support import forget_user_modules
from safetensors.torch import save_file
from typer.testing import CliRunner

from jvpcli.cli import app

FNS = """
import torch
from helper import scale


def smooth(x):
    return x.sin() * x * scale


class Lin(torch.nn.Module):
    def __init__(self):
        super().__init__()
        from ctorhelp import bias
        self.bias = bias
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x) + self.bias
"""


def invoke(*args: str | Path, cwd: Path) -> Any:
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, [str(a) for a in args])
    finally:
        os.chdir(previous)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (links as the bytes they reach), by relative path."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(autouse=True)
def _forget_user_modules(tmp_path: Path) -> Iterator[None]:
    yield
    forget_user_modules(tmp_path)


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # As `python -m jvpcli` run from the config's folder: the folder is on sys.path.
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    (tmp_path / "fns.py").write_text(FNS)
    (tmp_path / "helper.py").write_text("scale = 2.0\n")
    (tmp_path / "ctorhelp.py").write_text("bias = 0.5\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "mod.py").write_text("def triple(x):\n    return x * 3\n")
    (tmp_path / "sub").mkdir()
    save_file({"x": torch.arange(3.0)}, tmp_path / "x.safetensors")
    save_file({"x": torch.full((3,), 2.0)}, tmp_path / "y.safetensors")
    save_file({"x": torch.ones(3)}, tmp_path / "v.safetensors")
    save_file({"x": torch.ones(2, 3)}, tmp_path / "mx.safetensors")
    save_file({"x": torch.ones(2, 3)}, tmp_path / "mv.safetensors")
    save_file(
        {"lin.weight": torch.ones(2, 3), "lin.bias": torch.zeros(2)}, tmp_path / "w.safetensors"
    )
    save_file({"lin.weight": torch.ones(2, 3)}, tmp_path / "vp.safetensors")
    save_file({"func_output": torch.zeros(3), "jvp": torch.zeros(3)}, tmp_path / "g.safetensors")
    (tmp_path / "vlink.safetensors").symlink_to("v.safetensors")
    os.link(tmp_path / "v.safetensors", tmp_path / "vhard.safetensors")
    (tmp_path / "c.yaml").write_text(
        "function: fns.py:smooth\ninputs: x.safetensors\nv: v.safetensors\n"
        "output: out.safetensors\n"
    )
    (tmp_path / "m.yaml").write_text(
        textwrap.dedent(
            """\
            function: {target: fns.py:Lin, weights: w.safetensors}
            inputs: mx.safetensors
            v: mv.safetensors
            v_params: vp.safetensors
            output: mout.safetensors
            """
        )
    )
    return tmp_path


def assert_refused_and_intact(result: Any, work: Path, before: dict[str, bytes]) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "destroy" in result.output or "overwrite" in result.output, result.output
    assert snapshot(work) == before  # nothing read changed, nothing new written


# --------------------------------------------------------------------------------------------
# Outputs and goldens over a file read

OUTPUT_CLASHES = {
    "output is the config": ("c.yaml", "-o", "c.yaml"),
    "output is the function file": ("c.yaml", "-o", "fns.py"),
    "output is a helper module the function imports": ("c.yaml", "-o", "helper.py"),
    "output is a symlink to v": ("c.yaml", "-o", "vlink.safetensors"),
    "output is a hard link to v": ("c.yaml", "-o", "vhard.safetensors"),
    "output reaches the inputs through ..": ("c.yaml", "-o", "sub/../x.safetensors"),
    "output is an absolute path to v": ("c.yaml", "-o", "{work}/v.safetensors"),
    "output is the golden": ("c.yaml", "--set", "expect=g.safetensors", "-o", "g.safetensors"),
    "output is the weights": ("m.yaml", "-o", "w.safetensors"),
    "output is v_params": ("m.yaml", "-o", "vp.safetensors"),
    "output is a module imported only in the constructor": ("m.yaml", "-o", "ctorhelp.py"),
    "output is the module of a package.module function": (
        "c.yaml",
        "-f",
        "pkg.mod:triple",
        "-o",
        "pkg/mod.py",
    ),
    "golden under --update-golden is the inputs": (
        "c.yaml",
        "--set",
        "expect=x.safetensors",
        "--update-golden",
    ),
    "golden under --update-golden is a helper module": (
        "c.yaml",
        "--set",
        "expect=helper.py",
        "--update-golden",
    ),
}


@pytest.mark.parametrize("case", sorted(OUTPUT_CLASHES))
def test_writing_over_a_file_the_command_reads_is_refused_before_computing(
    case: str, work: Path
) -> None:
    args = [a.format(work=work) for a in OUTPUT_CLASHES[case]]
    before = snapshot(work)
    result = invoke("compute", *args, "--junit-xml", "report.xml", cwd=work)
    report = work / "report.xml"
    assert report.exists(), "the report of the refusal is written, elsewhere"
    report.unlink()
    assert_refused_and_intact(result, work, before)


JUNIT_CLASHES = {
    "the inputs": ("c.yaml", "x.safetensors"),
    "the config": ("c.yaml", "c.yaml"),
    "the function file": ("c.yaml", "fns.py"),
    "a helper module": ("c.yaml", "helper.py"),
    "a symlink to v": ("c.yaml", "vlink.safetensors"),
    "the weights": ("m.yaml", "w.safetensors"),
}


@pytest.mark.parametrize("case", sorted(JUNIT_CLASHES))
def test_a_junit_report_over_a_file_read_or_written_is_refused(case: str, work: Path) -> None:
    config, target = JUNIT_CLASHES[case]
    before = snapshot(work)
    result = invoke("compute", config, "--junit-xml", target, cwd=work)
    assert_refused_and_intact(result, work, before)


def test_a_junit_report_named_like_the_output_leaves_the_previous_result(work: Path) -> None:
    assert invoke("compute", "c.yaml", "-q", cwd=work).exit_code == 0
    before = snapshot(work)
    result = invoke("compute", "c.yaml", "--junit-xml", "out.safetensors", cwd=work)
    assert result.exit_code == 2, result.output
    assert "overwrite" in result.output
    assert snapshot(work) == before


@pytest.mark.parametrize(
    ("case", "args", "victim"),
    [
        ("a function name the file lacks", ["--set", "function=fns.py:nope"], "fns.py"),
        ("a module that fails to import", ["--set", "function=broken.py:f"], "broken.py"),
        ("weights that do not fit", ["--set", "function.init={}"], "w.safetensors"),
    ],
)
def test_a_junit_report_never_replaces_a_file_read_when_loading_fails(
    case: str, args: list[str], victim: str, work: Path
) -> None:
    (work / "broken.py").write_text("raise RuntimeError('broken on purpose')\n")
    (work / "w.safetensors").unlink()
    save_file({"other.weight": torch.ones(2, 3)}, work / "w.safetensors")
    config = "m.yaml" if victim == "w.safetensors" else "c.yaml"
    before = (work / victim).read_bytes()
    result = invoke("compute", config, *args, "--junit-xml", victim, cwd=work)
    assert result.exit_code == 2, result.output
    assert (work / victim).read_bytes() == before


def test_a_sweep_run_writing_another_runs_inputs_is_refused(work: Path) -> None:
    (work / "s.yaml").write_text(
        textwrap.dedent(
            """\
            function: fns.py:smooth
            v: v.safetensors
            output: "{name}.safetensors"
            runs:
              - {name: a, inputs: x.safetensors}
              - {name: x, inputs: y.safetensors}
            """
        )
    )
    before = snapshot(work)
    assert_refused_and_intact(invoke("compute", "s.yaml", cwd=work), work, before)


def test_a_sweep_whose_template_names_each_runs_own_inputs_is_refused(work: Path) -> None:
    (work / "s.yaml").write_text(
        textwrap.dedent(
            """\
            function: fns.py:smooth
            v: v.safetensors
            output: "{inputs}.safetensors"
            sweep:
              inputs: [x.safetensors, y.safetensors]
            """
        )
    )
    before = snapshot(work)
    assert_refused_and_intact(invoke("compute", "s.yaml", cwd=work), work, before)


def test_two_runs_writing_one_file_through_a_link_are_refused(work: Path) -> None:
    (work / "s.yaml").write_text(
        textwrap.dedent(
            """\
            function: fns.py:smooth
            inputs: x.safetensors
            v: v.safetensors
            runs:
              - {name: a, output: results/a.safetensors}
              - {name: b, output: alias/a.safetensors}
            """
        )
    )
    (work / "results").mkdir()
    (work / "alias").symlink_to("results")
    before = snapshot(work)
    result = invoke("compute", "s.yaml", cwd=work)
    assert result.exit_code == 2, result.output
    assert "both write" in result.output or "overwrite" in result.output
    assert snapshot(work) == before


# --------------------------------------------------------------------------------------------
# Names and templates


def outside(work: Path) -> set[str]:
    return {
        str(p.relative_to(work))
        for p in work.rglob("*")
        if "__pycache__" not in p.parts and "results" not in p.relative_to(work).parts[:1]
    }


@pytest.mark.parametrize(
    "name", ["a/b", "..", ".", "../evil", "x/../../y", "/tmp/abs", "a\\b", "  "]
)
def test_a_run_name_that_is_not_a_file_name_cannot_place_an_output(name: str, work: Path) -> None:
    quoted = name.replace("\\", "\\\\")
    (work / "s.yaml").write_text(
        "function: fns.py:smooth\ninputs: x.safetensors\nv: v.safetensors\n"
        "output: results/{name}.safetensors\n"
        f'runs:\n  - {{name: ok}}\n  - {{name: "{quoted}"}}\n'
    )
    before = outside(work)
    result = invoke("compute", "s.yaml", cwd=work)
    assert result.exit_code == 2, result.output
    assert "file name" in result.output
    assert outside(work) == before
    assert not (work / "results").exists() or not any((work / "results").rglob("*"))


@pytest.mark.parametrize("option", ["results/{name}.safetensors", "results/"])
def test_a_single_runs_name_set_on_the_command_line_cannot_escape(option: str, work: Path) -> None:
    before = outside(work)
    result = invoke("compute", "c.yaml", "--set", "name=../evil", "-o", option, cwd=work)
    assert result.exit_code == 2, result.output
    assert outside(work) == before


def test_a_golden_template_cannot_escape_under_update_golden(work: Path) -> None:
    (work / "s.yaml").write_text(
        "function: fns.py:smooth\ninputs: x.safetensors\nv: v.safetensors\n"
        "output: results/{name}.safetensors\nexpect: results/{name}.golden.safetensors\n"
        'runs:\n  - {name: "../../g"}\n'
    )
    before = outside(work)
    result = invoke("compute", "s.yaml", "--update-golden", cwd=work)
    assert result.exit_code == 2, result.output
    assert outside(work) == before


@pytest.mark.parametrize(
    "template",
    [
        "results/{name",
        "results/name}.safetensors",
        "results/{{name}.safetensors",
        "results/{name}}.safetensors",
        "results/}{name}{.safetensors",
        "results/{na{me}.safetensors",
    ],
)
@pytest.mark.parametrize("key", ["output", "expect"])
def test_an_unbalanced_brace_in_a_template_is_refused(key: str, template: str, work: Path) -> None:
    before = snapshot(work)
    result = invoke("compute", "c.yaml", "--set", f"{key}={template}", cwd=work)
    assert result.exit_code == 2, result.output
    assert "brace" in result.output
    assert snapshot(work) == before


def test_doubled_braces_are_literal_braces_in_a_file_name(work: Path) -> None:
    result = invoke("compute", "c.yaml", "-q", "-o", "results/{{{name}}}.safetensors", cwd=work)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (work / "results").iterdir()) == ["{c}.safetensors"]


def test_an_output_ending_in_a_slash_is_a_folder_for_a_single_run(work: Path) -> None:
    result = invoke("compute", "c.yaml", "-q", "-o", "newdir/", cwd=work)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (work / "newdir").iterdir()) == ["c.safetensors"]
    assert not (work / "newdir.safetensors").exists()


def test_an_output_ending_in_a_slash_is_a_folder_for_every_run_of_a_sweep(work: Path) -> None:
    (work / "s.yaml").write_text(
        "function: fns.py:smooth\nv: v.safetensors\noutput: ignored.safetensors\n"
        "sweep:\n  inputs: [x.safetensors, y.safetensors]\n"
    )
    result = invoke("compute", "s.yaml", "-q", "-o", "newdir/", cwd=work)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (work / "newdir").iterdir()) == [
        "x.safetensors",
        "y.safetensors",
    ]
    assert not (work / "ignored.safetensors").exists()

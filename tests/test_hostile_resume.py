"""Hostile tests: ``--resume`` recomputes whenever anything the result depends on changed.

Each command runs through CliRunner; between commands the user's modules are forgotten, as a new
process would not have them, and bytecode is not cached (an edit within one second must not be
read from a stale ``.pyc``). A run is told recomputed or skipped by its status in ``--json``, and
its result by the values it reports.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hostile_support import forget_user_modules
from safetensors.torch import save_file
from typer.testing import CliRunner

from jvpcli.cli import app

FNS = """
import torch
from helper import scale


def f(x):
    return x * scale


def lazy(x):
    import lazyhelp

    return x * lazyhelp.k


class Built(torch.nn.Module):
    def __init__(self):
        super().__init__()
        from ctorhelp import factor

        self.factor = factor
        self.lin = torch.nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(x) * self.factor
"""


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as python -m jvpcli run from the folder
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    (tmp_path / "fns.py").write_text(FNS)
    (tmp_path / "helper.py").write_text("scale = 2.0\n")
    (tmp_path / "lazyhelp.py").write_text("k = 2.0\n")
    (tmp_path / "ctorhelp.py").write_text("factor = 2.0\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "mod.py").write_text(
        "from pkg.deep import k\n\n\ndef g(x):\n    return x * k\n"
    )
    (tmp_path / "pkg" / "deep.py").write_text("k = 5.0\n")
    save_file({"x": torch.arange(3.0)}, tmp_path / "x.safetensors")
    save_file({"x": torch.ones(3)}, tmp_path / "v.safetensors")
    save_file({"x": torch.ones(2, 3)}, tmp_path / "mx.safetensors")
    save_file({"x": torch.ones(2, 3)}, tmp_path / "mv.safetensors")
    save_file({"lin.weight": torch.eye(3), "lin.bias": torch.zeros(3)}, tmp_path / "w.safetensors")
    yield tmp_path
    forget_user_modules(tmp_path)


PLAIN = "function: fns.py:f\ninputs: x.safetensors\nv: v.safetensors\noutput: o.safetensors\n"
DOTTED = "function: pkg.mod:g\ninputs: x.safetensors\nv: v.safetensors\noutput: o.safetensors\n"
LAZY = "function: fns.py:lazy\ninputs: x.safetensors\nv: v.safetensors\noutput: o.safetensors\n"
MODEL = textwrap.dedent(
    """\
    function: {target: fns.py:Built, weights: w.safetensors}
    inputs: mx.safetensors
    v: mv.safetensors
    output: o.safetensors
    """
)


def resume(work: Path, config: str) -> list[tuple[str, float]]:
    """Run ``config`` with --resume in a fresh module state: each run's status and max |jvp|."""
    (work / "c.yaml").write_text(config)
    result = CliRunner().invoke(app, ["compute", "c.yaml", "--resume", "--json"])
    forget_user_modules(work)
    assert result.exit_code == 0, result.output
    return [
        (run["status"], run["outputs"][0]["jvp"]["max"])
        for run in json.loads(result.stdout)["runs"]
    ]


def edit(path: str, text: str) -> Callable[[Path], None]:
    return lambda work: (work / path).write_text(text)


def save(path: str, **tensors: torch.Tensor) -> Callable[[Path], None]:
    return lambda work: save_file(tensors, work / path)


CHANGES = {
    "a helper module the function's file imports": (PLAIN, edit("helper.py", "scale = 3.5\n"), 3.5),
    "the module of a package.module function": (
        DOTTED,
        edit("pkg/mod.py", "from pkg.deep import k\n\n\ndef g(x):\n    return x * k * 2\n"),
        10.0,
    ),
    "a module the package.module function imports": (DOTTED, edit("pkg/deep.py", "k = 7.0\n"), 7.0),
    "a module imported only in the model's constructor": (
        MODEL,
        edit("ctorhelp.py", "factor = 3.0\n"),
        3.0,
    ),
    "the weights": (
        MODEL,
        save("w.safetensors", **{"lin.weight": 4 * torch.eye(3), "lin.bias": torch.zeros(3)}),
        8.0,
    ),
    "v": (PLAIN, save("v.safetensors", x=torch.full((3,), 3.0)), 6.0),
    "the inputs": (MODEL, save("mx.safetensors", x=torch.full((2, 3), 9.0)), 2.0),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_resume_skips_an_unchanged_run_and_recomputes_after_a_change(
    change: str, work: Path
) -> None:
    config, make_change, expected = CHANGES[change]
    ((first_status, first),) = resume(work, config)
    assert first_status == "ok"
    assert resume(work, config) == [("skipped", first)]
    make_change(work)
    assert resume(work, config) == [("ok", expected)]
    assert resume(work, config) == [("skipped", expected)]


def test_resume_recomputes_after_editing_a_module_imported_inside_the_function(work: Path) -> None:
    assert resume(work, LAZY) == [("ok", 2.0)]
    (work / "lazyhelp.py").write_text("k = 3.25\n")
    assert resume(work, LAZY) == [("ok", 3.25)]


def test_resume_recomputes_every_run_of_a_sweep_whose_shared_helper_changed(work: Path) -> None:
    (work / "a.py").write_text("from shared import s\n\n\ndef f(x):\n    return x * s\n")
    (work / "b.py").write_text("from shared import s\n\n\ndef f(x):\n    return x * (s + 1)\n")
    (work / "shared.py").write_text("s = 2.0\n")
    config = (
        "inputs: x.safetensors\nv: v.safetensors\noutput: 'r/{name}.safetensors'\n"
        "runs:\n  - {name: a, function: a.py:f}\n  - {name: b, function: b.py:f}\n"
    )
    assert resume(work, config) == [("ok", 2.0), ("ok", 3.0)]
    (work / "shared.py").write_text("s = 4.5\n")
    assert resume(work, config) == [("ok", 4.5), ("ok", 5.5)]

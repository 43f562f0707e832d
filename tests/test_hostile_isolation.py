"""Hostile tests: the runs of a sweep are isolated from each other.

A module-level model swept over dtypes is never cast in place; a run changing torch's global
settings does not change a later run's results; a sweep's tensors are bit-identical to the same
runs one by one, in any order. Runs go through CliRunner, in this process: the fixture puts back
whatever global state a defect leaks, so that later tests are unaffected.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import yaml
from hostile_support import forget_user_modules
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from jvpcli.cli import app

FNS = """
import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def make():
    return model


def smooth(x):
    return x.sin() * x


def noisy(x):
    return x * torch.randn(x.shape)


def probe(x):
    # Encodes the global state it finds in its result: dtype, threads, flags, generator.
    state = torch.tensor(
        [
            torch.get_num_threads(),
            torch.are_deterministic_algorithms_enabled(),
            torch.is_grad_enabled(),
            torch.rand(()).item(),
        ]
    )
    w = torch.full((3, 3), 0.1)
    tiny = (x + 1) * 1e-20 * 1e-20
    return w @ x + tiny * 1e20 * 1e20 + state.sum() * x


def float64_default(x):
    torch.set_default_dtype(torch.float64)
    return x * 2


def one_thread(x):
    torch.set_num_threads(1)
    return x * 2


def deterministic(x):
    torch.use_deterministic_algorithms(True)
    return x * 2


def no_grad(x):
    torch.set_grad_enabled(False)
    return x * 2


def reseed(x):
    torch.manual_seed(1234)
    return x * 2


def default_device(x):
    torch.set_default_device("meta")
    return x * 2


def flush_denormal(x):
    torch.set_flush_denormal(True)
    return x * 2


def autocast(x):
    torch.set_autocast_enabled("cpu", True)
    torch.set_autocast_dtype("cpu", torch.bfloat16)
    return x * 2
"""


def user_module(folder: Path, file: str) -> ModuleType:
    (module,) = [
        m
        for m in sys.modules.values()
        if isinstance(m, ModuleType) and getattr(m, "__file__", None) == str(folder / file)
    ]
    return module


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fns.py").write_text(FNS)
    save_file({"x": torch.tensor([0.5, -1.0, 2.0])}, tmp_path / "x.safetensors")
    save_file({"x": torch.tensor([1.0, 0.25, -0.5])}, tmp_path / "v.safetensors")
    save_file(
        {"input": torch.randn(5, 3, generator=torch.Generator().manual_seed(1))},
        tmp_path / "mx.safetensors",
    )
    save_file(
        {"input": torch.randn(5, 3, generator=torch.Generator().manual_seed(2))},
        tmp_path / "mv.safetensors",
    )
    state = (
        torch.get_default_dtype(),
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_grad_enabled(),
        torch.get_rng_state(),
    )
    yield tmp_path
    forget_user_modules(tmp_path)
    torch.set_default_dtype(state[0])
    torch.set_num_threads(state[1])
    torch.use_deterministic_algorithms(state[2])
    torch.set_grad_enabled(state[3])
    torch.set_rng_state(state[4])
    torch.set_default_device(None)
    torch.set_flush_denormal(False)
    torch.set_autocast_enabled("cpu", False)
    torch.set_autocast_dtype("cpu", torch.bfloat16)


def compute(work: Path, config: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """Run ``config`` (a sweep of ``runs``); each run's output tensors, by name."""
    (work / "s.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = CliRunner().invoke(app, ["compute", "s.yaml", "-q"])
    assert result.exit_code == 0, result.output
    return {
        run["name"]: load_file(work / "results" / f"{run['name']}.safetensors")
        for run in config["runs"]
    }


def assert_equal(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for key in got:
        assert got[key].dtype == expected[key].dtype, key
        assert torch.equal(got[key], expected[key]), key


BASE = {"inputs": "x.safetensors", "v": "v.safetensors", "output": "results/{name}.safetensors"}
MODEL = {"inputs": "mx.safetensors", "v": "mv.safetensors", "output": "results/{name}.safetensors"}


@pytest.mark.parametrize("dtypes", [["bfloat16", "float32"], ["float64", "float32"]])
def test_a_module_level_model_swept_over_dtypes_is_never_cast_in_place(
    dtypes: list[str], work: Path
) -> None:
    alone = compute(
        work,
        {**MODEL, "function": "fns.py:model", "runs": [{"name": "float32", "dtype": "float32"}]},
    )
    forget_user_modules(work)
    swept = compute(
        work,
        {**MODEL, "function": "fns.py:model", "runs": [{"name": d, "dtype": d} for d in dtypes]},
    )
    assert_equal(swept["float32"], alone["float32"])
    model = user_module(work, "fns.py").model
    torch.manual_seed(0)
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    for (name, got), expected in zip(
        model.state_dict().items(), fresh.state_dict().values(), strict=True
    ):
        assert got.dtype == torch.float32, name
        assert torch.equal(got, expected), name


def test_a_factory_returning_a_shared_model_swept_over_dtypes_is_not_cast_in_place(
    work: Path,
) -> None:
    function = {"target": "fns.py:make"}
    alone = compute(
        work, {**MODEL, "function": function, "runs": [{"name": "float32", "dtype": "float32"}]}
    )
    forget_user_modules(work)
    swept = compute(
        work,
        {
            **MODEL,
            "function": function,
            "runs": [
                {"name": "bfloat16", "dtype": "bfloat16"},
                {"name": "float32", "dtype": "float32"},
            ],
        },
    )
    assert_equal(swept["float32"], alone["float32"])


GLOBAL_CHANGES = [
    "float64_default",
    "one_thread",
    "deterministic",
    "no_grad",
    "reseed",
    "default_device",
    "flush_denormal",
    "autocast",
]


@pytest.mark.parametrize("change", GLOBAL_CHANGES)
@pytest.mark.parametrize("method", ["forward", "double-backward"])
def test_a_run_changing_torch_global_state_does_not_change_a_later_run(
    change: str, method: str, work: Path
) -> None:
    later = {"name": "probe", "function": "fns.py:probe", "method": method}
    alone = compute(work, {**BASE, "runs": [later]})["probe"]
    swept = compute(
        work, {**BASE, "runs": [{"name": change, "function": f"fns.py:{change}"}, later]}
    )
    assert_equal(swept["probe"], alone)
    assert torch.get_default_dtype() == torch.float32
    assert torch.is_grad_enabled()


RUNS = [
    {"name": "smooth", "function": "fns.py:smooth"},
    {"name": "smooth64", "function": "fns.py:smooth", "dtype": "float64"},
    {"name": "noisy", "function": "fns.py:noisy"},
    {"name": "reseed", "function": "fns.py:reseed"},
    {"name": "float64_default", "function": "fns.py:float64_default"},
    {"name": "probe", "function": "fns.py:probe", "method": "double-backward"},
    {"name": "model16", "function": "fns.py:model", "dtype": "bfloat16", **MODEL},
    {"name": "model32", "function": "fns.py:model", **MODEL},
]


def test_a_sweeps_tensors_are_those_of_its_runs_one_by_one_in_any_order(work: Path) -> None:
    alone: dict[str, dict[str, torch.Tensor]] = {}
    for run in RUNS:
        alone.update(compute(work, {**BASE, "runs": [run]}))
        forget_user_modules(work)
    forward = compute(work, {**BASE, "runs": RUNS})
    forget_user_modules(work)
    backward = compute(work, {**BASE, "runs": RUNS[::-1]})
    for name, expected in alone.items():
        assert_equal(forward[name], expected)
        assert_equal(backward[name], expected)


def test_runs_of_files_in_different_folders_each_import_their_own_siblings(work: Path) -> None:
    for folder, k in (("a", 2.0), ("b", 10.0)):
        (work / folder).mkdir()
        (work / folder / "helper.py").write_text(f"k = {k}\n")
        (work / folder / "fns.py").write_text(
            "from helper import k\n\n\ndef f(x):\n    return x * k\n"
        )
    runs = [{"name": "a", "function": "a/fns.py:f"}, {"name": "b", "function": "b/fns.py:f"}]
    alone = compute(work, {**BASE, "runs": runs[1:]})
    forget_user_modules(work)
    swept = compute(work, {**BASE, "runs": runs})
    assert_equal(swept["b"], alone["b"])

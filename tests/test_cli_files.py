"""Getting files in and pictures out: torch.save files recognised and converted, PNG plots of a
file's or a run's tensors, through the command line."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from jvpcli.cli import app

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def invoke(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("legacy", [False, True])
def test_a_torch_save_file_given_as_data_is_named_and_convertible(
    tmp_path: Path, legacy: bool
) -> None:
    state = {"fc.weight": torch.randn(3, 4), "fc.bias": torch.randn(3)}
    source = tmp_path / "weights.pt"
    torch.save(state, source, _use_new_zipfile_serialization=not legacy)
    result = invoke("inspect", source)
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "not a safetensors file: jvpcli never unpickles" in message
    assert "jvpcli convert" in message and "header claims" not in message
    converted = invoke("convert", source, tmp_path / "weights.safetensors", "--json")
    assert converted.exit_code == 0, converted.output
    document = json.loads(converted.stdout)
    assert {t["name"] for t in document["file"]["tensors"]} == set(state)
    loaded = load_file(tmp_path / "weights.safetensors")
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor)


def test_a_pickled_model_is_refused_without_running_it(tmp_path: Path) -> None:
    source = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), source)
    result = invoke("convert", source, tmp_path / "model.safetensors")
    assert result.exit_code == 2
    assert "state_dict" in " ".join(result.output.split())
    assert not (tmp_path / "model.safetensors").exists()


def test_inspect_plots_a_files_tensors(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    data = {"image": torch.rand(2, 3, 16, 16), "row": torch.randn(50), "ids": torch.arange(9)}
    save_file(data, tmp_path / "data.safetensors")
    result = invoke("inspect", tmp_path / "data.safetensors", "--plot", tmp_path / "data.png")
    assert result.exit_code == 0, result.output
    width, height = png_size(tmp_path / "data.png")
    assert width > 400 and height > 400
    from matplotlib.image import imread

    pixels = imread(tmp_path / "data.png")
    assert pixels.std() > 0.01  # not blank


def test_compute_plots_one_run_and_refuses_a_sweep(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out, picture = tmp_path / "q.safetensors", tmp_path / "q.png"
    result = invoke("compute", QUICKSTART, "-o", out, "--plot", picture, "-q")
    assert result.exit_code == 0, result.output
    assert png_size(picture)[1] > 200
    sweep = invoke("compute", REPO / "configs" / "sweep.yaml", "--plot", tmp_path / "s.png")
    assert sweep.exit_code == 2
    assert "--plot draws the tensors of one run" in " ".join(sweep.output.split())


def test_a_plot_never_replaces_a_file_the_command_reads(tmp_path: Path) -> None:
    data = tmp_path / "data.safetensors"
    save_file({"x": torch.ones(3)}, data)
    before = data.read_bytes()
    result = invoke("inspect", data, "--plot", data)
    assert result.exit_code == 2
    assert data.read_bytes() == before
    inputs = REPO / "samples" / "data" / "exp_reducer_inputs.safetensors"
    before = inputs.read_bytes()
    result = invoke("compute", QUICKSTART, "-o", tmp_path / "o.safetensors", "--plot", inputs)
    assert result.exit_code == 2
    assert inputs.read_bytes() == before


def test_without_matplotlib_the_message_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    save_file({"x": torch.ones(3)}, tmp_path / "data.safetensors")
    result = invoke("inspect", tmp_path / "data.safetensors", "--plot", tmp_path / "p.png")
    assert result.exit_code == 2
    assert "pip install 'jvpcli[plot]'" in " ".join(result.output.split())
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("prefix", ["module.", "model.encoder."])
def test_weights_saved_with_a_prefix_are_explained_and_loadable(
    tmp_path: Path, prefix: str
) -> None:
    sys.path.insert(0, str(REPO / "samples"))
    try:
        from models import TinyMLP
    finally:
        sys.path.remove(str(REPO / "samples"))
    model = TinyMLP(width=32, depth=2)
    save_file({prefix + k: v for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    config = REPO / "configs" / "tiny_mlp.yaml"
    weights = f"--set=function.weights={tmp_path / 'w.safetensors'}"
    out = tmp_path / "o.safetensors"
    refused = invoke("compute", config, weights, "-o", out)
    assert refused.exit_code == 2
    message = " ".join(refused.output.split())
    assert f"carry the prefix {prefix!r}" in message
    assert f"function.weights_prefix: {prefix!r}" in message
    loaded = invoke(
        "compute", config, weights, f"--set=function.weights_prefix={prefix}", "-o", out
    )
    assert loaded.exit_code == 0, loaded.output
    x = load_file(REPO / "samples" / "data" / "tiny_mlp_inputs.safetensors")["x"]
    with torch.no_grad():
        torch.testing.assert_close(load_file(out)["func_output"], model.eval()(x))


def test_every_missing_file_is_named_at_once_with_where_paths_resolve(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "run.yaml").write_text(
        "function: fns.py:f\ninputs: data/x.safetensors\nv: data/v.safetensors\n"
        "output: out.safetensors\n"
    )
    result = invoke("compute", folder / "run.yaml")
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "3 files do not exist" in message
    for name in ("fns.py", "data/x.safetensors", "data/v.safetensors"):
        assert name in message
    assert "resolve against the config's folder" in message

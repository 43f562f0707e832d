"""`jvpcli compute / validate / schema / inspect` through typer's CliRunner.

Results are checked against torch.autograd.functional.jvp, computed here on the same tensors with
the function imported and the model built independently of jvpcli.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.nn.attention import SDPBackend, sdpa_kernel
from typer.testing import CliRunner

from jvpcli import __version__
from jvpcli.cli import app

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
DATA = SAMPLES / "data"
CONFIGS = REPO / "configs"
ANSI = re.compile(r"\x1b\[")


def invoke(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def import_file(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"oracle_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def oracle_function(sample: str) -> Any:
    """The sample's function, built without jvpcli: what torch.autograd.functional.jvp gets."""
    models = import_file(SAMPLES / "models.py")
    if sample in ("exp_reducer", "adder"):
        return getattr(import_file(SAMPLES / "functions.py"), sample)
    if sample == "custom_function":
        return import_file(SAMPLES / "custom_function.py").soft_sign_mix
    if sample in ("tiny_mlp", "tiny_mlp_exported"):
        model, weights = models.TinyMLP(width=32, depth=2), "tiny_mlp"
    elif sample == "small_cnn":
        model, weights = models.SmallCNN(channels=4, classes=3).double(), sample
    else:
        model = models.transformer_encoder_layer(d_model=16, nhead=2, dim_feedforward=32)
        weights = "transformer_layer"
    model.load_state_dict(load_file(DATA / f"{weights}_weights.safetensors"))
    return model.eval()


def expected_jvp(sample: str, argument_order: list[str], dtype: torch.dtype | None = None):
    data = sample.removesuffix("_exported")
    inputs = load_file(DATA / f"{data}_inputs.safetensors")
    v = load_file(DATA / f"{data}_v.safetensors")
    xs = tuple(inputs[n].to(dtype or inputs[n].dtype) for n in argument_order)
    vs = tuple(v[n].to(dtype or v[n].dtype) for n in argument_order)
    # The fused CPU attention kernel has no double backward, which torch's jvp needs.
    with sdpa_kernel(SDPBackend.MATH):
        return torch.autograd.functional.jvp(oracle_function(sample), xs, vs)


def relocated_config(name: str, tmp_path: Path, **changes: Any) -> Path:
    """A copy of configs/NAME.yaml in tmp_path, paths made absolute, output in tmp_path."""
    data = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())

    def absolute(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("../"):
            return str((CONFIGS / value).resolve())
        if isinstance(value, dict):
            return {k: absolute(v) for k, v in value.items()}
        return value

    data = {k: absolute(v) for k, v in data.items()}
    data["output"] = str(tmp_path / "out.safetensors")
    data.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------
# Results against the oracle

SAMPLE_ARGUMENTS = {
    "quickstart": ("exp_reducer", ["x"], None),
    "adder": ("adder", ["x", "y"], None),
    "tiny_mlp": ("tiny_mlp", ["x"], None),
    "tiny_mlp_exported": ("tiny_mlp_exported", ["x"], None),
    "small_cnn": ("small_cnn", ["image"], torch.float64),
    "transformer_layer": ("transformer_layer", ["src"], None),
    "custom_function": ("custom_function", ["x"], None),
}


@pytest.mark.parametrize("config", sorted(SAMPLE_ARGUMENTS))
def test_every_sample_config_writes_the_jvp_torch_computes(config: str, tmp_path: Path) -> None:
    sample, order, dtype = SAMPLE_ARGUMENTS[config]
    result = invoke("compute", relocated_config(config, tmp_path), "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    written = load_file(tmp_path / "out.safetensors")
    func_output, jvp = expected_jvp(sample, order, dtype)
    assert set(written) == {"func_output", "jvp"}
    torch.testing.assert_close(written["func_output"], func_output)
    torch.testing.assert_close(written["jvp"], jvp, rtol=1e-5, atol=1e-6)


def test_quickstart_runs_from_any_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "quick.safetensors"
    result = invoke("compute", CONFIGS / "quickstart.yaml", "--output", "quick.safetensors")
    assert result.exit_code == 0, result.output
    func_output, jvp = expected_jvp("exp_reducer", ["x"])
    torch.testing.assert_close(load_file(output)["jvp"], jvp)
    torch.testing.assert_close(load_file(output)["func_output"], func_output)


def test_summary_table_shows_each_tensor_and_how_it_was_computed(tmp_path: Path) -> None:
    result = invoke("compute", relocated_config("quickstart", tmp_path))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    jvp_row = next(line for line in lines if line.strip().startswith("jvp "))
    _, jvp = expected_jvp("exp_reducer", ["x"])
    assert "(4,)" in jvp_row
    assert "float32" in jvp_row
    assert f"{torch.linalg.vector_norm(jvp.double()).item():.4g}" in jvp_row
    assert f"{jvp.min().item():.4g}" in jvp_row
    assert "yes" in jvp_row
    assert re.search(r"method\s+forward", result.stdout)
    # Long values fold onto the next line: nothing is cut short in a narrow terminal.
    assert "…" not in result.stdout
    assert str(tmp_path / "out.safetensors") in re.sub(r"\s+", "", result.stdout)
    assert not ANSI.search(result.stdout)


def test_fallback_is_named_in_the_summary(tmp_path: Path) -> None:
    result = invoke("compute", relocated_config("custom_function", tmp_path))
    assert result.exit_code == 0, result.output
    assert "double-backward" in result.stdout
    assert "forward failed" in " ".join(result.stdout.split())


def test_options_override_the_config(tmp_path: Path) -> None:
    config = relocated_config("custom_function", tmp_path)
    output = tmp_path / "other.safetensors"
    result = invoke(
        "compute", config, "--method", "double-backward", "--output", output, "--dtype",
        "float64", "--set", "strict=true", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)["runs"][0]
    assert (run["method"], run["method_used"], run["fallbacks"]) == ("double-backward",) * 2 + ([],)
    assert run["strict"] is True
    assert run["dtype"] == "float64"
    assert Path(run["output"]) == output
    assert not (tmp_path / "out.safetensors").exists()
    _, jvp = expected_jvp("custom_function", ["x"], torch.float64)
    torch.testing.assert_close(load_file(output)["jvp"], jvp)


def test_config_free_command_line(tmp_path: Path) -> None:
    output = tmp_path / "adder.safetensors"
    result = invoke(
        "compute", "--function", f"{SAMPLES / 'functions.py'}:adder",
        "--inputs", DATA / "adder_inputs.safetensors", "--v", DATA / "adder_v.safetensors",
        "--output", output, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    _, jvp = expected_jvp("adder", ["x", "y"])
    torch.testing.assert_close(load_file(output)["jvp"], jvp)


def test_output_metadata_records_versions_method_flags_and_digests(tmp_path: Path) -> None:
    config = relocated_config("custom_function", tmp_path)
    assert invoke("compute", config, "--quiet").exit_code == 0
    with safe_open(tmp_path / "out.safetensors", "pt") as file:
        metadata = file.metadata()
    assert metadata["jvpcli.version"] == __version__
    assert metadata["torch.version"] == torch.__version__
    assert metadata["jvpcli.method"] == "auto"
    assert metadata["jvpcli.method_used"] == "double-backward"
    assert json.loads(metadata["jvpcli.fallbacks"])[0]["method"] == "forward"
    assert (metadata["jvpcli.strict"], metadata["jvpcli.create_graph"]) == ("false", "false")
    for role, path in [
        ("inputs", DATA / "custom_function_inputs.safetensors"),
        ("v", DATA / "custom_function_v.safetensors"),
        ("config", config),
        ("function", SAMPLES / "custom_function.py"),
    ]:
        assert metadata[f"jvpcli.sha256.{role}"] == hashlib.sha256(path.read_bytes()).hexdigest()
    settings = json.loads(metadata["jvpcli.settings"])
    assert settings["inputs"] == str(DATA / "custom_function_inputs.safetensors")


def test_create_graph_saves_detached_values_and_says_so(tmp_path: Path) -> None:
    result = invoke("compute", relocated_config("tiny_mlp", tmp_path), "--create-graph")
    assert result.exit_code == 0, result.output
    assert "autograd graph" in result.stdout
    _, jvp = expected_jvp("tiny_mlp", ["x"])
    torch.testing.assert_close(load_file(tmp_path / "out.safetensors")["jvp"], jvp)


# --------------------------------------------------------------------------------------------
# User functions written for the tests: tuples, binding, failures

FUNCTIONS = """
import torch

def pair(a, b):
    return a * b, a.sin() + b

def boom(x):
    y = x * 2
    raise ValueError("the user's function gave up")

def independent(x):
    return torch.ones(3)

def variadic(*xs):
    return xs[0] * xs[1]

def scaled(x, scale=3.0):
    return scale * x

def make_scaler(factor=2.0):
    return lambda x: factor * x

def to_complex128(x):
    return x.double() * (1 + 1j)
"""


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A folder with fns.py and tensor files a.safetensors ({a, b}), x.safetensors ({x})."""
    (tmp_path / "fns.py").write_text(FUNCTIONS)
    generator = torch.Generator().manual_seed(0)
    save_file(
        {name: torch.randn(3, generator=generator) for name in ("b", "a")},
        tmp_path / "ab.safetensors",
    )
    save_file(
        {name: torch.randn(3, generator=generator) for name in ("a", "b")},
        tmp_path / "ab_v.safetensors",
    )
    save_file({"x": torch.randn(4, generator=generator)}, tmp_path / "x.safetensors")
    save_file({"x": torch.randn(4, generator=generator)}, tmp_path / "x_v.safetensors")
    return tmp_path


def write_config(folder: Path, text: str, name: str = "run.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_tuple_outputs_are_written_with_indexed_names(workspace: Path) -> None:
    config = write_config(
        workspace,
        """
        function: fns.py:pair
        inputs: ab.safetensors
        v: ab_v.safetensors
        output: results/pair.safetensors
        """,
    )
    result = invoke("compute", config, "--json")
    assert result.exit_code == 0, result.output
    written = load_file(workspace / "results" / "pair.safetensors")
    assert set(written) == {"func_output.0", "func_output.1", "jvp.0", "jvp.1"}
    inputs = load_file(workspace / "ab.safetensors")
    v = load_file(workspace / "ab_v.safetensors")
    pair = import_file(workspace / "fns.py").pair
    outputs, jvps = torch.autograd.functional.jvp(
        pair, (inputs["a"], inputs["b"]), (v["a"], v["b"])
    )
    for i in (0, 1):
        torch.testing.assert_close(written[f"func_output.{i}"], outputs[i])
        torch.testing.assert_close(written[f"jvp.{i}"], jvps[i])
    run = json.loads(result.stdout)["runs"][0]
    assert [o["index"] for o in run["outputs"]] == [0, 1]
    assert [o["jvp"]["name"] for o in run["outputs"]] == ["jvp.0", "jvp.1"]


def test_order_binds_tensors_to_a_function_without_parameter_names(workspace: Path) -> None:
    config = write_config(
        workspace,
        """
        function: fns.py:variadic
        inputs: ab.safetensors
        v: ab_v.safetensors
        output: out.safetensors
        order: [b, a]
        """,
    )
    assert invoke("compute", config, "-q").exit_code == 0
    inputs = load_file(workspace / "ab.safetensors")
    v = load_file(workspace / "ab_v.safetensors")
    _, jvp = torch.autograd.functional.jvp(
        lambda b, a: b * a, (inputs["b"], inputs["a"]), (v["b"], v["a"])
    )
    torch.testing.assert_close(load_file(workspace / "out.safetensors")["jvp"], jvp)


def test_single_tensor_feeds_a_single_parameter_whatever_its_name(workspace: Path) -> None:
    save_file({"anything": torch.arange(4.0)}, workspace / "any.safetensors")
    save_file({"anything": torch.ones(4)}, workspace / "any_v.safetensors")
    config = write_config(
        workspace,
        """
        function: fns.py:scaled
        inputs: any.safetensors
        v: any_v.safetensors
        output: out.safetensors
        """,
    )
    assert invoke("compute", config, "-q").exit_code == 0
    torch.testing.assert_close(
        load_file(workspace / "out.safetensors")["jvp"], torch.full((4,), 3.0)
    )


def test_v_may_be_omitted_for_a_single_one_element_input(workspace: Path) -> None:
    save_file({"x": torch.tensor([0.5])}, workspace / "one.safetensors")
    config = write_config(
        workspace,
        """
        function: fns.py:scaled
        inputs: one.safetensors
        output: out.safetensors
        """,
    )
    assert invoke("compute", config, "-q").exit_code == 0
    _, jvp = torch.autograd.functional.jvp(lambda x: 3.0 * x, torch.tensor([0.5]))
    torch.testing.assert_close(load_file(workspace / "out.safetensors")["jvp"], jvp)


def test_dotted_module_next_to_the_config_is_importable(workspace: Path) -> None:
    package = workspace / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "ops.py").write_text("def cube(x):\n    return x ** 3\n")
    config = write_config(
        workspace,
        """
        function: userpkg.ops:cube
        inputs: x.safetensors
        v: x_v.safetensors
        output: out.safetensors
        """,
    )
    assert invoke("compute", config, "-q").exit_code == 0
    x, v = (
        load_file(workspace / "x.safetensors")["x"],
        load_file(workspace / "x_v.safetensors")["x"],
    )
    torch.testing.assert_close(load_file(workspace / "out.safetensors")["jvp"], 3 * x**2 * v)


def test_non_finite_values_are_flagged_loudly(workspace: Path) -> None:
    save_file(
        {"x": torch.tensor([1.0, float("nan"), float("inf"), 2.0])}, workspace / "nan.safetensors"
    )
    config = write_config(
        workspace,
        """
        function: fns.py:scaled
        inputs: nan.safetensors
        v: x_v.safetensors
        output: out.safetensors
        """,
    )
    human = invoke("compute", config)
    assert human.exit_code == 0, human.output
    assert "NO: 1 NaN, 1 Inf" in human.stdout
    assert "warning: func_output has 1 NaN, 1 Inf values" in human.stdout
    machine = json.loads(invoke("compute", config, "--json").stdout)
    stats = machine["runs"][0]["outputs"][0]["func_output"]
    assert (stats["finite"], stats["nan"], stats["inf"], stats["norm"]) == (False, 1, 1, None)


# --------------------------------------------------------------------------------------------
# Errors: exit code, one clear message, no traceback, no output file

BASE = """
function: fns.py:scaled
inputs: x.safetensors
v: x_v.safetensors
output: out.safetensors
"""


def corrupt_files(folder: Path) -> None:
    valid = (folder / "x.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(valid[:-5])
    (folder / "garbage.safetensors").write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!"
    )
    (folder / "short.safetensors").write_bytes(b"\x01\x02")
    save_file({"x": torch.arange(4)}, folder / "ints.safetensors")
    save_file({"x": torch.ones(5)}, folder / "v_shape.safetensors")
    save_file({"x": torch.ones(4, dtype=torch.float64)}, folder / "v_dtype.safetensors")
    save_file({"x": torch.ones(4), "z": torch.ones(4)}, folder / "xz.safetensors")
    save_file({"a": torch.ones(3)}, folder / "a.safetensors")
    (folder / "broken.py").write_text("import torch\n\nVALUE = 1 / 0\n")
    (folder / "syntax.py").write_text("def f(x):\n    return x +\n")
    (folder / "helper.py").write_text("def fail(x):\n    raise RuntimeError('deep inside')\n")
    (folder / "uses_helper.py").write_text(
        "import helper\n\ndef run(x):\n    return helper.fail(x)\n"
    )
    archive = (DATA / "tiny_mlp.pt2").read_bytes()
    (folder / "cut.pt2").write_bytes(archive[: len(archive) // 2] + archive[-2000:])


ERROR_CASES = [
    # (id, config text or None for BASE, extra args, exit code, message fragments)
    ("yaml-syntax", "function: [fns.py:scaled\ninputs: x.safetensors\n", [], 2,
     ["run.yaml:2:7", "invalid YAML"]),
    ("unknown-key", BASE + "metod: forward\n", [], 2,
     ["run.yaml:6:1", "unknown key 'metod'", "Did you mean 'method'?"]),
    ("unknown-function-key", BASE.replace("function: fns.py:scaled",
     "function:\n  target: fns.py:scaled\n  wieghts: w.safetensors"), [], 2,
     ["unknown key 'function.wieghts'", "Did you mean 'weights'?"]),
    ("wrong-type", BASE + "strict: maybe\n", [], 2,
     ["run.yaml:6:1", "'strict' must be true or false", '"maybe" (a string)']),
    ("wrong-choice", BASE, ["--method", "fwd"], 2,
     ["--method", "must be one of auto, forward, double-backward", "Did you mean 'forward'?"]),
    ("missing-key", "function: fns.py:scaled\n", [], 2, ["missing required keys inputs, output"]),
    ("missing-config", None, [], 2, ["config file", "absent.yaml does not exist"]),
    ("missing-inputs", BASE.replace("x.safetensors", "nope.safetensors", 1), [], 2,
     ["inputs file", "nope.safetensors does not exist"]),
    ("missing-v", BASE.replace("x_v.safetensors", "nope.safetensors"), [], 2,
     ["v file", "does not exist"]),
    ("missing-function-file", BASE.replace("fns.py", "nope.py"), [], 2,
     ["function file", "nope.py does not exist"]),
    ("module-fails-to-import", BASE.replace("fns.py", "broken.py"), [], 2,
     ["importing", "ZeroDivisionError: division by zero", "broken.py:3", "VALUE = 1 / 0"]),
    ("module-syntax-error", BASE.replace("fns.py", "syntax.py"), [], 2,
     ["importing", "SyntaxError", "syntax.py:2"]),
    ("missing-module", BASE.replace("fns.py:scaled", "no_such_pkg.mod:f"), [], 2,
     ["no module named 'no_such_pkg'"]),
    ("name-not-in-module", BASE.replace("scaled", "scaeld"), [], 2,
     ["has no 'scaeld'", "Did you mean 'scaled'?"]),
    ("truncated-file", BASE.replace("x.safetensors", "truncated.safetensors", 1), [], 2,
     ["truncated.safetensors is truncated", "tensor 'x'"]),
    ("corrupt-header", BASE.replace("x.safetensors", "garbage.safetensors", 1), [], 2,
     ["garbage.safetensors is corrupt", "not a safetensors JSON header"]),
    ("too-short-file", BASE.replace("x.safetensors", "short.safetensors", 1), [], 2,
     ["is not a safetensors file", "2 bytes"]),
    ("extra-tensor-name", BASE.replace("x.safetensors", "xz.safetensors", 1)
     .replace("x_v.safetensors", "xz.safetensors"), [], 2,
     ["holds 'z', which scaled(x, scale) has no parameter for", "order: [...]"]),
    ("missing-tensor-name", BASE.replace("scaled", "pair")
     .replace("x.safetensors", "a.safetensors", 1).replace("x_v.safetensors", "a.safetensors"),
     [], 2, ["pair(a, b) needs 2 tensors", "holds 1 ('a')"]),
    ("v-unknown-name", BASE.replace("x_v.safetensors", "xz.safetensors"), [], 2,
     ["v file", "holds 'z', which inputs file", "named after the input it belongs to ('x')"]),
    ("order-names-unknown", BASE + "order: [y]\n", [], 2,
     ["order names 'y', which it does not hold", "holds 'x', which order leaves out"]),
    ("v-shape", BASE.replace("x_v.safetensors", "v_shape.safetensors"), [], 2,
     ["tensor 'x' has shape (5,)", "has shape (4,)"]),
    ("v-dtype", BASE.replace("x_v.safetensors", "v_dtype.safetensors"), [], 2,
     ["tensor 'x' is float64", "is float32"]),
    ("integer-inputs", BASE.replace("x.safetensors", "ints.safetensors", 1)
     .replace("x_v.safetensors", "ints.safetensors"), [], 2,
     ["is int64", "a JVP needs floating-point inputs"]),
    ("output-overwrites-input", BASE.replace("out.safetensors", "x.safetensors"), [], 2,
     ["same file as 'inputs'"]),
    ("model-fails-to-build", BASE.replace("fns.py:scaled",
     "{target: fns.py:torch.nn.Linear, init: {in_features: 4, bogus: 1}}"), [], 2,
     ["building the model torch.nn.Linear(in_features=4, bogus=1) failed", "TypeError", "bogus"]),
    ("weights-for-a-plain-function", BASE.replace("fns.py:scaled",
     "{target: fns.py:make_scaler, weights: x.safetensors}"), [], 2,
     ["function.weights needs an nn.Module, but make_scaler built a function"]),
    ("exported-not-an-archive", BASE.replace("fns.py:scaled", "{exported: x.safetensors}"), [],
     2, ["x.safetensors is not a torch.export archive (not a zip file)"]),
    ("exported-corrupt", BASE.replace("fns.py:scaled", "{exported: cut.pt2}"), [], 2,
     ["cannot load the exported program", "cut.pt2"]),
    ("class-as-function", BASE.replace("fns.py:scaled", "fns.py:torch.nn.Linear"), [], 2,
     ["is a class", "target"]),
    ("unavailable-device", BASE + "device: cuda:7\n", [], 2, ["'cuda:7' is not available"]),
    ("function-raises", BASE.replace("scaled", "boom"), [], 1,
     ["ValueError: the user's function gave up", "fns.py:9, in boom",
      "raise ValueError(\"the user's function gave up\")"]),
    ("function-raises-in-a-helper-module", BASE.replace("fns.py:scaled", "uses_helper.py:run"),
     [], 1, ["RuntimeError: deep inside", "helper.py:2, in fail"]),
    ("unwritable-output-dtype", BASE.replace("scaled", "to_complex128"), [], 1,
     ["cannot write the output", "out.safetensors: safetensors cannot store", "complex128"]),
    ("strict-violation", BASE.replace("scaled", "independent") + "strict: true\n", [], 1,
     ["computing the JVP of independent failed", "RuntimeError"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("config_text", "extra", "code", "fragments"),
    [pytest.param(*case[1:], id=case[0]) for case in ERROR_CASES],
)
def test_errors_exit_with_their_code_and_one_clear_message(
    workspace: Path, config_text: str | None, extra: list[str], code: int, fragments: list[str]
) -> None:
    corrupt_files(workspace)
    config = workspace / ("run.yaml" if config_text is not None else "absent.yaml")
    if config_text is not None:
        config.write_text(config_text)
    result = invoke("compute", config, *extra)
    assert result.exit_code == code, result.output
    message = " ".join(result.stderr.split())
    assert message.startswith("error: ")
    for fragment in fragments:
        assert fragment in message
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert not (workspace / "out.safetensors").exists()
    assert not list(workspace.glob(".out.safetensors.*"))


def test_weights_that_do_not_fit_the_model_name_the_tensors(tmp_path: Path) -> None:
    config = relocated_config("tiny_mlp", tmp_path)
    result = invoke("compute", config, "--set", "function.init.width=16")
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "do not fit TinyMLP(width=16, depth=2)" in message
    assert "'net.0.weight' is (32, 4) in the file, (16, 4) in the model" in message
    assert not (tmp_path / "out.safetensors").exists()


def test_weights_with_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    weights = load_file(DATA / "tiny_mlp_weights.safetensors")
    weights["net.9.weight"] = weights.pop("net.4.weight")
    save_file(weights, tmp_path / "renamed.safetensors")
    config = relocated_config("tiny_mlp", tmp_path)
    result = invoke(
        "compute", config, "--set", f"function.weights={tmp_path / 'renamed.safetensors'}"
    )
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "missing 'net.4.weight'" in message
    assert "unexpected 'net.9.weight'" in message


def test_debug_shows_the_traceback(workspace: Path) -> None:
    config = write_config(workspace, BASE.replace("scaled", "boom"))
    result = invoke("compute", config, "--debug")
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "ValueError: the user's function gave up" in result.stderr


def test_json_errors_are_a_document_on_stdout(workspace: Path) -> None:
    config = write_config(workspace, BASE.replace("scaled", "boom"))
    result = invoke("compute", config, "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert document["exit_code"] == 1
    assert document["error"]["type"] == "ComputeError"
    assert "gave up" in document["error"]["message"]
    assert "fns.py:9" in document["error"]["location"]
    assert document["runs"] == []


def test_json_summary_has_its_documented_keys(tmp_path: Path) -> None:
    result = invoke("compute", relocated_config("adder", tmp_path), "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document) == {"jvpcli_version", "ok", "exit_code", "error", "runs"}
    assert (document["ok"], document["exit_code"], document["error"]) == (True, 0, None)
    (run,) = document["runs"]
    assert set(run) == {
        "name", "status", "function", "config", "inputs", "v", "v_params", "roles", "params",
        "notes", "output", "method",
        "method_used", "fallbacks", "strict", "create_graph", "batched_v", "carried_graph",
        "dtype", "device", "seconds", "total_seconds", "outputs", "seed", "deterministic",
        "expect", "check", "fail_on_nonfinite", "checks", "error", "compile", "compile_seconds",
    }  # fmt: skip
    assert run["error"] is None
    (finite,) = run["checks"]
    assert set(finite) == {"check", "status", "message", "directions", "steps", "tensors"}
    assert set(finite["tensors"][0]) == {
        "name", "status", "max_abs_error", "max_abs_index", "max_rel_error", "max_rel_index",
        "rtol", "atol", "mismatched", "elements", "got", "expected", "message",
    }  # fmt: skip
    assert (finite["check"], finite["status"]) == ("finite", "passed")
    (output,) = run["outputs"]
    assert set(output) == {"index", "path", "shape", "jvp_shape", "dtype", "func_output", "jvp"}
    assert set(output["jvp"]) == {"name", "norm", "min", "max", "finite", "nan", "inf"}
    _, jvp = expected_jvp("adder", ["x", "y"])
    assert output["jvp"]["max"] == pytest.approx(jvp.max().item())
    assert output["shape"] == [2]


# --------------------------------------------------------------------------------------------
# validate, schema, inspect


def test_validate_reports_bindings_without_computing(workspace: Path) -> None:
    config = write_config(workspace, BASE.replace("scaled", "pair").replace("x", "ab"))
    result = invoke("validate", config, "--json")
    assert result.exit_code == 0, result.output
    (run,) = json.loads(result.stdout)["runs"]
    assert [(i["name"], i["position"], i["shape"]) for i in run["inputs"]] == [
        ("a", 0, [3]),
        ("b", 1, [3]),
    ]
    assert not (workspace / "out.safetensors").exists()
    human = invoke("validate", config)
    assert human.exit_code == 0
    assert "valid: ready to run" in human.stdout
    assert invoke("validate", config, "--quiet").stdout == ""


@pytest.mark.parametrize("case", ["v-shape", "unknown-key", "name-not-in-module", "integer-inputs"])
def test_validate_finds_the_errors_compute_finds(workspace: Path, case: str) -> None:
    corrupt_files(workspace)
    _, text, extra, code, fragments = next(c for c in ERROR_CASES if c[0] == case)
    config = write_config(workspace, text)
    result = invoke("validate", config, *extra)
    assert result.exit_code == code == 2
    assert fragments[0] in " ".join(result.stderr.split())


def test_schema_lists_every_config_key() -> None:
    result = invoke("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["then"]["required"] == ["function", "inputs", "output"]
    assert set(schema["properties"]) == {
        "name", "function", "inputs", "v", "v_params", "outputs", "save_v", "output", "order",
        "strict", "create_graph",
        "method", "compile", "dtype", "device", "executor", "resources", "batched_v",
        "expect", "rtol", "atol", "tolerances",
        "check", "fd_step", "fd_rtol", "fail_on_nonfinite", "seed", "deterministic", "sweep",
        "runs",
    }  # fmt: skip
    assert schema["properties"]["method"]["enum"] == ["auto", "forward", "double-backward"]
    assert (
        schema["properties"]["compile"]["type"],
        schema["properties"]["compile"]["default"],
    ) == (
        "boolean",
        False,
    )


def test_sample_configs_satisfy_the_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(invoke("schema").stdout)
    jsonschema.Draft7Validator.check_schema(schema)
    for config in CONFIGS.glob("*.yaml"):
        jsonschema.validate(yaml.safe_load(config.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {"function": "f.py:g", "inputs": "x", "output": "y", "metod": 1}, schema
        )


def test_inspect_shows_tensors_and_metadata(tmp_path: Path) -> None:
    tensors = {"w": torch.tensor([[1.0, -2.0], [3.0, 4.0]]), "n": torch.arange(3)}
    save_file(tensors, tmp_path / "t.safetensors", metadata={"origin": "a test"})
    human = invoke("inspect", tmp_path / "t.safetensors")
    assert human.exit_code == 0, human.output
    w_row = next(line for line in human.stdout.splitlines() if line.strip().startswith("w "))
    assert "(2, 2)" in w_row and "float32" in w_row and "5.477" in w_row and "-2" in w_row
    assert "a test" in human.stdout
    machine = json.loads(invoke("inspect", tmp_path / "t.safetensors", "--json").stdout)
    file = machine["file"]
    assert file["metadata"] == {"origin": "a test"}
    by_name = {t["name"]: t for t in file["tensors"]}
    assert by_name["n"]["dtype"] == "int64"
    assert by_name["n"]["max"] == 2
    assert by_name["w"]["norm"] == pytest.approx(30**0.5)


def test_inspect_of_a_corrupt_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 16)
    result = invoke("inspect", tmp_path / "bad.safetensors")
    assert result.exit_code == 2
    assert "corrupt or truncated" in result.stderr


def test_version_names_jvpcli_and_torch() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"jvpcli {__version__} (torch ")


def test_unknown_option_is_a_usage_error() -> None:
    assert invoke("compute", "--frobnicate").exit_code == 2

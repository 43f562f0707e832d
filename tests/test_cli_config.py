"""jvpcli.config: YAML configs and command-line overrides, validated into RunSpecs."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from jvpcli.config import (
    METHODS,
    ExportedFunction,
    ModelFunction,
    Override,
    PlainFunction,
    RunSpec,
    json_schema,
    load_sweep,
    parse_assignment,
)
from jvpcli.errors import ConfigError

MINIMAL = """
function: models/fns.py:f
inputs: data/x.safetensors
output: results/out.safetensors
"""


def write(folder: Path, text: str, name: str = "run.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load_spec(
    config: Path | None, overrides: list[Override] | tuple[Override, ...] = ()
) -> RunSpec:
    """The one run of a config without sweep or runs."""
    sweep = load_sweep(config, overrides)
    assert not sweep.is_sweep
    (spec,) = sweep.runs
    return spec


def error_of(config: Path | None, *overrides: tuple[str, object, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_spec(config, overrides)
    return str(caught.value)


def test_config_methods_are_the_engines() -> None:
    from jvpcli.engine import METHODS as ENGINE_METHODS

    assert METHODS == ENGINE_METHODS


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, monkeypatch) -> None:
    config = write(tmp_path / "configs", MINIMAL + "v: data/v.safetensors\n")
    monkeypatch.chdir(tmp_path)
    spec = load_spec(config)
    folder = (tmp_path / "configs").resolve()
    assert spec.inputs == folder / "data" / "x.safetensors"
    assert spec.v == folder / "data" / "v.safetensors"
    assert spec.output == folder / "results" / "out.safetensors"
    assert isinstance(spec.function, PlainFunction)
    assert spec.function.ref.module == str(folder / "models" / "fns.py")
    assert spec.function.ref.name == "f"


def test_defaults_and_name(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, MINIMAL, "my-run.yaml"))
    assert spec.name == "my-run"
    assert (spec.strict, spec.create_graph, spec.method) == (False, False, "auto")
    assert (spec.dtype, spec.device, spec.order, spec.v) == (None, "cpu", None, None)


def test_overrides_resolve_paths_against_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    config = write(tmp_path / "configs", MINIMAL)
    monkeypatch.chdir(tmp_path)
    spec = load_spec(
        config,
        [("output", "here.safetensors", "--output"), ("v", "v.safetensors", "--set v=...")],
    )
    assert spec.output == tmp_path.resolve() / "here.safetensors"
    assert spec.v == tmp_path.resolve() / "v.safetensors"
    assert spec.inputs == (tmp_path / "configs" / "data" / "x.safetensors").resolve()


def test_dotted_overrides_reach_nested_keys(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
        function:
          target: models.py:Net
          init: {width: 8}
        inputs: x.safetensors
        output: out.safetensors
        """,
    )
    spec = load_spec(
        config,
        [
            ("function.init.width", 64, "--set"),
            ("function.init.depth", 3, "--set"),
            ("function.weights", "w.safetensors", "--set"),
        ],
    )
    assert isinstance(spec.function, ModelFunction)
    assert dict(spec.function.init) == {"width": 64, "depth": 3}
    assert spec.function.weights == Path.cwd().resolve() / "w.safetensors"


def test_a_null_override_removes_the_key(tmp_path: Path) -> None:
    config = write(tmp_path, MINIMAL + "v: v.safetensors\n")
    assert load_spec(config, [("v", None, "--set v=null")]).v is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("strict=true", ("strict", True)),
        ("function.init.width=64", ("function.init.width", 64)),
        ("order=[b, a]", ("order", ["b", "a"])),
        ("output=a=b.safetensors", ("output", "a=b.safetensors")),
        ("method=double-backward", ("method", "double-backward")),
    ],
)
def test_set_values_are_read_as_yaml(text: str, expected: tuple[str, object]) -> None:
    assert parse_assignment(text) == expected


@pytest.mark.parametrize("text", ["strict", "=true", "order=[a"])
def test_malformed_set_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="--set"):
        parse_assignment(text)


def test_config_free_spec_comes_from_overrides_alone(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = load_spec(
        None,
        [
            ("function", "fns.py:f", "--function"),
            ("inputs", "x.safetensors", "--inputs"),
            ("output", "out.safetensors", "--output"),
        ],
    )
    assert spec.name == "out"
    assert spec.config is None
    assert spec.inputs == tmp_path.resolve() / "x.safetensors"


def test_exported_function(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        MINIMAL.replace("function: models/fns.py:f", "function: {exported: m.pt2}"),
    )
    spec = load_spec(config)
    assert spec.function == ExportedFunction((tmp_path / "m.pt2").resolve())


def test_dotted_module_reference(tmp_path: Path) -> None:
    config = write(tmp_path, MINIMAL.replace("models/fns.py:f", "pkg.mod:Outer.inner"))
    spec = load_spec(config)
    assert isinstance(spec.function, PlainFunction)
    assert (spec.function.ref.module, spec.function.ref.name) == ("pkg.mod", "Outer.inner")
    assert not spec.function.ref.is_file
    assert spec.function.ref.search_dir == tmp_path.resolve()


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        ("stirct: true\n", ["run.yaml:5:1", "unknown key 'stirct'", "Did you mean 'strict'?"]),
        ("zzz: 1\n", ["unknown key 'zzz'", "Known keys: name, function"]),
        ("strict: 1\n", ["run.yaml:5:1", "'strict' must be true or false", "1 (a number)"]),
        ("method: fast\n", ["'method' must be one of auto, forward, double-backward"]),
        ("method: foward\n", ["Did you mean 'forward'?"]),
        ("dtype: int32\n", ["'dtype' must be one of float16, bfloat16, float32, float64"]),
        ("device: gpu\n", ["'device' must be cpu, cuda, cuda:N, mps or auto; got 'gpu'"]),
        ("order: a\n", ["'order' must be a list of tensor names"]),
        ("order: [a, a]\n", ["'order' names a more than once"]),
        ("v: 3\n", ["'v' must be a non-empty string, not 3 (a number)"]),
    ],
)
def test_invalid_values_name_the_line_and_the_problem(
    tmp_path: Path, extra: str, fragments: list[str]
) -> None:
    message = error_of(write(tmp_path, MINIMAL + extra))
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("function", "fragment"),
    [
        ("fns.py", "must look like FILE.py:NAME or package.module:NAME"),
        ('"fns.py:"', "must look like FILE.py:NAME"),
        ("not a module:f", "is neither a .py file nor a dotted module name"),
        ("[1, 2]", "'function' must be FILE.py:NAME, package.module:NAME or a mapping"),
        ("{init: {a: 1}}", "'function' needs target"),
        ("{target: m.py:M, exported: m.pt2}", "cannot be combined with target"),
        ("{target: m.py:M, init: [1]}", "'function.init' must be a mapping"),
        ("{target: 3}", "'function.target' must be FILE.py:NAME"),
        ("{target: m.py:M, wieghts: w}", "Did you mean 'weights'?"),
    ],
)
def test_invalid_functions_are_explained(tmp_path: Path, function: str, fragment: str) -> None:
    text = MINIMAL.replace("models/fns.py:f", function)
    assert fragment in error_of(write(tmp_path, text))


def test_a_key_given_twice_is_an_error(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL + "inputs: other.safetensors\n"))
    assert "run.yaml:5:1: key 'inputs' is given twice" in message


def test_output_may_not_overwrite_an_input(tmp_path: Path) -> None:
    text = MINIMAL.replace("results/out.safetensors", "data/x.safetensors")
    assert "same file as 'inputs'" in error_of(write(tmp_path, text))


def test_missing_required_keys_are_listed(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "function: f.py:g\n"))
    assert "missing required keys inputs, output" in message
    assert "--function, --inputs and --output" in error_of(None)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "is empty"),
        ("- a\n- b\n", "a config must be a mapping"),
        ("function: [a\ninputs: x\n", "run.yaml:2:7: invalid YAML"),
        ("function:\tx\n", "run.yaml:1:10: invalid YAML"),
    ],
)
def test_unusable_yaml_is_a_config_error(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in error_of(write(tmp_path, text))


def test_override_errors_name_the_option(tmp_path: Path) -> None:
    config = write(tmp_path, MINIMAL)
    message = error_of(config, ("method", "fwd", "--method"))
    assert message.startswith("--method: 'method' must be one of")
    message = error_of(config, ("function.init.width", 3, "--set function.init.width=3"))
    assert "cannot set 'function.init.width': 'function' is" in message
    assert "not a mapping" in message
    assert "unknown key 'strictt'" in error_of(config, ("strictt", True, "--set strictt=true"))


def test_settings_are_json_and_name_every_input(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
        function: {target: m.py:M, init: {w: 2}, weights: w.safetensors}
        inputs: x.safetensors
        v: v.safetensors
        output: out.safetensors
        order: [x]
        dtype: float64
        """,
    )
    settings = json.loads(json.dumps(load_spec(config).settings()))
    root = tmp_path.resolve()
    assert settings == {
        "function": {
            "target": f"{root / 'm.py'}:M",
            "init": {"w": 2},
            "weights": str(root / "w.safetensors"),
        },
        "inputs": str(root / "x.safetensors"),
        "v": str(root / "v.safetensors"),
        "order": ["x"],
        "strict": False,
        "create_graph": False,
        "method": "auto",
        "dtype": "float64",
        "device": "cpu",
        "batched_v": False,
        "seed": None,
        "deterministic": False,
    }


def test_schema_describes_every_key_the_validator_accepts() -> None:
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert all(p.get("description") for p in schema["properties"].values())
    function_forms = schema["properties"]["function"]["oneOf"]
    assert set(function_forms[1]["properties"]) == {"target", "init", "weights", "weights_prefix"}
    assert set(function_forms[2]["properties"]) == {"exported"}
    assert set(function_forms[3]["properties"]) == {"pretrained", "class", "init"}

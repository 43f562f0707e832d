"""Fuzzing the input layer: configs, safetensors files and paths, through `jvpcli compute`.

The contract, for every input: exit code 2 with one clear ``error:`` message, no traceback, no
output file, no hang; or, where the input is valid, exit code 0 and the right result (checked
against torch.autograd.functional.jvp on the tensors safetensors itself reads). Runs in-process
through typer's CliRunner, each test bounded by ``max_examples`` and ``deadline``.
"""

from __future__ import annotations

import json
import math
import struct
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from jvpcli.cli import app
from jvpcli.config import CHECKS, METHODS

FUNCTIONS = """
def smooth(x):
    return x.sin() * x


def transposed(x):
    return (x.sin() * x).t()
"""

FUZZ = settings(
    max_examples=60,
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def smooth(x: torch.Tensor) -> torch.Tensor:
    return x.sin() * x


def invoke(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_contract(result: Any, output: Path) -> None:
    """Exit 0 with the output written, or exit 2 with one message and no output; never a
    traceback nor any other exception."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    temporaries = list(output.parent.glob(f".{output.name}.*"))
    assert temporaries == []
    if result.exit_code == 0:
        assert output.is_file()
        return
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert result.stdout == ""
    assert not output.exists()


def assert_is_the_jvp(output: Path, inputs: Path, v: Path, rtol: float = 1e-5) -> None:
    xs, vs = load_file(inputs), load_file(v)
    func_output, jvp = torch.autograd.functional.jvp(smooth, xs["x"].double(), vs["x"].double())
    written = load_file(output)
    torch.testing.assert_close(written["func_output"].double(), func_output, rtol=rtol, atol=rtol)
    torch.testing.assert_close(written["jvp"].double(), jvp, rtol=rtol, atol=rtol)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """fns.py, x.safetensors and v.safetensors ({x} of shape (2, 3))."""
    (tmp_path / "fns.py").write_text(FUNCTIONS)
    save_file({"x": torch.linspace(-1, 1, 6).reshape(2, 3)}, tmp_path / "x.safetensors")
    save_file({"x": torch.linspace(2, -0.5, 6).reshape(2, 3)}, tmp_path / "v.safetensors")
    return tmp_path


def fresh(workspace: Path) -> Path:
    """A new folder for one example, inside the workspace."""
    return Path(tempfile.mkdtemp(dir=workspace))


# --------------------------------------------------------------------------------------------
# Configs

VALID = {
    "function": "../fns.py:smooth",
    "inputs": "../x.safetensors",
    "v": "../v.safetensors",
    "output": "out.safetensors",
}

# Values each key accepts and that still make a run of smooth succeed.
GOOD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "method": st.sampled_from(METHODS),
    "strict": st.booleans(),
    "create_graph": st.booleans(),
    "dtype": st.sampled_from(("float32", "float64")),
    "device": st.sampled_from(("cpu", "auto")),
    "check": st.sampled_from(CHECKS),
    "rtol": st.floats(0, 1),
    "atol": st.floats(0, 1),
    "seed": st.integers(0, 2**64 - 1),
    "deterministic": st.booleans(),
    "fail_on_nonfinite": st.booleans(),
    "order": st.just(["x"]),
    "name": st.text(min_size=1, max_size=10),
}

anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
keys = st.sampled_from(sorted({*VALID, *GOOD_VALUES, "batched_v", "expect", "tolerances"}))


@st.composite
def mutated_configs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid config with a few mutations: good values, wrong types, unknown keys, deep
    nesting, huge numbers, removed keys."""
    config: dict[str, Any] = dict(VALID)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["good", "wrong", "unknown", "nested", "huge", "remove"]))
        key = draw(keys)
        if kind == "good" and key in GOOD_VALUES:
            config[key] = draw(GOOD_VALUES[key])
        elif kind in ("good", "wrong"):
            config[key] = draw(anything)
        elif kind == "unknown":
            config[draw(st.text(min_size=1, max_size=12))] = draw(anything)
        elif kind == "nested":
            value: Any = draw(anything)
            for _ in range(draw(st.integers(1, 120))):
                value = [value] if draw(st.booleans()) else {"k": value}
            config[key] = value
        elif kind == "huge":
            config[key] = draw(st.sampled_from([10**400, -(10**30), 1e308, -math.inf, 2**64]))
        else:
            config.pop(key, None)
    return config


@FUZZ
@given(config=mutated_configs())
def test_mutated_configs_exit_2_or_compute_the_right_result(
    workspace: Path, config: dict[str, Any]
) -> None:
    folder = fresh(workspace)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    result = invoke("compute", path, "--quiet")
    output = folder / "out.safetensors"
    assert_contract(result, output)
    if result.exit_code == 0:
        assert_is_the_jvp(output, workspace / "x.safetensors", workspace / "v.safetensors")


@FUZZ
@given(text=st.text(max_size=200) | anything.map(yaml.safe_dump))
@example(text="[" * 5000 + "]" * 5000)
def test_random_yaml_is_a_usage_error(workspace: Path, text: str) -> None:
    folder = fresh(workspace)
    path = folder / "config.yaml"
    path.write_text(text, encoding="utf-8")
    result = invoke("compute", path)
    assert_contract(result, folder / "out.safetensors")
    assert result.exit_code == 2


def billion_laughs(levels: int) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        aliases = ", ".join([f"*l{level - 1}"] * 10)
        lines.append(f"l{level}: &l{level} [{aliases}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "nest", id="deep-flow-nesting"),
        pytest.param(
            ("function:\n" + "".join("  " * i + "- \n" for i in range(1, 400))).encode(),
            "nest",
            id="deep-block-nesting",
        ),
        pytest.param(billion_laughs(9).encode(), "too large", id="billion-laughs"),
        pytest.param(b"a: &a [*a]\n", "", id="recursive-alias"),
        pytest.param(b"seed: " + b"9" * 5000 + b"\n", "invalid YAML", id="5000-digit-integer"),
        pytest.param(b"function: f.py:g\x00\n", "invalid YAML", id="nul-character"),
        pytest.param(b"function: \xff\xfe\n", "cannot read config file", id="not-utf-8"),
        pytest.param(b"!!python/object:os.system {}\n", "invalid YAML", id="python-tag"),
        pytest.param(b"? [a, b]\n: c\n", "invalid YAML", id="unhashable-key"),
        pytest.param(b"output: " + b"x" * 1_000_000 + b"\n", "missing required", id="long-line"),
        pytest.param(b"\xef\xbb\xbf" + b"- a\n", "must be a mapping", id="bom-and-a-list"),
        pytest.param(b"rtol: 1.0e999\n", "", id="infinite-number"),
    ],
)
def test_pathological_yaml_is_a_quick_usage_error(
    tmp_path: Path, content: bytes, fragment: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    result = invoke("compute", path)
    assert_contract(result, tmp_path / "out.safetensors")
    assert result.exit_code == 2
    assert fragment in result.stderr


# --------------------------------------------------------------------------------------------
# Safetensors files

DTYPE_CODES = ["F32", "F64", "F16", "BF16", "C64", "I64", "I8", "U8", "BOOL", "F8_E4M3", "F4"]
sizes = st.one_of(
    st.integers(0, 4), st.integers(-3, 2**65), st.sampled_from([2**31, 2**60, 2**63 - 1])
)
header_entries = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from([*DTYPE_CODES, "f32", "", 3]),
        "shape": st.lists(sizes, max_size=3) | anything,
        "data_offsets": st.lists(sizes, max_size=3) | anything,
    }
)
headers = st.dictionaries(
    st.sampled_from(["x", "y", "__metadata__"]) | st.text(max_size=4),
    header_entries | anything,
    max_size=3,
)


def raw_file(header: bytes, data: bytes, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + data


def run_with_inputs(workspace: Path, content: bytes) -> tuple[Any, Path, Path]:
    folder = fresh(workspace)
    inputs = folder / "inputs.safetensors"
    inputs.write_bytes(content)
    output = folder / "out.safetensors"
    result = invoke(
        "compute",
        "--function",
        workspace / "fns.py:smooth",
        "--inputs",
        inputs,
        "--v",
        inputs,
        "--output",
        output,
        "--quiet",
    )
    return result, inputs, output


@FUZZ
@given(
    header=headers,
    data=st.binary(max_size=48),
    length=st.none() | st.sampled_from([0, 7, 2**32, 2**60, 2**64 - 1]) | st.integers(0, 400),
)
@example(
    header={"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, data=b"", length=2**60
)
def test_forged_safetensors_headers_exit_2_or_compute(
    workspace: Path, header: dict[str, Any], data: bytes, length: int | None
) -> None:
    raw = json.dumps(header, default=str).encode()
    result, inputs, output = run_with_inputs(workspace, raw_file(raw, data, length))
    assert_contract(result, output)
    if result.exit_code == 0:
        assert_is_the_jvp(output, inputs, inputs)


@FUZZ
@given(
    cut=st.integers(0, 200),
    flips=st.lists(st.tuples(st.integers(0, 200), st.integers(1, 255)), max_size=4),
)
def test_truncated_and_bit_flipped_files_exit_2_or_compute(
    workspace: Path, cut: int, flips: list[tuple[int, int]]
) -> None:
    original = bytearray((workspace / "x.safetensors").read_bytes())
    for position, mask in flips:
        if position < len(original):
            original[position] ^= mask
    result, inputs, output = run_with_inputs(workspace, bytes(original[: len(original) - cut]))
    assert_contract(result, output)
    # Flipped data bits make other values, maybe NaN or so large that float32 overflows where
    # the float64 oracle does not: compare where they are moderate.
    if result.exit_code == 0 and (load_file(inputs)["x"].abs() < 1e3).all():
        assert_is_the_jvp(output, inputs, inputs, rtol=1e-3)


def test_a_header_claiming_2_to_the_60_bytes_is_refused_without_reading_it(
    workspace: Path,
) -> None:
    result, _, output = run_with_inputs(workspace, raw_file(b"{}", b"", 2**60))
    assert_contract(result, output)
    assert "its header claims 1152921504606846976 bytes" in " ".join(result.stderr.split())


@pytest.mark.parametrize(
    ("tensors", "fragment"),
    [
        ({"x": torch.arange(3)}, "int64"),
        ({"x": torch.ones(3, dtype=torch.bool)}, "bool"),
        ({"x": torch.ones(3, dtype=torch.uint8)}, "uint8"),
        ({"x": torch.ones(3).to(torch.float8_e4m3fn)}, "float8_e4m3fn"),
    ],
)
def test_tensors_of_dtypes_without_derivatives_are_usage_errors(
    workspace: Path, tensors: dict[str, torch.Tensor], fragment: str
) -> None:
    folder = fresh(workspace)
    save_file(tensors, folder / "in.safetensors")
    result, _, output = run_with_inputs(workspace, (folder / "in.safetensors").read_bytes())
    assert_contract(result, output)
    assert result.exit_code == 2
    assert fragment in result.stderr


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param('{"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', id="gap"),
        pytest.param(
            '{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},'
            ' "y": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
            id="overlap",
        ),
        pytest.param('{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', id="tail"),
    ],
)
def test_non_contiguous_data_layouts_are_usage_errors(workspace: Path, layout: str) -> None:
    result, _, output = run_with_inputs(workspace, raw_file(layout.encode(), b"\0" * 8))
    assert_contract(result, output)
    assert result.exit_code == 2
    assert "is corrupt" in result.stderr


@pytest.mark.parametrize(
    "x",
    [
        pytest.param(torch.ones(0, 3), id="zero-size"),
        pytest.param(torch.tensor(0.75), id="0-dim"),
        pytest.param(torch.arange(12.0).reshape(3, 4).t(), id="non-contiguous-when-saved"),
    ],
)
def test_zero_size_0_dim_and_non_contiguous_tensors_compute_the_right_result(
    workspace: Path, x: torch.Tensor
) -> None:
    folder = fresh(workspace)
    save_file({"x": x.contiguous()}, folder / "in.safetensors")
    result, inputs, output = run_with_inputs(workspace, (folder / "in.safetensors").read_bytes())
    assert result.exit_code == 0, result.output
    assert_is_the_jvp(output, inputs, inputs)


def test_a_function_returning_a_non_contiguous_view_is_written_right(workspace: Path) -> None:
    output = workspace / "out.safetensors"
    result = invoke(
        "compute",
        "-f",
        workspace / "fns.py:transposed",
        "-i",
        workspace / "x.safetensors",
        "--v",
        workspace / "v.safetensors",
        "-o",
        output,
    )
    assert result.exit_code == 0, result.output
    x, v = load_file(workspace / "x.safetensors")["x"], load_file(workspace / "v.safetensors")["x"]
    torch.testing.assert_close(load_file(output)["jvp"], ((x.cos() * x + x.sin()) * v).t())


# --------------------------------------------------------------------------------------------
# Paths

names = st.text(
    st.characters(
        blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\:{}\0", max_codepoint=0x1F6FF
    ),
    min_size=1,
    max_size=16,
).filter(lambda name: name not in (".", "..") and not name.startswith("~") and name.strip())


@FUZZ
@given(folder_name=names, file_name=names)
@example(folder_name="with spaces", file_name="données ñ 数据 🙂")
def test_paths_with_spaces_and_unicode_work(
    workspace: Path, folder_name: str, file_name: str
) -> None:
    folder = fresh(workspace) / folder_name
    try:
        folder.mkdir()
        (folder / f"{file_name}.py").write_text(FUNCTIONS)
    except OSError:  # a name this file system does not take (e.g. too long in bytes)
        return
    save_file(load_file(workspace / "x.safetensors"), folder / f"{file_name} x.safetensors")
    save_file(load_file(workspace / "v.safetensors"), folder / f"{file_name} v.safetensors")
    config = {
        "function": f"{file_name}.py:smooth",
        "inputs": f"{file_name} x.safetensors",
        "v": f"{file_name} v.safetensors",
        "output": f"out/{file_name}.safetensors",
    }
    path = folder / f"{file_name}.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    result = invoke("compute", path)
    assert result.exit_code == 0, result.output
    assert_is_the_jvp(
        folder / "out" / f"{file_name}.safetensors",
        folder / f"{file_name} x.safetensors",
        folder / f"{file_name} v.safetensors",
    )
    assert file_name in result.stdout

"""Verification of results: goldens, finite differences, non-finite values, seeds.

Goldens are written here with safetensors itself from torch.autograd.functional.jvp's results (or
edited copies), finite differences are judged on a custom autograd.Function whose jvp is wrong by
a known 3 %, and seeded models are rebuilt here with torch.manual_seed: the code's own output is
never the oracle.
"""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_cli import relocated_config
from typer.testing import CliRunner

from jvpcli.cli import app
from jvpcli.config import RunSpec, Tolerance, load_sweep
from jvpcli.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"

FUNCTIONS = """
import torch


def smooth(x):
    return x.sin() * x


def pair(a, b):
    return a * b, a.sin() + b


class Cube(torch.autograd.Function):
    # x ** 3 with a correct backward and a jvp 3 % too large: forward mode gets it wrong.

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * grad

    @staticmethod
    def jvp(ctx, tangent):
        (x,) = ctx.saved_tensors
        return 1.03 * 3 * x**2 * tangent


def wrong_cube(x):
    return Cube.apply(x).sum(-1)


def with_index(x):
    return x.sin(), x.argmax()


def noisy(x):
    return x * torch.rand_like(x)


def logarithm(x):
    return x.log()


def boom(x):
    raise ValueError("the user's function gave up")
"""


def smooth(x: torch.Tensor) -> torch.Tensor:
    return x.sin() * x


def invoke(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def write_config(folder: Path, text: str, name: str = "run.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def document_of(result: Any) -> dict[str, Any]:
    return json.loads(result.stdout)


def check_of(run: dict[str, Any], name: str) -> dict[str, Any]:
    return next(check for check in run["checks"] if check["check"] == name)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory: fns.py; x ({x}: (3,)), v ({x}: (3,)), vb ({x}: (10, 3)), grid
    ({x}: (3, 4)), grid_v."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fns.py").write_text(FUNCTIONS)
    generator = torch.Generator().manual_seed(0)
    save_file({"x": torch.tensor([0.5, -1.25, 2.0])}, tmp_path / "x.safetensors")
    save_file({"x": torch.tensor([1.0, 0.5, -0.75])}, tmp_path / "v.safetensors")
    save_file({"x": torch.randn(10, 3, generator=generator)}, tmp_path / "vb.safetensors")
    save_file({"x": torch.randn(3, 4, generator=generator)}, tmp_path / "grid.safetensors")
    save_file({"x": torch.randn(3, 4, generator=generator)}, tmp_path / "grid_v.safetensors")
    return tmp_path


SMOOTH = """
function: fns.py:smooth
inputs: x.safetensors
v: v.safetensors
output: out.safetensors
expect: golden.safetensors
"""


def oracle(workspace: Path) -> dict[str, torch.Tensor]:
    x = load_file(workspace / "x.safetensors")["x"]
    v = load_file(workspace / "v.safetensors")["x"]
    func_output, jvp = torch.autograd.functional.jvp(smooth, x, v)
    return {"func_output": func_output, "jvp": jvp}


# --------------------------------------------------------------------------------------------
# Goldens


def test_update_golden_writes_the_results_and_a_rerun_matches_them(workspace: Path) -> None:
    config = write_config(workspace, SMOOTH)
    updated = invoke("compute", config, "--update-golden", "--json")
    assert updated.exit_code == 0, updated.output
    (run,) = document_of(updated)["runs"]
    assert check_of(run, "golden")["status"] == "updated"
    golden = load_file(workspace / "golden.safetensors")
    assert set(golden) == {"func_output", "jvp"}
    for name, expected in oracle(workspace).items():
        torch.testing.assert_close(golden[name], expected)
    assert sorted(p.name for p in workspace.iterdir() if p.name.startswith(".")) == []

    compared = invoke("compute", config, "--json")
    assert compared.exit_code == 0, compared.output
    golden_check = check_of(document_of(compared)["runs"][0], "golden")
    assert golden_check["status"] == "passed"
    assert [(t["name"], t["status"], t["max_abs_error"]) for t in golden_check["tensors"]] == [
        ("func_output", "passed", 0.0),
        ("jvp", "passed", 0.0),
    ]


def test_a_golden_mismatch_fails_the_run_and_says_which_tensor_by_how_much_and_where(
    workspace: Path,
) -> None:
    golden = oracle(workspace)
    golden["jvp"][2] += 0.25
    save_file(golden, workspace / "golden.safetensors")
    config = write_config(workspace, SMOOTH)
    human = invoke("compute", config)
    assert human.exit_code == 1
    message = " ".join(human.stderr.split())
    assert message.startswith("error: the results differ from the golden golden.safetensors:")
    assert "jvp: 1 of 3 elements beyond the bound (rtol=1.3e-06, atol=1e-05)" in message
    assert "largest absolute error 0.25 at index (2,)" in message
    assert f"expected {golden['jvp'][2].item():.6g}" in message
    assert "func_output" not in message
    assert "golden" in human.stdout  # the run's summary, with its checks table
    assert (workspace / "out.safetensors").exists()  # kept, to see what differs

    machine = document_of(invoke("compute", config, "--json"))
    (run,) = machine["runs"]
    assert (machine["exit_code"], run["status"]) == (1, "failed")
    assert machine["error"]["type"] == "VerificationError"
    assert run["outputs"] is not None and run["method_used"] == "forward"
    tensors = {t["name"]: t for t in check_of(run, "golden")["tensors"]}
    assert tensors["func_output"]["status"] == "passed"
    jvp = tensors["jvp"]
    assert (jvp["status"], jvp["max_abs_index"], jvp["mismatched"], jvp["elements"]) == (
        "failed",
        [2],
        1,
        3,
    )
    assert jvp["max_abs_error"] == pytest.approx(0.25, rel=1e-6)
    assert jvp["max_rel_error"] == pytest.approx(0.25 / abs(golden["jvp"][2].item()), rel=1e-6)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ("drop-func_output", "func_output: it is not in the golden"),
        ("extra-tensor", "jvp.1: it is in the golden, but not in the results"),
        ("float64", "jvp: it is float32, but the golden's is float64"),
        ("shape", "jvp: it has shape (3,), but the golden's has (4,)"),
    ],
)
def test_golden_keys_dtypes_and_shapes_must_match(
    workspace: Path, change: str, fragment: str
) -> None:
    golden = oracle(workspace)
    if change == "drop-func_output":
        del golden["func_output"]
    elif change == "extra-tensor":
        golden["jvp.1"] = golden["jvp"].clone()
    elif change == "float64":
        golden["jvp"] = golden["jvp"].double()
    else:
        golden["jvp"] = torch.zeros(4)
    save_file(golden, workspace / "golden.safetensors")
    result = invoke("compute", write_config(workspace, SMOOTH))
    assert result.exit_code == 1
    assert fragment in " ".join(result.stderr.split())


def test_tolerances_per_tensor_override_the_global_ones(workspace: Path) -> None:
    golden = oracle(workspace)
    golden["jvp"] *= 1.001
    save_file(golden, workspace / "golden.safetensors")
    loose = write_config(workspace, SMOOTH + "rtol: 1.0e-2\n")
    assert invoke("compute", loose).exit_code == 0
    strict_jvp = write_config(workspace, SMOOTH + "rtol: 1e-2\ntolerances: {jvp: {rtol: 1e-5}}\n")
    result = invoke("compute", strict_jvp, "--json")
    assert result.exit_code == 1
    jvp = next(
        t
        for t in check_of(document_of(result)["runs"][0], "golden")["tensors"]
        if t["name"] == "jvp"
    )
    assert (jvp["rtol"], jvp["atol"]) == (1e-5, 1e-5)


def test_tolerances_resolve_by_tensor_then_kind_then_globally() -> None:
    spec = RunSpec(
        name="r",
        function=None,  # type: ignore[arg-type]
        inputs=Path("x"),
        output=Path("o"),
        rtol=0.1,
        atol=0.2,
        tolerances={"jvp": Tolerance(rtol=0.01), "jvp.1": Tolerance(atol=0.03)},
    )
    assert spec.tolerance("jvp.1") == Tolerance(0.01, 0.03)
    assert spec.tolerance("jvp.0") == Tolerance(0.01, 0.2)
    assert spec.tolerance("func_output.1") == Tolerance(0.1, 0.2)
    assert RunSpec("r", None, Path("x"), Path("o")).tolerance("jvp") == Tolerance()  # type: ignore[arg-type]


def test_tolerances_naming_a_tensor_the_results_lack_fail_the_comparison(workspace: Path) -> None:
    save_file(oracle(workspace), workspace / "golden.safetensors")
    config = write_config(workspace, SMOOTH + "tolerances: {jvp.1: {atol: 1}}\n")
    result = invoke("compute", config)
    assert result.exit_code == 1
    assert "tolerances sets 'jvp.1', but the results hold no such tensor" in result.stderr


def test_a_missing_golden_is_a_usage_error_that_says_how_to_write_it(workspace: Path) -> None:
    result = invoke("compute", write_config(workspace, SMOOTH))
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "expect file golden.safetensors does not exist" in message
    assert "--update-golden" in message
    assert not (workspace / "out.safetensors").exists()


def test_a_corrupt_golden_is_a_usage_error(workspace: Path) -> None:
    (workspace / "golden.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    result = invoke("compute", write_config(workspace, SMOOTH))
    assert result.exit_code == 2
    assert "expect file golden.safetensors is corrupt" in result.stderr
    assert not (workspace / "out.safetensors").exists()


def test_update_golden_needs_a_run_that_sets_expect(workspace: Path) -> None:
    config = write_config(workspace, SMOOTH.replace("expect: golden.safetensors\n", ""))
    result = invoke("compute", config, "--update-golden")
    assert result.exit_code == 2
    assert "no run sets expect" in result.stderr


def test_update_golden_does_not_bless_results_that_fail_another_check(workspace: Path) -> None:
    config = write_config(
        workspace,
        """
        function: fns.py:wrong_cube
        inputs: grid.safetensors
        v: grid_v.safetensors
        output: out.safetensors
        expect: golden.safetensors
        check: finite-differences
        """,
    )
    result = invoke("compute", config, "--update-golden", "--json")
    assert result.exit_code == 1
    golden = check_of(document_of(result)["runs"][0], "golden")
    assert golden["status"] == "skipped"
    assert "was not written" in golden["message"]
    assert not (workspace / "golden.safetensors").exists()


def test_expect_is_templated_per_run_and_may_be_shared(workspace: Path) -> None:
    config = write_config(
        workspace,
        """
        function: fns.py:smooth
        inputs: x.safetensors
        v: v.safetensors
        output: results/{name}.safetensors
        expect: goldens/{method}.safetensors
        sweep:
          method: [forward, double-backward]
        """,
    )
    assert invoke("compute", config, "--update-golden", "-q").exit_code == 0
    written = sorted(p.name for p in (workspace / "goldens").iterdir())
    assert written == ["double-backward.safetensors", "forward.safetensors"]
    shared = write_config(workspace, SMOOTH + "sweep:\n  method: [forward, double-backward]\n")
    save_file(oracle(workspace), workspace / "golden.safetensors")
    result = invoke("compute", shared, "--set", "output=results/{name}.safetensors", "-q")
    assert result.exit_code == 0, result.output


def test_expect_may_not_be_the_output_nor_a_file_a_run_reads(workspace: Path) -> None:
    with pytest.raises(ConfigError, match="'output' is the same file as 'expect'"):
        load_sweep(write_config(workspace, SMOOTH.replace("golden.", "out.")))
    with pytest.raises(ConfigError, match="which run 'run' reads as 'v'; --update-golden would"):
        load_sweep(write_config(workspace, SMOOTH.replace("golden.", "v.")))


# --------------------------------------------------------------------------------------------
# Finite differences

WRONG_CUBE = """
function: fns.py:wrong_cube
inputs: grid.safetensors
v: grid_v.safetensors
output: out.safetensors
check: finite-differences
"""


def test_finite_differences_catch_a_custom_jvp_wrong_by_three_percent(workspace: Path) -> None:
    config = write_config(workspace, WRONG_CUBE)
    result = invoke("compute", config, "--method", "forward", "--json")
    assert result.exit_code == 1
    document = document_of(result)
    assert document["error"]["type"] == "VerificationError"
    fd = check_of(document["runs"][0], "finite-differences")
    assert fd["status"] == "failed"
    (jvp,) = fd["tensors"]
    assert (jvp["name"], jvp["status"], jvp["mismatched"], jvp["elements"]) == (
        "jvp",
        "failed",
        3,
        3,
    )
    # Each row's jvp is 1.03 times the true one: off by 3 % of the largest |J·v| at the largest.
    assert jvp["max_rel_error"] == pytest.approx(0.03, rel=1e-3)
    assert jvp["rtol"] == pytest.approx(torch.finfo(torch.float32).eps ** 0.5)
    assert fd["steps"] and fd["directions"] is None
    human = invoke("compute", config, "--method", "forward")
    message = " ".join(human.stderr.split())
    assert "J·v differs from central differences of wrong_cube in float64: jvp: 3 of 3" in message


def test_the_same_function_passes_through_its_correct_backward(workspace: Path) -> None:
    config = write_config(workspace, WRONG_CUBE)
    result = invoke("compute", config, "--method", "double-backward", "--json")
    assert result.exit_code == 0, result.output
    assert check_of(document_of(result)["runs"][0], "finite-differences")["status"] == "passed"


@pytest.mark.parametrize(("dtype", "largest"), [("float32", 1e-6), ("float64", 1e-9)])
@pytest.mark.parametrize(
    "sample", ["tiny_mlp", "tiny_mlp_exported", "small_cnn", "transformer_layer"]
)
def test_finite_differences_pass_correct_models_with_a_wide_margin(
    tmp_path: Path, sample: str, dtype: str, largest: float
) -> None:
    config = relocated_config(sample, tmp_path, check="finite-differences", dtype=dtype)
    result = invoke("compute", config, "--json")
    assert result.exit_code == 0, result.output
    fd = check_of(document_of(result)["runs"][0], "finite-differences")
    (jvp,) = fd["tensors"]
    assert jvp["status"] == "passed"
    assert jvp["rtol"] == pytest.approx(torch.finfo(getattr(torch, dtype)).eps ** 0.5)
    # The margin the documented rule claims: errors far below the bound.
    assert jvp["max_rel_error"] < largest <= jvp["rtol"] / 10


def test_finite_differences_check_a_bounded_subset_of_batched_directions(workspace: Path) -> None:
    text = """
    function: fns.py:{function}
    inputs: x.safetensors
    v: vb.safetensors
    batched_v: true
    output: out.safetensors
    check: finite-differences
    """
    passing = invoke("compute", write_config(workspace, text.format(function="smooth")), "--json")
    assert passing.exit_code == 0, passing.output
    fd = check_of(document_of(passing)["runs"][0], "finite-differences")
    assert fd["directions"] == [0, 1, 3, 4, 5, 6, 8, 9]
    assert len(fd["steps"]) == 8
    failing = invoke(
        "compute", write_config(workspace, text.format(function="wrong_cube")), "--json"
    )
    assert failing.exit_code == 1
    (jvp,) = check_of(document_of(failing)["runs"][0], "finite-differences")["tensors"]
    assert jvp["max_abs_index"][0] in fd["directions"]
    assert (jvp["mismatched"], jvp["elements"]) == (8, 8)


def test_finite_differences_skip_integer_outputs(workspace: Path) -> None:
    config = write_config(workspace, WRONG_CUBE.replace("wrong_cube", "with_index"))
    result = invoke("compute", config, "--json")
    assert result.exit_code == 0, result.output
    tensors = check_of(document_of(result)["runs"][0], "finite-differences")["tensors"]
    assert [(t["name"], t["status"]) for t in tensors] == [
        ("jvp.0", "passed"),
        ("jvp.1", "skipped"),
    ]
    assert "int64" in tensors[1]["message"]


def test_finite_differences_leave_the_shared_model_in_its_dtype(tmp_path: Path) -> None:
    config = relocated_config(
        "tiny_mlp",
        tmp_path,
        output=str(tmp_path / "{name}.safetensors"),
        runs=[{"name": "checked", "check": "finite-differences"}, {"name": "plain"}],
    )
    assert invoke("compute", config, "-q").exit_code == 0
    checked, plain = (load_file(tmp_path / f"{n}.safetensors") for n in ("checked", "plain"))
    assert plain["jvp"].dtype == torch.float32
    torch.testing.assert_close(plain["jvp"], checked["jvp"])


def test_the_finite_difference_step_is_settable(workspace: Path) -> None:
    config = write_config(workspace, WRONG_CUBE.replace("wrong_cube", "smooth") + "fd_step: 1e-3\n")
    result = invoke("compute", config, "--json")
    assert result.exit_code == 0, result.output
    assert check_of(document_of(result)["runs"][0], "finite-differences")["steps"] == [1e-3]


def test_a_random_function_needs_a_seed_for_finite_differences(workspace: Path) -> None:
    # Seeded, each evaluation draws the same numbers; in float64, as finite differences are, so
    # that the run draws them as the check does.
    config = write_config(workspace, WRONG_CUBE.replace("wrong_cube", "noisy") + "dtype: float64\n")
    assert invoke("compute", config, "--set", "seed=3").exit_code == 0
    assert invoke("compute", config).exit_code == 1


# --------------------------------------------------------------------------------------------
# Non-finite values


def test_non_finite_results_are_flagged_everywhere_and_fail_only_when_asked(
    workspace: Path,
) -> None:
    config = write_config(
        workspace,
        """
        function: fns.py:logarithm
        inputs: x.safetensors
        v: v.safetensors
        output: out.safetensors
        """,
    )
    report = workspace / "report.xml"
    warned = invoke("compute", config, "--json", "--junit-xml", report)
    assert warned.exit_code == 0, warned.output
    finite = check_of(document_of(warned)["runs"][0], "finite")
    assert finite["status"] == "warning"
    assert finite["message"] == "non-finite values: func_output has 1 NaN values."
    assert "warning: non-finite values" in report.read_text()

    failed = invoke("compute", config, "--json", "--set", "fail_on_nonfinite=true")
    assert failed.exit_code == 1
    document = document_of(failed)
    assert check_of(document["runs"][0], "finite")["status"] == "failed"
    assert "(fail_on_nonfinite)" in document["error"]["message"]


# --------------------------------------------------------------------------------------------
# Seeds and deterministic algorithms


def test_seed_and_deterministic_are_recorded_and_reproduce_a_random_model(
    workspace: Path,
) -> None:
    config = write_config(
        workspace,
        """
        function: {target: fns.py:torch.nn.Linear, init: {in_features: 3, out_features: 2}}
        inputs: x.safetensors
        v: v.safetensors
        output: out.safetensors
        seed: 7
        deterministic: true
        """,
    )
    result = invoke("compute", config, "--json")
    assert result.exit_code == 0, result.output
    (run,) = document_of(result)["runs"]
    assert (run["seed"], run["deterministic"]) == (7, True)
    assert not torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(7)
    weight = torch.nn.Linear(3, 2).weight.detach()
    v = load_file(workspace / "v.safetensors")["x"]
    torch.testing.assert_close(load_file(workspace / "out.safetensors")["jvp"], weight @ v)
    with safe_open(workspace / "out.safetensors", "pt") as file:
        metadata = file.metadata()
    assert (metadata["jvpcli.seed"], metadata["jvpcli.deterministic"]) == ("7", "true")
    settings = json.loads(metadata["jvpcli.settings"])
    assert (settings["seed"], settings["deterministic"]) == (7, True)

    resumed = invoke("compute", config, "--resume", "--json")
    assert document_of(resumed)["runs"][0]["status"] == "skipped"
    reseeded = invoke("compute", config, "--resume", "--set", "seed=8", "--json")
    assert document_of(reseeded)["runs"][0]["status"] == "ok"


# --------------------------------------------------------------------------------------------
# Config validation


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ("rtol: -1\n", "run.yaml:7:1: 'rtol' must be a number at least 0"),
        ("atol: .inf\n", "'atol' must be a number at least 0"),
        ("fd_step: 0\n", "'fd_step' must be a number above 0"),
        ("fd_rtol: abc\n", "'fd_rtol' must be a number above 0"),
        ("seed: -1\n", "'seed' must be a whole number from 0 to 2**64 - 1"),
        ("seed: true\n", "'seed' must be a whole number"),
        ("seed: 1.5\n", "'seed' must be a whole number"),
        (f"seed: {2**64}\n", "'seed' must be a whole number"),
        ("check: fd\n", "'check' must be one of none, finite-differences"),
        ("deterministic: yes please\n", "'deterministic' must be true or false"),
        ("tolerances: {jvpp: {rtol: 1}}\n", "'tolerances' names \"jvpp\" (a string), which is not"),
        ("tolerances: {jvp: {rtl: 1}}\n", "unknown key 'tolerances.jvp.rtl'"),
        ("tolerances: {jvp: 3}\n", "'tolerances.jvp' must be a mapping with rtol and/or atol"),
        ("tolerances: [jvp]\n", "'tolerances' must be a mapping of tensor names"),
        ("tolerances: {jvp: {atol: -2}}\n", "'tolerances.jvp.atol' must be a number at least 0"),
    ],
)
def test_invalid_verification_keys_name_the_line_and_the_problem(
    workspace: Path, extra: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_sweep(write_config(workspace, SMOOTH + extra))
    assert fragment in str(caught.value)


def test_numbers_yaml_reads_as_strings_are_numbers(workspace: Path) -> None:
    (spec,) = load_sweep(
        write_config(workspace, SMOOTH + "rtol: 1e-5\natol: 2\ntolerances: {jvp.0: {rtol: 3E-2}}\n")
    ).runs
    assert (spec.rtol, spec.atol, spec.tolerances["jvp.0"]) == (1e-5, 2.0, Tolerance(0.03, None))


# --------------------------------------------------------------------------------------------
# The CI config


def test_the_ci_config_passes_against_its_committed_goldens(tmp_path: Path) -> None:
    report = tmp_path / "ci.xml"
    result = invoke(
        "compute",
        CONFIGS / "ci.yaml",
        "--set",
        f"output={tmp_path}/{{name}}.safetensors",
        "--junit-xml",
        report,
        "--json",
    )
    assert result.exit_code == 0, result.output
    runs = document_of(result)["runs"]
    assert len(runs) == 6
    assert {
        check_of(run, name)["status"] for run in runs for name in ("golden", "finite-differences")
    } == {"passed"}
    assert 'failures="0"' in report.read_text()
    # The golden itself, against torch.autograd.functional.jvp of the model built here.
    spec = importlib.util.spec_from_file_location("ci_models", REPO / "samples" / "models.py")
    assert spec is not None and spec.loader is not None
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    model = models.TinyMLP(width=32, depth=2)
    model.load_state_dict(load_file(REPO / "samples" / "data" / "tiny_mlp_weights.safetensors"))
    x = load_file(REPO / "samples" / "data" / "tiny_mlp_inputs.safetensors")["x"]
    v = load_file(REPO / "samples" / "data" / "tiny_mlp_v.safetensors")["x"]
    _, jvp = torch.autograd.functional.jvp(model.eval(), x, v)
    golden = load_file(REPO / "samples" / "goldens" / "tiny_mlp.safetensors")
    torch.testing.assert_close(golden["jvp"], jvp, rtol=1e-5, atol=1e-6)

"""Sweeps: many runs from one config — expansion, isolation, progress, resume, shards, batched v.

Results are checked against torch.autograd.functional.jvp on the same tensors; resumed runs are
told apart from recomputed ones by their files' inode and mtime, never by timing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from jvpcli.cli import app
from jvpcli.config import Shard, json_schema, load_sweep
from jvpcli.errors import ConfigError

FUNCTIONS = """
import os
import time
from pathlib import Path

import torch

Path(__file__).with_name("imports.log").open("a").write("imported\\n")


def smooth(x):
    return x.sin() * x


def pair(a, b):
    return a * b, a.sin() + b


def boom(x):
    raise ValueError("the user's function gave up")


def gated(x):
    # Blocks on the run whose input starts with 2 or more, when the test asks it to: the test
    # then kills or interrupts the process in the middle of that run.
    gate = os.environ.get("JVPCLI_TEST_GATE")
    if gate and float(x.flatten()[0]) >= 2:
        Path(gate).write_text("blocked")
        time.sleep(120)
    return x.sin() * x
"""


BOOM_LINE = FUNCTIONS.splitlines().index('    raise ValueError("the user\'s function gave up")') + 1


def smooth(x: torch.Tensor) -> torch.Tensor:
    return x.sin() * x


def pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return a * b, a.sin() + b


def invoke(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def write_config(folder: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def tensor(folder: Path, name: str, **tensors: torch.Tensor) -> Path:
    path = folder / f"{name}.safetensors"
    save_file(tensors, path)
    return path


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """fns.py; x0..x3 ({x} of shape (3,), x_k[0] = k); v0..v6 ({x}); ab, ab_v ({a, b})."""
    monkeypatch.delenv("JVPCLI_TEST_GATE", raising=False)
    (tmp_path / "fns.py").write_text(FUNCTIONS)
    generator = torch.Generator().manual_seed(0)
    for k in range(4):
        x = torch.randn(3, generator=generator)
        x[0] = k
        tensor(tmp_path, f"x{k}", x=x)
    for k in range(7):
        tensor(tmp_path, f"v{k}", x=torch.randn(3, generator=generator))
    tensor(tmp_path, "ab", a=torch.randn(3, generator=generator), b=torch.randn(3))
    tensor(tmp_path, "ab_v", a=torch.randn(3, generator=generator), b=torch.randn(3))
    return tmp_path


def expected(func: Any, inputs: Path, v: Path, names: tuple[str, ...] = ("x",)) -> Any:
    xs, vs = load_file(inputs), load_file(v)
    return torch.autograd.functional.jvp(
        func, tuple(xs[n] for n in names), tuple(vs[n] for n in names)
    )


def assert_output_is_the_jvp(output: Path, inputs: Path, v: Path) -> None:
    func_output, jvp = expected(smooth, inputs, v)
    written = load_file(output)
    torch.testing.assert_close(written["func_output"], func_output)
    torch.testing.assert_close(written["jvp"], jvp)


def runs_of(result: Any) -> dict[str, dict[str, Any]]:
    return {run["name"]: run for run in json.loads(result.stdout)["runs"]}


def table_rows(text: str) -> dict[str, list[str]]:
    """The cells of a summary table's rows, by run name (the first line that starts with it)."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) > 2 and words[1] == "status":
            # The layout for a narrow console: "NAME  status S  method M  time T ...".
            headings = {"status", "method", "time", "max", "|jvp|", "checks"}
            rows.setdefault(words[0], [w for w in words[1:] if w not in headings])
        elif words:
            rows.setdefault(words[0], words[1:])
    return rows


# --------------------------------------------------------------------------------------------
# Describing a sweep

MATRIX = """
function: fns.py:smooth
inputs: x1.safetensors
output: results/{name}.safetensors
sweep:
  v: [v0.safetensors, v1.safetensors, v2.safetensors]
  method: [forward, double-backward]
"""


def test_matrix_sweep_runs_every_combination_named_after_its_values(workspace: Path) -> None:
    result = invoke("compute", write_config(workspace, MATRIX), "--json")
    assert result.exit_code == 0, result.output
    runs = runs_of(result)
    assert list(runs) == [
        "v0-forward", "v0-double-backward", "v1-forward", "v1-double-backward",
        "v2-forward", "v2-double-backward",
    ]  # fmt: skip
    for name, run in runs.items():
        v_name, method = name.split("-", 1)
        assert (run["status"], run["method"], run["method_used"]) == ("ok", method, method)
        output = workspace / "results" / f"{name}.safetensors"
        assert Path(run["output"]) == output
        assert_output_is_the_jvp(
            output, workspace / "x1.safetensors", workspace / f"{v_name}.safetensors"
        )


def test_runs_list_overrides_the_top_level_entry_by_entry(workspace: Path) -> None:
    config = write_config(
        workspace,
        """
        function: fns.py:smooth
        inputs: x0.safetensors
        v: v0.safetensors
        output: out/{name}.safetensors
        runs:
          - {name: baseline}
          - {name: other-inputs, inputs: x2.safetensors}
          - {v: v1.safetensors}
          - {inputs: x3.safetensors, v: v2.safetensors, method: double-backward}
        """,
    )
    result = invoke("compute", config, "--json")
    assert result.exit_code == 0, result.output
    runs = runs_of(result)
    files = {
        "baseline": ("x0", "v0"),
        "other-inputs": ("x2", "v0"),
        "v1": ("x0", "v1"),
        "x3-v2-double-backward": ("x3", "v2"),
    }
    assert list(runs) == list(files)
    assert runs["x3-v2-double-backward"]["method_used"] == "double-backward"
    for name, (x, v) in files.items():
        assert_output_is_the_jvp(
            workspace / "out" / f"{name}.safetensors",
            workspace / f"{x}.safetensors",
            workspace / f"{v}.safetensors",
        )


def test_runs_entries_cross_the_sweep_and_output_fills_in_any_key(workspace: Path) -> None:
    config = write_config(
        workspace,
        """
        name: exp
        function: fns.py:smooth
        v: v0.safetensors
        output: "{method}/{name}.{{x}}.safetensors"
        runs:
          - {inputs: x0.safetensors}
          - {name: second, inputs: x1.safetensors}
        sweep:
          method: [forward, double-backward]
        """,
    )
    sweep = load_sweep(config)
    assert sweep.is_sweep
    assert [(s.name, s.output.relative_to(workspace.resolve()).as_posix()) for s in sweep.runs] == [
        ("exp-x0-forward", "forward/exp-x0-forward.{x}.safetensors"),
        ("exp-x0-double-backward", "double-backward/exp-x0-double-backward.{x}.safetensors"),
        ("second-forward", "forward/second-forward.{x}.safetensors"),
        ("second-double-backward", "double-backward/second-double-backward.{x}.safetensors"),
    ]


def test_labels_values_share_get_a_stable_digest(workspace: Path) -> None:
    for folder in ("a", "b"):
        (workspace / folder).mkdir()
    config = write_config(
        workspace,
        """
        function: fns.py:smooth
        inputs: x0.safetensors
        output: "{name}.safetensors"
        sweep:
          v: [a/v.safetensors, b/v.safetensors, v1.safetensors]
          strict: [false, true]
        """,
    )
    names = [spec.name for spec in load_sweep(config).runs]
    assert len(set(names)) == 6
    assert names[4:] == ["v1-no-strict", "v1-strict"]
    assert all(name.startswith("v-") and len(name.split("-")[1]) == 8 for name in names[:4])
    assert names == [spec.name for spec in load_sweep(config).runs]


def test_command_line_overrides_apply_to_every_run_over_its_entry(workspace: Path) -> None:
    config = write_config(
        workspace,
        """
        function: fns.py:smooth
        inputs: x0.safetensors
        output: "{name}.safetensors"
        runs:
          - {name: a, method: double-backward}
          - {name: b}
        """,
    )
    sweep = load_sweep(config, [("method", "forward", "--method")])
    assert [spec.method for spec in sweep.runs] == ["forward", "forward"]
    narrowed = load_sweep(
        write_config(workspace, MATRIX), [("sweep.method", ["forward"], "--set sweep.method=...")]
    )
    assert [spec.name for spec in narrowed.runs] == ["v0-forward", "v1-forward", "v2-forward"]


def test_a_config_without_sweep_or_runs_is_one_run_named_after_the_file(workspace: Path) -> None:
    config = write_config(
        workspace,
        "function: fns.py:smooth\ninputs: x0.safetensors\noutput: r/{name}.safetensors\n",
        name="single.yaml",
    )
    sweep = load_sweep(config)
    assert not sweep.is_sweep
    (spec,) = sweep.runs
    assert (spec.name, spec.output.name) == ("single", "single.safetensors")


SWEEP_ERRORS = [
    # (id, config text, overrides, message fragments)
    ("same-output", MATRIX.replace("{name}", "out"), [],
     ["sweep.yaml:4:1", "runs 'v0-forward' and 'v0-double-backward' both write", "{name}"]),
    ("unknown-placeholder", MATRIX.replace("{name}", "{nmae}"), [],
     ["'output' uses {nmae}", "Did you mean 'name'?"]),
    ("unset-placeholder", MATRIX.replace("{name}", "{name}-{dtype}"), [],
     ["'output' uses {dtype}", "does not set 'dtype'"]),
    ("swept-and-set", MATRIX + "method: auto\n", [],
     ["sweep.yaml:8:1: 'method' is set here and swept at sweep.yaml:7:3"]),
    ("swept-and-overridden", MATRIX, [("method", "forward", "--method")],
     ["--method: 'method' is swept (sweep.yaml:7:3)", "--set sweep.method=[...]"]),
    ("not-a-list", MATRIX.replace("[forward, double-backward]", "forward"), [],
     ["sweep.yaml:7:3", "'sweep.method' must be a non-empty list"]),
    ("listed-twice", MATRIX.replace("double-backward]", "forward]"), [],
     ["sweep.yaml:7:21", "'sweep.method' lists \"forward\" (a string) twice"]),
    ("unknown-swept-key", MATRIX.replace("method:", "metod:"), [],
     ["unknown key 'sweep.metod'", "Did you mean 'method'?"]),
    ("swept-name", MATRIX + "  name: [a, b]\n", [], ["'name' cannot be swept"]),
    ("bad-swept-value", MATRIX.replace("double-backward]", "backward]"), [],
     ["sweep.yaml:7:21: 'method' must be one of"]),
    ("runs-not-mappings", MATRIX.split("sweep:")[0] + "runs: [a, b]\n", [],
     ["each entry of 'runs' must be a mapping", "entry 0 is \"a\""]),
    ("runs-unknown-key", MATRIX.split("sweep:")[0] + "runs:\n  - {v: v0.safetensors, stirct: 1}\n",
     [], ["sweep.yaml:6:25: unknown key 'runs.0.stirct'", "Did you mean 'strict'?"]),
    ("runs-set-a-swept-key", MATRIX + "runs:\n  - {method: auto}\n", [],
     ["sweep.yaml:9:6: 'method' is swept", "a runs entry cannot set it too"]),
    ("duplicate-names", MATRIX.split("sweep:")[0]
     + "runs:\n  - {name: a, v: v0.safetensors}\n  - {name: a, v: v1.safetensors}\n", [],
     ["two runs are named 'a'", "distinct names"]),
    ("missing-key-in-a-run", MATRIX.split("sweep:")[0].replace("inputs: x1.safetensors\n", "")
     + "runs:\n  - {name: a, inputs: x0.safetensors, v: v0.safetensors}\n  - {name: b}\n", [],
     ["(run 'b'): missing required key inputs"]),
    ("writes-what-another-reads",
     MATRIX.split("sweep:")[0].replace("results/{name}.safetensors", '"{name}.safetensors"')
     + "runs:\n  - {name: v2, v: v0.safetensors}\n  - {name: b, v: v2.safetensors}\n", [],
     ["run 'v2' writes v2.safetensors, which run 'b' reads as 'v'"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "overrides", "fragments"),
    [pytest.param(*case[1:], id=case[0]) for case in SWEEP_ERRORS],
)
def test_sweep_config_errors_name_the_line_and_the_problem(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, text: str, overrides: list, fragments: list
) -> None:
    monkeypatch.chdir(workspace)
    with pytest.raises(ConfigError) as caught:
        load_sweep(write_config(workspace, text), overrides)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message


def test_the_schema_accepts_sweeps_whose_runs_give_the_required_keys() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema()
    jsonschema.validate(
        {
            "function": "f.py:g",
            "output": "{name}.safetensors",
            "runs": [{"name": "a", "inputs": "a.safetensors"}, {"inputs": "b.safetensors"}],
            "sweep": {"method": ["forward", "double-backward"], "batched_v": [True]},
        },
        schema,
    )
    for invalid in (
        {"function": "f.py:g", "output": "o.safetensors"},
        {"sweep": {"name": ["a", "b"]}},
        {"sweep": {"method": []}},
        {"runs": [{"sweep": {"method": ["forward"]}}]},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(invalid, schema)


def test_the_whole_sweep_is_checked_before_the_first_run_computes(workspace: Path) -> None:
    config = write_config(
        workspace,
        MATRIX.replace("v2.safetensors", "missing.safetensors"),
    )
    result = invoke("compute", config, "--json")
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert message.startswith("error: run 'missing-forward': v file")
    assert "missing.safetensors does not exist" in message
    assert json.loads(result.stdout)["runs"] == []
    assert not (workspace / "results").exists()


def test_validate_lists_every_run_of_a_sweep(workspace: Path) -> None:
    config = write_config(workspace, MATRIX)
    result = invoke("validate", config, "--json")
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)["runs"]
    assert [run["status"] for run in runs] == ["valid"] * 6
    human = invoke("validate", config)
    assert "valid: 6 runs ready" in human.stdout
    assert not (workspace / "results").exists()


# --------------------------------------------------------------------------------------------
# One process: modules imported once, files read once


def test_a_sweep_imports_each_module_and_reads_each_file_once(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jvpcli.tensors as tensors_module

    reads: list[str] = []
    for name in ("read_header", "read_tensors", "sha256_file"):
        original = getattr(tensors_module, name)

        def counted(*args: Any, _original: Any = original, _name: str = name) -> Any:
            reads.append(f"{_name} {Path(getattr(args[0], 'path', args[0])).name}")
            return _original(*args)

        monkeypatch.setattr(tensors_module, name, counted)
    config = write_config(
        workspace,
        MATRIX
        + "runs:\n  - {name: a, function: fns.py:smooth}\n  - {name: b, function: fns.py:gated}\n",
    )
    result = invoke("compute", config, "-q")
    assert result.exit_code == 0, result.output
    assert len(list((workspace / "results").iterdir())) == 12
    assert (workspace / "imports.log").read_text() == "imported\n"
    assert sorted(reads) == sorted(
        {
            f"{kind} {file}"
            for kind in ("read_header", "read_tensors", "sha256_file")
            for file in ("x1.safetensors", "v0.safetensors", "v1.safetensors", "v2.safetensors")
        }
        | {"sha256_file fns.py"}
    )  # fmt: skip  (the config's digest is of the bytes read: the file is not read twice)


# --------------------------------------------------------------------------------------------
# Running: failures isolated, --fail-fast, the summary, --json, progress

FAILING = """
function: fns.py:smooth
inputs: x0.safetensors
v: v0.safetensors
output: "{name}.safetensors"
runs:
  - {name: first}
  - {name: broken, function: fns.py:boom}
  - {name: last, v: v1.safetensors}
"""


def test_a_failing_run_does_not_stop_the_others(workspace: Path) -> None:
    result = invoke("compute", write_config(workspace, FAILING))
    assert result.exit_code == 1
    rows = table_rows(result.stdout)
    assert rows["first"][:2] == ["ok", "forward"]
    assert rows["last"][:2] == ["ok", "forward"]
    assert rows["broken"][0] == "failed"
    summary = " ".join(result.stdout.split())
    assert "broken failed: computing the JVP of boom failed: ValueError: the user's" in summary
    assert f"fns.py:{BOOM_LINE}, in boom" in summary
    assert "3 runs: 2 ok, 1 failed" in summary
    assert result.stderr.splitlines()[-1] == "error: 1 of 3 runs failed: broken."
    assert_output_is_the_jvp(
        workspace / "last.safetensors", workspace / "x0.safetensors", workspace / "v1.safetensors"
    )
    assert not (workspace / "broken.safetensors").exists()


def test_json_document_lists_every_run_and_why_one_failed(workspace: Path) -> None:
    result = invoke("compute", write_config(workspace, FAILING), "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert set(document) == {"jvpcli_version", "ok", "exit_code", "error", "runs"}
    assert (document["ok"], document["exit_code"]) == (False, 1)
    assert document["error"]["type"] == "RunsFailed"
    first, broken, last = document["runs"]
    assert set(first) == set(broken) == set(last)
    assert (first["status"], first["error"], first["outputs"][0]["jvp_shape"]) == ("ok", None, [3])
    assert broken["status"] == "failed"
    assert broken["error"]["type"] == "ComputeError"
    assert f"fns.py:{BOOM_LINE}" in broken["error"]["location"]
    assert (broken["outputs"], broken["method_used"]) == (None, None)
    assert last["status"] == "ok"


def test_fail_fast_stops_at_the_first_failure(workspace: Path) -> None:
    result = invoke("compute", write_config(workspace, FAILING), "--fail-fast", "--json")
    assert result.exit_code == 1
    statuses = [run["status"] for run in json.loads(result.stdout)["runs"]]
    assert statuses == ["ok", "failed", "not run"]
    assert "--fail-fast" in result.stderr
    assert not (workspace / "last.safetensors").exists()


def test_logs_get_one_plain_line_per_finished_run(workspace: Path) -> None:
    result = invoke("compute", write_config(workspace, FAILING))
    lines = result.stderr.splitlines()
    assert lines[0].startswith("[1/3] ok      first: forward, ")
    assert lines[0].endswith(f"→ {workspace / 'first.safetensors'}")
    assert lines[1].startswith("[2/3] failed  broken: computing the JVP of boom failed")
    assert lines[2].startswith("[3/3] ok      last: ")
    assert "\x1b[" not in result.stderr + result.stdout
    assert invoke("compute", write_config(workspace, MATRIX), "--quiet").output == ""


def test_a_terminal_gets_a_progress_bar(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    result = invoke("compute", write_config(workspace, MATRIX))
    assert result.exit_code == 0, result.output
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stderr)
    assert "━━━" in shown
    assert "v0-forward" in shown
    assert "6/6 runs" in shown
    assert "[1/6]" not in shown
    assert "6 runs: 6 ok" in result.stdout


# --------------------------------------------------------------------------------------------
# --resume, kill -9 and Ctrl-C

GATED = """
function: fns.py:gated
v: v0.safetensors
output: results/{name}.safetensors
sweep:
  inputs: [x0.safetensors, x1.safetensors, x2.safetensors, x3.safetensors]
"""


def _default_sigint() -> None:
    # A child started from a background job inherits an ignored SIGINT; the test needs Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_blocked_sweep(workspace: Path, config: Path) -> subprocess.Popen:
    """Start the gated sweep in a subprocess; return once it is blocked in run x2."""
    gate = workspace / "gate"
    process = subprocess.Popen(
        [sys.executable, "-m", "jvpcli", "compute", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "JVPCLI_TEST_GATE": str(gate)},
        preexec_fn=_default_sigint,
    )
    deadline = time.monotonic() + 90
    while not gate.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the sweep never reached the gated run"
        time.sleep(0.05)
    return process


def fingerprint(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_ino, status.st_mtime_ns


def test_resume_after_kill_9_recomputes_only_the_unfinished_runs(workspace: Path) -> None:
    config = write_config(workspace, GATED)
    results = workspace / "results"
    process = start_blocked_sweep(workspace, config)
    process.kill()
    process.communicate()
    assert sorted(p.name for p in results.iterdir()) == ["x0.safetensors", "x1.safetensors"]
    before = {name: fingerprint(results / f"{name}.safetensors") for name in ("x0", "x1")}

    result = invoke("compute", config, "--resume", "--json")
    assert result.exit_code == 0, result.output
    statuses = {name: run["status"] for name, run in runs_of(result).items()}
    assert statuses == {"x0": "skipped", "x1": "skipped", "x2": "ok", "x3": "ok"}
    assert {name: fingerprint(results / f"{name}.safetensors") for name in before} == before
    for k in range(4):
        assert_output_is_the_jvp(
            results / f"x{k}.safetensors",
            workspace / f"x{k}.safetensors",
            workspace / "v0.safetensors",
        )


def test_ctrl_c_finishes_cleanly_with_a_summary_and_exit_130(workspace: Path) -> None:
    config = write_config(workspace, GATED)
    process = start_blocked_sweep(workspace, config)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Aborted!" not in stderr
    assert "Traceback" not in stderr
    assert "error: interrupted (Ctrl-C) after 2 of 4 runs" in " ".join(stderr.split())
    rows = table_rows(stdout)
    assert rows["x0"][0] == rows["x1"][0] == "ok"
    assert rows["x2"][:2] == rows["x3"][:2] == ["not", "run"]
    assert "4 runs: 2 ok, 2 not run" in stdout
    assert sorted(p.name for p in (workspace / "results").iterdir()) == [
        "x0.safetensors",
        "x1.safetensors",
    ]


def v_sweep(workspace: Path, count: int) -> Path:
    """A config sweeping v over v0 .. v{count - 1}, at x1, writing results/v0.safetensors, ..."""
    listing = ", ".join(f"v{k}.safetensors" for k in range(count))
    text = "function: fns.py:smooth\ninputs: x1.safetensors\noutput: results/{name}.safetensors\n"
    return write_config(workspace, text + f"sweep:\n  v: [{listing}]\n")


def test_resume_recomputes_torn_corrupt_foreign_and_stale_outputs(workspace: Path) -> None:
    config = v_sweep(workspace, 5)
    assert invoke("compute", config, "-q").exit_code == 0
    results = workspace / "results"
    torn = results / "v0.safetensors"
    torn.write_bytes(torn.read_bytes()[:-7])
    corrupt = results / "v1.safetensors"
    data = bytearray(corrupt.read_bytes())
    data[-1] ^= 0x40
    corrupt.write_bytes(bytes(data))
    tensor(results, "v2", func_output=torch.zeros(3), jvp=torch.zeros(3))
    tensor(workspace, "v3", x=torch.full((3,), 7.0))
    kept = fingerprint(results / "v4.safetensors")

    result = invoke("compute", config, "--resume", "--json")
    assert result.exit_code == 0, result.output
    statuses = [run["status"] for run in json.loads(result.stdout)["runs"]]
    assert statuses == ["ok", "ok", "ok", "ok", "skipped"]
    assert fingerprint(results / "v4.safetensors") == kept
    for k in range(5):
        assert_output_is_the_jvp(
            results / f"v{k}.safetensors",
            workspace / "x1.safetensors",
            workspace / f"v{k}.safetensors",
        )


def test_resume_of_a_single_run_says_nothing_was_computed(workspace: Path) -> None:
    config = write_config(
        workspace,
        """
        function: fns.py:smooth
        inputs: x0.safetensors
        v: v0.safetensors
        output: o.safetensors
        """,
    )
    assert invoke("compute", config, "-q").exit_code == 0
    kept = fingerprint(workspace / "o.safetensors")
    result = invoke("compute", config, "--resume")
    assert result.exit_code == 0, result.output
    assert "nothing computed now: the output is up to date" in " ".join(result.stdout.split())
    assert fingerprint(workspace / "o.safetensors") == kept
    changed = invoke("compute", config, "--resume", "--method", "double-backward", "--json")
    assert runs_of(changed)["sweep"]["status"] == "ok"
    assert fingerprint(workspace / "o.safetensors") != kept


def test_output_metadata_identifies_the_run(workspace: Path) -> None:
    config = write_config(workspace, MATRIX)
    assert invoke("compute", config, "-q").exit_code == 0
    with safe_open(workspace / "results" / "v0-forward.safetensors", "pt") as file:
        metadata = file.metadata()
    settings = json.loads(metadata["jvpcli.settings"])
    v = str((workspace / "v0.safetensors").resolve())
    assert (settings["v"], settings["method"]) == (v, "forward")
    assert len(metadata["jvpcli.fingerprint"]) == len(metadata["jvpcli.content_sha256"]) == 64
    assert metadata["jvpcli.batched_v"] == "false"


# --------------------------------------------------------------------------------------------
# Shards


def test_shards_cover_every_run_exactly_once(workspace: Path) -> None:
    config = v_sweep(workspace, 7)
    every = [run["name"] for run in json.loads(invoke("validate", config, "--json").stdout)["runs"]]
    assert len(every) == 7
    shards = []
    for k in (1, 2, 3):
        result = invoke("compute", config, "--shard", f"{k}/3", "--json")
        assert result.exit_code == 0, result.output
        shards.append([run["name"] for run in json.loads(result.stdout)["runs"]])
    assert [len(shard) for shard in shards] == [3, 2, 2]
    assert sorted(name for shard in shards for name in shard) == sorted(every)
    assert shards[0] == every[0::3]
    assert sorted(p.stem for p in (workspace / "results").iterdir()) == sorted(every)


@pytest.mark.parametrize("text", ["0/3", "4/3", "3", "a/b", "1/0"])
def test_a_malformed_shard_is_a_usage_error(workspace: Path, text: str) -> None:
    result = invoke("compute", write_config(workspace, MATRIX), "--shard", text)
    assert result.exit_code == 2
    assert f"--shard {text}: expected K/N with 1 <= K <= N" in result.stderr


def test_shard_selection_is_round_robin() -> None:
    assert Shard.parse("2/3").select(range(8)) == (1, 4, 7)
    assert Shard.parse(" 3 / 3 ").select(range(8)) == (2, 5)


# --------------------------------------------------------------------------------------------
# Batched tangents


def batched_config(workspace: Path, v: Path) -> Path:
    return write_config(
        workspace,
        f"""
        function: fns.py:pair
        inputs: ab.safetensors
        v: {v.name}
        output: out.safetensors
        batched_v: true
        """,
    )


def test_the_sample_sweep_computes_eight_directions_at_once(tmp_path: Path) -> None:
    config = Path(__file__).resolve().parent.parent / "configs" / "sweep.yaml"
    result = invoke("compute", config, "--output", tmp_path / "{name}.safetensors", "--json")
    assert result.exit_code == 0, result.output
    runs = runs_of(result)
    assert len(runs) == 6
    assert all(run["status"] == "ok" for run in runs.values())
    data = config.parent.parent / "samples" / "data"
    x = load_file(data / "exp_reducer_inputs.safetensors")["x"]
    directions = load_file(data / "exp_reducer_v_batched.safetensors")["x"]
    for method in ("forward", "double-backward"):
        written = load_file(tmp_path / f"exp_reducer-8-directions-{method}.safetensors")
        assert written["jvp"].shape == (8, 4)
        for k in range(8):
            func_output, jvp = torch.autograd.functional.jvp(
                lambda t: t.exp().sum(dim=1), x, directions[k]
            )
            torch.testing.assert_close(written["jvp"][k], jvp)
            torch.testing.assert_close(written["func_output"], func_output)


def test_batched_v_gives_each_direction_the_jvp_torch_computes(workspace: Path) -> None:
    directions = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    v = tensor(workspace, "ab_batched", a=directions, b=directions.flip(0) * 2)
    result = invoke("compute", batched_config(workspace, v), "--json")
    assert result.exit_code == 0, result.output
    written = load_file(workspace / "out.safetensors")
    inputs, tangents = load_file(workspace / "ab.safetensors"), load_file(v)
    x = (inputs["a"], inputs["b"])
    for k in range(5):
        func_output, jvp = torch.autograd.functional.jvp(
            pair, x, (tangents["a"][k], tangents["b"][k])
        )
        for i in (0, 1):
            torch.testing.assert_close(written[f"jvp.{i}"][k], jvp[i])
            torch.testing.assert_close(written[f"func_output.{i}"], func_output[i])
    (run,) = json.loads(result.stdout)["runs"]
    assert run["batched_v"] is True
    assert [(o["shape"], o["jvp_shape"]) for o in run["outputs"]] == [([3], [5, 3])] * 2


@pytest.mark.parametrize(
    ("a", "b", "batched", "fragment"),
    [
        ((5, 3), (4, 3), True, "tensor 'b' holds 4 directions but 'a' holds 5"),
        ((3,), (3,), True, "has shape (3,), but with batched_v it must be (K, *(3,))"),
        ((0, 3), (0, 3), True, "K >= 1 directions"),
        ((5, 3), (5, 3), False, "If it holds one direction per row, set batched_v: true."),
    ],
)
def test_batched_v_shapes_are_checked_before_computing(
    workspace: Path, a: tuple[int, ...], b: tuple[int, ...], batched: bool, fragment: str
) -> None:
    v = tensor(workspace, "v_shapes", a=torch.ones(a), b=torch.ones(b))
    config = batched_config(workspace, v)
    result = invoke("compute", config, "--set", f"batched_v={str(batched).lower()}")
    assert result.exit_code == 2
    assert fragment in " ".join(result.stderr.split())
    assert not (workspace / "out.safetensors").exists()

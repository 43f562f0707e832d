"""The installed ``jvpcli`` console script and ``python -m jvpcli``, in subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jvpcli import __version__

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "samples" / "data"

# Runs jvpcli's entry point in a fresh interpreter, then reports whether torch got imported.
PROBE = """
import sys
from jvpcli.cli import main
try:
    main()
except SystemExit as exit:
    code = exit.code
print("torch imported:", "torch" in sys.modules, file=sys.stderr)
sys.exit(code)
"""


def console_script() -> str:
    found = shutil.which("jvpcli", path=str(Path(sys.executable).parent)) or shutil.which("jvpcli")
    assert found, "the jvpcli console script is not installed: run pip install -e ."
    return found


def run(*args: str | Path, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **env},
        timeout=120,
    )


def test_importing_the_cli_does_not_import_torch() -> None:
    probe = "import sys, jvpcli.cli; print('torch' in sys.modules)"
    assert run(sys.executable, "-c", probe).stdout.strip() == "False"


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--help"], {}, "compute"),
        (["--version"], {}, f"jvpcli {__version__}"),
        (["compute", "--help"], {}, "--create-graph"),
        (["schema"], {}, '"$schema"'),
        (
            [],
            {"_JVPCLI_COMPLETE": "complete_bash", "COMP_WORDS": "jvpcli val", "COMP_CWORD": "1"},
            "validate",
        ),
    ],
    ids=["help", "version", "compute-help", "schema", "completion"],
)
def test_help_version_schema_and_completion_do_not_import_torch(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    result = run(sys.executable, "-c", PROBE, *args, **env)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
    assert "torch imported: False" in result.stderr


def test_console_script_computes_the_quickstart_from_another_directory(tmp_path: Path) -> None:
    result = run(
        console_script(), "compute", REPO / "configs" / "quickstart.yaml", "-o", "q.safetensors",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout
    assert "jvp" in result.stdout
    x, v = load_file(DATA / "exp_reducer_inputs.safetensors")["x"], torch.ones(4, 4)
    expected = torch.autograd.functional.jvp(lambda t: t.exp().sum(dim=1), x, v)
    written = load_file(tmp_path / "q.safetensors")
    torch.testing.assert_close(written["func_output"], expected[0])
    torch.testing.assert_close(written["jvp"], expected[1])


def test_console_script_exits_2_on_a_bad_config_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("function: f.py:g\ninputs: x\noutput: y\nmetod: auto\n")
    result = run(console_script(), "compute", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: bad.yaml:4:1: unknown key 'metod'")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "y").exists()


def test_python_dash_m_runs_the_same_app() -> None:
    result = run(sys.executable, "-m", "jvpcli", "--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"jvpcli {__version__} (torch ")

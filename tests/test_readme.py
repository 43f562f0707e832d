"""README.md stays true: its Python examples run, and the commands it gives exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from jvpcli.cli import app

README = Path(__file__).resolve().parent.parent / "README.md"
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize(
    "source", PYTHON_BLOCKS, ids=[f"block-{i}" for i in range(len(PYTHON_BLOCKS))]
)
def test_python_example_runs(source, tmp_path, monkeypatch):
    # Examples that write files (the "Your own model" section) write them where a user runs them.
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    exec(compile(source, str(README), "exec"), {"__name__": "readme_example"})


def test_readme_gives_the_test_command_that_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pytest -q" in README.read_text()
    assert "\npython -m pytest -q\n" in ci


def test_your_own_model_section_runs_as_written(tmp_path, monkeypatch):
    # The section's Python block writes the files and defines the model its config names as
    # models.py:Regressor; the YAML block right after it is that config.
    text = README.read_text()
    section = text[text.index("## Your own model") :]
    source = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)[1]
    config = re.search(r"```yaml\n(.*?)```", section, flags=re.DOTALL)[1]
    assert "class Regressor" in source and "models.py:Regressor" in config
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models.py").write_text(source)
    (tmp_path / "config.yaml").write_text(config)
    exec(compile(source, str(README), "exec"), {"__name__": "readme_example"})
    result = CliRunner().invoke(app, ["compute", "config.yaml", "--json"])
    assert result.exit_code == 0, result.output
    (run,) = json.loads(result.stdout)["runs"]
    assert run["roles"] == {"x": "differentiated", "mask": "constant"}
    assert run["params"] == ["net.2.weight"]

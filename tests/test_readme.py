"""README.md stays true: its Python examples run, and the commands it gives exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parent.parent / "README.md"
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize(
    "source", PYTHON_BLOCKS, ids=[f"block-{i}" for i in range(len(PYTHON_BLOCKS))]
)
def test_python_example_runs(source):
    torch.manual_seed(0)
    exec(compile(source, str(README), "exec"), {"__name__": "readme_example"})


def test_readme_gives_the_test_command_that_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pytest -q" in README.read_text()
    assert "\npython -m pytest -q\n" in ci

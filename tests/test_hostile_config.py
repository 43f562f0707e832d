"""Hostile tests: limits hold while parsing a config, and while reading ``--set`` values.

Configs of millions of values, deeply nested ones, alias bombs and sweeps that expand to millions
of runs are refused with exit 2 and one message, promptly and without a traceback. Each command
runs in a subprocess (the jvpcli under test: the one this process imports), all started together
and each killed at a generous bound: what matters is that none hangs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import jvpcli

ROOT = Path(jvpcli.__file__).resolve().parent.parent
# Seconds. Each refusal takes well under 2 on a quiet machine; all of them start at once, so the
# bound is generous enough for a busy one: it tells a refusal from a parse that never ends.
BOUND = 60.0

HEAD = "function: fns.py:smooth\ninputs: x.safetensors\noutput: o.safetensors\n"
BOMB = (
    "[&a [1,1,1,1,1,1,1,1,1,1], "
    + ", ".join(
        f"&{b} [{', '.join([f'*{a}'] * 10)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "]"
)

CONFIGS = {
    "a flow list of 3 million integers": HEAD + "order: [" + ", ".join(["1"] * 3_000_000) + "]\n",
    "a block list of a million items": HEAD + "order:\n" + "  - 1\n" * 1_000_000,
    "a mapping of 500,000 keys": HEAD
    + "sweep:\n"
    + "".join(f"  k{i}: [1]\n" for i in range(500_000)),
    "lists nested 10,000 deep": HEAD + "order: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "mappings nested 10,000 deep": HEAD + "order: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n",
    "block mappings nested 3,000 deep": HEAD
    + "order:\n"
    + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(3_000)),
    "an alias bomb": HEAD + f"order: {BOMB}\n",
}

SETS = {
    "--set lists nested 10,000 deep": ("order=" + "[" * 10_000 + "]" * 10_000),
    "--set an alias bomb": f"order={BOMB}",
}

SWEEP = (
    HEAD.replace("output: o.safetensors", "output: 'r/{name}.safetensors'")
    + "sweep:\n"
    + "".join(
        f"  {key}: [{', '.join(str(0.1 * (i + 1)) for i in range(10))}]\n"
        for key in ("rtol", "atol", "fd_step", "fd_rtol")
    )
    + "  seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\n  method: [auto, forward, double-backward]\n"
)


def start(cwd: Path, *args: str) -> subprocess.Popen[bytes]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, "-m", "jvpcli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path, "NO_COLOR": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``{case: (returncode or None if killed at BOUND, stderr, seconds)}``."""
    folder = tmp_path_factory.mktemp("limits")
    (folder / "fns.py").write_text("def smooth(x):\n    return x.sin() * x\n")
    (folder / "base.yaml").write_text(HEAD)
    commands: dict[str, tuple[str, ...]] = {}
    for number, (case, text) in enumerate(CONFIGS.items()):
        (folder / f"c{number}.yaml").write_text(text)
        commands[case] = ("validate", f"c{number}.yaml")
    for case, assignment in SETS.items():
        commands[case] = ("validate", "base.yaml", "--set", assignment)
    (folder / "sweep.yaml").write_text(SWEEP)
    commands["a sweep of 10 lines expanding to 300,000 runs"] = ("validate", "sweep.yaml")
    started = {case: (start(folder, *args), time.monotonic()) for case, args in commands.items()}
    done = {}
    for case, (process, when) in started.items():
        try:
            _, stderr = process.communicate(timeout=max(0.1, when + BOUND - time.monotonic()))
            done[case] = (process.returncode, stderr.decode(), time.monotonic() - when)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            done[case] = (None, "", BOUND)
    return done


def assert_refused(outcome: tuple[int | None, str, float]) -> None:
    code, stderr, seconds = outcome
    assert code is not None, f"still running after {seconds:.0f} s"
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert "internal error" not in stderr
    assert stderr.startswith("error: ")
    assert len(stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("case", list(CONFIGS))
def test_a_config_too_large_or_too_deep_is_refused_promptly(
    case: str, refused: dict[str, Any]
) -> None:
    assert_refused(refused[case])


@pytest.mark.parametrize("case", list(SETS))
def test_a_set_value_too_large_or_too_deep_is_refused_promptly(
    case: str, refused: dict[str, Any]
) -> None:
    assert_refused(refused[case])


def test_a_sweep_expanding_to_millions_of_runs_is_refused_promptly(
    refused: dict[str, Any],
) -> None:
    assert_refused(refused["a sweep of 10 lines expanding to 300,000 runs"])

"""What the command prints, read as a person copies it: names, paths and digests are never split,
at 80 and 120 columns, in a terminal (a pseudo-terminal of that size) and in a pipe; lines in files
and logs carry no trailing spaces; progress on a terminal wraps at word boundaries."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
LONG = "a-rather-long-run-name-that-people-copy-into-their-shell"
MESSAGE = "this run gives up on purpose, with a message long enough to wrap"

FUNCTIONS = """
import torch

def smooth(x):
    return torch.tanh(x) * 2

def boom(x):
    raise ValueError("this run gives up on purpose, with a message long enough to wrap " * 2)
"""


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "fns.py").write_text(FUNCTIONS)
    save_file({"x": torch.linspace(-1, 1, 6)}, tmp_path / "x.safetensors")
    save_file({"x": torch.ones(6)}, tmp_path / "v.safetensors")
    (tmp_path / "sweep.yaml").write_text(
        textwrap.dedent(
            f"""
            function: fns.py:smooth
            inputs: x.safetensors
            v: v.safetensors
            output: "results/deeply/nested/folder/for/outputs/{{name}}.safetensors"
            runs:
              - {{name: {LONG}-1}}
              - {{name: {LONG}-2, method: double-backward}}
            """
        )
    )
    return tmp_path


def run_piped(folder: Path, columns: int, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"}
    environment.pop("FORCE_COLOR", None)
    return subprocess.run(
        [sys.executable, "-m", "jvpcli", *args],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_in_terminal(folder: Path, columns: int, *args: str) -> str:
    """Run in a pseudo-terminal of ``columns`` x 40; return what it printed, ANSI codes removed."""
    command = [sys.executable, "-m", "jvpcli", *args]
    script = (
        "import fcntl, os, struct, sys, termios; "
        f"fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack('HHHH', 40, {columns}, 0, 0)); "
        "os.execvp(sys.argv[1], sys.argv[1:])"
    )
    pid, descriptor = pty.fork()
    if pid == 0:  # the child: set the terminal's size, then become jvpcli
        os.chdir(folder)
        environment = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        os.execve(sys.executable, [sys.executable, "-c", script, *command], environment)
    chunks = []
    while True:
        ready, _, _ = select.select([descriptor], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(descriptor, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.waitpid(pid, 0)
    return ANSI.sub("", b"".join(chunks).decode(errors="replace")).replace("\r\n", "\n")


def whole(text: str, *needles: str) -> None:
    lines = text.splitlines()
    for needle in needles:
        assert any(needle in line for line in lines), f"{needle!r} is split:\n{text}"


@pytest.mark.parametrize("columns", [80, 120])
def test_a_sweep_summary_keeps_names_and_paths_whole_in_a_pipe(
    workspace: Path, columns: int
) -> None:
    done = run_piped(workspace, columns, "compute", "sweep.yaml")
    assert done.returncode == 0, done.stderr
    names = [f"{LONG}-1", f"{LONG}-2"]
    paths = [f"results/deeply/nested/folder/for/outputs/{n}.safetensors" for n in names]
    whole(done.stdout, *names, *paths)
    whole(done.stderr, *paths)  # the progress lines
    for stream in (done.stdout, done.stderr):
        assert not [line for line in stream.splitlines() if line != line.rstrip()]


@pytest.mark.parametrize("columns", [80, 120])
def test_a_sweep_summary_keeps_names_and_paths_whole_in_a_terminal(
    workspace: Path, columns: int
) -> None:
    text = run_in_terminal(workspace, columns, "compute", "sweep.yaml")
    names = [f"{LONG}-1", f"{LONG}-2"]
    # A path wider than the terminal cannot be whole on a line of it; every other one is.
    paths = [f"results/deeply/nested/folder/for/outputs/{n}.safetensors" for n in names]
    whole(text, *names, *(path for path in paths if len(path) <= columns))


@pytest.mark.parametrize("columns", [80, 120])
def test_validate_inspect_and_checks_keep_their_cells_whole(workspace: Path, columns: int) -> None:
    done = run_piped(workspace, columns, "validate", "sweep.yaml")
    assert done.returncode == 0, done.stderr
    whole(done.stdout, f"{LONG}-1", f"results/deeply/nested/folder/for/outputs/{LONG}-2")
    computed = run_piped(workspace, columns, "compute", "sweep.yaml", "-q")
    assert computed.returncode == 0, computed.stderr
    output = f"results/deeply/nested/folder/for/outputs/{LONG}-1.safetensors"
    inspected = run_piped(workspace, columns, "inspect", output)
    assert inspected.returncode == 0, inspected.stderr
    digests = re.findall(r"\b[0-9a-f]{64}\b", inspected.stdout)
    assert len(digests) >= 3  # every sha256 in the metadata, whole
    (workspace / "one.yaml").write_text(
        "function: fns.py:smooth\ninputs: x.safetensors\nv: v.safetensors\n"
        f"output: {LONG}.safetensors\ncheck: finite-differences\n"
    )
    checked = run_piped(workspace, columns, "compute", "one.yaml")
    assert checked.returncode == 0, checked.stderr
    whole(checked.stdout, "finite-differences", "func_output", f"{LONG}.safetensors")


def test_a_failed_run_wraps_at_word_boundaries_on_a_terminal(workspace: Path) -> None:
    (workspace / "failing.yaml").write_text(
        "function: fns.py:boom\ninputs: x.safetensors\nv: v.safetensors\n"
        "output: '{name}.safetensors'\nruns: [{name: first}, {name: second}]\n"
    )
    text = run_in_terminal(workspace, 80, "compute", "failing.yaml")
    assert "gives up on purpose" in " ".join(text.split())
    for line in text.splitlines():
        assert len(line) <= 80
    # Every word of the message is whole on some line: nothing broke mid-word.
    words = set(
        [
            "this",
            "run",
            "gives",
            "up",
            "on",
            "purpose,",
            "with",
            "a",
            "message",
            "long",
            "enough",
            "to",
            "wrap",
        ]
    )
    found = {word for line in text.splitlines() for word in line.split()}
    assert words <= found

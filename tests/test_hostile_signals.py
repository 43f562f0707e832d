"""Hostile tests: SIGTERM, Ctrl-C (SIGINT) and ``kill -9`` leave finished outputs complete, no
temporary files, a report of what finished, and a sweep that ``--resume`` completes.

The commands run in subprocesses (the jvpcli under test: the one this process imports), all
started together; each is signalled once its first output exists (or, for ``kill -9``, while its
output's temporary file exists). The follow-up commands run through CliRunner.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import jvpcli
from jvpcli.cli import app

ROOT = Path(jvpcli.__file__).resolve().parent.parent
TEMPORARY = re.compile(r"^\.(?P<target>.+)\.jvpcli-(?P<pid>\d+)-[0-9a-f]+\.tmp$")

FNS = """
import time


def slow(x):
    time.sleep(0.5)
    return x.sin() * x


def double(x):
    return x * 2
"""

SWEEP = """
function: fns.py:slow
v: v.safetensors
output: results/{name}.safetensors
sweep:
  inputs: [x0.safetensors, x1.safetensors, x2.safetensors, x3.safetensors, x4.safetensors]
"""

BIG = 12_000_000  # float32 elements: a 96 MB output (func_output and jvp)


def sweep_workspace(folder: Path) -> Path:
    folder.mkdir()
    (folder / "fns.py").write_text(FNS)
    (folder / "s.yaml").write_text(SWEEP)
    for k in range(5):
        save_file({"x": torch.linspace(-1, 1, 4) + k}, folder / f"x{k}.safetensors")
    save_file({"x": torch.ones(4)}, folder / "v.safetensors")
    return folder


def _default_sigint() -> None:
    # A child of a background job inherits an ignored SIGINT; these tests need Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(cwd: Path, *args: str) -> subprocess.Popen[str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, "-m", "jvpcli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path, "NO_COLOR": "1", "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``{"SIGTERM" | "SIGINT" | "SIGKILL": (returncode, stdout, stderr, folder, seen)}``."""
    root = tmp_path_factory.mktemp("signals")
    big = root / "big"
    big.mkdir()
    (big / "fns.py").write_text(FNS)
    save_file({"x": torch.ones(BIG)}, big / "x.safetensors")
    save_file({"x": torch.ones(BIG)}, big / "v.safetensors")
    args = ("compute", "s.yaml", "--json", "--junit-xml", "reports/r.xml")
    processes: dict[str, tuple[subprocess.Popen[str], Path]] = {
        name: (start(folder, *args), folder)
        for name, folder in (
            ("SIGTERM", sweep_workspace(root / "term")),
            ("SIGINT", sweep_workspace(root / "int")),
        )
    }
    killed = start(
        big,
        "compute",
        "-f",
        "fns.py:double",
        "-i",
        "x.safetensors",
        "--v",
        "v.safetensors",
        "-o",
        "out/big.safetensors",
    )
    processes["SIGKILL"] = (killed, big)
    pending = dict(processes)
    seen: dict[str, list[str]] = {}
    signalled: dict[str, float] = {}
    deadline = time.monotonic() + 120
    while (pending or signalled) and time.monotonic() < deadline:
        for name, (process, folder) in list(pending.items()):
            if process.poll() is not None:
                del pending[name]
            elif name == "SIGKILL":
                out = folder / "out"
                names = os.listdir(out) if out.is_dir() else []
                if any(TEMPORARY.match(n) for n in names):
                    process.kill()
                    seen[name] = names
                    del pending[name]
            elif (folder / "results" / "x0.safetensors").exists():
                # Written, then checked in milliseconds: 0.2 s later, run x1 is sleeping.
                signalled[name] = time.monotonic() + 0.2
                del pending[name]
        for name, when in list(signalled.items()):
            if time.monotonic() >= when:
                processes[name][0].send_signal(getattr(signal, name))
                del signalled[name]
        time.sleep(0.002)
    done = {}
    for name, (process, folder) in processes.items():
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        done[name] = (process.returncode, stdout, stderr, folder, seen.get(name))
    return done


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.name)


@pytest.mark.parametrize(
    ("name", "code", "said"), [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")]
)
def test_a_signalled_sweep_stops_cleanly_and_resume_finishes_it(
    name: str, code: int, said: str, stopped: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    returncode, stdout, stderr, folder, _ = stopped[name]
    assert returncode == code, stderr
    assert "Traceback" not in stderr
    message = " ".join(stderr.split())
    assert said in message
    assert "--resume" in message
    document = json.loads(stdout)
    assert document["ok"] is False
    assert document["exit_code"] == code
    statuses = [run["status"] for run in document["runs"]]
    finished = statuses.count("ok")
    assert 1 <= finished < 5
    assert statuses == ["ok"] * finished + ["not run"] * (5 - finished)
    written = sorted(p.name for p in (folder / "results").iterdir())
    assert written == [f"x{k}.safetensors" for k in range(finished)]
    assert leftovers(folder) == []
    for k in range(finished):
        result = load_file(folder / "results" / f"x{k}.safetensors")
        x = load_file(folder / f"x{k}.safetensors")["x"]
        assert torch.equal(result["func_output"], x.sin() * x)
    cases = list(ElementTree.parse(folder / "reports" / "r.xml").iter("testcase"))
    assert [case.get("name") for case in cases] == [f"x{k}" for k in range(5)]
    for k, case in enumerate(cases):
        assert case.find("failure") is None
        assert (case.find("skipped") is not None) == (k >= finished)

    monkeypatch.chdir(folder)
    resumed = CliRunner().invoke(app, ["compute", "s.yaml", "--resume", "--json"])
    assert resumed.exit_code == 0, resumed.output
    statuses = [run["status"] for run in json.loads(resumed.stdout)["runs"]]
    assert statuses == ["skipped"] * finished + ["ok"] * (5 - finished)
    assert leftovers(folder) == []


def test_kill_9_while_writing_leaves_one_temporary_file_that_the_next_write_removes(
    stopped: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    returncode, _, stderr, folder, seen = stopped["SIGKILL"]
    assert seen is not None, f"the output's temporary file never appeared: {stderr}"
    assert returncode == -signal.SIGKILL
    out = folder / "out"
    names = sorted(os.listdir(out))
    temporaries = [n for n in names if TEMPORARY.match(n)]
    assert len(temporaries) <= 1
    assert [n for n in names if n not in temporaries] in ([], ["big.safetensors"])
    assert all(TEMPORARY.match(n)["target"] == "big.safetensors" for n in temporaries)

    monkeypatch.chdir(folder)
    again = CliRunner().invoke(
        app,
        [
            *("compute", "-q", "-f", "fns.py:double", "-i", "x.safetensors"),
            *("--v", "v.safetensors", "-o", "out/big.safetensors"),
        ],
    )
    assert again.exit_code == 0, again.output
    assert sorted(os.listdir(out)) == ["big.safetensors"]
    assert torch.equal(load_file(out / "big.safetensors")["jvp"], torch.full((BIG,), 2.0))


def test_a_write_removes_dead_writers_temporary_files_and_keeps_live_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fns.py").write_text(FNS)
    save_file({"x": torch.ones(3)}, tmp_path / "x.safetensors")
    save_file({"x": torch.ones(3)}, tmp_path / "v.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = os.getppid()
    (out / f".o.safetensors.jvpcli-{dead.pid}-deadbeef.tmp").write_bytes(b"torn")
    (out / f".o.safetensors.jvpcli-{live}-0badf00d.tmp").write_bytes(b"someone else's")
    (out / f".other.safetensors.jvpcli-{dead.pid}-cafebabe.tmp").write_bytes(b"not ours")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app,
        [
            *("compute", "-q", "-f", "fns.py:double", "-i", "x.safetensors"),
            *("--v", "v.safetensors", "-o", "out/o.safetensors"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == sorted(
        [
            "o.safetensors",
            f".o.safetensors.jvpcli-{live}-0badf00d.tmp",
            f".other.safetensors.jvpcli-{dead.pid}-cafebabe.tmp",
        ]
    )


INTERRUPTED_WHILE_CHECKED = """
calls = [0]


def f(x):
    calls[0] += 1
    if calls[0] > 1:  # the finite-difference check, after the output is written
        raise KeyboardInterrupt
    return x * 2
"""


def test_an_interrupt_while_a_run_is_checked_leaves_no_output_of_a_run_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ki.py").write_text(INTERRUPTED_WHILE_CHECKED)
    save_file({"x": torch.ones(3)}, tmp_path / "x.safetensors")
    save_file({"x": torch.ones(3)}, tmp_path / "v.safetensors")
    (tmp_path / "s.yaml").write_text(
        "function: ki.py:f\nv: v.safetensors\noutput: r/{name}.safetensors\n"
        "check: finite-differences\nsweep:\n  inputs: [x.safetensors]\n"
    )
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["compute", "s.yaml", "--json"])
    assert result.exit_code == 130, result.output
    (run,) = json.loads(result.stdout)["runs"]
    assert run["status"] != "not run" or not (tmp_path / "r" / "x.safetensors").exists()

"""Hostile tests: every operating-system error is one clear message, never a traceback.

Names too long, permission denied, a folder where a file is expected (and the reverse), standard
output full or closed, a config that is a FIFO, an endless device, a huge file or a pipe. What
involves file descriptors or privileges runs in subprocesses (the jvpcli under test: the one this
process imports), started together; the rest through CliRunner. Privileges are dropped by taking
the file-permission capabilities out of the child's bounding set: root keeps its uid (so the
interpreter under /root stays reachable) but is then refused like any user.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hostile_support import forget_user_modules
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

import jvpcli
from jvpcli.cli import app

ROOT = Path(jvpcli.__file__).resolve().parent.parent
CONFIG = (
    "function: fns.py:smooth\ninputs: x.safetensors\nv: v.safetensors\noutput: out.safetensors\n"
)
LONG = "n" * 300


def workspace(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fns.py").write_text("def smooth(x):\n    return x.sin() * x\n")
    save_file({"x": torch.arange(3.0)}, folder / "x.safetensors")
    save_file({"x": torch.ones(3)}, folder / "v.safetensors")
    (folder / "c.yaml").write_text(CONFIG)
    (folder / "s.yaml").write_text(
        "function: fns.py:smooth\nv: v.safetensors\noutput: r/{name}.safetensors\n"
        "sweep:\n  inputs: [x.safetensors]\n"
    )
    return folder


def _drop_file_privileges() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def start(cwd: Path, *args: str, **options: Any) -> subprocess.Popen[str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    options.setdefault("stdout", subprocess.PIPE)
    return subprocess.Popen(
        [sys.executable, "-m", "jvpcli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path, "NO_COLOR": "1", "COLUMNS": "200"},
        stderr=subprocess.PIPE,
        text=True,
        **options,
    )


def _close_stdout() -> None:
    os.close(1)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``{case: (returncode or None, stdout, stderr, seconds, folder)}``, all started together."""
    root = tmp_path_factory.mktemp("os")
    folders = {
        name: workspace(root / name)
        for name in ("full", "closed", "pipe", "ro", "unreadable", "stderr")
    }
    (folders["ro"] / "ro").mkdir()
    os.chmod(folders["ro"] / "ro", 0o555)
    os.chmod(folders["unreadable"] / "x.safetensors", 0)
    piped = (CONFIG.replace("out.safetensors", "piped/out.safetensors") + "# piped\n").encode()
    full = open("/dev/full", "w")  # noqa: SIM115
    starts: dict[str, Callable[[], subprocess.Popen[str]]] = {
        "full": lambda: start(folders["full"], "compute", "c.yaml", stdout=full),
        "closed": lambda: start(
            folders["closed"], "compute", "c.yaml", "--json", stdout=None, preexec_fn=_close_stdout
        ),
        "pipe": lambda: start(
            folders["pipe"], "compute", "/dev/stdin", "--json", stdin=subprocess.PIPE
        ),
        "ro": lambda: start(
            folders["ro"],
            "compute",
            "c.yaml",
            "-o",
            "ro/new/out.safetensors",
            preexec_fn=_drop_file_privileges,
        ),
        "unreadable": lambda: start(
            folders["unreadable"], "compute", "c.yaml", preexec_fn=_drop_file_privileges
        ),
    }
    processes = {case: (make(), time.monotonic()) for case, make in starts.items()}
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    processes["stderr"] = (
        subprocess.Popen(
            [sys.executable, "-m", "jvpcli", "compute", "s.yaml", "--json"],
            cwd=folders["stderr"],
            env={**os.environ, "PYTHONPATH": path, "NO_COLOR": "1"},
            stdout=subprocess.PIPE,
            stderr=full,
            text=True,
        ),
        time.monotonic(),
    )
    done = {}
    for case, (process, when) in processes.items():
        try:
            stdout, stderr = process.communicate(
                piped.decode() if case == "pipe" else None,
                timeout=max(1.0, when + 120 - time.monotonic()),
            )
            done[case] = (
                process.returncode,
                stdout,
                stderr,
                time.monotonic() - when,
                folders[case],
            )
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            done[case] = (None, "", "", 120.0, folders[case])
    full.close()
    done["piped bytes"] = piped
    return done


def assert_one_message(stderr: str | None) -> None:
    assert stderr is not None
    assert "Traceback" not in stderr
    assert "internal error" not in stderr
    assert stderr.startswith("error: ")


def test_stdout_on_a_full_device_is_exit_1_with_the_message_on_stderr(ran: dict[str, Any]) -> None:
    code, _, stderr, _, _ = ran["full"]
    assert code == 1, stderr
    assert_one_message(stderr)
    assert "standard output" in stderr


def test_a_closed_stdout_is_exit_1_with_the_message_on_stderr(ran: dict[str, Any]) -> None:
    code, _, stderr, _, _ = ran["closed"]
    assert code == 1, stderr
    assert_one_message(stderr)
    assert "standard output" in stderr


def test_a_full_stderr_does_not_turn_a_finished_sweep_into_an_internal_error(
    ran: dict[str, Any],
) -> None:
    code, stdout, _, _, folder = ran["stderr"]
    document = json.loads(stdout)
    assert "internal error" not in json.dumps(document["error"])
    assert [run["status"] for run in document["runs"]] == ["ok"]
    assert (folder / "r" / "x.safetensors").exists()
    assert code in (0, 1)


def test_a_config_on_a_pipe_works_with_paths_from_the_cwd_and_its_digest(
    ran: dict[str, Any],
) -> None:
    code, stdout, stderr, _, folder = ran["pipe"]
    assert code == 0, stderr
    document = json.loads(stdout)
    assert document["ok"] is True
    output = folder / "piped" / "out.safetensors"
    assert document["runs"][0]["output"] == str(output)
    assert document["runs"][0]["inputs"] == str(folder / "x.safetensors")
    with safe_open(output, "pt") as file:
        metadata = file.metadata()
    assert metadata["jvpcli.sha256.config"] == hashlib.sha256(ran["piped bytes"]).hexdigest()


def test_an_output_folder_without_write_permission_is_exit_2_before_computing(
    ran: dict[str, Any],
) -> None:
    code, _, stderr, _, folder = ran["ro"]
    assert code == 2, stderr
    assert_one_message(stderr)
    assert "permission denied" in stderr.lower()
    assert sorted(os.listdir(folder / "ro")) == []


def test_an_unreadable_input_is_exit_2_with_one_message(ran: dict[str, Any]) -> None:
    code, _, stderr, _, folder = ran["unreadable"]
    assert code == 2, stderr
    assert_one_message(stderr)
    assert "permission denied" in stderr.lower()
    assert "x.safetensors" in stderr
    assert not (folder / "out.safetensors").exists()


@pytest.mark.parametrize("config", ["fifo.yaml", "/dev/zero", "huge.yaml"])
def test_a_config_that_is_a_fifo_a_device_or_huge_is_refused_promptly(
    config: str, tmp_path: Path
) -> None:
    os.mkfifo(tmp_path / "fifo.yaml")  # no writer
    with open(tmp_path / "huge.yaml", "wb") as file:
        file.write(b"# " + b"a" * (17 << 20) + b"\n")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "jvpcli", "compute", config],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert done.returncode == 2, done.stderr
    assert_one_message(done.stderr)


def test_a_config_from_an_endless_device_is_read_with_bounded_memory(tmp_path: Path) -> None:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    # A cap on the child's address space, not its peak RSS: a forked child's ru_maxrss counts
    # the parent's pages it started with (pytest's, with torch loaded), which say nothing here.
    cap = 1 << 30
    process = subprocess.Popen(
        [sys.executable, "-m", "jvpcli", "validate", "/dev/zero"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)),
    )
    deadline = time.monotonic() + 30
    while True:
        pid, status = os.waitpid(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("validate /dev/zero is still reading")
        time.sleep(0.05)
    process.returncode = os.waitstatus_to_exitcode(status)
    message = process.stderr.read().decode() if process.stderr else ""
    assert process.returncode == 2, message  # the 16 MiB limit, not the device, bounds it
    assert "too large" in message and "MemoryError" not in message


# --------------------------------------------------------------------------------------------
# Through CliRunner


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(workspace(tmp_path))
    (tmp_path / "sub").mkdir()
    (tmp_path / "dir.py").mkdir()
    (tmp_path / "model.pt2").mkdir()
    yield tmp_path
    forget_user_modules(tmp_path)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


CASES = {
    "output name too long": ("-o", f"{LONG}.safetensors"),
    "output folder name too long": ("-o", f"sub/{LONG}/out.safetensors"),
    "inputs name too long": ("--set", f"inputs={LONG}.safetensors"),
    "v folder name too long": ("--v", f"{LONG}/v.safetensors"),
    "config name too long": ("CONFIG", f"sub/{LONG}.yaml"),
    "junit name too long": ("--junit-xml", f"{LONG}.xml"),
    "function file name too long": ("--set", f"function={LONG}.py:f"),
    "golden name too long": ("--set", f"expect={LONG}.safetensors"),
    "output is a folder": ("-o", "sub"),
    "inputs is a folder": ("--set", "inputs=sub"),
    "v is a folder": ("--v", "sub"),
    "golden is a folder": ("--set", "expect=sub"),
    "junit report is a folder": ("--junit-xml", "sub"),
    "config is a folder": ("CONFIG", "sub"),
    "output below a file": ("-o", "x.safetensors/out.safetensors"),
    "output folder that is a file": ("-o", "x.safetensors/"),
    "junit report below a file": ("--junit-xml", "x.safetensors/r.xml"),
    "function file is a folder": ("--set", "function=dir.py:f"),
    "exported archive is a folder": ("--set", "function={exported: model.pt2}"),
}


@pytest.mark.parametrize(("option", "value"), list(CASES.values()), ids=list(CASES))
def test_an_unusable_path_is_exit_2_with_one_message(option: str, value: str, work: Path) -> None:
    before = files(work)
    args = [value] if option == "CONFIG" else ["c.yaml", option, value]
    result = invoke("compute", *args)
    assert result.exit_code == 2, result.output
    assert_one_message(result.output)
    assert any(word in result.output for word in ("folder", "directory", "long", "allows"))
    assert files(work) == before

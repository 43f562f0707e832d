"""glibc's thresholds, fixed in the CLI's processes: freed tensors reused, not faulted in again.

The behaviour checked is the one jvpcli._malloc exists for, as the kernel counts it: the minor page
faults of a process that allocates, fills and frees large blocks over and over (as a jvp does with
its tangents). Each process is a fresh one, as the allocator's state is the process's own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from jvpcli import _malloc

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only"
)

CHURN = textwrap.dedent(
    """\
    import ctypes
    import resource

    def churn_faults(rounds=3, blocks=8, size=6 << 20):
        '''Minor page faults of the last of ``rounds`` rounds that malloc, fill and free
        ``blocks`` blocks of ``size`` bytes.'''
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = (ctypes.c_size_t,)
        libc.free.argtypes = (ctypes.c_void_p,)
        for _ in range(rounds):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            pointers = [libc.malloc(size) for _ in range(blocks)]
            for pointer in pointers:
                ctypes.memset(pointer, 1, size)
            for pointer in pointers:
                libc.free(pointer)
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        return faults
    """
)
PAGES_CHURNED = 8 * (6 << 20) // 4096


def _environment(**extra: str) -> dict[str, str]:
    """This environment without any allocator setting, plus ``extra``."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MALLOC_") and name not in ("GLIBC_TUNABLES", "JVPCLI_MALLOC")
    }
    return {**kept, **extra}


def _python(code: str, **extra: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", CHURN + textwrap.dedent(code)],
        env=_environment(**extra),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_tuned_process_reuses_freed_blocks_where_glibc_would_fault_them_in_again():
    tuned, faults = _python("from jvpcli import _malloc; print(_malloc.tune(), churn_faults())")
    assert tuned == "True"
    assert int(faults) < PAGES_CHURNED // 100
    (untuned,) = _python("print(churn_faults())")
    assert int(untuned) > PAGES_CHURNED // 2  # the reason for it: glibc hands them back


@pytest.mark.parametrize(
    "setting",
    [
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"},
        {"JVPCLI_MALLOC": "default"},
    ],
    ids=lambda setting: next(iter(setting)),
)
def test_a_process_that_chose_its_allocator_is_left_as_it_is(setting):
    tuned, faults = _python(
        "from jvpcli import _malloc; print(_malloc.tune(), churn_faults())", **setting
    )
    assert tuned == "False"
    assert int(faults) > PAGES_CHURNED // 2


def test_another_allocator_preloaded_or_a_threshold_set_counts_as_chosen():
    assert _malloc.chosen_already({}) is None
    assert _malloc.chosen_already({"MALLOC_ARENA_MAX": "2"}) is None  # not a threshold
    assert _malloc.chosen_already({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) == "LD_PRELOAD"
    assert _malloc.chosen_already({"LD_PRELOAD": "libtcmalloc_minimal.so"}) == "LD_PRELOAD"
    assert _malloc.chosen_already({"MALLOC_TOP_PAD_": "0"}) == "MALLOC_TOP_PAD_"
    assert _malloc.chosen_already({"JVPCLI_MALLOC": " Default "}) == "JVPCLI_MALLOC=default"
    assert _malloc.chosen_already({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}) is None


def test_elsewhere_than_linux_nothing_is_done(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert _malloc.tune.__wrapped__() is False


@pytest.mark.parametrize("command", ["compute", "bench"])
def test_the_cli_runs_user_functions_with_the_thresholds_fixed(tmp_path: Path, command):
    # The user's function counts the faults of its own allocations, as a model's would be.
    (tmp_path / "churn.py").write_text(
        CHURN
        + textwrap.dedent(
            """
            import pathlib

            def f(x):
                pathlib.Path("faults.txt").write_text(str(churn_faults()))
                return x.sin()
            """
        )
    )
    save_file({"x": torch.ones(2)}, tmp_path / "x.safetensors")
    save_file({"x": torch.ones(2)}, tmp_path / "v.safetensors")
    config = tmp_path / "run.yaml"
    config.write_text(
        "function: churn.py:f\ninputs: x.safetensors\nv: v.safetensors\n"
        "output: out.safetensors\nmethod: forward\n"
    )

    def faults(**extra: str) -> int:
        if command == "compute":
            options = ["--output", f"out-{len(extra)}.safetensors"]
        else:
            options = ["--repeats", "1"]  # after its warm-up round: the allocator has churned
        done = subprocess.run(
            [sys.executable, "-m", "jvpcli", command, str(config), *options],
            cwd=tmp_path,
            env=_environment(**extra),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        return int((tmp_path / "faults.txt").read_text())

    assert faults() < PAGES_CHURNED // 100
    assert faults(JVPCLI_MALLOC="default") > PAGES_CHURNED // 2


@pytest.mark.parametrize("value", ["off", "0", "glibc", "\u00e9"])
def test_an_unknown_jvpcli_malloc_is_one_clear_error_and_writes_nothing(tmp_path: Path, value):
    save_file({"x": torch.ones(2)}, tmp_path / "x.safetensors")
    files = ["--inputs", "x.safetensors", "--v", "x.safetensors", "--output", "out.safetensors"]
    done = subprocess.run(
        [sys.executable, "-m", "jvpcli", "compute", "--function", "torch:sin", *files],
        cwd=tmp_path,
        env=_environment(JVPCLI_MALLOC=value),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: JVPCLI_MALLOC is {value!r}: set it to 'default'")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("value", ["", "  ", "tuned", "TUNED"])
def test_an_empty_or_tuned_jvpcli_malloc_tunes(value):
    tuned, faults = _python(
        "from jvpcli import _malloc; print(_malloc.tune(), churn_faults())", JVPCLI_MALLOC=value
    )
    assert tuned == "True"
    assert int(faults) < PAGES_CHURNED // 100

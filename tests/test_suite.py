"""benchmarks/suite.py and benchmarks/compare.py on a tiny budget: they run and print well-formed
tables (no timing is asserted: this machine's times are noise)."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def suite():
    return load("suite")


def failing_peer() -> object:
    raise NotImplementedError("no forward rule for this op\nand more")


def tiny_report(suite) -> dict:
    """A report of two tiny workloads, one with a peer that fails, timed as --quick times."""

    def with_failure(compiled: bool) -> dict:
        calls = suite._jvp_calls(lambda: (torch.sin, (torch.rand(8),)))(compiled)
        calls["torch.func.jvp"] = failing_peer
        return calls

    workloads = [
        suite.Workload(
            "tiny sin", "sin of 8 values", suite._jvp_calls(lambda: (torch.sin, (torch.rand(8),)))
        ),
        suite.Workload("tiny failing", "sin, torch.func failing", with_failure),
    ]
    settings = suite.Settings(rounds=3, warmup=1, budget=0.0, precision=0.03, compile=False)
    report = {"header": suite.header(settings), "workloads": {}}
    for workload in workloads:
        timings = suite.time_workload(workload, settings)
        report["workloads"][workload.name] = suite.workload_entry(workload, timings)
    return report


def markdown_rows(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_the_suite_times_interleaved_and_prints_well_formed_markdown(suite):
    report = tiny_report(suite)
    for entry in report["workloads"].values():
        assert entry["rounds"] == 3
        forward = entry["contenders"]["forward pass"]
        assert forward["ratio"] == {"min": 1.0, "median": 1.0, "max": 1.0}
        for cell in entry["contenders"].values():
            if cell["error"] is None:
                low, median, high = (cell["ratio"][k] for k in ("min", "median", "max"))
                assert 0 < low <= median <= high
    (times,), notes = suite.tables(report)
    rows = markdown_rows(suite._markdown(times))
    assert rows[0][:3] == ["workload", "forward, ms", "rounds"]
    assert "compile(torch.func)" not in rows[0]  # nothing compiled: no empty columns
    assert all(len(row) == len(rows[0]) for row in rows)
    assert [row[0] for row in rows[2:]] == ["tiny sin", "tiny failing"]
    failing = dict(zip(rows[0], rows[3], strict=True))
    assert failing["torch.func"] == "fails [1]"
    assert failing["auto vs best eager PyTorch"] != "PyTorch fails"  # autograd.functional ran
    assert notes == [
        "[1] NotImplementedError: no forward rule for this op (tiny failing: torch.func)"
    ]
    assert suite._takes_compile(lambda func, inputs, v=None, *, compile=False: None)
    assert not suite._takes_compile(lambda func, inputs, v=None, *, method="auto": None)


def test_the_memory_probe_runs_in_a_fresh_process_with_the_allocator_pinned(suite):
    with ThreadPoolExecutor(max_workers=2) as pool:  # as the suite runs them, two at a time
        peak, failed = pool.map(
            lambda contender: suite.peak_memory("many tiny ops", contender),
            ["forward pass", "no such contender"],
        )
    assert 0 <= peak["min"] <= peak["median"] <= peak["max"], peak
    assert "KeyError" in failed["error"]
    assert (
        "MALLOC_MMAP_THRESHOLD_=131072"
        in suite.header(suite.Settings(2, 1, 0.0, 0.03, False))["allocator"]
    )


def test_timing_takes_jvpcli_computes_allocator_unless_the_environment_chose_one(
    suite, monkeypatch
):
    settings = suite.Settings(2, 1, 0.0, 0.03, False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert "jvpcli compute's thresholds" in suite.header(settings)["allocator"]
    as_is = suite.Settings(2, 1, 0.0, 0.03, False, allocator="as-is")
    assert "as the environment leaves it" in suite.header(as_is)["allocator"]
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    assert "as the environment leaves it" in suite.header(settings)["allocator"]


def test_each_workload_times_in_a_fresh_process_untouched_by_state_left_behind(suite):
    # A forward-AD level left open (as a tracer failing half-way leaves one) fails every later
    # forward-mode call in the process with "Nested forward mode AD is not supported"; the
    # workload's own process does not see it.
    settings = suite.Settings(rounds=2, warmup=1, budget=0.0, precision=0.03, compile=False)
    leaked = torch.autograd.forward_ad.enter_dual_level()
    try:
        with pytest.raises(RuntimeError, match="Nested forward mode AD"):
            torch.func.jvp(torch.sin, (torch.rand(3),), (torch.rand(3),))
        entry, inductor_startup = suite.timed_in_a_fresh_process("many tiny ops", settings)
    finally:
        torch.autograd.forward_ad.exit_dual_level(level=leaked)

    assert inductor_startup is None  # nothing compiled
    assert entry["rounds"] == 2
    # Timed with the thresholds jvpcli compute sets, whatever the parent's allocator.
    assert {key: entry["allocator"][key] for key in suite.TIMING_ALLOCATOR} == {
        "MALLOC_MMAP_THRESHOLD_": "33554432",
        "MALLOC_TRIM_THRESHOLD_": "1073741824",
    }
    assert set(entry["contenders"]) == {
        "forward pass",
        "jvpcli auto",
        "jvpcli forward",
        "torch.autograd.functional.jvp",
        "torch.func.jvp",
    }
    for name, cell in entry["contenders"].items():
        assert cell["error"] is None, (name, cell["error"])
        assert cell["ratio"]["min"] > 0


def test_compare_flags_the_cells_that_moved_beyond_the_tolerance(suite, tmp_path):
    a = tiny_report(suite)
    a["workloads"]["tiny sin"]["extra_peak_mib"] = {
        "forward pass": {"min": 0.1, "median": 0.1, "max": 0.1},
        "jvpcli auto": {"min": 20.0, "median": 20.0, "max": 20.0},
    }
    b = copy.deepcopy(a)
    b["workloads"]["tiny sin"]["contenders"]["jvpcli auto"]["ratio"]["median"] *= 1.25
    b["workloads"]["tiny sin"]["extra_peak_mib"]["forward pass"]["median"] = 0.3  # < 0.5 MiB
    compare = load("compare")
    rows = {(w, c, q): d for w, c, q, d in compare.differences(a, b, memory_floor=0.5)}
    assert rows[("tiny sin", "jvpcli auto", "ratio")] == pytest.approx(0.25)
    assert rows[("tiny sin", "forward pass", "seconds")] == 0.0
    assert rows[("tiny sin", "forward pass", "memory")] == 0.0
    assert rows[("tiny sin", "jvpcli auto", "memory")] == 0.0
    assert ("tiny failing", "torch.func.jvp", "ratio") not in rows  # failed in both
    for name, report in (("a", a), ("b", b)):
        (tmp_path / f"{name}.json").write_text(json.dumps(report))
    same = subprocess.run(
        [sys.executable, BENCHMARKS / "compare.py", tmp_path / "a.json", tmp_path / "a.json"],
        capture_output=True,
        text=True,
    )
    assert same.returncode == 0, same.stderr
    assert "0 of" in same.stdout
    moved = subprocess.run(
        [sys.executable, BENCHMARKS / "compare.py", tmp_path / "a.json", tmp_path / "b.json"],
        capture_output=True,
        text=True,
    )
    assert moved.returncode == 1
    assert "+25.0% !" in moved.stdout
    assert "1 of" in moved.stdout

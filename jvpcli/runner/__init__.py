"""Runs: plan (check every run against its files), execute (compute, write, verify), report.

The hand-offs are narrow so that a run can execute anywhere: :func:`plan_runs` turns
:class:`~jvpcli.config.RunSpec` s into picklable :class:`CheckedRun` s, raising
:class:`~jvpcli.errors.UsageError` before anything computes; :func:`execute_run` executes one
with a per-process :class:`WorkerCache` and returns a :class:`RunResult` or a
:class:`RunFailure`; an executor (:func:`run_locally`) decides where and in which order. See
``README.md`` beside this file.
"""

from __future__ import annotations

from jvpcli.runner.cache import WorkerCache
from jvpcli.runner.execution import bench_run, execute_run, inspect_file
from jvpcli.runner.executors import run_locally
from jvpcli.runner.outcomes import (
    BenchResult,
    InspectedFile,
    OutputRecord,
    RunFailure,
    RunOutcome,
    RunResult,
    output_keys,
)
from jvpcli.runner.planning import CheckedRun, check_run, plan_runs

__all__ = [
    "BenchResult",
    "CheckedRun",
    "InspectedFile",
    "OutputRecord",
    "RunFailure",
    "RunOutcome",
    "RunResult",
    "WorkerCache",
    "bench_run",
    "check_run",
    "execute_run",
    "inspect_file",
    "output_keys",
    "plan_runs",
    "run_locally",
]

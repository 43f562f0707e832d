"""Executors: how the checked runs of a command are sent to
:func:`~jvpcli.runner.execution.execute_run`. :func:`run_locally` runs them in order in this
process; :class:`~jvpcli.runner.ray_executor.RayExecutor` runs them as Ray tasks. Every executor
keeps its guarantees (failures isolated, outcomes yielded as runs finish,
no partial file on Ctrl-C)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

from jvpcli.runner.cache import WorkerCache
from jvpcli.runner.execution import execute_run, tensor_files
from jvpcli.runner.outcomes import RunFailure, RunOutcome
from jvpcli.runner.planning import CheckedRun

__all__ = ["run_locally"]


def run_locally(
    runs: Sequence[CheckedRun],
    cache: WorkerCache,
    *,
    resume: bool = False,
    fail_fast: bool = False,
) -> Iterator[RunOutcome]:
    """Run checked runs in order in this process, yielding each one's outcome as it finishes.

    A failed run is yielded as a :class:`~jvpcli.runner.outcomes.RunFailure` and the next one
    starts. A KeyboardInterrupt propagates at once: the outputs of the runs yielded so far are
    complete, and the run in progress leaves no file. Each tensor file's tensors are dropped
    from ``cache`` after the last run that reads them.

    Args:
        runs: the checked runs.
        cache: the cache they were checked with (their functions are already loaded in it).
        resume: reuse finished outputs of the same runs instead of computing them.
        fail_fast: stop after the first failure.
    """
    readers = Counter(path for run in runs for path in tensor_files(run.spec))
    for checked in runs:
        outcome = execute_run(checked, cache, resume=resume)
        for path in tensor_files(checked.spec):
            readers[path] -= 1
            if not readers[path]:
                cache.files.release(path)
        yield outcome
        if fail_fast and isinstance(outcome, RunFailure):
            return

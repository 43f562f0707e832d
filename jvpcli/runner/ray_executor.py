"""Sweeps on Ray: :class:`RayExecutor` sends each checked run to a Ray task, which calls
:func:`~jvpcli.runner.execution.execute_run` in a worker process, and yields the outcomes as the
tasks finish (in any order).

It keeps the guarantees of :func:`~jvpcli.runner.executors.run_locally`: every run was checked
before the first is submitted; a run that fails, or whose worker dies, fails alone (retried up
to ``max_retries`` times when its worker died); ``fail_fast`` cancels the tasks not yet finished;
Ctrl-C and SIGTERM cancel them too, and a cancelled task's output is never left half-written
(a running task is interrupted like a local run, and its temporary file removed).

Each worker process keeps one :class:`~jvpcli.runner.cache.WorkerCache` for all the tasks it
runs, so each function module is imported and each model built once per worker. A task uses as
many torch threads as the CPUs it asked for (``resources.num_cpus``, default 1), so that runs
sharing a machine do not fight over its cores.

Files reach the workers in one of two ways. By default the paths are used as they are: the
driver and the workers share a filesystem (one machine, or a cluster with NFS). With
``upload``, the config's folder is shipped to every worker as Ray's ``runtime_env``
``working_dir`` (up to :data:`UPLOAD_LIMIT`), and each run reads the files under it from the
worker's copy. Outputs are always written to the paths the config names, so they must be on a
filesystem the driver shares with the workers: the driver checks that it sees each one.

Ray is an optional extra (``pip install 'jvpcli[ray]'``), imported only here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import pickle
import platform
import signal
import socket
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from jvpcli.config import Reference, Resources, RunSpec
from jvpcli.errors import ComputeError, ConfigError, JvpcliError, Terminated, display_path
from jvpcli.runner.outcomes import RunFailure, RunOutcome, RunResult
from jvpcli.runner.planning import CheckedRun

__all__ = ["UPLOAD_LIMIT", "RayExecutor", "RemoteTraceback", "import_ray", "task_options"]

UPLOAD_LIMIT = 100 * 2**20
"""The most bytes of files ``upload`` ships to the workers (Ray's own ceiling is its largest gRPC
message, 512 MiB by default; past a few hundred MiB a shared filesystem is the better road)."""

_SKIPPED_FOLDERS = (".git", "__pycache__", ".venv", "venv", ".mypy_cache", ".pytest_cache")


def import_ray() -> Any:
    """Ray, imported.

    Raises:
        ConfigError: Ray is not installed (exit 2), naming the extra that installs it.
    """
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--executor ray needs Ray, which is not installed: it is the optional 'ray' extra of "
            "jvpcli. Install it with pip install 'jvpcli[ray]' (in a checkout: pip install -e "
            "'.[ray]') and run the command again, or use --executor local."
        ) from None
    return ray


class RemoteTraceback(Exception):
    """The traceback of an error raised in a Ray worker, as text: what ``--debug`` shows as the
    cause of a remote run's failure (tracebacks do not travel between processes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def task_options(spec: RunSpec, max_retries: int) -> dict[str, Any]:
    """The options of a run's Ray task: its resources (defaults filled in) and retries."""
    resources = spec.resources or Resources()
    cuda = spec.device.startswith("cuda")
    options: dict[str, Any] = {
        "num_cpus": 1.0 if resources.num_cpus is None else resources.num_cpus,
        "num_gpus": (1.0 if cuda else 0.0) if resources.num_gpus is None else resources.num_gpus,
        "max_retries": max_retries,
        "retry_exceptions": False,  # a run's own failure is its outcome, never retried
        "name": f"jvpcli {spec.name}",
    }
    if resources.memory is not None:
        options["memory"] = resources.memory
    return options


class RayExecutor:
    """Runs checked runs as Ray tasks: :meth:`connect`, then :meth:`run`, then :meth:`close`.

    Args:
        address: the cluster to connect to; ``None``: ``RAY_ADDRESS``, and without it a local
            instance sized to this machine. In a process already connected to Ray
            (``ray.init``), that connection is used.
        max_retries: how many times a run whose worker died is run again.
        upload: ship the config's folder to the workers (``runtime_env`` ``working_dir``)
            instead of relying on a shared filesystem.
    """

    def __init__(self, address: str | None, *, max_retries: int = 0, upload: bool = False):
        self._address = address
        self._max_retries = max_retries
        self._upload = upload
        self._ray: Any = None
        self._started = False  # whether this executor started (and so stops) Ray
        self._folder: Path | None = None  # the uploaded folder
        self._runtime_env: dict[str, Any] | None = None
        self._terminated = False  # whether SIGTERM arrived
        self._previous_sigterm: Any = None

    def connect(self, runs: Sequence[CheckedRun]) -> str:
        """Connect to Ray, check that the cluster can hold each run, and prepare the upload.

        Returns:
            One line for the user: the cluster, its resources, and how files reach the workers.

        Raises:
            ConfigError: Ray is not installed; the cluster cannot be reached; a run asks for
                more than the cluster has; the upload is too large.
        """
        ray = self._ray = import_ray()
        if self._upload:
            self._runtime_env = self._prepare_upload(runs)
        address = self._address or os.environ.get("RAY_ADDRESS") or None
        if not ray.is_initialized():
            if address is not None:
                _probe(address)
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            settings: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
            if self._runtime_env is not None:
                settings["runtime_env"] = self._runtime_env  # an upload is the job's, not a task's
            # Ray installs its own SIGTERM handler (exit at once): the command's comes back.
            terminate = signal.getsignal(signal.SIGTERM)
            try:
                if address is None:
                    # "local": a new instance, even where another one runs on this machine.
                    ray.init(
                        address="local",
                        num_cpus=os.cpu_count() or 1,
                        include_dashboard=False,
                        **settings,
                    )
                else:
                    ray.init(address=address, **settings)
            except (ConnectionError, RuntimeError, ValueError) as error:
                named = f"at {address}" if address is not None else "on this machine"
                raise ConfigError(
                    f"cannot start or reach the Ray cluster {named}: {error}. Check the address "
                    "(--ray-address or RAY_ADDRESS, e.g. 10.0.0.1:6379), or leave both unset to "
                    "start a local instance."
                ) from None
            finally:
                if terminate is not None and threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGTERM, terminate)
            self._started = True
        if threading.current_thread() is threading.main_thread():
            self._watch_sigterm()
        elif self._runtime_env is not None:
            raise ConfigError(
                "--ray-upload ships the config's folder when jvpcli connects to Ray, and this "
                "process is already connected (ray.init was called before): leave --ray-upload "
                "out, or run jvpcli in a process of its own."
            )
        total = ray.cluster_resources()
        for checked in runs:
            _check_fits(checked.spec, task_options(checked.spec, 0), total)
        if address is not None:
            where = f"Ray cluster {address}"
        elif self._started:
            where = "a local Ray instance"
        else:
            where = "the Ray cluster this process is connected to"
        gpus = int(total.get("GPU", 0))
        resources = f"{int(total.get('CPU', 0))} CPUs" + (f", {gpus} GPUs" if gpus else "")
        files = (
            f"the config's folder {display_path(self._folder)} uploaded to each worker"
            if self._folder is not None
            else "paths as they are (a filesystem shared with the workers)"
        )
        return f"ray: {len(runs)} runs on {where} ({resources}); files: {files}."

    def run(
        self, runs: Sequence[CheckedRun], *, resume: bool = False, fail_fast: bool = False
    ) -> Iterator[RunOutcome]:
        """Submit every run as a task and yield each outcome as its task finishes.

        A KeyboardInterrupt (or SIGTERM turned into one) while waiting cancels the unfinished
        tasks, waits for the running ones to stop, and propagates.
        """
        ray = self._ray
        remote = ray.remote(_execute)
        pending: dict[Any, tuple[CheckedRun, float]] = {}
        try:
            for checked in runs:
                options = task_options(checked.spec, self._max_retries)
                threads = max(1, math.floor(options["num_cpus"]))
                folder = None if self._folder is None else str(self._folder)
                ref = remote.options(**options).remote(checked, resume, threads, folder)
                pending[ref] = (checked, time.perf_counter())
            while pending:
                # A timeout, so that Ctrl-C and SIGTERM are seen while tasks run.
                try:
                    done, _ = ray.wait(list(pending), num_returns=1, timeout=0.2)
                except KeyboardInterrupt:
                    if self._terminated:
                        # Ray's wait turns any exception of a signal handler into Ctrl-C.
                        raise Terminated() from None
                    raise
                for ref in done:
                    checked, submitted = pending.pop(ref)
                    outcome = self._collect(ref, checked, submitted)
                    yield outcome
                    if fail_fast and isinstance(outcome, RunFailure):
                        return
        finally:
            if pending:
                self._cancel(list(pending))

    def close(self) -> None:
        """Disconnect; stop the local instance this executor started."""
        if self._ray is not None and self._started:
            self._ray.shutdown()
            self._started = False
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def _watch_sigterm(self) -> None:
        """Note SIGTERM before the command's handler runs, so that it is told from Ctrl-C."""
        previous = signal.getsignal(signal.SIGTERM)

        def noted(signum: int, frame: Any) -> None:
            self._terminated = True
            if callable(previous):
                previous(signum, frame)
            raise Terminated()

        self._previous_sigterm = previous
        signal.signal(signal.SIGTERM, noted)

    def _collect(self, ref: Any, checked: CheckedRun, submitted: float) -> RunOutcome:
        ray = self._ray
        spec = checked.spec
        try:
            outcome: RunOutcome = ray.get(ref)
        except ray.exceptions.RayError as error:
            return RunFailure(spec, self._lost(spec, error), time.perf_counter() - submitted)
        # The worker's copy of the run (paths into its upload): the driver's is what is shown.
        if outcome.spec != spec:
            if isinstance(outcome, RunFailure) and outcome.result is not None:
                outcome = dataclasses.replace(
                    outcome, result=dataclasses.replace(outcome.result, spec=spec)
                )
            outcome = dataclasses.replace(outcome, spec=spec)
        if isinstance(outcome, RunFailure):
            text = getattr(outcome.error, "remote_traceback", "")
            if text:
                outcome.error.__cause__ = RemoteTraceback(text)
        written = outcome if isinstance(outcome, RunResult) else outcome.result
        if written is not None and not spec.output.exists():
            error = JvpcliError(
                f"run {spec.name!r}: its worker wrote {display_path(spec.output)}, but this "
                "machine does not see that file. Outputs must be on a filesystem the driver "
                "and every Ray worker share (NFS, a cluster's shared home): name such a path "
                "in output."
            )
            return RunFailure(spec, error, outcome.total_seconds, written)
        return outcome

    def _lost(self, spec: RunSpec, error: Exception) -> JvpcliError:
        """The failure of a run whose task did not return: its worker or node died, it ran out
        of memory, or its runtime environment could not be set up."""
        ray = self._ray
        exceptions = ray.exceptions
        retried = (
            f" (after {self._max_retries} retr{'y' if self._max_retries == 1 else 'ies'})"
            if self._max_retries
            else " (--max-retries N runs such a run again)"
        )
        if isinstance(error, getattr(exceptions, "OutOfMemoryError", ())):
            why = "its Ray worker was killed for running out of memory" + retried
        elif isinstance(error, getattr(exceptions, "NodeDiedError", ())):
            why = "the Ray node running it died" + retried
        elif isinstance(error, exceptions.WorkerCrashedError):
            why = (
                "its Ray worker process died (killed, or the function ended the process)" + retried
            )
        elif isinstance(error, getattr(exceptions, "RuntimeEnvSetupError", ())):
            why = f"Ray could not set up its runtime environment: {_first_line(error)}"
        elif isinstance(error, exceptions.TaskCancelledError):
            why = "its Ray task was cancelled"
        elif isinstance(error, exceptions.RayTaskError):
            cause = getattr(error, "cause", None) or error
            why = f"its Ray task raised {type(cause).__name__}: {_first_line(cause)}"
        else:
            why = f"Ray lost it: {type(error).__name__}: {_first_line(error)}"
        failure = ComputeError(f"run {spec.name!r} failed on Ray: {why}.")
        failure.__cause__ = RemoteTraceback(str(error))
        return failure

    def _cancel(self, refs: list[Any]) -> None:
        """Cancel unfinished tasks: queued ones never start; a running one is interrupted
        (KeyboardInterrupt in the worker: its temporary file is removed) and waited for, a
        few seconds, before it is killed.

        Ray 2.60's driver can abort ("Tried to complete task that was not pending") when a
        cancellation meets a task's reply (the race of ray-project/ray#54798): tasks that have
        finished are left alone, and the last submitted, likely still queued, are cancelled
        first, so that a worker freed by an interrupted task is not handed one being cancelled.
        """
        ray = self._ray
        finished, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        done = set(finished)
        refs = [ref for ref in refs if ref not in done]
        for ref in reversed(refs):
            with contextlib.suppress(Exception):  # a task that finished meanwhile
                ray.cancel(ref, force=False)
        _, stuck = ray.wait(refs, num_returns=len(refs), timeout=10.0)
        for ref in stuck:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)

    def _prepare_upload(self, runs: Sequence[CheckedRun]) -> dict[str, Any]:
        """The runtime environment that ships the config's folder, its outputs left out."""
        folders = {run.spec.config.parent for run in runs if run.spec.config is not None}
        if len(folders) != 1:
            raise ConfigError(
                "--ray-upload ships the config's folder to the workers, and this command has "
                "no config file: give one, or leave --ray-upload out (a shared filesystem)."
            )
        (folder,) = folders
        excludes = sorted(
            {
                "/" + str(path.relative_to(folder))
                for run in runs
                for path in (run.spec.output, run.spec.expect if run.update_golden else None)
                if path is not None and path.is_relative_to(folder)
            }
        )
        excludes += [f"{name}/" for name in _SKIPPED_FOLDERS]
        size = _folder_size(folder, set(_SKIPPED_FOLDERS))
        if size > UPLOAD_LIMIT:
            raise ConfigError(
                f"--ray-upload would ship {size / 2**20:.0f} MiB from {display_path(folder)} to "
                f"every worker, more than the {UPLOAD_LIMIT // 2**20} MiB jvpcli uploads. Put the "
                "config, inputs and weights on a filesystem the workers share and leave "
                "--ray-upload out, or move what the runs do not read out of the folder."
            )
        self._folder = folder
        return {"working_dir": str(folder), "excludes": excludes}


def _probe(address: str) -> None:
    """Fail at once when nothing listens at a ``HOST:PORT`` cluster address (Ray itself retries
    for minutes); other forms (``auto``, ``ray://``) are left to Ray."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as error:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address}: {error.strerror or error}. Start it "
            "(ray start --head) or check the address (--ray-address or RAY_ADDRESS), or leave "
            "both unset to start a local instance."
        ) from None


def _check_fits(spec: RunSpec, options: dict[str, Any], total: dict[str, float]) -> None:
    asked = (
        ("num_cpus", "CPU", "CPUs", options["num_cpus"]),
        ("num_gpus", "GPU", "GPUs", options["num_gpus"]),
        ("memory", "memory", "bytes of memory", options.get("memory", 0)),
    )
    for key, resource, unit, amount in asked:
        if amount > total.get(resource, 0):
            hint = (
                " A cuda run asks for one GPU unless resources.num_gpus says otherwise; on a "
                "cluster without GPUs use device: cpu."
                if resource == "GPU"
                else ""
            )
            raise ConfigError(
                f"run {spec.name!r} asks Ray for {amount:g} {unit} (resources.{key}), and the "
                f"cluster has {total.get(resource, 0):g}: it could never start.{hint}"
            )


def _folder_size(folder: Path, skipped: set[str]) -> int:
    size = 0
    for root, names, files in os.walk(folder):
        names[:] = [name for name in names if name not in skipped]
        for name in files:
            try:
                size += (Path(root) / name).lstat().st_size
            except OSError:
                continue
    return size


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# What runs in a Ray worker process.

_WORKER_CACHE: Any = None


def _execute(checked: CheckedRun, resume: bool, threads: int, uploaded: str | None) -> RunOutcome:
    """A run's task: compute it with this worker's cache, and return its outcome."""
    import torch

    from jvpcli._malloc import tune as tune_malloc
    from jvpcli.runner.cache import WorkerCache
    from jvpcli.runner.execution import execute_run, tensor_files

    global _WORKER_CACHE
    if _WORKER_CACHE is None:
        _WORKER_CACHE = WorkerCache(executor="ray", node=_node())
    cache = _WORKER_CACHE
    tune_malloc()
    torch.set_num_threads(threads)
    if uploaded is not None:
        keep = {checked.spec.output}
        if checked.update_golden and checked.spec.expect is not None:
            keep.add(checked.spec.expect)
        checked = _moved(checked, Path(uploaded), Path.cwd(), keep)
    started = time.perf_counter()
    try:
        # This worker's device: auto, or cuda (the GPU Ray assigned), resolved here.
        checked = dataclasses.replace(checked, device=str(cache.device(checked.spec.device)))
    except ConfigError as error:
        return RunFailure(checked.spec, error, time.perf_counter() - started)
    try:
        outcome = execute_run(checked, cache, resume=resume)
    finally:
        for path in tensor_files(checked.spec):
            cache.files.release(path)  # the next task on this worker may read other files
    return _portable(outcome)


def _node() -> str:
    import ray

    try:
        address = ray.util.get_node_ip_address()
    except Exception:  # the hostname alone then
        return platform.node()
    return f"{platform.node()} ({address})"


def _portable(outcome: RunOutcome) -> RunOutcome:
    """The outcome, safe to send to the driver: its error's traceback kept as text."""
    if not isinstance(outcome, RunFailure):
        return outcome
    error = outcome.error
    text = "".join(traceback.format_exception(error)) if error.__traceback__ else ""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # an attribute that does not pickle: keep the message
        error = JvpcliError(error.message, location=error.location)
    error.remote_traceback = text  # type: ignore[attr-defined]
    return dataclasses.replace(outcome, error=error)


def _moved(value: Any, source: Path, target: Path, keep: set[Path]) -> Any:
    """``value`` with every path under ``source`` moved under ``target`` (the worker's copy of
    the uploaded folder), except those in ``keep`` (what the run writes)."""
    if isinstance(value, Path):
        if value in keep or not value.is_relative_to(source):
            return value
        return target / value.relative_to(source)
    if isinstance(value, Reference):
        module = Path(value.module) if value.is_file else None
        return dataclasses.replace(
            value,
            module=value.module if module is None else str(_moved(module, source, target, keep)),
            search_dir=_moved(value.search_dir, source, target, keep),
        )
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            field.name: _moved(getattr(value, field.name), source, target, keep)
            for field in dataclasses.fields(value)
            if field.init
        }
        return dataclasses.replace(value, **changes)
    if isinstance(value, tuple):
        return tuple(_moved(item, source, target, keep) for item in value)
    return value

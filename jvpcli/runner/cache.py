"""What the runs executed in one process share: :class:`WorkerCache`."""

from __future__ import annotations

import copy
import json
import platform
import sys
from dataclasses import replace
from types import ModuleType

import torch
from torch import nn

from jvpcli.config import PlainFunction, RunSpec
from jvpcli.containment import contained, describe, failures
from jvpcli.errors import (
    ConfigError,
    FunctionLoadError,
    JvpcliError,
    is_library_file,
    user_location,
)
from jvpcli.loading import LoadedFunction, load_function
from jvpcli.reproducibility import seeded
from jvpcli.tensors import FileCache

__all__ = ["WorkerCache"]


class WorkerCache:
    """Per-process state shared by the runs a process executes: a sweep locally, or the tasks a
    worker receives.

    Each function module is imported once, each function built once per device, dtype and seed
    (so a model is never cast under another run's feet), each device resolved once, and each
    file's header, tensors and digest read once, by path (:class:`~jvpcli.tensors.FileCache`).
    Nothing in it is ever sent between processes: a worker builds its own.

    Attributes:
        executor: the executor whose runs it serves (``"local"``, ``"ray"``), and ``node`` the
            machine they run on: recorded in each output's metadata.
        elsewhere: the runs it checks compute in other processes, maybe on other machines (a
            driver's plan): a device this machine lacks is not an error here (each worker
            resolves the device itself), and the function is checked on the CPU instead.
    """

    def __init__(
        self, *, executor: str = "local", node: str | None = None, elsewhere: bool = False
    ):
        self.executor = executor
        self.node = platform.node() if node is None else node
        self.elsewhere = elsewhere
        self.files = FileCache()
        self._modules: dict[str, ModuleType] = {}
        self._functions: dict[tuple[str, str, str | None, int | None], LoadedFunction] = {}
        self._devices: dict[str, torch.device] = {}
        self._models: set[int] = set()  # the models handed to runs (kept alive by _functions)

    def device(self, name: str) -> torch.device:
        """The device a run's ``device`` names (``auto`` resolved).

        Raises:
            ConfigError: the device is not available here.
        """
        device = self._devices.get(name)
        if device is None:
            try:
                device = _resolve_device(name)
            except ConfigError:
                if not self.elsewhere:
                    raise
                device = torch.device("cpu")
            self._devices[name] = device
        return device

    def function(self, spec: RunSpec) -> LoadedFunction:
        """The run's function, loaded (seeded by the run's ``seed``) the first time only.

        Raises:
            FunctionLoadError, TensorFileError: as :func:`~jvpcli.loading.load_function`.
            ConfigError: the run's device is not available.
        """
        device = self.device(spec.device)
        key = (
            json.dumps(spec.settings()["function"], sort_keys=True),
            str(device),
            spec.dtype,
            spec.seed,
        )
        function = self._functions.get(key)
        if function is None:
            try:
                with contained(), seeded(spec.seed, device):
                    function = load_function(spec.function, self._modules)
            except BaseException as error:
                if isinstance(error, JvpcliError) or not failures(error):
                    raise
                # User code reached outside the calls that say where (a model's eval(), a
                # module's __getattr__): still the load's failure, never the command's exit.
                raise FunctionLoadError(
                    f"loading {spec.function} failed: {describe(error)}",
                    location=user_location(error, ()),
                ) from error
            if isinstance(function.func, nn.Module) and self._shared(spec, function.func):
                # A model others hold (a module-level one, one a factory hands out twice) is
                # never moved or cast: each device and dtype gets a copy of its own.
                function = replace(function, func=copy.deepcopy(function.func))
            self._models.add(id(function.func))
            self._functions[key] = function
        return function

    def _shared(self, spec: RunSpec, model: nn.Module) -> bool:
        if isinstance(spec.function, PlainFunction) or id(model) in self._models:
            return True
        user_modules = [
            module
            for module in list(sys.modules.values())
            if isinstance(getattr(module, "__file__", None), str)
            and not is_library_file(module.__file__)
        ]
        return any(
            value is model for module in user_modules for value in list(vars(module).values())
        )


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(
                f"device {name!r} is not available: this machine's torch {torch.__version__} "
                f"sees {count} CUDA device{'s' if count != 1 else ''}. Use device: cpu or auto."
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} is not available here. Use device: cpu or auto.")
    return device

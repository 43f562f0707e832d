"""Configs: a YAML file, plus command-line overrides, validated into :class:`RunSpec` s.

The pipeline is ``read_config`` (YAML → :class:`ConfigDocument`, remembering where each key was
written) → :func:`build_sweep` (``sweep:`` and ``runs:`` expanded into one document per run, each
given its name, the command-line overrides and its ``output`` template filled in) →
:func:`build_spec` (one run validated, paths resolved → :class:`RunSpec`). The whole sweep is
validated before anything runs: every problem raises :class:`~jvpcli.errors.ConfigError` naming
the file, line and column (or the option) at fault.

Validation is hand-written over one table of keys (:data:`_KEYS`), from which :func:`json_schema`
is also generated, so the schema editors see and the checks the command makes cannot drift apart.
This module does not import torch.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, TypeVar

import yaml

from jvpcli.errors import ConfigError, display_path

__all__ = [
    "CHECKS",
    "DTYPES",
    "METHODS",
    "ConfigDocument",
    "ExportedFunction",
    "FunctionSpec",
    "ModelFunction",
    "Override",
    "PlainFunction",
    "Reference",
    "RunSpec",
    "Shard",
    "Sweep",
    "Tolerance",
    "build_spec",
    "build_sweep",
    "json_schema",
    "load_sweep",
    "parse_assignment",
    "read_config",
]

METHODS: tuple[str, ...] = ("auto", "forward", "double-backward")
"""The values ``method`` accepts: :data:`jvpcli.engine.METHODS`, repeated here so that reading and
checking a config does not import torch (a test keeps the two equal)."""

DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64")
"""The values ``dtype`` accepts: the floating-point dtypes inputs and ``v`` can be cast to."""

CHECKS: tuple[str, ...] = ("none", "finite-differences")
"""The values ``check`` accepts: no check, or each JVP against central finite differences."""

TOLERANCE_KEYS = re.compile(r"(func_output|jvp)(\.\d+)?")
"""The names ``tolerances`` accepts: a tensor of the output file (``jvp.1``), or every tensor of a
kind (``jvp``: ``jvp``, ``jvp.0``, ``jvp.1``, ...)."""

_MAX_SEED = 2**64 - 1  # torch.manual_seed's largest seed
_MAX_DEPTH = 64  # how deeply a config's mappings and lists may nest
_MAX_VALUES = 100_000  # how many values a config may hold, aliases expanded

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_IDENTIFIERS = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

KeyPath = tuple[str, ...]
_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------
# The run spec


@dataclass(frozen=True)
class Reference:
    """A Python object named as ``FILE.py:NAME`` or ``package.module:NAME``.

    Attributes:
        module: the absolute path of a ``.py`` file, or a dotted module name.
        name: the object's name in the module (dots reach attributes of attributes).
        search_dir: for a dotted module, the folder put first on ``sys.path`` while importing it
            (the config's folder), so a package next to the config imports like an installed one.
    """

    module: str
    name: str
    search_dir: Path

    @property
    def is_file(self) -> bool:
        """Whether :attr:`module` is a file path (else a dotted module name)."""
        return self.module.endswith(".py")

    def __str__(self) -> str:
        module = display_path(Path(self.module)) if self.is_file else self.module
        return f"{module}:{self.name}"


@dataclass(frozen=True)
class PlainFunction:
    """``function: FILE.py:NAME``: a callable used as it is."""

    ref: Reference

    def __str__(self) -> str:
        return str(self.ref)


@dataclass(frozen=True)
class ModelFunction:
    """``function: {target, init, weights}``: an ``nn.Module`` built by calling ``target(**init)``,
    its state dict (if ``weights``) loaded strictly from a safetensors file."""

    ref: Reference
    init: Mapping[str, Any] = field(default_factory=dict)
    weights: Path | None = None

    def __str__(self) -> str:
        return str(self.ref)


@dataclass(frozen=True)
class ExportedFunction:
    """``function: {exported: archive.pt2}``: a ``torch.export`` archive."""

    archive: Path

    def __str__(self) -> str:
        return display_path(self.archive)


FunctionSpec = PlainFunction | ModelFunction | ExportedFunction


@dataclass(frozen=True)
class Tolerance:
    """Bounds for comparing a tensor with its golden: ``|result - golden| <= atol + rtol *
    |golden|`` element-wise.

    Attributes:
        rtol, atol: the bounds; ``None`` where not set (a wider setting applies, and last the
            defaults of the tensor's dtype).
    """

    rtol: float | None = None
    atol: float | None = None


@dataclass(frozen=True)
class RunSpec:
    """One run, validated, with every path absolute.

    Attributes:
        name: the run's label in summaries (the config file's stem unless the config sets it).
        function: what to differentiate.
        inputs: the safetensors file holding the point at which to differentiate.
        v: the safetensors file holding the direction, with the same tensor names as ``inputs``;
            ``None`` only for a single one-element input.
        output: where ``func_output`` and ``jvp`` are written.
        order: the order in which the tensors in ``inputs`` are passed, when their names do not
            match the function's parameters.
        strict, create_graph, method, batched_v: passed to the engine.
        dtype: a floating-point dtype name to cast inputs and ``v`` to, or ``None`` to keep theirs.
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``.
        config: the config file the run came from (``None`` for a config-free command line).
        expect: a safetensors file of reference results (a golden) to compare the results with,
            or to write with ``--update-golden``; ``None`` for no comparison.
        rtol, atol: the golden comparison's bounds for every tensor (``None``: not set).
        tolerances: bounds per tensor name (``jvp.1``) or kind (``jvp``), over ``rtol``/``atol``.
        check: ``"finite-differences"`` to check each JVP against central differences of the
            function in float64, or ``"none"``.
        fd_step: the finite-difference step h (x ± h·v), or ``None`` to choose it.
        fd_rtol: the finite-difference check's relative tolerance, or ``None`` for the run
            dtype's default.
        fail_on_nonfinite: fail the run when a result holds NaN or infinite values.
        seed: seed torch's random number generators with this before building the function and
            before computing, or ``None`` not to.
        deterministic: compute with ``torch.use_deterministic_algorithms(True)``.
    """

    name: str
    function: FunctionSpec
    inputs: Path
    output: Path
    v: Path | None = None
    order: tuple[str, ...] | None = None
    strict: bool = False
    create_graph: bool = False
    method: str = "auto"
    dtype: str | None = None
    device: str = "cpu"
    batched_v: bool = False
    config: Path | None = None
    expect: Path | None = None
    rtol: float | None = None
    atol: float | None = None
    tolerances: Mapping[str, Tolerance] = field(default_factory=dict)
    check: str = "none"
    fd_step: float | None = None
    fd_rtol: float | None = None
    fail_on_nonfinite: bool = False
    seed: int | None = None
    deterministic: bool = False

    def settings(self) -> dict[str, Any]:
        """Everything that determines the run's result, as JSON-ready values (paths absolute).

        Recorded in the output's metadata, so a result says exactly how it was produced. The
        verification keys (``expect``, tolerances, ``check``, ...) are left out: they judge a
        result, and do not change it.
        """
        function: dict[str, Any]
        if isinstance(self.function, ExportedFunction):
            function = {"exported": str(self.function.archive)}
        elif isinstance(self.function, ModelFunction):
            function = {
                "target": _reference_text(self.function.ref),
                "init": dict(self.function.init),
                "weights": None if self.function.weights is None else str(self.function.weights),
            }
        else:
            function = {"target": _reference_text(self.function.ref)}
        return {
            "function": function,
            "inputs": str(self.inputs),
            "v": None if self.v is None else str(self.v),
            "order": None if self.order is None else list(self.order),
            "strict": self.strict,
            "create_graph": self.create_graph,
            "method": self.method,
            "dtype": self.dtype,
            "device": self.device,
            "batched_v": self.batched_v,
            "seed": self.seed,
            "deterministic": self.deterministic,
        }

    def tolerance(self, key: str) -> Tolerance:
        """The golden comparison's bounds for the output file's tensor ``key`` (e.g. ``jvp.1``):
        each bound from ``tolerances[key]``, else ``tolerances`` of its kind (``jvp``), else
        ``rtol`` / ``atol``; ``None`` where none of them sets it."""
        kind = key.split(".")[0]
        candidates = (
            self.tolerances.get(key, Tolerance()),
            self.tolerances.get(kind, Tolerance()),
            Tolerance(self.rtol, self.atol),
        )
        return Tolerance(
            next((c.rtol for c in candidates if c.rtol is not None), None),
            next((c.atol for c in candidates if c.atol is not None), None),
        )

    def read_files(self) -> dict[str, Path]:
        """The files the run reads, by the key that names them (``inputs``, ``v``, ``function``
        for a ``.py`` file, ``function.weights``, ``function.exported``, ``expect``)."""
        files = {"inputs": self.inputs, "v": self.v, "expect": self.expect}
        if isinstance(self.function, ExportedFunction):
            files["function.exported"] = self.function.archive
        else:
            if self.function.ref.is_file:
                files["function"] = Path(self.function.ref.module)
            if isinstance(self.function, ModelFunction):
                files["function.weights"] = self.function.weights
        return {role: path for role, path in files.items() if path is not None}


def _reference_text(ref: Reference) -> str:
    return f"{ref.module}:{ref.name}"


@dataclass(frozen=True)
class Sweep:
    """The runs a config describes, validated, in a stable order.

    Attributes:
        runs: every run: each ``runs`` entry in order (or the top level alone), crossed with
            every combination of the swept values, the last swept key varying fastest.
        is_sweep: whether the config has ``sweep`` or ``runs``, rather than describing one run.
    """

    runs: tuple[RunSpec, ...]
    is_sweep: bool


@dataclass(frozen=True)
class Shard:
    """``--shard K/N``: the K-th of N slices of a sweep, which together hold every run once.

    Runs are dealt round-robin in the sweep's order: run ``i`` (from 0) belongs to shard
    ``i % N + 1``, so shards differ in size by at most one run, whatever the machine.

    Attributes:
        index: K, from 1 to ``count``.
        count: N.
    """

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """Read ``K/N``.

        Raises:
            ConfigError: ``text`` is not two whole numbers ``K/N`` with ``1 <= K <= N``.
        """
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if match is None or not 1 <= int(match[1]) <= int(match[2]):
            raise ConfigError(
                f"--shard {text}: expected K/N with 1 <= K <= N, e.g. --shard 2/4 for the second "
                "of four slices."
            )
        return cls(int(match[1]), int(match[2]))

    def select(self, runs: Sequence[_T]) -> tuple[_T, ...]:
        """This shard's runs, in their order."""
        return tuple(runs[self.index - 1 :: self.count])


# --------------------------------------------------------------------------------------------
# The keys a config may hold: one table drives both validation and the JSON Schema.


@dataclass(frozen=True)
class _Key:
    # "string" | "path" | "boolean" | "choice" | "names" | "device" | "function" | "number"
    # | "integer" | "tolerances"
    kind: str
    description: str
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    positive: bool = False  # a number that must be above 0, not just at least 0


_KEYS: dict[str, _Key] = {
    "name": _Key("string", "The run's label in summaries. Default: the config file's name."),
    "function": _Key(
        "function",
        "What to differentiate: FILE.py:NAME or package.module:NAME; "
        "{target, init, weights} to build an nn.Module; or {exported: ARCHIVE.pt2}.",
        required=True,
    ),
    "inputs": _Key(
        "path",
        "Safetensors file with the point at which to differentiate. Its tensors bind to the "
        "function's positional parameters by name.",
        required=True,
    ),
    "v": _Key(
        "path",
        "Safetensors file with the direction: the same tensor names, shapes and dtypes as "
        "inputs. Omit only for a single one-element input.",
    ),
    "output": _Key(
        "path", "Safetensors file to write func_output and jvp to (atomically).", required=True
    ),
    "order": _Key(
        "names",
        "The tensor names of inputs in the order the function takes them, when their names do "
        "not match its parameters.",
    ),
    "strict": _Key(
        "boolean",
        "Fail when an output does not depend on the inputs, or an input on no output.",
        default=False,
    ),
    "create_graph": _Key(
        "boolean", "Compute with an autograd graph (values are saved detached).", default=False
    ),
    "method": _Key(
        "choice",
        "auto: forward-mode AD with fallbacks; forward: forward mode only; "
        "double-backward: the reverse-of-reverse trick.",
        default="auto",
        choices=METHODS,
    ),
    "dtype": _Key("choice", "Cast inputs and v to this dtype before computing.", choices=DTYPES),
    "device": _Key(
        "device",
        "Where to compute: cpu, cuda, cuda:N, mps, or auto (cuda if available, else cpu).",
        default="cpu",
    ),
    "batched_v": _Key(
        "boolean",
        "Treat the first dimension of every v tensor as K directions: v has the shape "
        "(K, *input shape), the same K for every tensor, and jvp gets that leading dimension.",
        default=False,
    ),
    "expect": _Key(
        "path",
        "Safetensors file of reference results (a golden): func_output and jvp must match it "
        "within rtol/atol, or the run fails. --update-golden writes it instead. Like output, it "
        "may contain {name} and {KEY}.",
    ),
    "rtol": _Key(
        "number",
        "Relative tolerance of the golden comparison, for every tensor: |result - golden| <= "
        "atol + rtol * |golden|. Default: torch.testing.assert_close's for the tensor's dtype.",
    ),
    "atol": _Key("number", "Absolute tolerance of the golden comparison, for every tensor."),
    "tolerances": _Key(
        "tolerances",
        "rtol and atol per tensor name (jvp.1) or kind (jvp: every jvp tensor), over rtol and "
        "atol, e.g. {jvp: {rtol: 1.0e-4}, func_output.1: {atol: 1.0e-6}}.",
    ),
    "check": _Key(
        "choice",
        "finite-differences: check each JVP against central differences of the function "
        "along v, computed in float64; none: no check.",
        default="none",
        choices=CHECKS,
    ),
    "fd_step": _Key(
        "number",
        "The finite-difference step h: the function is evaluated at x + h*v and x - h*v. "
        "Default: cbrt(float64 eps) * max(1, max |x|) / max |v|.",
        positive=True,
    ),
    "fd_rtol": _Key(
        "number",
        "The finite-difference check's tolerance, relative to the largest |J*v| of each output. "
        "Default: the square root of the run dtype's eps (3.5e-4 for float32).",
        positive=True,
    ),
    "fail_on_nonfinite": _Key(
        "boolean",
        "Fail the run when func_output or jvp holds NaN or infinite values (otherwise they are "
        "flagged as warnings).",
        default=False,
    ),
    "seed": _Key(
        "integer",
        "Seed torch's random number generators (torch.manual_seed) before building the function "
        "and before each evaluation. Recorded in the output's metadata.",
    ),
    "deterministic": _Key(
        "boolean",
        "Compute with torch.use_deterministic_algorithms(True) (restored afterwards). Recorded in "
        "the output's metadata.",
        default=False,
    ),
}

_SWEEP_KEYS: dict[str, str] = {
    "sweep": "A mapping of run keys to lists of values: one run per combination (the cartesian "
    "product), each named after its values.",
    "runs": "A list of runs, each a mapping of keys that override the top level (and an optional "
    "name).",
}

_FUNCTION_KEYS: dict[str, str] = {
    "target": "FILE.py:NAME or package.module:NAME of an nn.Module class or factory.",
    "init": "Keyword arguments target is called with.",
    "weights": "Safetensors state dict, loaded strictly; the model is then put in eval mode "
    "with its weights frozen.",
    "exported": "A torch.export archive (.pt2): no Python source needed.",
}


# --------------------------------------------------------------------------------------------
# Reading a config


Override = tuple[str, Any, str]
"""``(dotted key, value, source)``: a value from the command line, and the option it came from
(shown in error messages), e.g. ``("method", "forward", "--method")``."""


@dataclass
class ConfigDocument:
    """A config's raw data, and where each key came from.

    Attributes:
        data: the mapping as YAML parsed it, with overrides applied.
        origin: how errors name the document (the config file, or "the command line").
        base_dir: the folder relative paths resolve against (the config's folder, or the cwd).
        config: the config file, if there is one.
        positions: where each key path was written ("FILE:LINE:COLUMN", or the option); list
            items are keyed by their index as a string, e.g. ``("runs", "0", "name")``.
        bases: key paths whose relative paths resolve against another folder than base_dir
            (values from the command line resolve against the cwd).
        parent: for one run of a sweep (see :meth:`derive`), the config's document, which knows
            where the keys it does not were written.
        sources: for one run of a sweep, where each of its top-level keys lies in ``parent``,
            e.g. ``{"v": ("sweep", "v", "1")}``; keys not listed lie at the same place.
    """

    data: dict[str, Any]
    origin: str
    base_dir: Path
    config: Path | None = None
    positions: dict[KeyPath, str] = field(default_factory=dict, repr=False)
    bases: dict[KeyPath, Path] = field(default_factory=dict, repr=False)
    parent: ConfigDocument | None = field(default=None, repr=False)
    sources: Mapping[str, KeyPath] = field(default_factory=dict, repr=False)

    def locate(self, path: KeyPath) -> str:
        """Where the key at ``path`` (or its closest written ancestor) was written."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.positions:
                return self.positions[path[:end]]
        if self.parent is not None:
            return self.parent.locate(self._in_parent(path))
        return self.origin

    def base_for(self, path: KeyPath) -> Path:
        """The folder a relative path found at ``path`` resolves against."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.bases:
                return self.bases[path[:end]]
        if self.parent is not None:
            return self.parent.base_for(self._in_parent(path))
        return self.base_dir

    def derive(
        self, data: dict[str, Any], sources: Mapping[str, KeyPath], run: str
    ) -> ConfigDocument:
        """A document for one run of this sweep document.

        Args:
            data: the run's keys, merged from the top level, its ``runs`` entry and the sweep.
            sources: where each key of ``data`` that is not at the top level lies in this
                document, so that errors point at the line that wrote it.
            run: the run's name (if it has one yet), for errors that have no line.
        """
        return ConfigDocument(
            data,
            f"{self.origin} (run {run!r})" if run else self.origin,
            self.base_dir,
            self.config,
            parent=self,
            sources=sources,
        )

    def _in_parent(self, path: KeyPath) -> KeyPath:
        source = self.sources.get(path[0]) if path else None
        return path if source is None else (*source, *path[1:])

    def override(self, key: str, value: Any, source: str) -> None:
        """Set the dotted ``key`` to ``value``, as the command line does; ``None`` removes it.

        Relative paths in ``value`` then resolve against the working directory, as paths typed
        in a shell do.

        Raises:
            ConfigError: ``key`` is malformed, or crosses a value that is not a mapping.
        """
        path = tuple(key.split("."))
        if not all(path):
            raise ConfigError(
                f"{source}: {key!r} is not a key; write e.g. method or function.init.width."
            )
        node = self.data
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                parent = ".".join(path[: depth + 1])
                raise ConfigError(
                    f"{source}: cannot set {key!r}: {parent!r} is {_describe(child)}, "
                    "not a mapping."
                )
            node = child
        if value is None:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
        for known in [p for p in self.positions if p[: len(path)] == path]:
            del self.positions[known]
        self.positions[path] = source
        self.bases[path] = Path.cwd()


def read_config(path: Path) -> ConfigDocument:
    """Read a YAML config file.

    Args:
        path: the config file.

    Returns:
        The document, remembering the line and column of each key.

    Raises:
        ConfigError: the file cannot be read, is not valid YAML (line and column given), is empty,
            is not a mapping, repeats a key, nests more than 64 deep, or holds more than 100,000
            values (YAML aliases expanded).
    """
    shown = display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {shown} does not exist.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {shown}: {error}.") from None
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is not None:
            _check_size(node, shown)
        data = None if node is None else loader.construct_document(node)
    except RecursionError:
        raise ConfigError(
            f"{shown}: invalid YAML: its lists and mappings nest too deeply (at most "
            f"{_MAX_DEPTH} levels)."
        ) from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = shown if mark is None else f"{shown}:{mark.line + 1}:{mark.column + 1}"
        problem = error.problem or error.context or "unreadable"
        context = f" ({error.context})" if error.context and error.problem else ""
        raise ConfigError(f"{where}: invalid YAML: {problem}{context}.") from None
    except yaml.reader.ReaderError as error:
        character = error.character if isinstance(error.character, int) else 0
        raise ConfigError(
            f"{shown}: invalid YAML: character U+{character:04X} (character {error.position + 1} "
            "of the file) may not appear in YAML."
        ) from None
    except (yaml.YAMLError, ValueError) as error:
        # ValueError: a value YAML reads but Python cannot hold, e.g. a 5000-digit integer.
        raise ConfigError(f"{shown}: invalid YAML: {error}.") from None
    finally:
        if loader is not None:
            loader.dispose()
    if data is None:
        raise ConfigError(
            f"config file {shown} is empty: it needs at least function, inputs and output."
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"{shown}: a config must be a mapping of keys to values, not {_describe(data)}."
        )
    document = ConfigDocument(data, shown, path.resolve().parent, config=path.resolve())
    _record_positions(node, (), shown, document.positions)
    return document


def _check_size(root: yaml.Node, shown: str) -> None:
    """Refuse a document nested more than ``_MAX_DEPTH`` deep, or holding more than
    ``_MAX_VALUES`` values once aliases are expanded: walking it would exhaust the stack, or take
    exponential time (a "billion laughs" of nested aliases). Walks without recursion."""
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > _MAX_VALUES:
            raise ConfigError(
                f"{shown}: the config is too large: it holds more than {_MAX_VALUES:,} values "
                "(YAML aliases expanded)."
            )
        if depth > _MAX_DEPTH:
            mark = node.start_mark
            raise ConfigError(
                f"{shown}:{mark.line + 1}:{mark.column + 1}: lists and mappings nest more than "
                f"{_MAX_DEPTH} levels deep."
            )
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, depth + 1) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend((part, depth + 1) for pair in node.value for part in pair)


def _record_positions(
    node: yaml.Node, path: KeyPath, shown: str, where: dict[KeyPath, str]
) -> None:
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            mark = item.start_mark
            where[(*path, str(index))] = f"{shown}:{mark.line + 1}:{mark.column + 1}"
            _record_positions(item, (*path, str(index)), shown, where)
    if not isinstance(node, yaml.MappingNode):
        return
    seen: set[str] = set()
    for key_node, value_node in node.value:
        key = str(key_node.value)
        mark = key_node.start_mark
        here = f"{shown}:{mark.line + 1}:{mark.column + 1}"
        if key in seen:
            dotted = ".".join((*path, key))
            raise ConfigError(f"{here}: key {dotted!r} is given twice; keep one.")
        seen.add(key)
        where[(*path, key)] = here
        _record_positions(value_node, (*path, key), shown, where)


def parse_assignment(text: str) -> tuple[str, Any]:
    """Split ``--set``'s ``KEY=VALUE`` and read VALUE as YAML (``true``, ``3``, ``[a, b]``, ...).

    Raises:
        ConfigError: there is no ``=``, the key is empty, or the value is not valid YAML.
    """
    key, equals, raw = text.partition("=")
    key = key.strip()
    if not equals or not key:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. --set method=forward.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {text}: the value is not valid YAML: {error}.") from None
    return key, value


_RESHAPING_KEYS = frozenset({"sweep", "runs", "name"})


def load_sweep(config: Path | None, overrides: Iterable[Override] = ()) -> Sweep:
    """Read ``config`` (or start from nothing), apply ``overrides``, expand and validate its runs.

    Overrides of ``sweep``, ``runs`` and ``name`` (and keys inside them) change the config before
    it is expanded; every other override applies to each run, over what its ``runs`` entry sets.

    Args:
        config: a YAML config file, or ``None`` for a config given wholly by ``overrides``.
        overrides: ``(dotted key, value, source)`` triples from the command line; relative paths
            in them resolve against the working directory.

    Returns:
        The runs, each validated.

    Raises:
        ConfigError: anything wrong with the config, an override, or the sweep as a whole.
    """
    if config is None:
        document = ConfigDocument({}, "the command line", Path.cwd().resolve())
    else:
        document = read_config(config)
    per_run: list[Override] = []
    for key, value, source in overrides:
        if key.split(".")[0] in _RESHAPING_KEYS:
            document.override(key, value, source)
        else:
            per_run.append((key, value, source))
    return build_sweep(document, per_run)


# --------------------------------------------------------------------------------------------
# Validation


def build_sweep(document: ConfigDocument, overrides: Sequence[Override] = ()) -> Sweep:
    """Expand a config document into its runs, and validate each of them and all together.

    A config without ``sweep`` or ``runs`` is one run. Otherwise each ``runs`` entry (or the top
    level alone) is crossed with every combination of the swept values. A run is named by its
    entry's ``name``, or else by the top-level ``name`` and the labels of its entry's values,
    followed by the labels of its swept values (see :func:`_label`), joined by ``-``. ``{name}``
    and ``{KEY}`` in ``output`` are then replaced by the run's name and the label of its value
    of KEY, and so are they in ``expect``; ``{{`` and ``}}`` stand for braces.

    Args:
        document: the config.
        overrides: command-line values set in every run, over what its ``runs`` entry sets.

    Returns:
        The runs, in order.

    Raises:
        ConfigError: whatever :func:`build_spec` raises for a run; ``sweep`` or ``runs``
            malformed; a key both swept and set elsewhere; an unknown ``{placeholder}`` in
            ``output`` or ``expect``; two runs with one name or one output; an output that
            another run reads (as inputs, v, function files or golden).
    """
    data = document.data
    _reject_unknown(data, (*_KEYS, *_SWEEP_KEYS), (), document)
    swept = _swept_values(document)
    entries = _run_entries(document, swept)
    for key, _, source in overrides:
        head = key.split(".")[0]
        if head in swept:
            raise ConfigError(
                f"{source}: {head!r} is swept ({document.locate(('sweep', head))}); change its "
                f"values with --set sweep.{head}=[...]."
            )
    is_sweep = any(data.get(key) is not None for key in _SWEEP_KEYS)
    top = {key: value for key, value in data.items() if key not in _SWEEP_KEYS}
    swept_labels = {key: _distinct_labels(key, values) for key, values in swept.items()}
    built: list[tuple[RunSpec, ConfigDocument, str]] = []
    for index, entry in entries:
        head = _entry_name(document, top, index, entry)
        where = document.locate(("sweep",) if index is None else ("runs", str(index)))
        for combination in itertools.product(*(range(len(v)) for v in swept.values())):
            chosen = dict(zip(swept, combination, strict=True))
            labels = {key: swept_labels[key][i] for key, i in chosen.items()}
            run_data = {**top, **entry, **{key: swept[key][i] for key, i in chosen.items()}}
            name = "-".join(part for part in (head, *labels.values()) if part)
            if not is_sweep:
                run_document = document
            else:
                if name:
                    run_data["name"] = name
                sources: dict[str, KeyPath] = {key: ("runs", str(index), key) for key in entry}
                sources.update({key: ("sweep", key, str(i)) for key, i in chosen.items()})
                if overrides:
                    run_data = copy.deepcopy(run_data)
                run_document = document.derive(run_data, sources, name)
            for key, value, source in overrides:
                run_document.override(key, value, source)
            _fill_templates(run_document, labels)
            built.append((build_spec(run_document), run_document, where))
    _reject_clashes(built)
    return Sweep(tuple(spec for spec, _, _ in built), is_sweep)


def _swept_values(document: ConfigDocument) -> dict[str, list[Any]]:
    value = document.data.get("sweep")
    if value is None:
        return {}
    where = document.locate(("sweep",))
    if not isinstance(value, dict) or not value:
        raise ConfigError(
            f"{where}: 'sweep' must be a mapping of keys to lists of values, e.g. "
            f"{{method: [forward, double-backward]}}; got {_describe(value)}."
        )
    if "name" in value:
        raise ConfigError(
            f"{document.locate(('sweep', 'name'))}: 'name' cannot be swept: runs are named after "
            "their swept values. To name runs yourself, list them under runs."
        )
    _reject_unknown(value, [key for key in _KEYS if key != "name"], ("sweep",), document)
    for key, values in value.items():
        here = document.locate(("sweep", key))
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"{here}: 'sweep.{key}' must be a non-empty list of values, e.g. [a, b]; got "
                f"{_describe(values)}."
            )
        seen: set[str] = set()
        for position, item in enumerate(values):
            canonical = _canonical(item)
            if canonical in seen:
                raise ConfigError(
                    f"{document.locate(('sweep', key, str(position)))}: 'sweep.{key}' lists "
                    f"{_describe(item)} twice."
                )
            seen.add(canonical)
        if document.data.get(key) is not None:
            raise ConfigError(
                f"{document.locate((key,))}: {key!r} is set here and swept at {here}; keep one."
            )
    return dict(value)


def _run_entries(
    document: ConfigDocument, swept: Mapping[str, Any]
) -> list[tuple[int | None, dict[str, Any]]]:
    value = document.data.get("runs")
    if value is None:
        return [(None, {})]
    if not isinstance(value, list) or not value:
        raise ConfigError(
            f"{document.locate(('runs',))}: 'runs' must be a non-empty list of mappings, e.g. "
            f"[{{name: a}}, {{name: b, v: b.safetensors}}]; got {_describe(value)}."
        )
    entries: list[tuple[int | None, dict[str, Any]]] = []
    for index, entry in enumerate(value):
        path = ("runs", str(index))
        if not isinstance(entry, dict):
            raise ConfigError(
                f"{document.locate(path)}: each entry of 'runs' must be a mapping of keys, e.g. "
                f"{{name: a, v: a.safetensors}}; entry {index} is {_describe(entry)}."
            )
        _reject_unknown(entry, _KEYS, path, document)
        for key in entry:
            if key in swept:
                raise ConfigError(
                    f"{document.locate((*path, key))}: {key!r} is swept "
                    f"({document.locate(('sweep', key))}); a runs entry cannot set it too."
                )
        entries.append((index, entry))
    return entries


def _entry_name(
    document: ConfigDocument, top: Mapping[str, Any], index: int | None, entry: Mapping[str, Any]
) -> str:
    """The first part of the names of an entry's runs: its name, or the top-level name and the
    labels of what the entry sets."""
    if "name" in entry:
        where = document.locate(("runs", str(index), "name"))
        return _expect_string("name", entry["name"], where)
    parts = [_label(key, value) for key, value in entry.items() if value is not None]
    if top.get("name") is not None:
        parts.insert(0, _expect_string("name", top["name"], document.locate(("name",))))
    return "-".join(parts)


def _label(key: str, value: Any) -> str:
    """A short, file-name-safe text for a value of a run key: what names and ``{key}`` use.

    A path's file stem (``data/v0.safetensors`` → ``v0``); a function's name; ``key`` or
    ``no-key`` for a boolean; list items joined by ``+``; any other value as written.
    """
    if isinstance(value, bool):
        text = key if value else f"no-{key}"
    elif key == "function":
        text = _function_label(value)
    elif _KEYS[key].kind == "path" and isinstance(value, str):
        text = PurePath(value).stem
    elif isinstance(value, list):
        text = "+".join(str(item) for item in value)
    else:
        text = str(value)
    return re.sub(r"[^\w.+=-]+", "_", text).strip("._") or key


def _function_label(value: Any) -> str:
    if isinstance(value, str):
        return value.rpartition(":")[2]
    if isinstance(value, dict) and isinstance(value.get("exported"), str):
        return PurePath(value["exported"]).stem
    if isinstance(value, dict) and isinstance(value.get("target"), str):
        return value["target"].rpartition(":")[2]
    return _canonical(value)


def _distinct_labels(key: str, values: Sequence[Any]) -> list[str]:
    """The labels of a swept key's values; labels two values share get a short digest of the
    value appended, so that they differ and stay the same when other values are added."""
    labels = [_label(key, value) for value in values]
    return [
        label
        if labels.count(label) == 1
        else f"{label}-{hashlib.sha256(_canonical(value).encode()).hexdigest()[:8]}"
        for label, value in zip(labels, values, strict=True)
    ]


_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_TEMPLATED_KEYS = ("output", "expect")
_PLACEHOLDER_KEYS = ("name", *(key for key in _KEYS if key not in _TEMPLATED_KEYS))


def _fill_templates(document: ConfigDocument, labels: Mapping[str, str]) -> None:
    """Replace ``{name}`` and ``{KEY}`` in the run's ``output`` and ``expect`` (``labels``: of
    swept keys)."""
    for templated in _TEMPLATED_KEYS:
        _fill_template(document, templated, labels)


def _fill_template(document: ConfigDocument, templated: str, labels: Mapping[str, str]) -> None:
    text = document.data.get(templated)
    if not isinstance(text, str) or ("{" not in text and "}" not in text):
        return
    where = document.locate((templated,))

    def fill(match: re.Match[str]) -> str:
        if match[1] is None:
            return match[0][0]
        key = match[1]
        if key not in _PLACEHOLDER_KEYS:
            raise ConfigError(
                f"{where}: {templated!r} uses {{{key}}}, which names no run key."
                + _did_you_mean(key, _PLACEHOLDER_KEYS)
                + " Write {name} or a key such as {method}; {{ and }} stand for braces."
            )
        if key in labels:
            return labels[key]
        value = document.data.get(key, _KEYS[key].default)
        if key == "name" and value is None and document.config is not None:
            return document.config.stem
        if value is None:
            raise ConfigError(
                f"{where}: {templated!r} uses {{{key}}}, but {document.origin} does not set "
                f"{key!r}."
            )
        return value if key == "name" and isinstance(value, str) else _label(key, value)

    document.data[templated] = _PLACEHOLDER.sub(fill, text)


def _reject_clashes(built: Sequence[tuple[RunSpec, ConfigDocument, str]]) -> None:
    """Two runs may not share a name or an output, nor write a file another run reads; a golden
    (which ``--update-golden`` writes) may not be a file a run reads otherwise (runs may share a
    golden)."""
    names: dict[str, str] = {}
    outputs: dict[Path, RunSpec] = {}
    reads = {path: (spec, role) for spec, _, _ in built for role, path in spec.read_files().items()}
    inputs = {
        path: (spec, role)
        for spec, _, _ in built
        for role, path in spec.read_files().items()
        if role != "expect"
    }
    for spec, document, where in built:
        if spec.name in names:
            raise ConfigError(
                f"{where}: two runs are named {spec.name!r} (see also {names[spec.name]}); run "
                "names must be unique: give runs entries distinct names."
            )
        names[spec.name] = where
        output = document.locate(("output",))
        if spec.output in outputs:
            other = outputs[spec.output]
            raise ConfigError(
                f"{output}: runs {other.name!r} and {spec.name!r} both write "
                f"{display_path(spec.output)}; put {{name}} in output, e.g. "
                "output: results/{name}.safetensors."
            )
        outputs[spec.output] = spec
        if spec.output in reads:
            reader, role = reads[spec.output]
            raise ConfigError(
                f"{output}: run {spec.name!r} writes {display_path(spec.output)}, which run "
                f"{reader.name!r} reads as {role!r}; writing it would destroy an input."
            )
        if spec.expect in inputs:
            reader, role = inputs[spec.expect]
            raise ConfigError(
                f"{document.locate(('expect',))}: run {spec.name!r} compares with the golden "
                f"{display_path(spec.expect)}, which run {reader.name!r} reads as {role!r}; "
                "--update-golden would destroy an input."
            )


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def build_spec(document: ConfigDocument) -> RunSpec:
    """Validate a config document (of one run) into a :class:`RunSpec`.

    Raises:
        ConfigError: an unknown key (with a "did you mean"), a missing required key, a value of the
            wrong type or outside its choices, or an output that would overwrite an input file.
    """
    data = document.data
    _reject_unknown(data, _KEYS, (), document)
    missing = [key for key, spec in _KEYS.items() if spec.required and data.get(key) is None]
    if missing:
        hint = (
            "" if document.config else " Give a CONFIG file, or --function, --inputs and --output."
        )
        raise ConfigError(
            f"{document.origin}: missing required key{'s' if len(missing) > 1 else ''} "
            + ", ".join(missing)
            + "."
            + hint
        )
    values = {key: _validate(key, data.get(key), document) for key in _KEYS}
    if values["name"] is None:
        values["name"] = (document.config or values["output"]).stem
    if values["tolerances"] is None:
        values["tolerances"] = {}
    # The keys are RunSpec's fields.
    spec = RunSpec(**values, config=document.config)
    _reject_overwriting_inputs(spec, document)
    return spec


def _validate(key: str, value: Any, document: ConfigDocument) -> Any:
    spec = _KEYS[key]
    if value is None:
        return spec.default
    where = document.locate((key,))
    if spec.kind == "function":
        return _validate_function(value, document)
    if spec.kind == "number":
        return _validate_number(key, value, where, positive=spec.positive)
    if spec.kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_SEED:
            raise ConfigError(
                f"{where}: {key!r} must be a whole number from 0 to 2**64 - 1, not "
                f"{_describe(value)}."
            )
        return value
    if spec.kind == "tolerances":
        return _validate_tolerances(value, document)
    if spec.kind == "boolean":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key!r} must be true or false, not {_describe(value)}.")
        return value
    if spec.kind == "names":
        if not isinstance(value, list) or not all(isinstance(n, str) and n for n in value):
            raise ConfigError(
                f"{where}: {key!r} must be a list of tensor names, e.g. [a, b]; "
                f"got {_describe(value)}."
            )
        duplicates = sorted({n for n in value if value.count(n) > 1})
        if duplicates:
            raise ConfigError(f"{where}: {key!r} names {', '.join(duplicates)} more than once.")
        return tuple(value)
    text = _expect_string(key, value, where)
    if spec.kind == "path":
        return _resolve_path(text, document.base_for((key,)))
    if spec.kind == "choice":
        if text not in spec.choices:
            raise ConfigError(
                f"{where}: {key!r} must be one of {', '.join(spec.choices)}; got {text!r}."
                + _did_you_mean(text, spec.choices)
            )
        return text
    if spec.kind == "device":
        if not _DEVICE.fullmatch(text):
            raise ConfigError(
                f"{where}: {key!r} must be cpu, cuda, cuda:N, mps or auto; got {text!r}."
            )
        return text
    return text


_NUMBER = re.compile(r"\+?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _validate_number(key: str, value: Any, where: str, *, positive: bool) -> float:
    """A finite number at least 0 (above 0 if ``positive``). Strings that read as numbers are
    numbers: YAML 1.1 reads ``1e-5`` (no dot) as a string."""
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value) if abs(value) < 1e308 else None
    elif isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        number = float(value)
    bound = "above 0" if positive else "at least 0"
    if number is None or not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ConfigError(
            f"{where}: {key!r} must be a number {bound}, e.g. 1.0e-5; got {_describe(value)}."
        )
    return number


def _validate_tolerances(value: Any, document: ConfigDocument) -> dict[str, Tolerance]:
    where = document.locate(("tolerances",))
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where}: 'tolerances' must be a mapping of tensor names to {{rtol, atol}}, e.g. "
            f"{{jvp: {{rtol: 1.0e-4}}}}; got {_describe(value)}."
        )
    tolerances: dict[str, Tolerance] = {}
    for name, bounds in value.items():
        path = ("tolerances", str(name))
        here = document.locate(path)
        if not isinstance(name, str) or not TOLERANCE_KEYS.fullmatch(name):
            raise ConfigError(
                f"{here}: 'tolerances' names {_describe(name)}, which is not a tensor of the "
                "output file: write func_output or jvp (every tensor of that kind), or one "
                "tensor such as jvp.1."
            )
        if not isinstance(bounds, dict) or not bounds:
            raise ConfigError(
                f"{here}: 'tolerances.{name}' must be a mapping with rtol and/or atol, e.g. "
                f"{{rtol: 1.0e-4}}; got {_describe(bounds)}."
            )
        _reject_unknown(bounds, ("rtol", "atol"), path, document)
        numbers = {
            bound: _validate_number(
                f"tolerances.{name}.{bound}",
                number,
                document.locate((*path, bound)),
                positive=False,
            )
            for bound, number in bounds.items()
        }
        tolerances[name] = Tolerance(numbers.get("rtol"), numbers.get("atol"))
    return tolerances


def _validate_function(value: Any, document: ConfigDocument) -> FunctionSpec:
    path: KeyPath = ("function",)
    if isinstance(value, str):
        return PlainFunction(_parse_reference(value, path, document))
    if not isinstance(value, dict):
        raise ConfigError(
            f"{document.locate(path)}: 'function' must be FILE.py:NAME, package.module:NAME or a "
            f"mapping with target or exported; got {_describe(value)}."
        )
    _reject_unknown(value, _FUNCTION_KEYS, path, document)
    exported = value.get("exported")
    target = value.get("target")
    if exported is not None:
        extra = [k for k in ("target", "init", "weights") if value.get(k) is not None]
        if extra:
            raise ConfigError(
                f"{document.locate(path)}: 'function.exported' cannot be combined with "
                f"{', '.join(extra)}: an exported archive holds its own code and weights."
            )
        where = document.locate((*path, "exported"))
        text = _expect_string("function.exported", exported, where)
        return ExportedFunction(_resolve_path(text, document.base_for((*path, "exported"))))
    if target is None:
        raise ConfigError(
            f"{document.locate(path)}: 'function' needs target (an nn.Module class or factory, "
            "FILE.py:NAME) or exported (a .pt2 archive)."
        )
    if not isinstance(target, str):
        where = document.locate((*path, "target"))
        raise ConfigError(
            f"{where}: 'function.target' must be FILE.py:NAME or package.module:NAME, "
            f"not {_describe(target)}."
        )
    ref = _parse_reference(target, (*path, "target"), document)
    init = value.get("init") or {}
    if not isinstance(init, dict) or not all(isinstance(k, str) for k in init):
        where = document.locate((*path, "init"))
        raise ConfigError(
            f"{where}: 'function.init' must be a mapping of keyword arguments, e.g. "
            f"{{width: 32}}; got {_describe(init)}."
        )
    weights = value.get("weights")
    if weights is not None:
        where = document.locate((*path, "weights"))
        text = _expect_string("function.weights", weights, where)
        weights = _resolve_path(text, document.base_for((*path, "weights")))
    return ModelFunction(ref, init, weights)


def _parse_reference(text: str, path: KeyPath, document: ConfigDocument) -> Reference:
    where = document.locate(path)
    key = ".".join(path)
    module, colon, name = text.rpartition(":")
    if not colon or not module or not _IDENTIFIERS.fullmatch(name):
        raise ConfigError(
            f"{where}: {key!r} must look like FILE.py:NAME or package.module:NAME "
            f"(e.g. models/fns.py:exp_reducer); got {text!r}."
        )
    base = document.base_for(path)
    if module.endswith(".py"):
        return Reference(str(_resolve_path(module, base)), name, base)
    if not _IDENTIFIERS.fullmatch(module):
        raise ConfigError(
            f"{where}: {key!r}: {module!r} is neither a .py file nor a dotted module name."
        )
    return Reference(module, name, base)


def _reject_overwriting_inputs(spec: RunSpec, document: ConfigDocument) -> None:
    for key, path in spec.read_files().items():
        if path == spec.output:
            raise ConfigError(
                f"{document.locate(('output',))}: 'output' is the same file as {key!r} "
                f"({display_path(path)}); writing it would destroy an input."
            )


def _reject_unknown(
    data: Mapping[str, Any], known: Iterable[str], path: KeyPath, document: ConfigDocument
) -> None:
    known = tuple(known)
    for key in data:
        if key not in known:
            dotted = ".".join((*path, str(key)))
            inside = f" in {'.'.join(path)!r}" if path else ""
            raise ConfigError(
                f"{document.locate((*path, str(key)))}: unknown key {dotted!r}{inside}."
                + _did_you_mean(str(key), known)
                + f" Known keys: {', '.join(known)}."
            )


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _expect_string(key: str, value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key!r} must be a non-empty string, not {_describe(value)}.")
    return value


def _resolve_path(text: str, base: Path) -> Path:
    path = Path(text).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def _describe(value: Any) -> str:
    kinds = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }
    shown = json.dumps(value, default=str)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{shown} ({kinds.get(type(value), type(value).__name__)})"


# --------------------------------------------------------------------------------------------
# JSON Schema


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 7) of a config file, for editors to complete and check configs.

    Returns:
        The schema as a JSON-ready dict.
    """
    reference = {
        "type": "string",
        "pattern": r"^.+:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$",
        "description": "FILE.py:NAME or package.module:NAME.",
    }
    function_schema = {
        "description": _KEYS["function"].description,
        "oneOf": [
            reference,
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["target"],
                "properties": {
                    "target": {**reference, "description": _FUNCTION_KEYS["target"]},
                    "init": {"type": "object", "description": _FUNCTION_KEYS["init"]},
                    "weights": {"type": "string", "description": _FUNCTION_KEYS["weights"]},
                },
            },
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["exported"],
                "properties": {
                    "exported": {"type": "string", "description": _FUNCTION_KEYS["exported"]}
                },
            },
        ],
    }
    number = {
        "anyOf": [
            {"type": "number", "minimum": 0},
            # YAML 1.1 (PyYAML) reads 1e-5, without a dot, as a string: it is accepted too.
            {"type": "string", "pattern": f"^\\s*{_NUMBER.pattern}\\s*$"},
        ]
    }
    tolerances_schema = {
        "type": "object",
        "propertyNames": {"pattern": f"^{TOLERANCE_KEYS.pattern}$"},
        "additionalProperties": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": {"rtol": number, "atol": number},
        },
    }
    properties: dict[str, Any] = {}
    for key, spec in _KEYS.items():
        if spec.kind == "function":
            properties[key] = function_schema
            continue
        schema: dict[str, Any] = {"description": spec.description}
        if spec.kind == "number":
            schema.update(number)
        elif spec.kind == "integer":
            schema.update(type="integer", minimum=0, maximum=_MAX_SEED)
        elif spec.kind == "tolerances":
            schema.update(tolerances_schema)
        elif spec.kind == "boolean":
            schema["type"] = "boolean"
        elif spec.kind == "names":
            schema.update(type="array", items={"type": "string", "minLength": 1}, uniqueItems=True)
        elif spec.kind == "choice":
            schema.update(type="string", enum=list(spec.choices))
        elif spec.kind == "device":
            schema.update(type="string", pattern=f"^({_DEVICE.pattern})$")
        else:
            schema.update(type="string", minLength=1)
        if spec.default is not None:
            schema["default"] = spec.default
        properties[key] = schema
    run_keys = dict(properties)
    properties["sweep"] = {
        "description": _SWEEP_KEYS["sweep"],
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {
            key: {"type": "array", "minItems": 1, "items": schema}
            for key, schema in run_keys.items()
            if key != "name"
        },
    }
    properties["runs"] = {
        "description": _SWEEP_KEYS["runs"],
        "type": "array",
        "minItems": 1,
        "items": {"type": "object", "additionalProperties": False, "properties": run_keys},
    }
    sweeps = {"anyOf": [{"required": [key]} for key in _SWEEP_KEYS]}
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "jvpcli config",
        "description": "One run of `jvpcli compute`, or a sweep of runs. Relative paths resolve "
        "against the config file's folder.",
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        # A sweep may give the required keys in its runs entries or swept values instead.
        "if": {"not": sweeps},
        "then": {"required": [key for key, spec in _KEYS.items() if spec.required]},
    }

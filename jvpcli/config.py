"""Configs: a YAML file, plus command-line overrides, validated into a :class:`RunSpec`.

The pipeline is ``read_config`` (YAML → :class:`ConfigDocument`, remembering where each key was
written) → :meth:`ConfigDocument.override` (``--set key=value`` and the dedicated options) →
:func:`build_spec` (validated, paths resolved → :class:`RunSpec`). Every problem raises
:class:`~jvpcli.errors.ConfigError` naming the file, line and column (or the option) at fault.

Validation is hand-written over one table of keys (:data:`_KEYS`), from which :func:`json_schema`
is also generated, so the schema editors see and the checks the command makes cannot drift apart.
This module does not import torch.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jvpcli.errors import ConfigError, display_path

__all__ = [
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
    "build_spec",
    "json_schema",
    "load_spec",
    "parse_assignment",
    "read_config",
]

METHODS: tuple[str, ...] = ("auto", "forward", "double-backward")
"""The values ``method`` accepts: :data:`jvpcli.engine.METHODS`, repeated here so that reading and
checking a config does not import torch (a test keeps the two equal)."""

DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64")
"""The values ``dtype`` accepts: the floating-point dtypes inputs and ``v`` can be cast to."""

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_IDENTIFIERS = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

KeyPath = tuple[str, ...]


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
        strict, create_graph, method: passed to the engine.
        dtype: a floating-point dtype name to cast inputs and ``v`` to, or ``None`` to keep theirs.
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``.
        config: the config file the run came from (``None`` for a config-free command line).
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
    config: Path | None = None

    def settings(self) -> dict[str, Any]:
        """Everything that determines the run's result, as JSON-ready values (paths absolute).

        Recorded in the output's metadata, so a result says exactly how it was produced.
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
        }


def _reference_text(ref: Reference) -> str:
    return f"{ref.module}:{ref.name}"


# --------------------------------------------------------------------------------------------
# The keys a config may hold: one table drives both validation and the JSON Schema.


@dataclass(frozen=True)
class _Key:
    kind: str  # "string" | "path" | "boolean" | "choice" | "names" | "device" | "function"
    description: str
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()


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
        positions: where each key path was written ("FILE:LINE:COLUMN", or the option).
        bases: key paths whose relative paths resolve against another folder than base_dir
            (values from the command line resolve against the cwd).
    """

    data: dict[str, Any]
    origin: str
    base_dir: Path
    config: Path | None = None
    positions: dict[KeyPath, str] = field(default_factory=dict, repr=False)
    bases: dict[KeyPath, Path] = field(default_factory=dict, repr=False)

    def locate(self, path: KeyPath) -> str:
        """Where the key at ``path`` (or its closest written ancestor) was written."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.positions:
                return self.positions[path[:end]]
        return self.origin

    def base_for(self, path: KeyPath) -> Path:
        """The folder a relative path found at ``path`` resolves against."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.bases:
                return self.bases[path[:end]]
        return self.base_dir

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
            is not a mapping, or repeats a key.
    """
    shown = display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {shown} does not exist.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {shown}: {error}.") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = shown if mark is None else f"{shown}:{mark.line + 1}:{mark.column + 1}"
        problem = error.problem or error.context or "unreadable"
        context = f" ({error.context})" if error.context and error.problem else ""
        raise ConfigError(f"{where}: invalid YAML: {problem}{context}.") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{shown}: invalid YAML: {error}.") from None
    finally:
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


def _record_positions(
    node: yaml.Node, path: KeyPath, shown: str, where: dict[KeyPath, str]
) -> None:
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


def load_spec(config: Path | None, overrides: Iterable[Override] = ()) -> RunSpec:
    """Read ``config`` (or start from nothing), apply ``overrides`` in order, and validate.

    Args:
        config: a YAML config file, or ``None`` for a config given wholly by ``overrides``.
        overrides: ``(dotted key, value, source)`` triples from the command line; relative paths
            in them resolve against the working directory.

    Returns:
        The validated run.

    Raises:
        ConfigError: anything wrong with the config or an override.
    """
    if config is None:
        document = ConfigDocument({}, "the command line", Path.cwd().resolve())
    else:
        document = read_config(config)
    for key, value, source in overrides:
        document.override(key, value, source)
    return build_spec(document)


# --------------------------------------------------------------------------------------------
# Validation


def build_spec(document: ConfigDocument) -> RunSpec:
    """Validate a config document into a :class:`RunSpec`.

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
    spec = RunSpec(
        name=values["name"],
        function=values["function"],
        inputs=values["inputs"],
        output=values["output"],
        v=values["v"],
        order=values["order"],
        strict=values["strict"],
        create_graph=values["create_graph"],
        method=values["method"],
        dtype=values["dtype"],
        device=values["device"],
        config=document.config,
    )
    _reject_overwriting_inputs(spec, document)
    return spec


def _validate(key: str, value: Any, document: ConfigDocument) -> Any:
    spec = _KEYS[key]
    if value is None:
        return spec.default
    where = document.locate((key,))
    if spec.kind == "function":
        return _validate_function(value, document)
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
    read = {"inputs": spec.inputs, "v": spec.v}
    if isinstance(spec.function, ModelFunction):
        read["function.weights"] = spec.function.weights
    if isinstance(spec.function, ExportedFunction):
        read["function.exported"] = spec.function.archive
    for key, path in read.items():
        if path is not None and path == spec.output:
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
    properties: dict[str, Any] = {}
    for key, spec in _KEYS.items():
        if spec.kind == "function":
            properties[key] = function_schema
            continue
        schema: dict[str, Any] = {"description": spec.description}
        if spec.kind == "boolean":
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
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "jvpcli config",
        "description": "One run of `jvpcli compute`. Relative paths resolve against the "
        "config file's folder.",
        "type": "object",
        "additionalProperties": False,
        "required": [key for key, spec in _KEYS.items() if spec.required],
        "properties": properties,
    }

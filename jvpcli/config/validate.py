"""Validation of one run's document into a :class:`~jvpcli.config.spec.RunSpec`, key by key as
:data:`~jvpcli.config.keys.KEYS` declares them; every problem is a
:class:`~jvpcli.errors.ConfigError` naming the file, line and column (or the option) at fault."""

from __future__ import annotations

import math
import re
from typing import Any

from jvpcli.config._messages import (
    describe,
    did_you_mean,
    expect_string,
    reject_unknown,
    resolve_path,
)
from jvpcli.config.document import ConfigDocument, KeyPath
from jvpcli.config.keys import (
    DEVICE,
    DIRECTION_KEYS,
    FUNCTION_KEYS,
    IDENTIFIERS,
    KEYS,
    MAX_SEED,
    RESOURCE_KEYS,
    TOLERANCE_KEYS,
)
from jvpcli.config.spec import (
    DISTRIBUTIONS,
    ExportedFunction,
    FunctionSpec,
    ModelFunction,
    PlainFunction,
    PretrainedFunction,
    RandomDirections,
    Reference,
    Resources,
    RunSpec,
    Tolerance,
)
from jvpcli.errors import ConfigError, display_path

__all__ = ["MEMORY", "NUMBER", "build_spec", "memory_bytes"]


def build_spec(document: ConfigDocument) -> RunSpec:
    """Validate a config document (of one run) into a :class:`RunSpec`.

    Raises:
        ConfigError: an unknown key (with a "did you mean"), a missing required key, a value of the
            wrong type or outside its choices, or an output that would overwrite an input file.
    """
    data = document.data
    reject_unknown(data, KEYS, (), document)
    missing = [key for key, spec in KEYS.items() if spec.required and data.get(key) is None]
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
    values = {key: _validate(key, data.get(key), document) for key in KEYS}
    if values["name"] is None:
        values["name"] = (document.config or values["output"]).stem
    if values["tolerances"] is None:
        values["tolerances"] = {}
    # The keys are RunSpec's fields.
    spec = RunSpec(**values, config=document.config, config_sha256=document.config_sha256)
    _reject_overwriting_inputs(spec, document)
    return spec


def _validate(key: str, value: Any, document: ConfigDocument) -> Any:
    spec = KEYS[key]
    if value is None:
        return spec.default
    where = document.locate((key,))
    if spec.kind == "function":
        return _validate_function(value, document)
    if spec.kind == "number":
        return _validate_number(key, value, where, positive=spec.positive)
    if spec.kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
            raise ConfigError(
                f"{where}: {key!r} must be a whole number from 0 to 2**64 - 1, not "
                f"{describe(value)}."
            )
        return value
    if spec.kind == "tolerances":
        return _validate_tolerances(value, document)
    if spec.kind == "resources":
        return _validate_resources(value, document)
    if spec.kind == "direction" and isinstance(value, dict):
        return _validate_random(key, value, document)
    if spec.kind == "boolean":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key!r} must be true or false, not {describe(value)}.")
        return value
    if spec.kind == "names":
        if not isinstance(value, list) or not all(isinstance(n, str) and n for n in value):
            raise ConfigError(
                f"{where}: {key!r} must be a list of tensor names, e.g. [a, b]; "
                f"got {describe(value)}."
            )
        duplicates = sorted({n for n in value if value.count(n) > 1})
        if duplicates:
            raise ConfigError(f"{where}: {key!r} names {', '.join(duplicates)} more than once.")
        if not value:
            raise ConfigError(
                f"{where}: {key!r} is empty; name at least one, e.g. [a], or leave the key out."
            )
        return tuple(value)
    text = expect_string(key, value, where)
    if spec.kind in ("path", "direction"):
        return resolve_path(text, document.base_for((key,)))
    if spec.kind == "choice":
        if text not in spec.choices:
            raise ConfigError(
                f"{where}: {key!r} must be one of {', '.join(spec.choices)}; got {text!r}."
                + did_you_mean(text, spec.choices)
            )
        return text
    if spec.kind == "device":
        if not DEVICE.fullmatch(text):
            raise ConfigError(
                f"{where}: {key!r} must be cpu, cuda, cuda:N, mps or auto; got {text!r}."
            )
        return text
    return text


NUMBER = re.compile(r"\+?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _validate_number(key: str, value: Any, where: str, *, positive: bool) -> float:
    """A finite number at least 0 (above 0 if ``positive``). Strings that read as numbers are
    numbers: YAML 1.1 reads ``1e-5`` (no dot) as a string."""
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value) if abs(value) < 1e308 else None
    elif isinstance(value, str) and NUMBER.fullmatch(value.strip()):
        number = float(value)
    bound = "above 0" if positive else "at least 0"
    if number is None or not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ConfigError(
            f"{where}: {key!r} must be a number {bound}, e.g. 1.0e-5; got {describe(value)}."
        )
    return number


def _validate_tolerances(value: Any, document: ConfigDocument) -> dict[str, Tolerance]:
    where = document.locate(("tolerances",))
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where}: 'tolerances' must be a mapping of tensor names to {{rtol, atol}}, e.g. "
            f"{{jvp: {{rtol: 1.0e-4}}}}; got {describe(value)}."
        )
    tolerances: dict[str, Tolerance] = {}
    for name, bounds in value.items():
        path = ("tolerances", str(name))
        here = document.locate(path)
        if not isinstance(name, str) or not TOLERANCE_KEYS.fullmatch(name):
            raise ConfigError(
                f"{here}: 'tolerances' names {describe(name)}, which is not a tensor of the "
                "output file: write func_output or jvp (every tensor of that kind), or one "
                "tensor such as jvp.1."
            )
        if not isinstance(bounds, dict) or not bounds:
            raise ConfigError(
                f"{here}: 'tolerances.{name}' must be a mapping with rtol and/or atol, e.g. "
                f"{{rtol: 1.0e-4}}; got {describe(bounds)}."
            )
        reject_unknown(bounds, ("rtol", "atol"), path, document)
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


MEMORY = re.compile(r"(\d+\.?\d*|\.\d+)\s*([kKmMgGtT][iI]?[bB]|[bB])?")
_MEMORY_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_MEMORY_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


def memory_bytes(value: Any) -> int | None:
    """A memory size in bytes: a whole number of bytes, or a string such as ``4GB`` (10**9),
    ``512MiB`` (2**20) or ``1.5 GiB``; ``None`` when ``value`` is neither, or below one byte."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 1 else None
    if not isinstance(value, str):
        return None
    match = MEMORY.fullmatch(value.strip())
    if match is None:
        return None
    size = int(float(match[1]) * _MEMORY_UNITS[(match[2] or "b").lower()])
    return size if size >= 1 else None


def _validate_resources(value: Any, document: ConfigDocument) -> Resources:
    where = document.locate(("resources",))
    if not isinstance(value, dict) or not value:
        raise ConfigError(
            f"{where}: 'resources' must be a mapping such as {{num_cpus: 1, num_gpus: 0.5, "
            f"memory: 4GB}}; got {describe(value)}."
        )
    reject_unknown(value, RESOURCE_KEYS, ("resources",), document)
    counts: dict[str, float] = {}
    for key in ("num_cpus", "num_gpus"):
        if key not in value:
            continue
        count = value[key]
        here = document.locate(("resources", key))
        if (
            isinstance(count, bool)
            or not isinstance(count, (int, float))
            or not (math.isfinite(count) and count >= 0)
        ):
            raise ConfigError(
                f"{here}: 'resources.{key}' must be a number at least 0, e.g. 1 or 0.5; got "
                f"{describe(count)}."
            )
        if count > 1 and count != int(count):
            # Ray's rule: a fraction shares one unit; more than one must be whole units.
            raise ConfigError(
                f"{here}: 'resources.{key}' is {count}: Ray takes a fraction of one (0.5) or a "
                f"whole number ({math.ceil(count)}), not a fraction above one."
            )
        counts[key] = float(count)
    memory = None
    if "memory" in value:
        memory = memory_bytes(value["memory"])
        if memory is None:
            raise ConfigError(
                f"{document.locate(('resources', 'memory'))}: 'resources.memory' must be a number "
                f"of bytes or a size such as 512MiB or 4GB; got {describe(value['memory'])}."
            )
    return Resources(counts.get("num_cpus"), counts.get("num_gpus"), memory)


def _validate_random(key: str, value: Any, document: ConfigDocument) -> RandomDirections:
    where = document.locate((key,))
    example = "{random: normal, seed: 0}"
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where}: {key!r} must be a safetensors file or random directions, e.g. "
            f"{example}; got {describe(value)}."
        )
    reject_unknown(value, DIRECTION_KEYS, (key,), document)
    missing = [part for part in ("random", "seed") if value.get(part) is None]
    if missing:
        raise ConfigError(
            f"{where}: random directions in {key!r} need {' and '.join(missing)}, e.g. {example}."
        )
    distribution = value["random"]
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(
            f"{document.locate((key, 'random'))}: '{key}.random' must be one of "
            f"{', '.join(DISTRIBUTIONS)}; got {describe(distribution)}."
            + (did_you_mean(distribution, DISTRIBUTIONS) if isinstance(distribution, str) else "")
        )
    seed = value["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(
            f"{document.locate((key, 'seed'))}: '{key}.seed' must be a whole number from 0 to "
            f"2**64 - 1, not {describe(seed)}."
        )
    match = value.get("match")
    if isinstance(match, str):
        match = [match]
    if match is not None and (
        not isinstance(match, list) or not match or not all(isinstance(m, str) and m for m in match)
    ):
        raise ConfigError(
            f"{document.locate((key, 'match'))}: '{key}.match' must be a glob pattern or a list "
            f"of them, e.g. ['*.weight']; got {describe(value.get('match'))}."
        )
    k = value.get("k")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1 << 20):
        raise ConfigError(
            f"{document.locate((key, 'k'))}: '{key}.k' must be a whole number of directions from "
            f"1 to {1 << 20}, not {describe(k)}."
        )
    batched = document.data.get("batched_v") is True
    if k is not None and not batched:
        raise ConfigError(
            f"{document.locate((key, 'k'))}: '{key}.k' draws K directions, which needs "
            "batched_v: true."
        )
    if k is None and batched:
        raise ConfigError(
            f"{where}: with batched_v, random directions in {key!r} need k, the number of "
            f"directions, e.g. {{random: normal, seed: 0, k: 32}}."
        )
    return RandomDirections(distribution, seed, None if match is None else tuple(match), k)


def _validate_function(value: Any, document: ConfigDocument) -> FunctionSpec:
    path: KeyPath = ("function",)
    if isinstance(value, str):
        return PlainFunction(_parse_reference(value, path, document))
    if not isinstance(value, dict):
        raise ConfigError(
            f"{document.locate(path)}: 'function' must be FILE.py:NAME, package.module:NAME or a "
            f"mapping with target, exported or pretrained; got {describe(value)}."
        )
    reject_unknown(value, FUNCTION_KEYS, path, document)
    exported = value.get("exported")
    target = value.get("target")
    if value.get("pretrained") is not None:
        return _validate_pretrained(value, document)
    extra = [k for k in ("class",) if value.get(k) is not None]
    if extra:
        raise ConfigError(
            f"{document.locate((*path, 'class'))}: 'function.class' names the class that loads a "
            "pretrained folder; it needs function.pretrained. To build a model from a class, "
            "write function.target."
        )
    if exported is not None:
        _refuse_combined(
            value,
            "exported",
            ("target", "init", "weights", "weights_prefix"),
            "an exported archive holds its own code and weights",
            document,
        )
        where = document.locate((*path, "exported"))
        text = expect_string("function.exported", exported, where)
        return ExportedFunction(resolve_path(text, document.base_for((*path, "exported"))))
    if target is None:
        raise ConfigError(
            f"{document.locate(path)}: 'function' needs target (an nn.Module class or factory, "
            "FILE.py:NAME), exported (a .pt2 archive) or pretrained (a model folder)."
        )
    if not isinstance(target, str):
        where = document.locate((*path, "target"))
        raise ConfigError(
            f"{where}: 'function.target' must be FILE.py:NAME or package.module:NAME, "
            f"not {describe(target)}."
        )
    ref = _parse_reference(target, (*path, "target"), document)
    init = _validate_init(value, document)
    weights = value.get("weights")
    if weights is not None:
        where = document.locate((*path, "weights"))
        text = expect_string("function.weights", weights, where)
        weights = resolve_path(text, document.base_for((*path, "weights")))
    prefix = value.get("weights_prefix")
    if prefix is not None:
        where = document.locate((*path, "weights_prefix"))
        prefix = expect_string("function.weights_prefix", prefix, where)
        if weights is None:
            raise ConfigError(f"{where}: 'function.weights_prefix' needs function.weights.")
    return ModelFunction(ref, init, weights, prefix)


def _refuse_combined(
    value: dict[str, Any], form: str, others: tuple[str, ...], why: str, document: ConfigDocument
) -> None:
    extra = [key for key in others if value.get(key) is not None]
    if extra:
        raise ConfigError(
            f"{document.locate(('function',))}: 'function.{form}' cannot be combined with "
            f"{', '.join(extra)}: {why}."
        )


def _validate_pretrained(value: dict[str, Any], document: ConfigDocument) -> PretrainedFunction:
    path: KeyPath = ("function",)
    _refuse_combined(
        value,
        "pretrained",
        ("target", "weights", "weights_prefix", "exported"),
        "a pretrained folder holds its own configuration and weights",
        document,
    )
    where = document.locate((*path, "pretrained"))
    text = expect_string("function.pretrained", value["pretrained"], where)
    folder = resolve_path(text, document.base_for((*path, "pretrained")))
    cls = value.get("class")
    ref = None
    if cls is not None:
        cls = expect_string("function.class", cls, document.locate((*path, "class")))
        ref = _parse_reference(cls, (*path, "class"), document)
    return PretrainedFunction(folder, ref, _validate_init(value, document))


def _validate_init(value: dict[str, Any], document: ConfigDocument) -> dict[str, Any]:
    init = value.get("init") or {}
    if not isinstance(init, dict) or not all(isinstance(k, str) for k in init):
        where = document.locate(("function", "init"))
        raise ConfigError(
            f"{where}: 'function.init' must be a mapping of keyword arguments, e.g. "
            f"{{width: 32}}; got {describe(init)}."
        )
    return init


def _parse_reference(text: str, path: KeyPath, document: ConfigDocument) -> Reference:
    where = document.locate(path)
    key = ".".join(path)
    module, colon, name = text.rpartition(":")
    if not colon or not module or not IDENTIFIERS.fullmatch(name):
        raise ConfigError(
            f"{where}: {key!r} must look like FILE.py:NAME or package.module:NAME "
            f"(e.g. models/fns.py:exp_reducer); got {text!r}."
        )
    base = document.base_for(path)
    if module.endswith(".py"):
        return Reference(str(resolve_path(module, base)), name, base)
    if not IDENTIFIERS.fullmatch(module):
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

"""The JSON Schema of config files, generated from :data:`~jvpcli.config.keys.KEYS`."""

from __future__ import annotations

from typing import Any

from jvpcli.config.keys import (
    DEVICE,
    DIRECTION_KEYS,
    FUNCTION_KEYS,
    KEYS,
    MAX_SEED,
    RESOURCE_KEYS,
    SWEEP_KEYS,
    TOLERANCE_KEYS,
)
from jvpcli.config.spec import DISTRIBUTIONS
from jvpcli.config.validate import MEMORY, NUMBER

__all__ = ["json_schema"]


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
        "description": KEYS["function"].description,
        "oneOf": [
            reference,
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["target"],
                "properties": {
                    "target": {**reference, "description": FUNCTION_KEYS["target"]},
                    "init": {"type": "object", "description": FUNCTION_KEYS["init"]},
                    "weights": {"type": "string", "description": FUNCTION_KEYS["weights"]},
                    "weights_prefix": {
                        "type": "string",
                        "description": FUNCTION_KEYS["weights_prefix"],
                    },
                },
            },
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["exported"],
                "properties": {
                    "exported": {"type": "string", "description": FUNCTION_KEYS["exported"]}
                },
            },
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["pretrained"],
                "properties": {
                    "pretrained": {"type": "string", "description": FUNCTION_KEYS["pretrained"]},
                    "class": {**reference, "description": FUNCTION_KEYS["class"]},
                    "init": {"type": "object", "description": FUNCTION_KEYS["init"]},
                },
            },
        ],
    }
    direction_schema = {
        "anyOf": [
            {"type": "string", "minLength": 1},
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["random", "seed"],
                "properties": {
                    "random": {
                        "enum": list(DISTRIBUTIONS),
                        "description": DIRECTION_KEYS["random"],
                    },
                    "seed": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": MAX_SEED,
                        "description": DIRECTION_KEYS["seed"],
                    },
                    "match": {
                        "anyOf": [
                            {"type": "string", "minLength": 1},
                            {"type": "array", "minItems": 1, "items": {"type": "string"}},
                        ],
                        "description": DIRECTION_KEYS["match"],
                    },
                    "k": {"type": "integer", "minimum": 1, "description": DIRECTION_KEYS["k"]},
                },
            },
        ]
    }
    number = {
        "anyOf": [
            {"type": "number", "minimum": 0},
            # YAML 1.1 (PyYAML) reads 1e-5, without a dot, as a string: it is accepted too.
            {"type": "string", "pattern": f"^\\s*{NUMBER.pattern}\\s*$"},
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
    count = {"type": "number", "minimum": 0}
    resources_schema = {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {
            "num_cpus": {"description": RESOURCE_KEYS["num_cpus"], **count},
            "num_gpus": {"description": RESOURCE_KEYS["num_gpus"], **count},
            "memory": {
                "description": RESOURCE_KEYS["memory"],
                "anyOf": [
                    {"type": "integer", "minimum": 1},
                    {"type": "string", "pattern": f"^\\s*{MEMORY.pattern}\\s*$"},
                ],
            },
        },
    }
    properties: dict[str, Any] = {}
    for key, spec in KEYS.items():
        if spec.kind == "function":
            properties[key] = function_schema
            continue
        schema: dict[str, Any] = {"description": spec.description}
        if spec.kind == "number":
            schema.update(number)
        elif spec.kind == "integer":
            schema.update(type="integer", minimum=0, maximum=MAX_SEED)
        elif spec.kind == "tolerances":
            schema.update(tolerances_schema)
        elif spec.kind == "resources":
            schema.update(resources_schema)
        elif spec.kind == "direction":
            schema.update(direction_schema)
        elif spec.kind == "boolean":
            schema["type"] = "boolean"
        elif spec.kind == "names":
            schema.update(type="array", items={"type": "string", "minLength": 1}, uniqueItems=True)
        elif spec.kind == "choice":
            schema.update(type="string", enum=list(spec.choices))
        elif spec.kind == "device":
            schema.update(type="string", pattern=f"^({DEVICE.pattern})$")
        else:
            schema.update(type="string", minLength=1)
        if spec.default is not None:
            schema["default"] = spec.default
        properties[key] = schema
    run_keys = dict(properties)
    properties["sweep"] = {
        "description": SWEEP_KEYS["sweep"],
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {
            key: {"type": "array", "minItems": 1, "items": schema}
            for key, schema in run_keys.items()
            if KEYS[key].sweepable
        },
    }
    properties["runs"] = {
        "description": SWEEP_KEYS["runs"],
        "type": "array",
        "minItems": 1,
        "items": {"type": "object", "additionalProperties": False, "properties": run_keys},
    }
    sweeps = {"anyOf": [{"required": [key]} for key in SWEEP_KEYS]}
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
        "then": {"required": [key for key, spec in KEYS.items() if spec.required]},
    }

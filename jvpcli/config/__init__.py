"""Configs: a YAML file, plus command-line overrides, validated into :class:`RunSpec` s.

The pipeline is :func:`read_config` (YAML → :class:`ConfigDocument`, remembering where each key
was written) → :func:`build_sweep` (``sweep:`` and ``runs:`` expanded into one document per run,
each given its name, the command-line overrides and its ``output`` template filled in) →
:func:`build_spec` (one run validated, paths resolved → :class:`RunSpec`). The whole sweep is
validated before anything runs: every problem raises :class:`~jvpcli.errors.ConfigError` naming
the file, line and column (or the option) at fault.

One module a concept (see ``README.md`` beside this file): ``spec`` (the value types), ``keys``
(the declarative table of keys), ``document`` (reading YAML and ``--set``), ``sweep`` (expansion),
``validate`` (one run) and ``schema`` (the JSON Schema, generated from the table). This package
does not import torch.
"""

from __future__ import annotations

from jvpcli.config.document import ConfigDocument, Override, parse_assignment, read_config
from jvpcli.config.keys import CHECKS, DTYPES, METHODS, TOLERANCE_KEYS
from jvpcli.config.schema import json_schema
from jvpcli.config.spec import (
    DISTRIBUTIONS,
    Direction,
    ExportedFunction,
    FunctionSpec,
    ModelFunction,
    PlainFunction,
    PretrainedFunction,
    RandomDirections,
    Reference,
    Resources,
    RunSpec,
    Shard,
    Sweep,
    Tolerance,
)
from jvpcli.config.sweep import build_sweep, load_sweep
from jvpcli.config.validate import build_spec

__all__ = [
    "CHECKS",
    "DISTRIBUTIONS",
    "DTYPES",
    "METHODS",
    "TOLERANCE_KEYS",
    "ConfigDocument",
    "Direction",
    "ExportedFunction",
    "FunctionSpec",
    "ModelFunction",
    "Override",
    "PlainFunction",
    "PretrainedFunction",
    "RandomDirections",
    "Reference",
    "Resources",
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

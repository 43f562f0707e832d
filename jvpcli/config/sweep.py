"""Sweeps: a config's ``sweep`` and ``runs`` expanded into one document per run, each named, its
command-line overrides applied and its ``output`` / ``expect`` templates filled, then validated one
by one and all together (unique names and outputs, no run writing what another reads)."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

from jvpcli.config._messages import describe, did_you_mean, expect_string, reject_unknown
from jvpcli.config.document import ConfigDocument, KeyPath, Override, read_config
from jvpcli.config.keys import KEYS, SWEEP_KEYS
from jvpcli.config.spec import RunSpec, Sweep
from jvpcli.config.validate import build_spec
from jvpcli.errors import ConfigError, display_path

__all__ = ["MAX_RUNS", "build_sweep", "load_sweep"]

MAX_RUNS = 10_000
"""The most runs a config may describe: each is validated before the first computes."""


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
    reject_unknown(data, (*KEYS, *SWEEP_KEYS), (), document)
    swept = _swept_values(document)
    entries = _run_entries(document, swept)
    for key, _, source in overrides:
        head = key.split(".")[0]
        if head in swept:
            raise ConfigError(
                f"{source}: {head!r} is swept ({document.locate(('sweep', head))}); change its "
                f"values with --set sweep.{head}=[...]."
            )
    count = len(entries) * math.prod(len(values) for values in swept.values())
    if count > MAX_RUNS:
        raise ConfigError(
            f"{document.locate(('sweep',) if swept else ('runs',))}: the sweep has {count:,} runs; "
            f"a config may describe at most {MAX_RUNS:,}. Split it into several configs."
        )
    is_sweep = any(data.get(key) is not None for key in SWEEP_KEYS)
    top = {key: value for key, value in data.items() if key not in SWEEP_KEYS}
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
            f"{{method: [forward, double-backward]}}; got {describe(value)}."
        )
    if "name" in value:
        raise ConfigError(
            f"{document.locate(('sweep', 'name'))}: 'name' cannot be swept: runs are named after "
            "their swept values. To name runs yourself, list them under runs."
        )
    reject_unknown(
        value, [key for key, spec in KEYS.items() if spec.sweepable], ("sweep",), document
    )
    for key, values in value.items():
        here = document.locate(("sweep", key))
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"{here}: 'sweep.{key}' must be a non-empty list of values, e.g. [a, b]; got "
                f"{describe(values)}."
            )
        seen: set[str] = set()
        for position, item in enumerate(values):
            canonical = _canonical(item)
            if canonical in seen:
                raise ConfigError(
                    f"{document.locate(('sweep', key, str(position)))}: 'sweep.{key}' lists "
                    f"{describe(item)} twice."
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
            f"[{{name: a}}, {{name: b, v: b.safetensors}}]; got {describe(value)}."
        )
    entries: list[tuple[int | None, dict[str, Any]]] = []
    for index, entry in enumerate(value):
        path = ("runs", str(index))
        if not isinstance(entry, dict):
            raise ConfigError(
                f"{document.locate(path)}: each entry of 'runs' must be a mapping of keys, e.g. "
                f"{{name: a, v: a.safetensors}}; entry {index} is {describe(entry)}."
            )
        reject_unknown(entry, KEYS, path, document)
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
        return expect_string("name", entry["name"], where)
    parts = [_label(key, value) for key, value in entry.items() if value is not None]
    if top.get("name") is not None:
        parts.insert(0, expect_string("name", top["name"], document.locate(("name",))))
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
    elif KEYS[key].kind in ("path", "direction") and isinstance(value, str):
        text = PurePath(value).stem
    elif KEYS[key].kind == "direction" and isinstance(value, dict):
        text = "-".join(str(value[part]) for part in ("random", "seed", "k") if part in value)
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
_PLACEHOLDER_KEYS = ("name", *(key for key in KEYS if key not in _TEMPLATED_KEYS))


def _fill_templates(document: ConfigDocument, labels: Mapping[str, str]) -> None:
    """Replace ``{name}`` and ``{KEY}`` in the run's ``output`` and ``expect`` (``labels``: of
    swept keys)."""
    for templated in _TEMPLATED_KEYS:
        _fill_template(document, templated, labels)


def _fill_template(document: ConfigDocument, templated: str, labels: Mapping[str, str]) -> None:
    text = document.data.get(templated)
    if isinstance(text, str) and text.endswith(("/", os.sep)):
        # A folder (``-o results/``): the run's file goes in it.
        text = f"{text}{{name}}.safetensors"
    if not isinstance(text, str) or ("{" not in text and "}" not in text):
        return
    where = document.locate((templated,))
    stray = _PLACEHOLDER.sub("", text)
    if "{" in stray or "}" in stray:
        raise ConfigError(
            f"{where}: {templated!r} has an unbalanced brace: {text!r}. Placeholders are written "
            "{name} or {KEY}; {{ and }} stand for literal braces."
        )

    def fill(match: re.Match[str]) -> str:
        if match[1] is None:
            return match[0][0]
        key = match[1]
        if key not in _PLACEHOLDER_KEYS:
            raise ConfigError(
                f"{where}: {templated!r} uses {{{key}}}, which names no run key."
                + did_you_mean(key, _PLACEHOLDER_KEYS)
                + " Write {name} or a key such as {method}; {{ and }} stand for braces."
            )
        if key in labels:
            return labels[key]
        value = document.data.get(key, KEYS[key].default)
        if key == "name" and value is None:
            return _default_name(document)
        if value is None:
            raise ConfigError(
                f"{where}: {templated!r} uses {{{key}}}, but {document.origin} does not set "
                f"{key!r}."
            )
        if key == "name" and isinstance(value, str):
            return _file_name(value, where, templated)
        return _label(key, value)

    document.data[templated] = _PLACEHOLDER.sub(fill, text)


def _default_name(document: ConfigDocument) -> str:
    """A run's name when nothing sets it: the config file's name, else the function's."""
    if document.config is not None:
        return document.config.stem
    return _label("function", document.data.get("function"))


def _file_name(name: str, where: str, templated: str) -> str:
    """A run's name as it goes into a path: one file name, never a way out of its folder."""
    if name in (".", "..") or any(c in name for c in ("/", "\\", "\0")) or not name.strip():
        raise ConfigError(
            f"{where}: {templated!r} uses {{name}}, and the run's name {name!r} cannot be part of "
            "a file name (it holds a path separator, or is '.' or '..'): name runs with letters, "
            "digits and - _ . + = only."
        )
    return name


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

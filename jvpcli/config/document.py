"""Reading a config: YAML (with the line and column of every key, and limits on size and depth)
into a :class:`ConfigDocument`, and command-line overrides (``--set KEY=VALUE``) applied to it."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from jvpcli.config._messages import describe
from jvpcli.errors import ConfigError, display_path

__all__ = [
    "MAX_CONFIG_BYTES",
    "ConfigDocument",
    "KeyPath",
    "Override",
    "parse_assignment",
    "read_config",
]

KeyPath = tuple[str, ...]
_V = TypeVar("_V")

_MAX_DEPTH = 64  # how deeply a config's mappings and lists may nest
_MAX_VALUES = 100_000  # how many values a config may hold, aliases expanded
MAX_CONFIG_BYTES = 16 << 20
"""The largest config file read: far above any real config, far below what would hurt."""


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
        config_sha256: the sha256 of the bytes read from it (a pipe cannot be read twice).
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
    config_sha256: str | None = None
    positions: dict[KeyPath, str] = field(default_factory=dict, repr=False)
    bases: dict[KeyPath, Path] = field(default_factory=dict, repr=False)
    parent: ConfigDocument | None = field(default=None, repr=False)
    sources: Mapping[str, KeyPath] = field(default_factory=dict, repr=False)

    def locate(self, path: KeyPath) -> str:
        """Where the key at ``path`` (or its closest written ancestor) was written."""
        found = _closest(self.positions, path)
        if found is None and self.parent is not None:
            return self.parent.locate(self._in_parent(path))
        return self.origin if found is None else found

    def base_for(self, path: KeyPath) -> Path:
        """The folder a relative path found at ``path`` resolves against."""
        found = _closest(self.bases, path)
        if found is None and self.parent is not None:
            return self.parent.base_for(self._in_parent(path))
        return self.base_dir if found is None else found

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
            self.config_sha256,
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
                # The option made this mapping: errors about it (a misspelled key) blame it.
                self.positions[path[: depth + 1]] = source
            elif not isinstance(child, dict):
                parent = ".".join(path[: depth + 1])
                raise ConfigError(
                    f"{source}: cannot set {key!r}: {parent!r} is {describe(child)}, not a mapping."
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


def _closest(table: Mapping[KeyPath, _V], path: KeyPath) -> _V | None:
    """The entry of ``table`` at ``path`` or at its closest ancestor listed, if any."""
    for end in range(len(path), 0, -1):
        if path[:end] in table:
            return table[path[:end]]
    return None


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
    raw, regular = _read_bounded(path, shown)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"cannot read config file {shown}: it is not UTF-8 text (byte {error.start + 1})."
        ) from None
    data, node = _parse(text, shown)
    if data is None:
        raise ConfigError(
            f"config file {shown} is empty: it needs at least function, inputs and output."
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"{shown}: a config must be a mapping of keys to values, not {describe(data)}."
        )
    # A config read from a pipe (/dev/stdin) has no folder: its paths resolve against the cwd.
    base = path.resolve().parent if regular else Path.cwd().resolve()
    document = ConfigDocument(
        data,
        shown,
        base,
        config=path.resolve() if regular else path.absolute(),
        config_sha256=hashlib.sha256(raw).hexdigest(),
    )
    _record_positions(node, (), shown, document.positions)
    return document


def _parse(text: str, shown: str) -> tuple[Any, yaml.Node | None]:
    """YAML ``text`` as Python values, and its node graph (for positions), within the limits.

    Raises:
        ConfigError: invalid YAML (line and column given), too deep or too large.
    """
    loader: yaml.SafeLoader | None = None
    try:
        _check_events(text, shown)
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is not None:
            _check_size(node, shown)
        return (None if node is None else loader.construct_document(node)), node
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


def _read_bounded(path: Path, shown: str) -> tuple[bytes, bool]:
    """The bytes of a config file, and whether it is a regular file, read once.

    A FIFO without a writer does not block the open (nor the read: it reads as empty), a device
    that never ends (``/dev/zero``) is read no further than the limit, and a pipe
    (``/dev/stdin``) is read once, its bytes kept: nothing re-opens the path.

    Raises:
        ConfigError: the path is missing, a folder, unreadable or larger than the limit.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ConfigError(f"config file {shown} does not exist.") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {shown}: {error.strerror or error}.") from None
    try:
        mode = os.fstat(descriptor).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(f"config file {shown} is a folder; name a YAML file.")
        if hasattr(os, "set_blocking"):
            os.set_blocking(descriptor, True)  # a pipe's writer may not have written yet
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(descriptor, min(1 << 20, MAX_CONFIG_BYTES + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as error:
        raise ConfigError(f"cannot read config file {shown}: {error.strerror or error}.") from None
    finally:
        os.close(descriptor)
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {shown} is too large: a config holds at most "
            f"{MAX_CONFIG_BYTES // (1 << 20)} MiB."
        )
    return b"".join(chunks), stat.S_ISREG(mode)


def _check_events(text: str, shown: str) -> None:
    """Refuse a document holding more than ``_MAX_VALUES`` values or nesting more than
    ``_MAX_DEPTH`` deep, from its parse events alone (with libyaml's parser when PyYAML has it:
    a config of millions of values is refused in a fraction of a second, before PyYAML's
    pure-Python composer would spend minutes and gigabytes on it). A syntax error ends the check:
    the loader then reports it with its line and column."""
    parser = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    nodes = depth = 0
    try:
        while parser.check_event():
            event = parser.get_event()
            if isinstance(event, yaml.NodeEvent):
                nodes += 1
                if nodes > _MAX_VALUES:
                    raise _too_large(shown)
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > _MAX_DEPTH:
                    raise _too_deep(shown, event.start_mark)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        return
    finally:
        parser.dispose()


def _too_large(shown: str, detail: str = "") -> ConfigError:
    return ConfigError(
        f"{shown}: the config is too large: it holds more than {_MAX_VALUES:,} values{detail}."
    )


def _too_deep(shown: str, mark: yaml.Mark) -> ConfigError:
    return ConfigError(
        f"{shown}:{mark.line + 1}:{mark.column + 1}: lists and mappings nest more than "
        f"{_MAX_DEPTH} levels deep."
    )


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
            raise _too_large(shown, " (YAML aliases expanded)")
        if depth > _MAX_DEPTH:
            raise _too_deep(shown, node.start_mark)
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
    if not raw.strip():
        return key, ""
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--set {key}=...: the value is larger than a config may be.")
    value, _ = _parse(raw, f"--set {text if len(text) <= 80 else text[:77] + '...'}")
    return key, value

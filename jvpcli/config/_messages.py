"""Phrases shared by the config's messages: how a value is described, did-you-mean suggestions,
unknown keys; and how a config's relative paths resolve."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jvpcli.errors import ConfigError

if TYPE_CHECKING:
    from jvpcli.config.document import ConfigDocument, KeyPath

__all__ = ["describe", "did_you_mean", "expect_string", "reject_unknown", "resolve_path"]


def reject_unknown(
    data: Mapping[str, Any], known: Iterable[str], path: KeyPath, document: ConfigDocument
) -> None:
    known = tuple(known)
    for key in data:
        if key not in known:
            dotted = ".".join((*path, str(key)))
            inside = f" in {'.'.join(path)!r}" if path else ""
            raise ConfigError(
                f"{document.locate((*path, str(key)))}: unknown key {dotted!r}{inside}."
                + did_you_mean(str(key), known)
                + f" Known keys: {', '.join(known)}."
            )


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def expect_string(key: str, value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key!r} must be a non-empty string, not {describe(value)}.")
    return value


def resolve_path(text: str, base: Path) -> Path:
    path = Path(text).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def describe(value: Any) -> str:
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

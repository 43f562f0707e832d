"""``torch.save`` files (pickles) recognised without being opened, and converted to safetensors.

jvpcli reads only safetensors files. Users often hand it what ``torch.save`` wrote instead:
:func:`sniff_pickle` recognises such a file from its first bytes (and, for a zip archive, its
directory), never unpickling it, so that the error can say what the file is.
:func:`convert_to_safetensors` converts one: it loads the file with ``torch.load(...,
weights_only=True)``, which builds only tensors and plain containers and refuses any other object,
so that loading a file never runs code named in it; a whole pickled model therefore cannot be
converted, only its ``state_dict()``.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from jvpcli._pytree import dotted, flatten
from jvpcli.errors import (
    JvpcliError,
    OverwriteError,
    TensorFileError,
    display_path,
)
from jvpcli.files import same_file
from jvpcli.tensors import read_header, write_tensors

__all__ = ["ConvertResult", "convert_to_safetensors", "sniff_pickle"]

_ZIP_SIGNATURE = b"PK\x03\x04"
# The magic number legacy torch.save files pickle first: a LONG1 opcode, 10 bytes, little-endian.
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_HEAD_BYTES = 16


class _Kind(Enum):
    """What a file's first bytes and zip directory say it is."""

    ZIP = "a torch.save file (a zip archive holding a pickle)"
    LEGACY = "a torch.save file in the legacy format (a pickle)"
    TORCHSCRIPT = "a TorchScript archive (torch.jit.save: a zip archive of pickles and code)"
    PICKLE = "a pickle file"


@dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert_to_safetensors` wrote.

    Attributes:
        tensors: each tensor written, by name: its shape and dtype name (e.g. ``"float32"``), in
            the order they were written.
        skipped: the dotted paths of the source's entries that are not tensors (numbers,
            strings, ...) and were left out; for a checkpoint, also its entries beside
            ``state_dict``.
        note: how the source was read when it was not a plain dict of tensors (a checkpoint's
            ``state_dict``, a single tensor), else ``None``.
    """

    tensors: dict[str, tuple[tuple[int, ...], str]]
    skipped: tuple[str, ...]
    note: str | None


def sniff_pickle(path: Path) -> str | None:
    """Say whether ``path`` is a pickle or a ``torch.save`` zip archive, without unpickling it.

    Only the first 16 bytes are read, and for a zip archive its directory (the names of its
    members), never their contents.

    Args:
        path: any file.

    Returns:
        A short description, such as ``"a torch.save file (a zip archive holding a pickle)"``,
        ``"a torch.save file in the legacy format (a pickle)"``, ``"a TorchScript archive
        (...)"`` or ``"a pickle file"`` (pickle protocols 2 to 5); ``None`` for any other file,
        and for one that is missing or cannot be read.
    """
    kind = _sniff(path)
    return None if kind is None else kind.value


def _sniff(path: Path) -> _Kind | None:
    try:
        if not path.is_file():
            return None  # a folder, or a FIFO that reading would block on
        with path.open("rb") as file:
            head = file.read(_HEAD_BYTES)
            if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
                return _Kind.LEGACY if head[2:].startswith(_LEGACY_MAGIC) else _Kind.PICKLE
            if not head.startswith(_ZIP_SIGNATURE):
                return None
            file.seek(0)
            with zipfile.ZipFile(file) as archive:
                names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    # torch.save writes ARCHIVE/data.pkl; torch.jit.save also ARCHIVE/constants.pkl and code.
    if not any(_is_member(name, "data.pkl") for name in names):
        return None
    if any(_is_member(name, "constants.pkl") for name in names):
        return _Kind.TORCHSCRIPT
    return _Kind.ZIP


def _is_member(name: str, wanted: str) -> bool:
    return name == wanted or name.endswith("/" + wanted)


def convert_to_safetensors(source: Path, target: Path) -> ConvertResult:
    """Convert a ``torch.save`` file of tensors to a safetensors file.

    ``source`` is loaded with ``torch.load(source, map_location="cpu", weights_only=True)``: that
    loader builds only tensors, numbers, strings and plain containers, and refuses any other
    object (a pickled ``nn.Module``, a custom class, a function to call) instead of running the
    code the pickle names. Accepted: a state dict or any dict of tensors; nested dicts (and
    lists) of tensors, whose names are their dotted paths (``{"model": {"fc.weight": w}}`` gives
    ``model.fc.weight``); a training checkpoint ``{"state_dict": {...}, ...}``, of which the
    ``state_dict`` is converted; a single tensor, named after the source file's stem. Entries that
    are not tensors are left out and listed in the result. A tensor that shares its memory with
    another (tied weights), is a view of a larger one, or is not contiguous is written as a
    contiguous copy of its own.

    The target is written atomically, with metadata ``format: pt`` and
    ``jvpcli.converted_from``: the source's file name. On any error it is left as it was.

    Args:
        source: the ``torch.save`` (zip or legacy) or pickle file.
        target: the safetensors file to write; missing parent folders are created.

    Returns:
        The tensors written (name → shape and dtype), the entries skipped, and a note on how the
        source was read.

    Raises:
        TensorFileError: ``source`` is missing or not a file; it is not a ``torch.save`` or pickle
            file (or is already a safetensors file); ``weights_only`` loading refuses it (a
            pickled model, an object of a custom class, a TorchScript archive); it is corrupt;
            it holds no tensors; two entries flatten to the same name; a tensor is sparse or of a
            dtype safetensors cannot store (complex128, quantized).
        OverwriteError: ``target`` is ``source`` (the same file, through any path or link).
        JvpcliError: ``target`` cannot be written.
    """
    shown = display_path(source)
    if not source.exists():
        raise TensorFileError(f"{shown} does not exist: there is nothing to convert.")
    if not source.is_file():
        raise TensorFileError(f"{shown} is not a file: give the torch.save file to convert.")
    if same_file(source, target):
        raise OverwriteError(
            f"the target {display_path(target)} is the source file {shown}: converting would "
            "destroy it. Write the safetensors file elsewhere, e.g. with the suffix .safetensors.",
            target=target,
        )
    kind = _sniff(source)
    if kind is None:
        raise TensorFileError(_not_a_pickle(source, shown))
    if kind is _Kind.TORCHSCRIPT:
        raise TensorFileError(
            f"{shown} is {kind.value}, not a file of tensors: it holds a compiled model, which "
            "cannot be converted without running it. Save its weights in your own code, with "
            "torch.save(torch.jit.load(path).state_dict(), 'weights.pt'), and convert that file."
        )
    loaded = _load(source, shown)
    root, where, note, skipped = _select(loaded, source)
    tensors = _tensors(root, where, shown, skipped)
    if not tensors:
        held = f": it holds only {_listing(skipped)}" if skipped else ", only empty containers"
        raise TensorFileError(f"{shown} holds no tensors{held}. There is nothing to convert.")
    for name, tensor in tensors.items():
        if tensor.layout != torch.strided:
            raise TensorFileError(
                f"{shown}: tensor {name!r} is a sparse tensor ({tensor.layout}), and safetensors "
                "stores dense tensors only. Save it with .to_dense() in your own code."
            )
    metadata = {"format": "pt", "jvpcli.converted_from": source.name}
    try:
        write_tensors(target, tensors, metadata)
    except ValueError as error:
        raise TensorFileError(
            f"cannot convert {shown}: {error}. Cast the tensor to a dtype safetensors stores (e.g. "
            "complex128 to complex64, float for quantized tensors) before torch.save."
        ) from None
    except OSError as error:
        raise JvpcliError(
            f"cannot write {display_path(target)}: {error.strerror or error}."
        ) from None
    written = {
        name: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in tensors.items()
    }
    return ConvertResult(tensors=written, skipped=tuple(skipped), note=note)


def _not_a_pickle(source: Path, shown: str) -> str:
    try:
        read_header(source, "source")
    except TensorFileError:
        pass
    else:
        return (
            f"{shown} is already a safetensors file: use it as it is, there is nothing to convert."
        )
    try:
        with source.open("rb") as file:
            zipped = file.read(len(_ZIP_SIGNATURE)) == _ZIP_SIGNATURE
    except OSError:
        zipped = False
    if zipped:
        return (
            f"{shown} is a zip archive, but not one torch.save writes: it is corrupt or truncated "
            "(its directory cannot be read), or holds no data.pkl. Save it again with torch.save."
        )
    return (
        f"{shown} is not a torch.save or pickle file: a torch.save file starts with the zip "
        "signature PK and holds a data.pkl, a pickle starts with byte 0x80 and its protocol. "
        "Only files written by torch.save (or pickles of tensors) can be converted."
    )


def _load(source: Path, shown: str) -> Any:
    """``torch.load`` with ``weights_only``, its refusals and failures as TensorFileError."""
    try:
        with warnings.catch_warnings():
            # torch's warnings (an unusual pickle protocol, ...) are not the user's to act on.
            warnings.simplefilter("ignore")
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise TensorFileError(_refusal(shown, str(error))) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TensorFileError(
            f"cannot load {shown}: it is corrupt or truncated ({reason.rstrip('.')})."
        ) from None


def _refusal(shown: str, message: str) -> str:
    """The message for a file that ``weights_only`` loading refuses (or cannot parse), from
    torch's message: the class or function the file names, when it says which."""
    advice = (
        "A whole pickled model (torch.save(model)) cannot be converted safely: in your own code, "
        "save its weights with torch.save(model.state_dict(), 'weights.pt') and convert that "
        "file, or, if you trust the file, load it yourself with torch.load(path, "
        "weights_only=False)."
    )
    named = re.search(r"\bGLOBAL ([\w.]+)", message)
    if named is not None:
        return (
            f"{shown} is refused: it refers to {named.group(1)}, which is neither a tensor "
            "nor a plain container, and loading it would run that code (jvpcli loads with "
            f"torch.load(..., weights_only=True), which refuses it). {advice}"
        )
    # torch's message is paragraphs of its own advice around the one that says what went wrong.
    reasons = [
        paragraph.strip().removeprefix("WeightsUnpickler error:").strip().rstrip(".")
        for paragraph in re.split(r"\n\s*\n|\n\t", message)
        if paragraph.strip()
        and not paragraph.strip().startswith(
            ("Weights only load failed", "Check the documentation")
        )
    ]
    reason = f" ({reasons[0]})" if reasons and reasons[0] else ""
    return (
        f"{shown} cannot be loaded with torch.load(..., weights_only=True){reason}: it is "
        "corrupt, or holds more than tensors, which jvpcli does not load because that would run "
        f"code the file names. {advice}"
    )


def _select(loaded: Any, source: Path) -> tuple[Any, str, str | None, list[str]]:
    """What to convert: the whole file, or a checkpoint's ``state_dict``; the dotted path of
    that entry, the note saying which, and the checkpoint's other entries (skipped)."""
    if isinstance(loaded, torch.Tensor):
        return {source.stem: loaded}, "", f"a single tensor, named {source.stem!r}", []
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        others = [str(key) for key in loaded if key != "state_dict"]
        note = "a checkpoint: converted its 'state_dict' entry"
        if others:
            note += f", skipped {_listing(others)}"
        return loaded["state_dict"], "state_dict", note, others
    return loaded, "", None, []


def _tensors(root: Any, where: str, shown: str, skipped: list[str]) -> dict[str, torch.Tensor]:
    """The tensors of ``root`` by dotted path, each detached and, unless it owns its memory
    alone, copied contiguous. The paths of its other leaves, below ``where`` (the dotted path of
    ``root`` in the file), are appended to ``skipped``."""
    leaves, _ = flatten(root)
    found: dict[str, torch.Tensor] = {}
    for path, leaf in leaves:
        name = dotted(path)
        if not isinstance(leaf, torch.Tensor):
            skipped.append(".".join(part for part in (where, name) if part) or "(the whole file)")
            continue
        if name in found:
            raise TensorFileError(
                f"{shown} holds two tensors named {name!r} once nested keys are joined with dots "
                "(e.g. {'a.b': ...} and {'a': {'b': ...}}). Rename one before torch.save."
            )
        found[name] = leaf.detach()
    storages = Counter(_storage_key(t) for t in found.values() if t.layout == torch.strided)
    return {
        name: tensor
        if tensor.layout != torch.strided or _owns_memory(tensor, storages)
        else tensor.clone(memory_format=torch.contiguous_format)
        for name, tensor in found.items()
    }


def _storage_key(tensor: torch.Tensor) -> tuple[int, int]:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def _owns_memory(tensor: torch.Tensor, storages: Counter[tuple[int, int]]) -> bool:
    """Whether ``tensor`` is contiguous and alone in all of its storage."""
    key = _storage_key(tensor)
    return (
        tensor.is_contiguous()
        and tensor.storage_offset() == 0
        and key[1] == tensor.numel() * tensor.element_size()
        and storages[key] == 1
    )


def _listing(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")

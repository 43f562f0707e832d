"""Safetensors files in and out: header checks, binding tensors to parameters, atomic writes.

Reading starts with :func:`read_header`, which checks the header against the file (so a corrupt or
truncated file is named as such, before any data is read); :func:`read_tensors` then loads the data.
:func:`bind_inputs` decides which tensor feeds which positional parameter, :func:`check_tangents`
that ``v`` fits the inputs. :func:`write_tensors` writes a result atomically. Only safetensors files
are read: nothing is ever unpickled. Errors raise :class:`~jvpcli.errors.TensorFileError`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from jvpcli.errors import TensorFileError, display_path, format_shape
from jvpcli.files import write_atomically

__all__ = [
    "Binding",
    "FileCache",
    "TensorFileHeader",
    "TensorInfo",
    "TensorStats",
    "bind_inputs",
    "check_tangents",
    "is_floating",
    "read_header",
    "read_tensors",
    "sha256_file",
    "tensor_stats",
    "tensors_sha256",
    "write_tensors",
]

# safetensors dtype code → (torch dtype name, bytes per element)
_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "C64": ("complex64", 8),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U64": ("uint64", 8),
    "U32": ("uint32", 4),
    "U16": ("uint16", 2),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E4M3FNUZ": ("float8_e4m3fnuz", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "F8_E5M2FNUZ": ("float8_e5m2fnuz", 1),
}
_DIFFERENTIABLE = frozenset({"float64", "float32", "float16", "bfloat16", "complex64"})
_MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as a safetensors header describes it.

    Attributes:
        name: its key in the file.
        dtype: the torch dtype name, e.g. ``"float32"``.
        shape: its sizes.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class TensorFileHeader:
    """What a safetensors file holds, read from its header without loading any data.

    Attributes:
        path: the file.
        role: what the file is for, as messages name it ("inputs", "v", "function.weights", ...).
        tensors: the tensors by name, in the order their data lies in the file.
        metadata: the file's string → string metadata.
    """

    path: Path
    role: str
    tensors: Mapping[str, TensorInfo]
    metadata: Mapping[str, str]

    @property
    def shown(self) -> str:
        """How messages name the file: its role and path."""
        return f"{self.role} file {display_path(self.path)}"


def read_header(path: Path, role: str) -> TensorFileHeader:
    """Read and check a safetensors file's header, without loading tensor data.

    Args:
        path: the file.
        role: what the file is for, for messages ("inputs", "v", ...).

    Returns:
        The tensors' names, dtypes and shapes, and the metadata.

    Raises:
        TensorFileError: the file is missing or unreadable, too short, its header is not the JSON
            safetensors writes, a tensor's offsets disagree with its dtype and shape, or the data
            section is truncated or has bytes no tensor accounts for.
    """
    shown = f"{role} file {display_path(path)}"
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            prefix = file.read(8)
            if len(prefix) < 8:
                raise TensorFileError(
                    f"{shown} is not a safetensors file: it has {size} bytes, fewer than the "
                    "8-byte header length."
                )
            (header_size,) = struct.unpack("<Q", prefix)
            if header_size > min(_MAX_HEADER_BYTES, size - 8):
                _refuse_pickle(path, shown)
                raise TensorFileError(
                    f"{shown} is corrupt or truncated: its header claims {header_size} bytes but "
                    f"the file has {size} bytes."
                )
            raw = file.read(header_size)
    except FileNotFoundError:
        raise TensorFileError(f"{shown} does not exist.") from None
    except IsADirectoryError:
        raise TensorFileError(f"{shown} is a directory, not a safetensors file.") from None
    except OSError as error:
        raise TensorFileError(f"cannot read {shown}: {error.strerror or error}.") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        # ValueError: not UTF-8, not JSON, or an integer too long to read; RecursionError: JSON
        # nested deeper than Python's stack.
        header = None
    if not isinstance(header, dict):
        raise TensorFileError(f"{shown} is corrupt: its header is not a safetensors JSON header.")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        _is_text(k) and _is_text(v) for k, v in metadata.items()
    ):
        raise TensorFileError(f"{shown} is corrupt: its metadata is not a string → string map.")
    data_size = size - 8 - header_size
    tensors, extents = {}, []
    for name, entry in header.items():
        info, begin, end = _check_entry(name, entry, shown)
        if end > data_size:
            raise TensorFileError(
                f"{shown} is truncated: tensor {name!r} ends at byte {end} of the data section, "
                f"which has {data_size} bytes."
            )
        tensors[name] = info
        extents.append((begin, end, name))
    extents.sort()
    position = 0
    for begin, end, name in extents:
        if begin != position:
            raise TensorFileError(
                f"{shown} is corrupt: tensor {name!r} starts at byte {begin} of the data "
                f"section, expected {position}."
            )
        position = end
    if position != data_size:
        raise TensorFileError(
            f"{shown} is corrupt: its tensors cover {position} bytes of a {data_size}-byte data "
            "section."
        )
    ordered = {name: tensors[name] for _, _, name in extents}
    return TensorFileHeader(path, role, ordered, metadata)


def _refuse_pickle(path: Path, shown: str) -> None:
    """Say what a file that is no safetensors file is, when it is a pickle: the usual mistake."""
    from jvpcli.convert import sniff_pickle

    kind = sniff_pickle(path)
    if kind is not None:
        raise TensorFileError(
            f"{shown} is {kind}, not a safetensors file: jvpcli never unpickles data files (a "
            "pickle can run any code). Convert it with: jvpcli convert "
            f"{display_path(path)} {display_path(path.with_suffix('.safetensors'))} (which "
            "loads it with torch.load(weights_only=True), refusing anything but tensors)."
        )


def _check_entry(name: str, entry: object, shown: str) -> tuple[TensorInfo, int, int]:
    if not _is_text(name):
        raise TensorFileError(f"{shown} is corrupt: a tensor's name is not valid Unicode.")
    corrupt = f"{shown} is corrupt: the header entry of tensor {name!r}"
    if not isinstance(entry, dict):
        raise TensorFileError(f"{corrupt} is not a mapping.")
    code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if code not in _DTYPES:
        raise TensorFileError(f"{corrupt} has an unsupported dtype {code!r}.")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise TensorFileError(f"{corrupt} has an invalid shape {shape!r}.")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(n) for n in offsets)
        or offsets[0] > offsets[1]
    ):
        raise TensorFileError(f"{corrupt} has invalid data offsets {offsets!r}.")
    dtype, itemsize = _DTYPES[code]
    begin, end = offsets
    if end - begin != math.prod(shape) * itemsize:
        raise TensorFileError(
            f"{corrupt} spans {end - begin} bytes, but {dtype} of shape {tuple(shape)} needs "
            f"{math.prod(shape) * itemsize}."
        )
    return TensorInfo(name, dtype, tuple(shape)), begin, end


def _is_text(value: object) -> bool:
    # JSON's \ud800 escapes decode to lone surrogates, which no UTF-8 text (nor safetensors)
    # holds.
    return isinstance(value, str) and not any("\ud800" <= c <= "\udfff" for c in value)


def _is_count(value: object) -> bool:
    # torch holds sizes as signed 64-bit integers.
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def read_tensors(header: TensorFileHeader) -> dict[str, torch.Tensor]:
    """Load the tensors of a file whose header :func:`read_header` has checked.

    Returns:
        The tensors by name, on the CPU, in the header's order.

    Raises:
        TensorFileError: the file changed since its header was read, or safetensors rejects it.
    """
    try:
        loaded = load_file(header.path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        # torch's errors carry a C++ backtrace after their first line.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TensorFileError(f"cannot load {header.shown}: {reason}.") from None
    if loaded.keys() != header.tensors.keys():
        raise TensorFileError(f"{header.shown} changed while it was being read.")
    return {name: loaded[name] for name in header.tensors}


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """Return the hex sha256 of named tensors: their names, dtypes, shapes and values.

    It does not depend on the order of ``tensors`` nor on how a file lays them out, so the
    digest of tensors before they are written equals that of the tensors read back.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        header = {"name": name, "dtype": str(tensor.dtype), "shape": list(tensor.shape)}
        digest.update(json.dumps(header).encode() + b"\n")
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


class FileCache:
    """Reads each file once, by its path: safetensors headers and tensors, and digests.

    For the runs of a sweep, which share files: a file's tensors are kept until
    :meth:`release`; headers and digests for as long as the cache lives. Paths should be
    resolved, so that one file has one key. Files must not change while the cache is in use.
    """

    def __init__(self) -> None:
        self._headers: dict[Path, TensorFileHeader] = {}
        self._tensors: dict[Path, dict[str, torch.Tensor]] = {}
        self._digests: dict[Path, str] = {}

    def header(self, path: Path, role: str) -> TensorFileHeader:
        """:func:`read_header` of ``path``, read the first time only (``role`` may differ)."""
        header = self._headers.get(path)
        if header is None:
            header = self._headers[path] = read_header(path, role)
        return header if header.role == role else replace(header, role=role)

    def tensors(self, header: TensorFileHeader) -> dict[str, torch.Tensor]:
        """:func:`read_tensors` of the file, loaded the first time only.

        The tensors are shared between callers; if one was modified in place (a user's function
        may do that to its inputs), the file is read again.
        """
        tensors = self._tensors.get(header.path)
        if tensors is None or any(t._version for t in tensors.values()):
            tensors = self._tensors[header.path] = read_tensors(header)
        return tensors

    def sha256(self, path: Path) -> str:
        """:func:`sha256_file` of ``path``, computed the first time only."""
        digest = self._digests.get(path)
        if digest is None:
            digest = self._digests[path] = sha256_file(path)
        return digest

    def release(self, path: Path) -> None:
        """Forget the tensors of ``path`` (no longer needed), freeing their memory."""
        self._tensors.pop(path, None)


@dataclass(frozen=True)
class Binding:
    """How the tensors of an inputs file are passed to the function.

    Attributes:
        positional: the tensors passed positionally, in order.
        keyword: the tensors passed by keyword (their names are the parameters' names).
    """

    positional: tuple[str, ...]
    keyword: tuple[str, ...] = ()


def bind_inputs(
    inputs: TensorFileHeader,
    parameters: Sequence[str] | None,
    required: int,
    order: Sequence[str] | None,
    function: str,
    *,
    keywords: Sequence[str] = (),
    var_keyword: bool = False,
) -> Binding:
    """Decide which tensor of ``inputs`` feeds which parameter of the function.

    Tensors bind by name: ``a`` and ``b`` feed ``def f(a, b)`` in that order, whatever their order
    in the file. The tensors named after the function's leading positional parameters are passed
    positionally; the others by keyword (to a parameter of that name, keyword-only or not, or to
    ``**kwargs``), so that ``forward(self, input_ids=None, attention_mask=None, ...)`` takes
    ``attention_mask`` alone. A single tensor feeds a one-parameter function whatever its name.
    An explicit ``order`` lists the tensors in the order they are passed positionally.

    Args:
        inputs: the header of the inputs file.
        parameters: the names of the function's positional parameters, or ``None`` when they
            cannot be known (``*args``, an uninspectable callable).
        required: how many of them have no default.
        order: the config's ``order``, or ``None``.
        function: how messages name the function.
        keywords: the names of its keyword-only parameters.
        var_keyword: whether it takes ``**kwargs``.

    Returns:
        The binding: the tensors passed positionally, in order, and those passed by keyword.

    Raises:
        TensorFileError: ``order`` does not list exactly the file's tensors; a tensor's name
            matches no parameter; a parameter without a default gets no tensor; the file holds
            too many tensors.
    """
    names = tuple(inputs.tensors)
    if not names:
        raise TensorFileError(f"{inputs.shown} holds no tensors.")
    accepted = (*(parameters or ()), *keywords)
    if order is not None:
        missing = [n for n in order if n not in inputs.tensors]
        left_out = [n for n in names if n not in order]
        if missing or left_out:
            problems = []
            if missing:
                problems.append(f"order names {_listing(missing)}, which it does not hold")
            if left_out:
                problems.append(f"it holds {_listing(left_out)}, which order leaves out")
            raise TensorFileError(
                f"{inputs.shown}: {'; '.join(problems)}. order must list each of its tensors "
                f"({_listing(names)}) once."
            )
        binding = Binding(tuple(order))
    elif len(names) == 1 and names[0] not in accepted and not var_keyword:
        binding = Binding(names)
    elif parameters is None:
        raise TensorFileError(
            f"{inputs.shown} holds {len(names)} tensors ({_listing(names)}), and the parameter "
            f"names of {function} cannot be read (it takes *args). List the tensors in the order "
            "it takes them with order: [...]."
        )
    else:
        strangers = [n for n in names if n not in accepted]
        if var_keyword:
            # **kwargs takes any name, and many forwards (Hugging Face's) ignore what they do not
            # know: a misspelled input would silently be left out.
            for name in strangers:
                close = difflib.get_close_matches(name, accepted, n=1, cutoff=0.8)
                if close:
                    raise TensorFileError(
                        f"{inputs.shown} holds {name!r}, which {function} would get through "
                        f"**kwargs, but it looks like a misspelling of its parameter "
                        f"{close[0]!r}: rename the tensor."
                    )
            strangers = []
        if strangers:
            raise TensorFileError(
                f"{inputs.shown} holds {_listing(strangers)}, which {function}"
                f"({_signature(parameters, keywords)}) has no parameter for. Name the tensors "
                "after the parameters, or list them in the order it takes them with order: [...]."
            )
        positional: list[str] = []
        for parameter in parameters:
            if parameter not in inputs.tensors:
                break
            positional.append(parameter)
        ranked = {name: rank for rank, name in enumerate(accepted)}
        keyword = sorted(
            (n for n in names if n not in positional), key=lambda n: ranked.get(n, len(ranked))
        )
        binding = Binding(tuple(positional), tuple(keyword))
        gaps = [p for p in parameters[:required] if p not in inputs.tensors]
        if gaps and len(names) >= required:
            raise TensorFileError(
                f"{inputs.shown} has no tensor for parameter {_listing(gaps)} of {function}"
                f"({_signature(parameters, keywords)}), which has no default."
            )
    if parameters is not None:
        bound = (*binding.positional, *binding.keyword)
        if len(bound) < required:
            raise TensorFileError(
                f"{function}({', '.join(parameters)}) needs {required} tensor"
                f"{'s' if required > 1 else ''}, but {inputs.shown} holds {len(bound)} "
                f"({_listing(bound)})."
            )
        if len(binding.positional) > len(parameters):
            raise TensorFileError(
                f"{function}({', '.join(parameters)}) takes at most {len(parameters)} tensor"
                f"{'s' if len(parameters) != 1 else ''}, but {inputs.shown} holds "
                f"{len(binding.positional)} ({_listing(binding.positional)})."
            )
    return binding


def _signature(parameters: Sequence[str], keywords: Sequence[str]) -> str:
    return ", ".join((*parameters, *(("*", *keywords) if keywords else ())))


def check_tangents(
    inputs: TensorFileHeader,
    v: TensorFileHeader | None,
    cast: str | None,
    batched: bool = False,
    *,
    parameters_too: bool = False,
) -> tuple[str, ...]:
    """Check that ``v`` holds tangents for some of the inputs: their names, shapes and dtypes.

    Args:
        inputs: the header of the inputs file.
        v: the header of the v file, or ``None`` when ``v`` is omitted.
        cast: the dtype floating-point inputs and tangents are cast to, or ``None``.
        batched: whether ``v`` holds K directions per input (``batched_v``): each tensor's
            shape is then ``(K, *input shape)``, with one K (at least 1) for all of them.
        parameters_too: whether the run also has tangents for parameters (``v_params``), so that
            ``v`` may be omitted with every input constant.

    Returns:
        The names of the inputs that get a tangent (the others are constants), in the inputs'
        order.

    Raises:
        TensorFileError: ``v`` is omitted for anything but a single one-element floating-point
            input (and no ``v_params``); it names a tensor the inputs do not hold, or an integer
            or bool input; its tensors differ from their inputs in shape or dtype.
    """
    if v is None:
        if parameters_too:
            return ()
        infos = list(inputs.tensors.values())
        if len(infos) != 1 or math.prod(infos[0].shape) != 1:
            raise TensorFileError(
                f"v is missing: it may be omitted only for a single one-element input (or with "
                f"v_params, to hold every input constant), and {inputs.shown} holds "
                f"{_describe_tensors(infos)}."
            )
        _check_differentiable(inputs, infos[0], None)
        return (infos[0].name,)
    extra = [n for n in v.tensors if n not in inputs.tensors]
    if extra:
        hints = [
            f" Did you mean {close[0]!r} for {name!r}?"
            for name in extra
            if (close := difflib.get_close_matches(name, list(inputs.tensors), n=1))
        ]
        raise TensorFileError(
            f"{v.shown} holds {_listing(extra)}, which {inputs.shown} does not: each tangent "
            f"must be named after the input it belongs to ({_listing(list(inputs.tensors))})."
            + "".join(hints[:3])
        )
    if not v.tensors:
        raise TensorFileError(f"{v.shown} holds no tensors: name the inputs to differentiate.")
    directions: tuple[str, int] | None = None
    for name, info in inputs.tensors.items():
        if name not in v.tensors:
            continue
        tangent = v.tensors[name]
        _check_differentiable(inputs, info, v)
        if batched:
            if tangent.shape[1:] != info.shape or tangent.shape[:1] in ((), (0,)):
                raise TensorFileError(
                    f"{v.shown}: tensor {name!r} has shape {format_shape(tangent.shape)}, but "
                    f"with batched_v it must be (K, *{format_shape(info.shape)}): K >= 1 "
                    f"directions of the input {name!r}, of shape {format_shape(info.shape)}."
                )
            if directions is None:
                directions = (name, tangent.shape[0])
            elif tangent.shape[0] != directions[1]:
                raise TensorFileError(
                    f"{v.shown}: tensor {name!r} holds {tangent.shape[0]} directions but "
                    f"{directions[0]!r} holds {directions[1]}: with batched_v, every tensor of v "
                    "holds the same number K of directions."
                )
        elif tangent.shape != info.shape:
            hint = ""
            if tangent.shape[1:] == info.shape:
                hint = " If it holds one direction per row, set batched_v: true."
            raise TensorFileError(
                f"{v.shown}: tensor {name!r} has shape {format_shape(tangent.shape)}, but "
                f"the input {name!r} has shape {format_shape(info.shape)}.{hint}"
            )
        if cast is None and tangent.dtype != info.dtype:
            raise TensorFileError(
                f"{v.shown}: tensor {name!r} is {tangent.dtype}, but the input {name!r} is "
                f"{info.dtype}. Store them with one dtype, or set dtype to cast both."
            )
    return tuple(name for name in inputs.tensors if name in v.tensors)


def is_floating(dtype: str) -> bool:
    """Whether tensors of the dtype named ``dtype`` can carry a tangent (and are cast by the
    run's ``dtype``): floating point or complex."""
    return dtype in _DIFFERENTIABLE


def _check_differentiable(
    inputs: TensorFileHeader, info: TensorInfo, v: TensorFileHeader | None
) -> None:
    if info.dtype not in _DIFFERENTIABLE:
        given = f"{v.shown} gives a tangent for it" if v is not None else "v is omitted"
        raise TensorFileError(
            f"{inputs.shown}: tensor {info.name!r} is {info.dtype}, but {given}: a JVP needs "
            "floating-point inputs. Integer and bool inputs (token ids, masks) are passed as "
            f"constants: leave {info.name!r} out of v."
        )


def write_tensors(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> None:
    """Write ``tensors`` and ``metadata`` to a safetensors file, atomically.

    The data goes to a temporary file in the same folder, is flushed to disk, then renamed over
    ``path``: whatever happens (a crash, ``kill -9``), ``path`` is either absent, the old file, or
    the complete new one. Missing parent folders are created.

    Args:
        path: the file to write.
        tensors: the tensors by name; they are saved detached, on the CPU, contiguous.
        metadata: string → string metadata.

    Raises:
        ValueError: a tensor's dtype has no safetensors equivalent (e.g. complex128).
        OSError: the folder or file cannot be written.
    """
    storable = {name for name, _ in _DTYPES.values()}
    for name, tensor in tensors.items():
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype not in storable:
            raise ValueError(
                f"safetensors cannot store {name!r}: its dtype {dtype} has no equivalent"
            )
    prepared = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}

    def save(temporary: Path) -> None:
        with temporary.open("wb") as file:
            _serialize(file, prepared, metadata)

    write_atomically(path, save)


_CODES = {dtype: code for code, (dtype, _) in _DTYPES.items()}


def _serialize(
    file: BinaryIO, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> None:
    """Write the safetensors format, streaming each tensor's bytes from its memory.

    safetensors' own ``save_file`` writes through a temporary file of its own, which a killed
    process leaves behind beside jvpcli's; ``safetensors.torch.save`` builds the whole file in
    memory. The format is small: an 8-byte little-endian header length, the JSON header (names,
    dtypes, shapes, data offsets; padded with spaces to 8 bytes), then the data, in order.
    """
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        dtype = str(tensor.dtype).removeprefix("torch.")
        header[name] = {
            "dtype": _CODES[dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    file.write(struct.pack("<Q", len(encoded)))
    file.write(encoded)
    for tensor in tensors.values():
        if tensor.numel():
            file.write(tensor.reshape(-1).view(torch.uint8).numpy().data)


@dataclass(frozen=True)
class TensorStats:
    """Summary statistics of a tensor, as plain numbers.

    Attributes:
        norm: the 2-norm of all its values (``nan`` / ``inf`` when some are).
        min, max: its smallest and largest values; ``None`` for an empty or complex tensor.
        nan, inf: how many values are NaN, how many infinite.
    """

    norm: float
    min: float | None
    max: float | None
    nan: int
    inf: int

    @property
    def finite(self) -> bool:
        """Whether every value is finite."""
        return self.nan == 0 and self.inf == 0


def tensor_stats(tensor: torch.Tensor) -> TensorStats:
    """Compute :class:`TensorStats` of ``tensor`` (any dtype, any device), in double precision."""
    values = tensor.detach().cpu()
    if values.is_complex():
        wide = values.to(torch.complex128)
        extrema: tuple[float | None, float | None] = (None, None)
    else:
        wide = values.to(torch.float64)
        extrema = (wide.min().item(), wide.max().item()) if wide.numel() else (None, None)
    return TensorStats(
        norm=torch.linalg.vector_norm(wide).item(),
        min=extrema[0],
        max=extrema[1],
        nan=int(torch.isnan(wide).sum().item()),
        inf=int(torch.isinf(wide).sum().item()),
    )


def _listing(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _describe_tensors(infos: Sequence[TensorInfo]) -> str:
    if not infos:
        return "no tensors"
    return ", ".join(f"{i.name!r} of shape {format_shape(i.shape)}" for i in infos)

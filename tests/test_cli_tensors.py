"""jvpcli.tensors: header checks, binding tensors to parameters, atomic writes."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import jvpcli.tensors as tensors_module
from jvpcli.errors import TensorFileError
from jvpcli.tensors import (
    bind_inputs,
    check_tangents,
    read_header,
    read_tensors,
    tensor_stats,
    write_tensors,
)


def saved(folder: Path, name: str, tensors: dict[str, torch.Tensor], **metadata: str) -> Path:
    path = folder / f"{name}.safetensors"
    save_file(tensors, path, metadata=metadata or None)
    return path


def raw_file(folder: Path, header: object, data: bytes = b"") -> Path:
    encoded = json.dumps(header).encode()
    path = folder / "raw.safetensors"
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


def test_header_agrees_with_safetensors(tmp_path: Path) -> None:
    path = saved(
        tmp_path,
        "mixed",
        {
            "w": torch.ones(2, 3, dtype=torch.bfloat16),
            "i": torch.arange(5),
            "s": torch.tensor(1.5, dtype=torch.float64),
            "e": torch.ones(0, 4),
        },
        origin="test",
    )
    header = read_header(path, "inputs")
    with safe_open(path, "pt") as file:
        assert set(header.tensors) == set(file.keys())
        assert header.metadata == file.metadata()
        for name in header.tensors:
            reference = file.get_tensor(name)
            assert header.tensors[name].shape == tuple(reference.shape)
            assert header.tensors[name].dtype == str(reference.dtype).removeprefix("torch.")
    loaded = read_tensors(header)
    assert list(loaded) == list(header.tensors)
    torch.testing.assert_close(loaded["w"], torch.ones(2, 3, dtype=torch.bfloat16))


def test_every_truncation_of_a_file_is_a_tensor_file_error(tmp_path: Path) -> None:
    whole = saved(tmp_path, "whole", {"a": torch.arange(6.0), "b": torch.ones(2, 2)}).read_bytes()
    cut = tmp_path / "cut.safetensors"
    for length in range(len(whole)):
        cut.write_bytes(whole[:length])
        with pytest.raises(TensorFileError, match=r"cut\.safetensors"):
            read_header(cut, "inputs")


@pytest.mark.parametrize(
    ("header", "data", "fragment"),
    [
        ([1, 2], b"", "not a safetensors JSON header"),
        ({"__metadata__": {"a": 1}}, b"", "metadata is not a string"),
        ({"x": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "dtype 'F99'"),
        ({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "shape"),
        ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [4, 0]}}, b"\0" * 8, "offsets"),
        ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "needs 8"),
        ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "starts at"),
        ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 9, "cover 4"),
        ({"x": "nope"}, b"", "is not a mapping"),
    ],
)
def test_corrupt_headers_are_explained(
    tmp_path: Path, header: object, data: bytes, fragment: str
) -> None:
    with pytest.raises(TensorFileError, match="is corrupt") as caught:
        read_header(raw_file(tmp_path, header, data), "v")
    assert fragment in str(caught.value)
    assert str(caught.value).startswith("v file ")


def test_header_size_beyond_the_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(TensorFileError, match="header claims 1099511627776 bytes"):
        read_header(path, "inputs")


def test_a_folder_is_not_a_tensor_file(tmp_path: Path) -> None:
    with pytest.raises(TensorFileError, match="is a directory"):
        read_header(tmp_path, "inputs")


def header_of(folder: Path, names: list[str], size: int = 3, name: str = "in"):
    return read_header(saved(folder, name, {n: torch.zeros(size) for n in names}), "inputs")


@pytest.mark.parametrize(
    ("names", "parameters", "required", "order", "bound"),
    [
        (["b", "a"], ("a", "b"), 2, None, ("a", "b")),
        (["c", "a", "b"], ("a", "b", "c", "d"), 3, None, ("a", "b", "c")),
        (["anything"], ("x",), 1, None, ("anything",)),
        (["anything"], ("x", "scale"), 1, None, ("anything",)),
        (["anything"], None, 0, None, ("anything",)),
        (["p", "q"], None, 0, ["q", "p"], ("q", "p")),
        (["p", "q"], ("a", "b"), 2, ["q", "p"], ("q", "p")),
    ],
)
def test_inputs_bind_by_name_single_tensor_or_order(
    tmp_path: Path, names, parameters, required, order, bound
) -> None:
    header = header_of(tmp_path, names)
    assert bind_inputs(header, parameters, required, order, "f").positional == bound


def test_binding_follows_parameters_not_the_files_order(tmp_path: Path) -> None:
    header = {
        "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
    }
    path = raw_file(tmp_path, header, struct.pack("<ff", 2.0, 1.0))
    inputs = read_header(path, "inputs")
    assert list(inputs.tensors) == ["b", "a"]
    assert bind_inputs(inputs, ("a", "b"), 2, None, "f").positional == ("a", "b")
    loaded = read_tensors(inputs)
    assert (loaded["a"].item(), loaded["b"].item()) == (1.0, 2.0)


@pytest.mark.parametrize(
    ("names", "parameters", "required", "order", "fragment"),
    [
        (["a", "z"], ("a", "b"), 2, None, "holds 'z', which f(a, b) has no parameter for"),
        (["a", "c"], ("a", "b", "c"), 2, None, "no tensor for parameter 'b' of f(a, b, c)"),
        (["a", "b"], None, 0, None, "cannot be read (it takes *args)"),
        (["a"], ("a", "b"), 2, None, "f(a, b) needs 2 tensors"),
        (["a", "b"], ("a", "b"), 2, ["a"], "it holds 'b', which order leaves out"),
        (["a", "b"], ("a", "b"), 2, ["a", "b", "c"], "order names 'c', which it does not hold"),
        (["a", "b"], ("x",), 1, ["a", "b"], "f(x) takes at most 1 tensor"),
        (["a"], (), 0, None, "f() takes at most 0 tensors"),
    ],
)
def test_binding_failures_are_explained(
    tmp_path: Path, names, parameters, required, order, fragment
) -> None:
    header = header_of(tmp_path, names)
    with pytest.raises(TensorFileError) as caught:
        bind_inputs(header, parameters, required, order, "f")
    assert fragment in str(caught.value)


def test_tangents_must_match_names_shapes_and_dtypes(tmp_path: Path) -> None:
    inputs = header_of(tmp_path, ["a", "b"])
    check_tangents(inputs, header_of(tmp_path, ["b", "a"], name="v"), None)
    assert check_tangents(inputs, header_of(tmp_path, ["a"], name="v1"), None) == ("a",)
    with pytest.raises(TensorFileError, match="holds 'c', which inputs file"):
        check_tangents(inputs, header_of(tmp_path, ["a", "c"], name="v4"), None)
    with pytest.raises(TensorFileError, match=r"has shape \(4,\), but the input 'a'"):
        check_tangents(inputs, header_of(tmp_path, ["a", "b"], size=4, name="v2"), None)
    v64 = read_header(
        saved(tmp_path, "v3", {n: torch.zeros(3, dtype=torch.float64) for n in "ab"}), "v"
    )
    with pytest.raises(TensorFileError, match="is float64, but the input 'a' is float32"):
        check_tangents(inputs, v64, None)
    check_tangents(inputs, v64, "float64")


def test_v_may_be_omitted_only_for_one_element(tmp_path: Path) -> None:
    check_tangents(header_of(tmp_path, ["x"], size=1), None, None)
    with pytest.raises(TensorFileError, match="v is missing"):
        check_tangents(header_of(tmp_path, ["x"], size=2, name="two"), None, None)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.uint8, torch.bool])
def test_integer_inputs_are_constants_and_refuse_a_tangent(
    tmp_path: Path, dtype: torch.dtype
) -> None:
    tensors = {"x": torch.zeros(2), "ids": torch.zeros(2, dtype=dtype)}
    inputs = read_header(saved(tmp_path, "mixed", tensors), "inputs")
    v = read_header(saved(tmp_path, "v", {"x": torch.ones(2)}), "v")
    assert check_tangents(inputs, v, None) == ("x",)
    both = read_header(saved(tmp_path, "both", tensors), "v")
    with pytest.raises(TensorFileError, match=r"'ids' is .*a JVP needs floating-point inputs"):
        check_tangents(inputs, both, None)
    with pytest.raises(TensorFileError, match="leave 'ids' out of v"):
        check_tangents(inputs, both, "float32")


def test_write_is_atomic_and_keeps_metadata(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "deep" / "out.safetensors"
    seen = []
    real_serialize = tensors_module._serialize

    def observing_serialize(file, tensors, metadata):
        # While data is written, the target does not exist; the data goes next to it.
        seen.append((Path(file.name).parent, target.exists()))
        real_serialize(file, tensors, metadata)

    monkeypatch.setattr(tensors_module, "_serialize", observing_serialize)
    base = torch.arange(12.0).reshape(3, 4)
    write_tensors(target, {"t": base.t(), "same": base}, {"k": "v"})
    assert seen == [(target.parent, False)]
    loaded = load_file(target)
    torch.testing.assert_close(loaded["t"], base.t())
    torch.testing.assert_close(loaded["same"], base)
    with safe_open(target, "pt") as file:
        assert file.metadata() == {"k": "v"}
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.safetensors"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "out.safetensors"
    write_tensors(target, {"old": torch.ones(2)}, {})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tensors_module, "_serialize", crash)
    with pytest.raises(KeyboardInterrupt):
        write_tensors(target, {"new": torch.zeros(2)}, {})
    assert list(load_file(target)) == ["old"]
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]


def test_dtypes_safetensors_cannot_store_are_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'z': its dtype complex128"):
        write_tensors(
            tmp_path / "out.safetensors", {"z": torch.ones(1, dtype=torch.complex128)}, {}
        )
    assert list(tmp_path.iterdir()) == []


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        write_tensors(tmp_path / "out.safetensors", {"x": torch.ones(1)}, {})
    finally:
        os.umask(previous)
    assert (tmp_path / "out.safetensors").stat().st_mode & 0o777 == 0o644


def test_stats_match_direct_computation() -> None:
    values = [3.0, -4.0, 0.5]
    stats = tensor_stats(torch.tensor(values, dtype=torch.float16))
    assert stats.norm == pytest.approx(math.sqrt(sum(v * v for v in values)))
    assert (stats.min, stats.max, stats.nan, stats.inf, stats.finite) == (-4.0, 3.0, 0, 0, True)


def test_stats_count_non_finite_values() -> None:
    stats = tensor_stats(torch.tensor([1.0, float("nan"), float("-inf"), float("inf")]))
    assert (stats.nan, stats.inf, stats.finite) == (1, 2, False)
    assert math.isnan(stats.norm)


def test_stats_of_empty_and_complex_tensors_have_no_extrema() -> None:
    empty = tensor_stats(torch.ones(0, 3))
    assert (empty.norm, empty.min, empty.max) == (0.0, None, None)
    complex_stats = tensor_stats(torch.tensor([3 + 4j]))
    assert complex_stats.norm == pytest.approx(5.0)
    assert (complex_stats.min, complex_stats.max) == (None, None)

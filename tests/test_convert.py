"""jvpcli.convert: recognising pickles without unpickling them, and converting to safetensors."""

from __future__ import annotations

import os
import pickle
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from jvpcli.convert import convert_to_safetensors, sniff_pickle
from jvpcli.errors import OverwriteError, TensorFileError, UsageError


class _RunsCommand:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


def state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    tensors = dict(model.state_dict())  # BatchNorm adds an int64 buffer
    tensors["half"] = torch.randn(2, 2, dtype=torch.bfloat16)
    tensors["mask"] = torch.tensor([True, False])
    return tensors


def assert_same(read: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert read.keys() == expected.keys()
    for name, tensor in expected.items():
        assert read[name].dtype == tensor.dtype, name
        assert torch.equal(read[name], tensor), name


def saved(path: Path, value: object, *, legacy: bool = False) -> Path:
    torch.save(value, path, _use_new_zipfile_serialization=not legacy)
    return path


def torchscript_file(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script and torch.jit.save
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    return path


def one_paragraph(error: pytest.ExceptionInfo[Exception]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_round_trip_of_a_state_dict(tmp_path: Path, legacy: bool) -> None:
    original = state_dict()
    source = saved(tmp_path / "model.pt", original, legacy=legacy)
    target = tmp_path / "model.safetensors"
    result = convert_to_safetensors(source, target)
    assert_same(load_file(target), original)
    assert result.tensors == {
        name: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in original.items()
    }
    assert result.skipped == ()
    assert result.note is None
    with safe_open(target, "pt") as file:
        assert file.metadata() == {"format": "pt", "jvpcli.converted_from": "model.pt"}


def test_nested_dicts_get_dotted_names(tmp_path: Path) -> None:
    weight, bias, scale = torch.randn(4, 3), torch.randn(4), torch.tensor(2.0)
    source = saved(
        tmp_path / "nested.pt",
        {"model": {"fc.weight": weight, "fc": {"bias": bias}}, "scale": scale, "name": "mlp"},
    )
    result = convert_to_safetensors(source, tmp_path / "out.safetensors")
    assert_same(
        load_file(tmp_path / "out.safetensors"),
        {"model.fc.weight": weight, "model.fc.bias": bias, "scale": scale},
    )
    assert result.skipped == ("name",)


def test_checkpoint_converts_its_state_dict(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    expected = {name: t.detach().clone() for name, t in model.state_dict().items()}
    source = saved(
        tmp_path / "checkpoint.pt",
        {"state_dict": model.state_dict(), "epoch": 3, "optimizer": optimizer.state_dict()},
    )
    result = convert_to_safetensors(source, tmp_path / "weights.safetensors")
    assert_same(load_file(tmp_path / "weights.safetensors"), expected)
    assert "epoch" in result.skipped
    assert "optimizer" in result.skipped
    assert result.note is not None and "state_dict" in result.note


def test_shared_and_strided_tensors_are_written_whole(tmp_path: Path) -> None:
    embedding = torch.randn(5, 3)
    grid = torch.arange(24.0).reshape(4, 6)
    tensors = {
        "embed.weight": embedding,
        "head.weight": embedding,  # tied weights: one tensor under two names
        "grid": grid,
        "row": grid[2],  # a view into the middle of another tensor's storage
        "column": grid[:, 1],  # not contiguous
        "transposed": torch.randn(3, 2).t(),
    }
    source = saved(tmp_path / "tied.pt", tensors)
    convert_to_safetensors(source, tmp_path / "tied.safetensors")
    read = load_file(tmp_path / "tied.safetensors")
    assert_same(read, {name: t.contiguous() for name, t in tensors.items()})


def test_a_single_tensor_is_named_after_the_file(tmp_path: Path) -> None:
    tensor = torch.randn(3, 3)
    result = convert_to_safetensors(saved(tmp_path / "w.pt", tensor), tmp_path / "w.safetensors")
    assert_same(load_file(tmp_path / "w.safetensors"), {"w": tensor})
    assert result.note is not None


def test_a_pickled_module_is_refused(tmp_path: Path) -> None:
    source = saved(tmp_path / "model.pt", torch.nn.Linear(2, 2))
    target = tmp_path / "model.safetensors"
    with pytest.raises(TensorFileError) as error:
        convert_to_safetensors(source, target)
    message = one_paragraph(error)
    assert "torch.nn.modules.linear.Linear" in message
    assert "cannot be converted safely" in message
    assert "torch.save(model.state_dict()" in message
    assert "weights_only=False" in message
    assert error.value.exit_code == 2
    assert not target.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="the payload is a POSIX shell command")
@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_a_malicious_pickle_is_refused_without_running_it(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weight": _RunsCommand(f"touch '{marker}'")}, protocol=protocol)
    source = tmp_path / "evil.pt"
    source.write_bytes(payload)
    assert sniff_pickle(source) == "a pickle file"
    with pytest.raises(TensorFileError) as error:
        convert_to_safetensors(source, tmp_path / "evil.safetensors")
    message = one_paragraph(error)
    assert "weights_only=True" in message
    if protocol == 2:  # newer protocols' FRAME opcode stops torch's unpickler before the global
        assert "system" in message
    assert not marker.exists()
    assert not (tmp_path / "evil.safetensors").exists()
    pickle.loads(payload)  # the oracle: unpickled unsafely, the payload does run
    assert marker.exists()


def test_sniff_recognises_pickles_and_nothing_else(tmp_path: Path) -> None:
    zipped = saved(tmp_path / "zip.pt", {"a": torch.ones(2)})
    legacy = saved(tmp_path / "legacy.pt", {"a": torch.ones(2)}, legacy=True)
    script = torchscript_file(tmp_path / "script.pt")
    safetensors_file = tmp_path / "a.safetensors"
    save_file({"a": torch.ones(2)}, safetensors_file)
    plain_zip = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain_zip, "w") as archive:
        archive.writestr("notes/readme.txt", "hello")
    random_bytes = tmp_path / "random.bin"
    random_bytes.write_bytes(bytes(range(256)) * 8)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    fake_zip = tmp_path / "fake.pt"
    fake_zip.write_bytes(b"PK\x03\x04 not really a zip archive")

    assert sniff_pickle(zipped) == "a torch.save file (a zip archive holding a pickle)"
    assert sniff_pickle(legacy) == "a torch.save file in the legacy format (a pickle)"
    assert sniff_pickle(script) is not None and "TorchScript" in sniff_pickle(script)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        pickled = tmp_path / f"protocol{protocol}.pkl"
        pickled.write_bytes(pickle.dumps({"a": [1, 2]}, protocol=protocol))
        assert sniff_pickle(pickled) == "a pickle file", protocol
    for other in (safetensors_file, plain_zip, random_bytes, empty, fake_zip, tmp_path):
        assert sniff_pickle(other) is None, other
    assert sniff_pickle(tmp_path / "missing.pt") is None


@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink", "hardlink"])
def test_target_equal_to_source_is_refused(tmp_path: Path, spelling: str) -> None:
    source = saved(tmp_path / "model.pt", {"a": torch.ones(2)})
    before = source.read_bytes()
    target = {
        "same": source,
        "dotted": tmp_path / "sub" / ".." / "model.pt",
        "symlink": tmp_path / "link.pt",
        "hardlink": tmp_path / "hard.pt",
    }[spelling]
    (tmp_path / "sub").mkdir()
    if spelling == "symlink":
        target.symlink_to(source)
    elif spelling == "hardlink":
        os.link(source, target)
    with pytest.raises(OverwriteError) as error:
        convert_to_safetensors(source, target)
    assert "would destroy it" in one_paragraph(error)
    assert isinstance(error.value, UsageError) and error.value.exit_code == 2
    assert source.read_bytes() == before


def test_an_unstorable_dtype_leaves_no_target(tmp_path: Path) -> None:
    source = saved(
        tmp_path / "c.pt", {"ok": torch.ones(2), "z": torch.ones(2, dtype=torch.cdouble)}
    )
    target = tmp_path / "c.safetensors"
    target.write_bytes(b"the old file")
    with pytest.raises(TensorFileError) as error:
        convert_to_safetensors(source, target)
    message = one_paragraph(error)
    assert "complex128" in message and "'z'" in message
    assert target.read_bytes() == b"the old file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "c.safetensors"]


def test_errors_name_the_problem(tmp_path: Path) -> None:
    target = tmp_path / "out.safetensors"
    not_pickle = tmp_path / "notes.txt"
    not_pickle.write_text("just text")
    already = tmp_path / "already.safetensors"
    save_file({"a": torch.ones(2)}, already)
    no_tensors = saved(tmp_path / "meta.pt", {"epoch": 3, "name": "run", "lrs": [0.1, 0.01]})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(saved(tmp_path / "whole.pt", {"a": torch.ones(100)}).read_bytes()[:400])
    corrupt_pickle = tmp_path / "corrupt.pkl"
    corrupt_pickle.write_bytes(b"\x80\x02 these are not pickle opcodes")
    clashing = saved(tmp_path / "clash.pt", {"a.b": torch.ones(1), "a": {"b": torch.zeros(1)}})
    script = torchscript_file(tmp_path / "script.pt")
    cases = {
        tmp_path / "missing.pt": "does not exist",
        tmp_path: "is not a file",
        not_pickle: "is not a torch.save or pickle file",
        already: "is already a safetensors file",
        no_tensors: "holds no tensors",
        truncated: "corrupt or truncated",
        corrupt_pickle: "corrupt",
        clashing: "two tensors named 'a.b'",
        script: "state_dict()",
    }
    for source, expected in cases.items():
        with pytest.raises(TensorFileError) as error:
            convert_to_safetensors(source, target)
        assert expected in one_paragraph(error), source
        assert error.value.exit_code == 2
        assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

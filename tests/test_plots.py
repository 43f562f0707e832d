"""jvpcli.plots: one PNG of histograms and images of tensors, drawn headless."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy
import pytest
import torch

from jvpcli import plots
from jvpcli.errors import UsageError
from jvpcli.plots import plot_tensors

DPI = 40  # small pictures: the tests check structure, not looks

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk, which must come first."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def pixels(path: Path) -> numpy.ndarray:
    """The PNG read back by matplotlib: (height, width, 4) RGBA values in [0, 1]."""
    image = pytest.importorskip("matplotlib.image")
    return image.imread(path, format="png")


def expected_size(rows: int) -> tuple[int, int]:
    height = plots.HEADER_HEIGHT + rows * plots.ROW_HEIGHT + plots.FOOTER_HEIGHT
    return round(plots.FIGURE_WIDTH * DPI), round(height * DPI)


def count_colour(rgba: numpy.ndarray, colour: tuple[float, ...]) -> int:
    close = numpy.abs(rgba[..., :3] - numpy.asarray(colour)).max(axis=-1) <= 1.5 / 255
    return int(close.sum())


def assert_not_blank(rgba: numpy.ndarray) -> None:
    assert rgba.var() > 0
    assert len(numpy.unique(rgba.reshape(-1, rgba.shape[-1]), axis=0)) >= 8


@pytest.mark.parametrize("rows", [1, 2, 3])
def test_picture_has_one_row_per_tensor(tmp_path: Path, rows: int) -> None:
    pytest.importorskip("matplotlib")
    tensors = {f"t{i}": torch.randn(6, 5) for i in range(rows)}
    path = tmp_path / "tensors.png"
    plot_tensors(tensors, path, title="three", dpi=DPI)
    assert png_size(path) == expected_size(rows)
    rgba = pixels(path)
    assert rgba.shape[:2] == expected_size(rows)[::-1]
    assert_not_blank(rgba)


@pytest.mark.parametrize(
    "tensor",
    [
        torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 2.0, 3.0]),
        torch.tensor([[float("nan"), 1.0], [float("inf"), -2.0]]),
        torch.full((3, 3), float("nan")),
        torch.randint(-5, 100, (4, 7)),
        torch.arange(10**6).reshape(1000, 1000) * 10**9,  # many distinct integers, subsampled
        torch.rand(5, 5) > 0.5,
        torch.randn(4, 6, dtype=torch.complex64),
        torch.tensor(2.5),
        torch.tensor(7),
        torch.ones(0, 3),
        torch.ones(0),
        torch.randn(2, 3, 8, dtype=torch.bfloat16),
        torch.randn(3, 700, 300, dtype=torch.float16),  # 3 channels, but not an RGB picture
    ],
    ids=[
        "nonfinite",
        "nonfinite-2d",
        "all-nan",
        "int",
        "int-large",
        "bool",
        "complex",
        "0-dim",
        "0-dim-int",
        "empty-2d",
        "empty",
        "bfloat16-3d",
        "float16-large",
    ],
)
def test_any_tensor_draws(tmp_path: Path, tensor: torch.Tensor) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "one.png"
    plot_tensors({"x": tensor}, path, dpi=DPI)
    assert png_size(path) == expected_size(1)
    assert_not_blank(pixels(path))


def test_a_three_channel_picture_is_shown_in_colour(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    red = torch.zeros(2, 3, 32, 32)
    red[0, 0] = 1.0  # the first picture is red, the second (not shown) green
    red[1, 1] = 1.0
    for name, tensor in {"float": red, "bytes": (red * 255).to(torch.uint8)}.items():
        path = tmp_path / f"{name}.png"
        plot_tensors({"image": tensor}, path, dpi=DPI)
        rgba = pixels(path)
        assert count_colour(rgba, (1.0, 0.0, 0.0)) > 1000, name
        assert count_colour(rgba, (0.0, 1.0, 0.0)) == 0, name


def test_signed_heatmap_is_centred_at_zero(tmp_path: Path) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    values = torch.full((20, 20), 3.0)
    values[:, :10] = -1.0
    path = tmp_path / "signed.png"
    plot_tensors({"v": values}, path, dpi=DPI)
    rgba = pixels(path)
    colormap = matplotlib.colormaps["RdBu_r"]
    # Centred, -1 and 3 take the colours of 1/3 and 1 of the way along [-3, 3]; uncentred, -1
    # would take the colormap's first colour, which only the colorbar then shows.
    assert count_colour(rgba, colormap(1 / 3)[:3]) > 1000
    assert count_colour(rgba, colormap(1.0)[:3]) > 1000
    assert count_colour(rgba, colormap(0.0)[:3]) < 100


def test_only_the_first_tensors_are_drawn(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    tensors = {f"t{i}": torch.randn(4) for i in range(plots.MAX_TENSORS + 3)}
    path = tmp_path / "many.png"
    plot_tensors(tensors, path, dpi=DPI)
    assert png_size(path) == expected_size(plots.MAX_TENSORS)
    assert_not_blank(pixels(path))


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figure = pytest.importorskip("matplotlib.figure")

    def broken_savefig(self: object, *args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    path = tmp_path / "out.png"
    monkeypatch.setattr(figure.Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="No space left"):
        plot_tensors({"x": torch.randn(3, 3)}, path, dpi=DPI)
    assert list(tmp_path.iterdir()) == []
    path.write_bytes(b"the old picture")
    with pytest.raises(OSError):
        plot_tensors({"x": torch.randn(3, 3)}, path, dpi=DPI)
    assert list(tmp_path.iterdir()) == [path]
    assert path.read_bytes() == b"the old picture"


def test_nothing_to_draw_is_an_error(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="at least one tensor"):
        plot_tensors({}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_without_matplotlib_the_message_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UsageError) as error:
        plot_tensors({"x": torch.ones(2)}, tmp_path / "out.png")
    message = str(error.value)
    assert "pip install 'jvpcli[plot]'" in message
    assert "matplotlib" in message
    assert "\n" not in message
    assert error.value.exit_code == 2
    assert not (tmp_path / "out.png").exists()

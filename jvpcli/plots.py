"""Pictures of tensors: one PNG with, for each tensor, a histogram of its values and an image.

Each tensor gets a row: on the left a histogram of its finite values (its NaN and Inf counts in the
title); on the right, for tensors of two or more dimensions, a heatmap of its last two dimensions
(at the first index of the leading ones), or an RGB picture of a ``(..., 3, H, W)`` tensor whose
values lie in [0, 1] or [0, 255]. Complex tensors are shown by their magnitude. matplotlib is an
optional extra (``pip install 'jvpcli[plot]'``), imported only when a picture is drawn, and only
through its object-oriented API and the Agg renderer: no window, no display, no pyplot state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from jvpcli.errors import UsageError, format_shape
from jvpcli.files import write_atomically
from jvpcli.tensors import tensor_stats

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "FIGURE_WIDTH",
    "FOOTER_HEIGHT",
    "HEADER_HEIGHT",
    "MAX_TENSORS",
    "ROW_HEIGHT",
    "plot_tensors",
]

MAX_TENSORS = 12
"""How many tensors one picture shows; the others are counted in its footer."""
FIGURE_WIDTH = 9.0
"""The picture's width, in inches."""
ROW_HEIGHT = 2.4
"""The height of each tensor's row, in inches."""
HEADER_HEIGHT = 0.55
"""The height above the rows (the title), in inches."""
FOOTER_HEIGHT = 0.5
"""The height below the rows (the "... and N more" line), in inches."""

_MAX_IMAGE_SIDE = 256  # larger images are subsampled: a PNG row is ~350 px tall anyway
_HISTOGRAM_BINS = 50
_MAX_NAME = 48
_BAD_COLOUR = "magenta"  # NaN and Inf pixels, unlike any colour of the colormaps used


def plot_tensors(
    tensors: Mapping[str, torch.Tensor],
    path: Path,
    *,
    title: str | None = None,
    dpi: int = 100,
) -> None:
    """Draw ``tensors`` into one PNG file, written atomically.

    Each tensor (the first :data:`MAX_TENSORS`; the others are counted in the footer) gets a row
    of height :data:`ROW_HEIGHT`: a histogram of its finite values, with its dtype, shape and NaN
    and Inf counts in the title (integer and bool tensors: a histogram of their values; complex
    ones: of their magnitudes; empty ones: a panel saying "empty"), and for a tensor of two or
    more dimensions an image of its last two at the first index of the leading ones (the title
    says which, e.g. ``jvp[0, 0, :, :]``): a heatmap with a colorbar, on a diverging colormap
    centred at 0 when it holds negative values; a ``(..., 3, H, W)`` tensor whose finite values lie
    in [0, 1] (or are integers in [0, 255]) is shown as an RGB picture. Images with a side longer
    than 256 are subsampled (the title says by how much); NaN and Inf pixels are magenta.

    The picture is ``FIGURE_WIDTH * dpi`` pixels wide and ``(HEADER_HEIGHT + rows * ROW_HEIGHT +
    FOOTER_HEIGHT) * dpi`` tall, rounded to whole pixels.

    Args:
        tensors: the tensors by name, on any device, of any dtype and shape.
        path: the PNG file to write; missing parent folders are created.
        title: the picture's title, or ``None`` for none.
        dpi: pixels per inch.

    Raises:
        UsageError: matplotlib is not installed (the ``plot`` extra).
        ValueError: ``tensors`` is empty, or ``dpi`` is not positive.
        OSError: the file cannot be written; ``path`` is left as it was.
    """
    try:
        # ``import matplotlib`` first: it fails when matplotlib is absent (or blocked), even if
        # its submodules are already loaded.
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(
            "drawing tensors needs matplotlib, which is not installed: it is the optional 'plot' "
            "extra of jvpcli. Install it with pip install 'jvpcli[plot]' (or pip install "
            "matplotlib) and run the command again."
        ) from None
    if not tensors:
        raise ValueError("plot_tensors needs at least one tensor to draw")
    if dpi <= 0:
        raise ValueError(f"dpi must be positive, got {dpi}")
    shown = list(tensors.items())[:MAX_TENSORS]
    rows = len(shown)
    height = HEADER_HEIGHT + rows * ROW_HEIGHT + FOOTER_HEIGHT
    figure = Figure(figsize=(FIGURE_WIDTH, height), dpi=dpi)
    grid = figure.add_gridspec(
        rows,
        2,
        left=0.08,
        right=0.95,
        top=1 - HEADER_HEIGHT / height,
        bottom=FOOTER_HEIGHT / height,
        hspace=0.6,
        wspace=0.3,
    )
    for row, (name, tensor) in enumerate(shown):
        panel = _Panel.of(_short(name), tensor)
        _draw_histogram(figure.add_subplot(grid[row, 0]), panel)
        if panel.values.dim() >= 2 and panel.values.numel():
            _draw_image(figure, figure.add_subplot(grid[row, 1]), panel)
    if title is not None:
        figure.suptitle(title, y=1 - 0.2 / height, fontsize=11)
    if len(tensors) > MAX_TENSORS:
        more = len(tensors) - MAX_TENSORS
        figure.text(
            0.5,
            0.1 / height,
            f"… and {more} more tensor{'s' if more > 1 else ''}, not shown",
            ha="center",
            va="bottom",
            fontsize=9,
        )
    write_atomically(path, lambda temporary: figure.savefig(temporary, format="png"))


@dataclass(frozen=True)
class _Panel:
    """A tensor as it is drawn: its values as a real CPU tensor, and how titles name them."""

    name: str
    values: torch.Tensor  # float32/float64, or int64 for integers and bools
    description: str  # dtype and shape, and "magnitude" for complex tensors
    kind: str  # "float", "int" or "bool"
    nonfinite: str  # "" or e.g. "2 NaN, 1 Inf"

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor) -> _Panel:
        values = tensor.detach().cpu()
        dtype = str(values.dtype).removeprefix("torch.")
        description = f"{dtype} {format_shape(values.shape)}"
        if values.is_complex():
            values, name = values.abs(), f"|{name}|"
            description += ", magnitude"
        if values.dtype == torch.bool:
            kind, values = "bool", values.to(torch.int64)
        elif values.dtype.is_floating_point:
            kind = "float"
            if values.dtype != torch.float64:
                values = values.to(torch.float32)  # numpy has no bfloat16 nor float8
        else:
            kind, values = "int", values.to(torch.int64)
        nonfinite = ""
        if kind == "float" and values.numel():
            stats = tensor_stats(values)
            nonfinite = ", ".join(
                f"{count} {what}"
                for count, what in ((stats.nan, "NaN"), (stats.inf, "Inf"))
                if count
            )
        return cls(name, values, description, kind, nonfinite)


def _draw_histogram(axes: Axes, panel: _Panel) -> None:
    title = f"{panel.name}: {panel.description}"
    values = panel.values.reshape(-1)
    if panel.values.dim() == 0:
        title += f" = {panel.values.item():.6g}"
    if panel.nonfinite:
        title += f" ({panel.nonfinite})"
    axes.set_title(title, fontsize=8, loc="left")
    axes.tick_params(labelsize=7)
    if panel.kind == "float":
        values = values[torch.isfinite(values)]
    if not values.numel():
        axes.text(
            0.5,
            0.5,
            "empty" if not panel.values.numel() else "no finite values",
            ha="center",
            va="center",
            transform=axes.transAxes,
            fontsize=10,
        )
        axes.set_xticks([])
        axes.set_yticks([])
        return
    counts, edges = _histogram(values, panel.kind)
    axes.stairs(counts.numpy(), edges.numpy(), fill=True, color="tab:blue")
    if panel.kind == "bool":
        axes.set_xticks([0, 1], ["False", "True"])
    axes.set_ylabel("count", fontsize=7)


def _histogram(values: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts and bin edges of ``values`` (finite, non-empty): integers get whole-number bins when
    they span few values, so that each bar is one value."""
    wide = values.to(torch.float64)
    low, high = wide.min().item(), wide.max().item()
    if kind in ("int", "bool") and high - low < _HISTOGRAM_BINS:
        edges = torch.arange(low - 0.5, high + 1.0, 1.0, dtype=torch.float64)
    elif low == high:
        edges = torch.tensor([low - 0.5, high + 0.5], dtype=torch.float64)
    else:
        edges = torch.linspace(low, high, _HISTOGRAM_BINS + 1, dtype=torch.float64)
    counts = torch.histc(wide, bins=len(edges) - 1, min=edges[0].item(), max=edges[-1].item())
    return counts, edges


def _draw_image(figure: Figure, axes: Axes, panel: _Panel) -> None:
    values = panel.values
    rgb = _rgb_scale(values, panel.kind)
    trailing = 3 if rgb is not None else 2
    leading = values.dim() - trailing
    picture = values[(0,) * leading]
    where = panel.name
    if leading:
        where += "[" + ", ".join(["0"] * leading + [":"] * trailing) + "]"
    height, width = picture.shape[-2:]
    step = max(math.ceil(height / _MAX_IMAGE_SIDE), math.ceil(width / _MAX_IMAGE_SIDE))
    picture = picture[..., ::step, ::step]
    if step > 1:
        where += f", every {step}th row and column"
    axes.tick_params(labelsize=7)
    if rgb is not None:
        shown = (picture.to(torch.float64) / rgb).clamp(0, 1).permute(1, 2, 0)
        axes.imshow(shown.numpy(), interpolation="nearest", aspect="auto")
        axes.set_title(f"{where} as RGB", fontsize=8, loc="left")
        return
    image, options = _heatmap(picture, panel.kind)
    drawn = axes.imshow(image, interpolation="nearest", aspect="auto", **options)
    colorbar = figure.colorbar(drawn, ax=axes, fraction=0.05, pad=0.03)
    colorbar.ax.tick_params(labelsize=7)
    if panel.nonfinite:
        where += f" (NaN and Inf in {_BAD_COLOUR})"
    axes.set_title(where, fontsize=8, loc="left")


def _rgb_scale(values: torch.Tensor, kind: str) -> float | None:
    """The value of full intensity (1 or 255) when ``values`` is a ``(..., 3, H, W)`` picture:
    finite values in [0, 1], or integer-valued in [0, 255]; else ``None``."""
    if kind == "bool" or values.dim() < 3 or values.shape[-3] != 3:
        return None
    picture = values[(0,) * (values.dim() - 3)]
    if kind == "float" and not bool(torch.isfinite(picture).all()):
        return None
    low, high = picture.min().item(), picture.max().item()
    if low < 0:
        return None
    if high <= 1:
        return 1.0
    integral = kind == "int" or bool((picture == picture.round()).all())
    return 255.0 if high <= 255 and integral else None


def _heatmap(picture: torch.Tensor, kind: str) -> tuple[Any, dict[str, Any]]:
    """The image to show (non-finite values masked) and ``imshow``'s colour options."""
    import matplotlib
    import numpy

    data = picture.to(torch.float64).numpy()
    masked = numpy.ma.masked_invalid(data)
    if kind == "bool":
        return masked, {"cmap": _colormap(matplotlib, "gray_r"), "vmin": 0, "vmax": 1}
    finite = data[numpy.isfinite(data)]
    if not finite.size:
        return masked, {"cmap": _colormap(matplotlib, "viridis")}
    low, high = float(finite.min()), float(finite.max())
    if low < 0:
        bound = max(-low, high)
        return masked, {"cmap": _colormap(matplotlib, "RdBu_r"), "vmin": -bound, "vmax": bound}
    return masked, {"cmap": _colormap(matplotlib, "viridis"), "vmin": low, "vmax": high}


def _colormap(matplotlib: Any, name: str) -> Any:
    return matplotlib.colormaps[name].with_extremes(bad=_BAD_COLOUR)


def _short(name: str) -> str:
    return name if len(name) <= _MAX_NAME else name[: _MAX_NAME - 1] + "…"

"""oneDNN's matmul, where it beats the one ``torch.mm`` / ``F.linear`` call (MKL's) on CPU.

On this project's machine (AMD EPYC, 2 cores) oneDNN's float32 matmul runs at 0.56-0.94x the
time of MKL's for a weight of 2^17 values or more (``python benchmarks/matmul.py`` prints the grid),
and PyTorch's fused LSTM forward uses it too. The rules use it for products they compute with grad
mode off (it has no autograd formula) outside functorch transforms (no batching rule) and outside
tracing (a compiled graph picks its own kernels); float64, other devices, small weights (where its
~15 µs more per call dominate) and builds without oneDNN take ``mm``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

MIN_WEIGHT = 1 << 17
"""The smallest weight, in values, that goes to oneDNN."""


def _ops() -> tuple[Callable[..., Tensor], Callable[..., Tensor]] | None:
    try:
        return torch.ops.mkldnn._linear_pointwise.default, torch.ops.mkldnn._reorder_linear_weight
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return None


OPS = _ops()
"""``(linear, reorder)``: ``linear(x, W, b, "none", [], "")`` is ``x @ W.T + b`` (``W`` plain, or
laid out by ``reorder(W, rows)`` once for many products of about ``rows`` rows)."""


def usable(x: Tensor, weight: Tensor) -> bool:
    """Whether ``x @ weight.T`` goes to oneDNN (``weight``: ``(out, in)``, contiguous)."""
    return (
        OPS is not None
        and not torch.compiler.is_compiling()  # first: dynamo cannot trace the calls below
        and weight.numel() >= MIN_WEIGHT
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and weight.is_contiguous()
        and not torch.is_grad_enabled()
        and torch._C._functorch.maybe_current_level() is None
        and torch._C._get_mkldnn_enabled()
    )


def linear(rows: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``rows @ weight.T + bias`` by oneDNN, for ``usable(rows, weight)`` (``rows``: 2-D)."""
    return OPS[0](rows.contiguous(), weight, bias, "none", [], "")

"""A function built on a custom ``torch.autograd.Function`` with ``backward`` but no ``jvp``.

Forward-mode AD cannot differentiate it: ``method: auto`` falls back to double-backward, and
``method: forward`` fails.
"""

import torch


class SoftSign(torch.autograd.Function):
    """x / (1 + |x|), with a hand-written backward and no jvp."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x / (1 + x.abs())

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad_output / (1 + x.abs()) ** 2


def soft_sign_mix(x: torch.Tensor) -> torch.Tensor:
    """Soft-sign of x, mixed across the last dimension by a cumulative sum."""
    return SoftSign.apply(x).cumsum(dim=-1)

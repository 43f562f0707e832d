"""The two functions of PyTorch's ``torch.autograd.functional.jvp`` documentation."""

import torch


def exp_reducer(x: torch.Tensor) -> torch.Tensor:
    """Sum of exp(x) along each row."""
    return x.exp().sum(dim=1)


def adder(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """2x + 3y: its JVP along (v_x, v_y) is 2 v_x + 3 v_y."""
    return 2 * x + 3 * y

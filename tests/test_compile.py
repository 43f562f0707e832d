"""jvpcli and torch.compile: inside someone else's compiled function, and jvpcli's own compile=True.

The oracle is torch.autograd.functional.jvp (and, for the compiled path, float64 central
differences). Compiling takes seconds on a small machine: the tests are few and small, use the
"eager" backend where only the plumbing is checked, and inductor for a couple.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jvp as torch_jvp

import jvpcli

INSIDE_COMPILE = "jvpcli cannot run inside a compiled or exported function"


def linear() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


CALLERS = {
    "jvp": lambda f, x, v, **flags: jvpcli.jvp(f, x, v, **flags)[1],
    "jvp_tree": lambda f, x, v, **flags: jvpcli.jvp_tree(f, (x,), tangents=(v,), **flags).jvp,
}


# ------------------------------------------------------------------------------------------------
# Inside someone else's torch.compile: dynamo breaks the graph around jvpcli, which runs eagerly.


@pytest.mark.parametrize("backend", ["eager", "inductor"])
@pytest.mark.parametrize("make", [lambda: torch.sin, linear], ids=["sin", "Linear"])
def test_jvp_inside_a_compiled_function_equals_pytorchs(backend, make) -> None:
    func = make()
    x = torch.randn(2, 4)
    v = torch.randn(2, 4)
    expected = torch_jvp(func, x, v)[1]
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, v: jvpcli.jvp(func, x, v)[1] * 2, backend=backend)
    torch.testing.assert_close(compiled(x, v), 2 * expected)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("flags", [{}, {"strict": True}, {"batched_v": True}], ids=str)
def test_every_entry_point_and_flag_inside_a_compiled_function_equals_pytorchs(
    caller, flags
) -> None:
    # strict=True once gave a zero jvp here, traced by dynamo into the graph.
    func = linear()
    x = torch.randn(2, 4)
    v = torch.randn(2, 4)
    expected = torch_jvp(func, x, v)[1]
    tangent = v.unsqueeze(0) if flags.get("batched_v") else v
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, t: CALLERS[caller](func, x, t, **flags), backend="eager")
    got = compiled(x, tangent)
    torch.testing.assert_close(got[0] if flags.get("batched_v") else got, expected)


def test_jvp_under_fullgraph_raises_the_clear_error() -> None:
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda x, v: jvpcli.jvp(torch.sin, x, v), backend="eager", fullgraph=True
    )
    with pytest.raises(Exception, match=INSIDE_COMPILE):
        compiled(torch.randn(3), torch.randn(3))


def test_jvp_under_torch_export_raises_the_clear_error() -> None:
    class Jvp(torch.nn.Module):
        def forward(self, x, v):
            return jvpcli.jvp(torch.sin, x, v)[1]

    with pytest.raises(RuntimeError, match=INSIDE_COMPILE):
        torch.export.export(Jvp(), (torch.randn(3), torch.randn(3)), strict=False)

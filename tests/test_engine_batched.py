"""batched_v=True: K directions at once equal K separate torch.autograd.functional.jvp calls."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jvp as torch_jvp

from jvpcli import METHODS, jvp, jvp_with_info

ALL_METHODS = pytest.mark.parametrize("method", METHODS)
D = torch.float64


class Cube(torch.autograd.Function):
    """No jvp: forward mode cannot go through it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * grad


def per_direction(func, inputs, v, **flags):
    """The oracle: one torch.autograd.functional.jvp call per direction, stacked."""
    is_tuple = isinstance(inputs, tuple)
    vs = v if is_tuple else (v,)
    results = [
        torch_jvp(func, inputs, tuple(t[k] for t in vs) if is_tuple else vs[0][k], **flags)
        for k in range(vs[0].shape[0])
    ]
    outputs, first = results[0]
    if isinstance(first, tuple):
        return outputs, tuple(torch.stack([r[1][i] for r in results]) for i in range(len(first)))
    return outputs, torch.stack([r[1] for r in results])


torch.manual_seed(0)
MLP = torch.nn.Sequential(
    torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3), torch.nn.Softplus()
).double()

CASES = [
    pytest.param(lambda x: x.exp().sum(dim=1), [(4, 5)], id="exp-reducer"),
    pytest.param(MLP, [(7, 6)], id="mlp"),
    pytest.param(lambda x, y: (2 * x + 3 * y, (x * y).sum()), [(3,), (3,)], id="tuple-in-out"),
    pytest.param(lambda x: (x @ x.T).trace() * 0.5 + x.sin().sum(), [(3, 3)], id="scalar-output"),
    pytest.param(lambda x: x * 2.0, [()], id="zero-dim"),
]


@ALL_METHODS
@pytest.mark.parametrize(("func", "shapes"), CASES)
@pytest.mark.parametrize("directions", [1, 5])
def test_batched_v_equals_one_torch_call_per_direction(func, shapes, directions, method):
    inputs = tuple(torch.randn(s, dtype=D) for s in shapes)
    v = tuple(torch.randn((directions, *s), dtype=D) for s in shapes)
    if len(shapes) == 1:
        inputs, v = inputs[0], v[0]
    expected = per_direction(func, inputs, v)
    got = jvp(func, inputs, v, method=method, batched_v=True)
    torch.testing.assert_close(got, expected)


@ALL_METHODS
@pytest.mark.parametrize("create_graph", [False, True], ids=["no-graph", "graph"])
def test_batched_v_with_strict_and_create_graph(create_graph, method):
    def func(x, y):
        return (x.sin() * y).sum(0), x.cos()

    inputs = (torch.randn(3, 2, dtype=D), torch.randn(3, 2, dtype=D))
    v = (torch.randn(4, 3, 2, dtype=D), torch.randn(4, 3, 2, dtype=D))
    expected = per_direction(func, inputs, v, strict=True, create_graph=create_graph)
    got = jvp(
        func, inputs, v, strict=True, create_graph=create_graph, method=method, batched_v=True
    )
    torch.testing.assert_close(got, expected)
    assert all(t.requires_grad == create_graph for t in got[1])


@ALL_METHODS
def test_batched_v_strict_violation_raises_like_torch(method):
    def func(x, y):
        return x.sin()

    inputs = (torch.randn(3), torch.randn(3))
    v = (torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(RuntimeError, match="independent of input 1"):
        jvp(func, inputs, v, strict=True, method=method, batched_v=True)


def test_batched_v_falls_back_to_double_backward_for_a_custom_function():
    x, v = torch.randn(5, dtype=D), torch.randn(3, 5, dtype=D)
    result = jvp_with_info(lambda t: Cube.apply(t).sum(), x, v, batched_v=True)
    torch.testing.assert_close(
        (result.func_output, result.jvp), per_direction(lambda t: Cube.apply(t).sum(), x, v)
    )
    assert result.info.method_used == "double-backward"


def test_batched_v_gives_zero_tangents_to_independent_and_integer_outputs():
    x, v = torch.randn(4), torch.randn(3, 4)
    out, tangents = jvp(lambda t: (t.tanh(), t.argmax(), torch.ones(2)), x, v, batched_v=True)
    torch.testing.assert_close(tangents[0], v * (1 - x.tanh() ** 2))
    assert torch.equal(tangents[1], torch.zeros(3, dtype=torch.int64))
    assert torch.equal(tangents[2], torch.zeros(3, 2))
    assert out[1] == x.argmax()


def test_batched_v_lstm_runs_in_forward_mode():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4, batch_first=True).eval()
    x, v = torch.randn(2, 5, 3), torch.randn(6, 2, 5, 3)
    result = jvp_with_info(lambda t: lstm(t)[0], x, v, batched_v=True)
    torch.testing.assert_close(
        (result.func_output, result.jvp), per_direction(lambda t: lstm(t)[0], x, v)
    )
    assert result.info.method_used == "forward"


def test_batched_v_none_for_a_one_element_input_is_one_direction():
    out, tangent = jvp(lambda t: t.exp() * 3, torch.tensor(0.5), None, batched_v=True)
    torch.testing.assert_close(tangent, (torch.tensor(0.5).exp() * 3).reshape(1))
    assert out.shape == ()


@pytest.mark.parametrize(
    ("inputs", "v", "message"),
    [
        pytest.param(
            torch.ones(3), torch.ones(3), r"v has invalid size: with batched_v=True", id="no-K"
        ),
        pytest.param(
            (torch.ones(3), torch.ones(2)),
            (torch.ones(4, 3), torch.ones(5, 2)),
            r"Entry 1 in v has invalid size: .*same K.*torch.Size\(\[4, 2\]\)",
            id="different-K",
        ),
    ],
)
def test_batched_v_size_errors_say_what_is_expected(inputs, v, message):
    with pytest.raises(RuntimeError, match=message):
        jvp(lambda *xs: xs[0], inputs, v, batched_v=True)


def test_batched_v_does_not_modify_caller_tensors():
    x, v = torch.randn(3, 4), torch.randn(2, 3, 4)
    x_before, v_before = x.clone(), v.clone()
    jvp(lambda t: (t + 1).mul_(2) * 3, x, v, batched_v=True)
    assert torch.equal(x, x_before)
    assert torch.equal(v, v_before)

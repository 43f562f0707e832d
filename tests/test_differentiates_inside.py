"""Functions that differentiate inside themselves: forward over their own backward pass.

A force field (the gradient of an energy), a saliency map, a gradient penalty, a model's weight
gradient, a jvp of torch.autograd.functional inside: each calls torch.autograd.grad (or
``backward``, or ``torch.func.grad``) on the dual tensors. The tangent then has to flow through
that backward pass, whose saved tensors must carry it; jvpcli's fast rules record primal-only
graphs, so such a function is rerun with PyTorch's own forward rules. These used to return a zero
or partial jvp silently. The oracle is torch.autograd.functional.jvp (on the math SDPA backend,
where the fused kernels have no double backward), and, for weight directions, the same over
torch.func.functional_call.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_engine_batched import Cube  # a custom Function without a jvp: auto falls back
from torch.autograd.functional import jvp as torch_jvp
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from jvpcli import jvp, jvp_tree, jvp_with_info


def _net(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1), torch.nn.Softplus()
    ).to(dtype)


def force(net):
    """The gradient of an energy with respect to the positions."""

    def f(x):
        with torch.enable_grad():
            return torch.autograd.grad(net(x).sum() + (x.sin() ** 2).sum(), x, create_graph=True)[0]

    return f


def weight_gradient(net):
    """The gradient with respect to a weight: the inputs are not what is differentiated."""

    def f(x):
        with torch.enable_grad():
            return torch.autograd.grad(net(x).sum(), net[0].weight, create_graph=True)[0]

    return f


def func_grad(net):
    return lambda x: torch.func.grad(lambda t: (net(t) ** 2).sum())(x)


def tensor_backward(net):
    """``.backward()`` into a leaf made inside, its ``.grad`` returned."""

    def f(x):
        with torch.enable_grad():
            w = torch.zeros_like(x, requires_grad=True)
            (net(x * (1 + w)) ** 2).sum().backward(create_graph=True)
            return w.grad

    return f


def autograd_backward(net):
    def f(x):
        with torch.enable_grad():
            w = torch.ones(x.shape[-1], dtype=x.dtype, requires_grad=True)
            torch.autograd.backward(net(x * w).sum(), inputs=[w], create_graph=True)
            return w.grad * x.cos()

    return f


def inner_functional_jvp(net):
    """torch.autograd.functional.jvp inside: it detaches inputs that do not require grad."""
    return lambda x: torch.autograd.functional.jvp(net, x, x.cos(), create_graph=True)[1]


def caught(net):
    """A function that catches what goes wrong inside and returns something else."""

    def f(x):
        with torch.enable_grad():
            try:
                return torch.autograd.grad(net(x).sum(), x, create_graph=True)[0]
            except RuntimeError:
                return x * 2

    return f


def attention_gradient(_):
    def f(x):
        with torch.enable_grad():
            q = x.reshape(1, 2, 3, 4)
            out = torch.nn.functional.scaled_dot_product_attention(q, q.tanh(), q.sin())
            return torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)[0]

    return f


def lstm_gradient(net):
    torch.manual_seed(1)
    # Converted here: nn.LSTM.to() under vmap and forward AD crashes PyTorch 2.13 (a segfault).
    lstm = torch.nn.LSTM(4, 5, batch_first=True).to(next(net.parameters()).dtype)

    def f(x):
        with torch.enable_grad():
            out, _ = lstm(x.reshape(2, 3, 4))
            return torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)[0]

    return f


FUNCTIONS = [
    force,
    weight_gradient,
    func_grad,
    tensor_backward,
    autograd_backward,
    inner_functional_jvp,
    caught,
    attention_gradient,
    lstm_gradient,
]
FLAGS = [
    pytest.param({"method": "auto"}, id="auto"),
    pytest.param({"method": "forward"}, id="forward"),
    pytest.param({"method": "double-backward"}, id="double-backward"),
    pytest.param({"strict": True}, id="strict"),
    pytest.param({"create_graph": True}, id="create_graph"),
    pytest.param({"strict": True, "create_graph": True}, id="strict-create_graph"),
    pytest.param({"method": "forward", "create_graph": True}, id="forward-create_graph"),
]


def _oracle(func, x, v, **flags):
    with sdpa_kernel(SDPBackend.MATH):
        return torch_jvp(
            func, x, v, **{k: flags[k] for k in ("strict", "create_graph") if k in flags}
        )


def _tolerance(dtype):
    return {"atol": 1e-10, "rtol": 1e-8} if dtype == torch.float64 else {"atol": 2e-5, "rtol": 2e-4}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("flags", FLAGS)
@pytest.mark.parametrize("make", FUNCTIONS, ids=lambda make: make.__name__)
def test_jvp_of_a_function_that_differentiates_inside_matches_torch(make, flags, dtype):
    func = make(_net(dtype))
    torch.manual_seed(2)
    x = torch.randn(6, 4, dtype=dtype)
    v = torch.randn(6, 4, dtype=dtype)
    expected = _oracle(func, x, v, **flags)
    result = jvp_with_info(func, x, v, **flags)
    torch.testing.assert_close((result.func_output, result.jvp), expected, **_tolerance(dtype))
    assert result.jvp.abs().max() > 0  # the lost tangent was a zero, silently
    if result.info.method_used == "forward" and flags.get("method") != "double-backward":
        # (torch.autograd.functional reads requires_grad before it differentiates)
        assert "PyTorch's own forward rules" in result.info.fallbacks[0].remedy


@pytest.mark.parametrize("make", FUNCTIONS, ids=lambda make: make.__name__)
def test_batched_directions_through_a_function_that_differentiates_inside(make):
    func = make(_net(torch.float64))
    torch.manual_seed(3)
    x = torch.randn(6, 4, dtype=torch.float64)
    directions = torch.randn(3, 6, 4, dtype=torch.float64)
    got = jvp(func, x, directions, batched_v=True)
    for k in range(3):
        torch.testing.assert_close(got[1][k], _oracle(func, x, directions[k])[1])


@pytest.mark.parametrize("make", [force, weight_gradient, caught], ids=lambda m: m.__name__)
def test_compiled_jvp_of_a_function_that_differentiates_inside_is_never_wrong(make):
    func = make(_net(torch.float64))
    x, v = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    result = jvp_with_info(func, x, v, compile="aot_eager")
    torch.testing.assert_close((result.func_output, result.jvp), _oracle(func, x, v))


def test_weight_directions_through_a_saliency_map_match_functional_call():
    class Saliency(torch.nn.Module):
        """The gradient of the model's score with respect to its input."""

        def __init__(self):
            super().__init__()
            self.net = _net(torch.float64)

        def forward(self, x):
            with torch.enable_grad():
                x = x if x.requires_grad else x.detach().requires_grad_()
                return torch.autograd.grad(self.net(x).sum(), x, create_graph=True)[0]

    model = Saliency()
    torch.manual_seed(4)
    x, v = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    names = [name for name, _ in model.named_parameters()]
    params = tuple(p.detach() for p in model.parameters())
    param_tangents = {name: torch.randn_like(p) for name, p in zip(names, params, strict=True)}

    def of_weights(x, *weights):
        return functional_call(model, dict(zip(names, weights, strict=True)), (x,))

    for input_tangent in (None, v):
        expected = torch_jvp(
            of_weights,
            (x, *params),
            (torch.zeros_like(x) if input_tangent is None else v, *param_tangents.values()),
        )[1]
        for flags in ({}, {"method": "forward"}, {"create_graph": True}):
            got = jvp_tree(
                model, (x,), tangents=(input_tangent,), param_tangents=param_tangents, **flags
            )
            torch.testing.assert_close(got.jvp, expected)


def test_gradient_without_create_graph_is_differentiated_in_forward_mode():
    # PyTorch's double-backward trick sees a result with no grad_fn (a zero jvp, or strict's
    # error); forward mode differentiates through the backward pass, as through torch.no_grad().
    def gradient(x):
        with torch.enable_grad():
            return torch.autograd.grad((x**3).sum(), x)[0]

    x, v = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    torch.testing.assert_close(jvp(gradient, x, v, method="forward")[1], 6 * x * v)
    torch.testing.assert_close(jvp(gradient, x, v)[1], 6 * x * v)
    torch.testing.assert_close(
        jvp(gradient, x, v, method="double-backward"), torch_jvp(gradient, x, v)
    )


# ------------------------------------------------------------------------------------------------
# Functions that read autograd's state: forward mode's world (grad mode off, inputs that do not
# require grad) would answer otherwise than torch.autograd.functional.jvp's, and the function
# would take another branch, silently.


def guarded_force(net):
    """A force computed only when the positions require grad (zeros otherwise)."""

    def f(x):
        if x.requires_grad:
            return -torch.autograd.grad(net(x).sum(), x, create_graph=True)[0]
        return torch.zeros_like(x)

    return f


def branches_on_requires_grad(_):
    return lambda x: x.sin() * (2.0 if x.sin().requires_grad else 3.0)


def branches_on_a_parameters_product(net):
    """A tensor computed from a parameter alone requires grad under PyTorch's jvp too."""
    return lambda x: net(x) * (2.0 if (net[0].weight * 2).requires_grad else 3.0)


def branches_on_a_tensor_made_to_require_grad(_):
    def f(x):
        scale = torch.ones((), dtype=x.dtype, requires_grad=True) * 2
        return x.exp() if scale.requires_grad else x.sin()

    return f


def catches_what_the_read_raises(_):
    def f(x):
        try:
            requires = (x * 2).requires_grad
        except RuntimeError:
            requires = True
        return x.exp() if requires else x.sin()

    return f


READERS = [
    guarded_force,
    branches_on_requires_grad,
    branches_on_a_parameters_product,
    branches_on_a_tensor_made_to_require_grad,
    catches_what_the_read_raises,
]


@pytest.mark.parametrize(
    "flags",
    [*FLAGS, pytest.param({"compile": "aot_eager"}, id="compile")],
)
@pytest.mark.parametrize("make", READERS, ids=lambda make: make.__name__)
def test_a_function_that_reads_autograds_state_sees_what_torch_shows_it(make, flags):
    func = make(_net(torch.float64))
    torch.manual_seed(5)
    x, v = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    result = jvp_with_info(func, x, v, **flags)
    torch.testing.assert_close((result.func_output, result.jvp), _oracle(func, x, v, **flags))
    if result.info.method_used == "forward" and not (
        flags.get("strict") or "create_graph" in flags
    ):
        assert any("autograd's state" in f.remedy for f in result.info.fallbacks)


@pytest.mark.parametrize("make", READERS, ids=lambda make: make.__name__)
def test_batched_directions_through_a_function_that_reads_autograds_state(make):
    func = make(_net(torch.float64))
    x = torch.randn(6, 4, dtype=torch.float64)
    directions = torch.randn(3, 6, 4, dtype=torch.float64)
    got = jvp(func, x, directions, batched_v=True)[1]
    torch.testing.assert_close(got, torch.stack([_oracle(func, x, d)[1] for d in directions]))


def _scaled_by_a_parameters_flag(net):
    # A parameter that requires grad reads True in both worlds: nothing to rerun.
    return lambda x: net(x) * (2.0 if net[0].weight.requires_grad else 3.0)


def _printed(net):
    def f(x):
        y = net(x)
        print(y, repr(y.sin()))  # torch's repr reads grad_fn and requires_grad
        return y

    return f


def _deep_copied(net):
    return lambda x: copy.deepcopy(x) * net(x)


@pytest.mark.parametrize(
    "make", [_scaled_by_a_parameters_flag, _printed, _deep_copied], ids=lambda m: m.__name__
)
def test_reads_that_agree_in_both_worlds_keep_the_fast_rules(make, capsys):
    func = make(_net(torch.float64))
    x, v = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    result = jvp_with_info(func, x, v)
    assert result.info.fallbacks == ()
    torch.testing.assert_close((result.func_output, result.jvp), _oracle(func, x, v))


def test_compiled_jvp_of_a_random_function_is_computed_eagerly():
    net = _dropout_net()
    x, v = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    torch.manual_seed(9)
    expected, after_torch = _oracle(net, x, v), torch.rand(3)
    for backend in (True, "aot_eager"):
        torch.manual_seed(9)
        result = jvp_with_info(net, x, v, compile=backend)
        assert "draws random numbers" in result.info.fallbacks[0].reason
        torch.testing.assert_close((result.func_output, result.jvp), expected)
        torch.testing.assert_close(torch.rand(3), after_torch)


def _hooked(net):
    def f(x):
        y = net(x)
        y.register_hook(lambda grad: grad)
        return y

    return f


def _retains_grad(net):
    def f(x):
        y = net(x)
        y.retain_grad()
        return y.tanh()

    return f


@pytest.mark.parametrize("flags", FLAGS)
@pytest.mark.parametrize("make", [_hooked, _retains_grad], ids=lambda m: m.__name__)
def test_a_function_that_hooks_into_autograds_graph_runs(make, flags):
    func = make(_net(torch.float64))
    x, v = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    result = jvp_with_info(func, x, v, **flags)
    torch.testing.assert_close((result.func_output, result.jvp), _oracle(func, x, v, **flags))


def test_a_failed_trace_leaves_no_forward_ad_level_open():
    def hooked(x):  # dynamo fails on the hook half-way through the compiled function's level
        y = x * 2
        y.register_hook(lambda grad: grad)
        return y * x

    x, v = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    result = jvp_with_info(hooked, x, v, compile="aot_eager")
    torch.testing.assert_close((result.func_output, result.jvp), _oracle(hooked, x, v))
    with torch.autograd.forward_ad.dual_level():  # "Nested forward mode AD" if one was left
        pass
    assert jvp_with_info(torch.sin, x, v, method="forward").info.method_used == "forward"


# ------------------------------------------------------------------------------------------------
# A function called again (a fallback, or one direction at a time) draws the random numbers its
# first call drew: the result is that of the function called once, as PyTorch's.


def _dropout_net():
    torch.manual_seed(6)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 32), torch.nn.Dropout(0.5), torch.nn.Tanh(), torch.nn.Linear(32, 1)
    ).to(torch.float64)


def _saliency_with_dropout(net):
    def f(x):
        with torch.enable_grad():
            return torch.autograd.grad(net(x).sum(), x, create_graph=True)[0]

    return f


@pytest.mark.parametrize(
    ("make", "method"),
    [
        pytest.param(_saliency_with_dropout, "auto", id="differentiates-inside"),
        pytest.param(_saliency_with_dropout, "forward", id="differentiates-inside-forward"),
        pytest.param(lambda net: lambda x: Cube.apply(net(x)), "auto", id="double-backward"),
    ],
)
@pytest.mark.parametrize("compile", [False, "aot_eager"])
def test_a_function_run_again_draws_the_random_numbers_of_its_first_run(make, method, compile):
    # With compile, the compiler's probe runs the function first: the eager runs after it start
    # from the state the function was called with all the same.
    func = make(_dropout_net())
    x, v = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    torch.manual_seed(7)
    expected, after_torch = _oracle(func, x, v), torch.rand(3)
    torch.manual_seed(7)
    result = jvp_with_info(func, x, v, method=method, compile=compile)
    assert result.info.fallbacks  # the function did run twice
    torch.testing.assert_close((result.func_output, result.jvp), expected)
    torch.testing.assert_close(torch.rand(3), after_torch)  # the state after one call


def test_directions_one_at_a_time_share_one_dropout_mask():
    net = _dropout_net()
    x = torch.randn(6, 4, dtype=torch.float64)
    directions = torch.randn(3, 6, 4, dtype=torch.float64)
    torch.manual_seed(8)
    result = jvp_with_info(net, x, directions, batched_v=True)  # vmap refuses randomness
    expected = []
    for direction in directions:
        torch.manual_seed(8)
        expected.append(_oracle(net, x, direction))
    torch.testing.assert_close(result.func_output, expected[0][0])
    torch.testing.assert_close(result.jvp, torch.stack([jvp for _, jvp in expected]))
    assert "one direction at a time" in result.info.fallbacks[0].remedy

"""The engine's contract beyond the numbers: errors, strict mode, methods and fallbacks.

The oracle is torch.autograd.functional.jvp: where it raises, jvpcli raises the same exception type
with the same message (jvpcli may add a clarifying sentence after PyTorch's text).
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jvp as torch_jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

import jvpcli
from jvpcli import METHODS, jvp, jvp_with_info

ALL_METHODS = pytest.mark.parametrize("method", METHODS)


def raised_by(call):
    """The exception ``call()`` raises (the test fails if it returns)."""
    with pytest.raises(Exception) as info:
        call()
    return info.value


def assert_raises_like_torch(func, inputs, v, *, method, **flags):
    expected = raised_by(lambda: torch_jvp(func, inputs, v, **flags))
    got = raised_by(lambda: jvp(func, inputs, v, method=method, **flags))
    assert type(got) is type(expected)
    assert str(got).startswith(str(expected)), f"\n jvpcli: {got}\n torch:  {expected}"


class Square(torch.autograd.Function):
    """A custom Function with a backward but no jvp: forward mode cannot go through it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


# ------------------------------------------------------------------------------------------------
# Argument errors


@ALL_METHODS
@pytest.mark.parametrize(
    ("inputs", "v"),
    [
        pytest.param([torch.ones(2)], [torch.ones(2)], id="inputs-list"),
        pytest.param((torch.ones(2), 3.0), (torch.ones(2), torch.ones(1)), id="inputs-non-tensor"),
        pytest.param(torch.ones(2), [torch.ones(2)], id="v-list"),
        pytest.param((torch.ones(2), torch.ones(2)), (torch.ones(2), "x"), id="v-non-tensor"),
    ],
)
def test_structure_errors_match_torch(inputs, v, method):
    assert_raises_like_torch(lambda *xs: xs[0], inputs, v, method=method)


@ALL_METHODS
@pytest.mark.parametrize(
    "func",
    [
        pytest.param(lambda x: [x], id="list"),
        pytest.param(lambda x: (x, 1.0), id="tuple-with-float"),
        pytest.param(lambda x: None, id="none"),
    ],
)
def test_output_structure_errors_match_torch(func, method):
    error = raised_by(lambda: jvp(func, torch.ones(2), torch.ones(2), method=method))
    assert isinstance(error, TypeError)
    assert "The outputs of the user-provided function given to jvp must" in str(error)
    assert_raises_like_torch(func, torch.ones(2), torch.ones(2), method=method)


@ALL_METHODS
@pytest.mark.parametrize(
    ("inputs", "v"),
    [
        pytest.param(torch.ones(2), None, id="v-none-two-elements"),
        pytest.param((torch.ones(()), torch.ones(())), None, id="v-none-two-inputs"),
        pytest.param(torch.ones(2), (torch.ones(2), torch.ones(2)), id="v-tuple-for-tensor"),
        pytest.param((torch.ones(2), torch.ones(3)), (torch.ones(2),), id="v-tuple-too-short"),
        pytest.param(torch.ones(2, 3), torch.ones(3, 2), id="v-size"),
        pytest.param(
            (torch.ones(2), torch.ones(3)), (torch.ones(2), torch.ones(4)), id="entry-size"
        ),
    ],
)
def test_v_errors_match_torch(inputs, v, method):
    assert_raises_like_torch(lambda *xs: sum(x.sum() for x in xs), inputs, v, method=method)


@pytest.mark.parametrize(
    ("inputs", "v", "message"),
    [
        pytest.param(
            torch.ones(2),
            torch.ones(2, dtype=torch.float64),
            "v has invalid dtype: should be torch.float32",
            id="dtype",
        ),
        pytest.param(
            (torch.ones(2), torch.ones(2)),
            (torch.ones(2), torch.ones(2, dtype=torch.float64)),
            "Entry 1 in v has invalid dtype",
            id="entry-dtype",
        ),
        pytest.param(
            (torch.ones(2), torch.ones(2)),
            (torch.ones(2, device="meta"), torch.ones(2)),
            "Entry 0 in v has invalid device: should be cpu",
            id="entry-device",
        ),
    ],
)
@ALL_METHODS
def test_v_dtype_and_device_must_match_their_input(inputs, v, message, method):
    error = raised_by(lambda: jvp(lambda *xs: xs[0], inputs, v, method=method))
    assert isinstance(error, RuntimeError)
    assert message in str(error)


@ALL_METHODS
def test_integer_input_is_rejected_before_func_runs(method):
    calls = []
    error = raised_by(
        lambda: jvp(lambda x: calls.append(x) or x, torch.arange(3), torch.ones(3), method=method)
    )
    assert isinstance(error, RuntimeError)
    assert "torch.int64" in str(error)
    assert "only Tensors of floating point and complex dtype can require gradients" in str(error)
    assert calls == []


def test_unknown_method_is_a_value_error_naming_the_valid_ones():
    with pytest.raises(ValueError, match="'auto', 'forward', 'double-backward'") as info:
        jvp(torch.sin, torch.ones(2), torch.ones(2), method="reverse")
    assert "'reverse'" in str(info.value)


@ALL_METHODS
def test_exception_from_func_propagates_unchanged_and_func_runs_once(method):
    calls = []

    class ModelError(Exception):
        pass

    error = ModelError("bad input")

    def func(x):
        calls.append(1)
        raise error

    with pytest.raises(ModelError) as info:
        jvp(func, torch.ones(2), torch.ones(2), method=method)
    assert info.value is error
    assert len(calls) == 1


@ALL_METHODS
def test_runtime_error_from_func_is_not_mistaken_for_a_missing_rule(method):
    calls = []

    def func(x):
        calls.append(1)
        return x @ torch.ones(3, 3)  # shapes do not match

    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        jvp(func, torch.ones(2), torch.ones(2), method=method)
    assert len(calls) == 1


@pytest.mark.parametrize("method", ["auto", "forward"])
def test_func_modifying_its_input_in_place_raises_like_torch(method):
    def func(x):
        return x.mul_(2)

    with pytest.raises(RuntimeError):
        torch_jvp(func, torch.ones(2), torch.ones(2))
    with pytest.raises(RuntimeError, match="modified input 0 in place"):
        jvp(func, torch.ones(2), torch.ones(2), method=method)


def test_in_place_on_input_under_double_backward_leaves_caller_tensor_intact():
    x = torch.ones(2)
    with pytest.raises(RuntimeError, match="in-place operation"):
        jvp(lambda t: t.mul_(2), x, torch.ones(2), method="double-backward")
    assert torch.equal(x, torch.ones(2))


# ------------------------------------------------------------------------------------------------
# Strict mode: the same errors as PyTorch under every method


def _param():
    return torch.randn(3, requires_grad=True)


W = _param()

STRICT_VIOLATIONS = [
    pytest.param(lambda x, y: (x * y, torch.ones(3)), id="constant-output"),
    pytest.param(lambda x, y: (x * y, x.detach() * 2), id="detached-output"),
    pytest.param(lambda x, y: x.sin(), id="unused-input"),
    pytest.param(lambda x, y: (x * y, y.argmax()), id="integer-output"),
    pytest.param(lambda x, y: (x * y, W.exp()), id="output-of-captured-parameter-only"),
]


@ALL_METHODS
@pytest.mark.parametrize("create_graph", [False, True], ids=["no-graph", "graph"])
@pytest.mark.parametrize("func", STRICT_VIOLATIONS)
def test_strict_violations_raise_like_torch(func, create_graph, method):
    inputs = (torch.randn(3), torch.randn(3))
    v = (torch.randn(3), torch.randn(3))
    assert_raises_like_torch(func, inputs, v, method=method, strict=True, create_graph=create_graph)


@ALL_METHODS
@pytest.mark.parametrize(
    "func",
    [
        pytest.param(lambda x, y: 2 * x + 3 * y, id="linear"),
        pytest.param(lambda x, y: (x * 4, y.sum() * 2), id="linear-tuple"),
        pytest.param(lambda x, y: (x.sin() * y, x * 2), id="second-output-linear"),
    ],
)
def test_strict_create_graph_rejects_a_jacobian_independent_of_the_inputs(func, method):
    inputs = (torch.randn(3), torch.randn(3))
    v = (torch.randn(3), torch.randn(3))
    error = raised_by(lambda: jvp(func, inputs, v, create_graph=True, strict=True, method=method))
    assert "jacobian of the user-provided function is independent of input" in str(error)
    assert_raises_like_torch(func, inputs, v, method=method, strict=True, create_graph=True)


@ALL_METHODS
@pytest.mark.parametrize(
    "func",
    [
        pytest.param(lambda x, y: 2 * x + 3 * y, id="linear"),
        pytest.param(lambda x, y: x * W + y, id="linear-with-captured-parameter"),
        pytest.param(lambda x, y: (x.sin() * y, (x * y).sum()), id="nonlinear-tuple"),
    ],
)
@pytest.mark.parametrize("create_graph", [False, True], ids=["no-graph", "graph"])
def test_strict_accepts_what_torch_accepts(func, create_graph, method):
    inputs = (torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64))
    v = (torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64))
    try:
        expected = torch_jvp(func, inputs, v, strict=True, create_graph=create_graph)
    except RuntimeError:
        # A linear function with create_graph: PyTorch rejects it, and so must jvpcli.
        assert_raises_like_torch(func, inputs, v, method=method, strict=True, create_graph=True)
        return
    got = jvp(func, inputs, v, strict=True, create_graph=create_graph, method=method)
    torch.testing.assert_close(got, expected)


@ALL_METHODS
def test_strict_linear_with_v_requiring_grad_is_accepted_like_torch(method):
    # With create_graph, a v that requires grad makes the jvp depend on something differentiable.
    x, v = torch.randn(3), torch.randn(3, requires_grad=True)
    expected = torch_jvp(lambda t: 2 * t, x, v, create_graph=True, strict=True)
    got = jvp(lambda t: 2 * t, x, v, create_graph=True, strict=True, method=method)
    torch.testing.assert_close(got, expected)
    assert got[1].requires_grad


@ALL_METHODS
def test_non_strict_gives_zero_jvp_for_independent_outputs(method):
    x, v = torch.randn(3), torch.randn(3)
    out, tangent = jvp(lambda t: (t.sin(), torch.ones(2), t.argmax()), x, v, method=method)
    torch.testing.assert_close(tangent[0], v * x.cos())
    assert torch.equal(tangent[1], torch.zeros(2))
    assert torch.equal(tangent[2], torch.zeros((), dtype=torch.int64))
    assert out[2] == x.argmax()


@pytest.mark.parametrize("method", ["auto", "forward"])
def test_zero_tangents_are_ordinary_writable_tensors(method):
    _, tangent = jvp(torch.sign, torch.randn(4), torch.randn(4), method=method)
    assert not tangent._is_zerotensor()
    tangent.add_(1)
    assert torch.equal(tangent, torch.ones(4))


# ------------------------------------------------------------------------------------------------
# Methods, fallbacks and what is reported


def test_jvp_returns_what_jvp_with_info_computes():
    x, v = torch.randn(3, 4), torch.randn(3, 4)
    result = jvp_with_info(torch.tanh, x, v)
    out, tangent = jvp(torch.tanh, x, v)
    assert isinstance(result, jvpcli.JvpResult)
    assert torch.equal(out, result.func_output)
    assert torch.equal(tangent, result.jvp)


@pytest.mark.parametrize(
    ("method", "used"),
    [("auto", "forward"), ("forward", "forward"), ("double-backward", "double-backward")],
)
def test_info_reports_the_method_that_ran(method, used):
    info = jvp_with_info(torch.tanh, torch.randn(3), torch.randn(3), method=method).info
    assert (info.method, info.method_used, info.fallbacks) == (method, used, ())
    assert info.seconds > 0
    assert str(info) == used


def test_auto_falls_back_to_double_backward_for_a_custom_function_without_jvp():
    x, v = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)

    def func(t):
        return Square.apply(t.sin()).sum()

    result = jvp_with_info(func, x, v)
    expected = torch_jvp(func, x, v)
    torch.testing.assert_close((result.func_output, result.jvp), expected)
    assert result.info.method_used == "double-backward"
    (fallback,) = result.info.fallbacks
    assert fallback.method == "forward"
    assert "jvp function for custom autograd.Function" in fallback.reason
    assert "double-backward" in str(result.info)


def test_forward_method_does_not_fall_back():
    with pytest.raises(NotImplementedError, match=r"jvp function for custom autograd\.Function"):
        jvp(Square.apply, torch.randn(3), torch.randn(3), method="forward")


@pytest.mark.parametrize("method", ["auto", "forward"])
def test_lstm_runs_in_forward_mode_and_leaves_onednn_as_it_was(method):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(4, 6, batch_first=True).eval()
    x, v = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    onednn_before = torch.backends.mkldnn.enabled

    result = jvp_with_info(lambda t: lstm(t)[0], x, v, method=method)

    torch.testing.assert_close(
        (result.func_output, result.jvp), torch_jvp(lambda t: lstm(t)[0], x, v)
    )
    assert result.info.method_used == "forward"
    if result.info.fallbacks:  # only where torch picks oneDNN's RNN kernel
        assert "mkldnn" in result.info.fallbacks[0].reason
        assert "oneDNN" in result.info.fallbacks[0].remedy
    assert torch.backends.mkldnn.enabled == onednn_before


@pytest.mark.parametrize("method", ["auto", "forward"])
def test_func_that_differentiates_internally_runs_in_forward_mode(method):
    def force(x):  # the gradient of an energy: func calls torch.autograd.grad itself
        with torch.enable_grad():
            energy = (x**3).sum() + (x[1:] * x[:-1]).sum()
            return torch.autograd.grad(energy, x, create_graph=True)[0]

    x, v = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    result = jvp_with_info(force, x, v, method=method)
    torch.testing.assert_close((result.func_output, result.jvp), torch_jvp(force, x, v))
    assert result.info.method_used == "forward"
    assert "differentiates" in result.info.fallbacks[0].remedy


def _kernel_state():
    return (
        torch.backends.mha.get_fastpath_enabled(),
        torch.backends.cuda.flash_sdp_enabled(),
        torch.backends.cuda.mem_efficient_sdp_enabled(),
        torch.backends.cuda.math_sdp_enabled(),
        torch.backends.mkldnn.enabled,
        torch.is_grad_enabled(),
    )


@ALL_METHODS
def test_transformer_layer_in_eval_mode_runs_where_both_torch_apis_fail(method):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True).eval()
    x, v = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    with pytest.raises((RuntimeError, NotImplementedError)):
        torch_jvp(layer, x, v)
    with pytest.raises((RuntimeError, NotImplementedError)):
        torch.func.jvp(layer, (x,), (v,))
    state = _kernel_state()

    out, tangent = jvp(layer, x, v, method=method)

    assert _kernel_state() == state
    with sdpa_kernel(SDPBackend.MATH):  # the oracle works on the math backend
        torch.testing.assert_close((out, tangent), torch_jvp(layer, x, v))


@ALL_METHODS
def test_kernel_settings_are_restored_when_func_raises(method):
    state = _kernel_state()

    def func(x):
        raise KeyError("boom")

    with pytest.raises(KeyError):
        jvp(func, torch.ones(2), torch.ones(2), method=method)
    assert _kernel_state() == state


def test_kernel_settings_already_off_stay_off():
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        jvp(torch.sin, torch.ones(2), torch.ones(2))
        assert torch.backends.mha.get_fastpath_enabled() is False
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


@pytest.mark.parametrize("create_graph", [False, True], ids=["no-graph", "graph"])
@ALL_METHODS
def test_strict_func_that_differentiates_internally_matches_torch(create_graph, method):
    def force(x):
        with torch.enable_grad():
            return torch.autograd.grad((x**3).sum(), x, create_graph=True)[0]

    x, v = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    expected = torch_jvp(force, x, v, strict=True, create_graph=create_graph)
    got = jvp(force, x, v, strict=True, create_graph=create_graph, method=method)
    torch.testing.assert_close(got, expected)


def test_auto_with_create_graph_uses_double_backward_and_says_why():
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    result = jvp_with_info(
        lambda t: t.softmax(0), x, torch.randn(3, dtype=torch.float64), create_graph=True
    )
    assert result.info.method_used == "double-backward"
    assert result.info.fallbacks == ()
    assert "create_graph" in result.info.note
    assert str(result.info).startswith("double-backward (create_graph")
    # the reason it does: backward through forward mode's softmax rule fails in PyTorch
    (gradient,) = torch.autograd.grad(result.jvp.sum(), x)
    assert torch.isfinite(gradient).all()


@pytest.mark.parametrize("method", ["auto", "forward", "double-backward"])
def test_jvp_nested_in_another_jvps_function_raises_rather_than_drop_its_tangent(method):
    # The inner call used to differentiate the primals only: a zero second derivative, silently.
    x, v = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="carries the tangent of an enclosing jvp"):
        jvpcli.jvp(lambda y: jvpcli.jvp(torch.sin, y, v)[1], x, v, method="forward")
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, v)
        with pytest.raises(RuntimeError, match="carries the tangent of an enclosing jvp"):
            jvpcli.jvp(torch.sin, dual, v, method=method)
        if method != "forward":  # forward mode cannot open a level inside one (PyTorch says so)
            # Constants inside a dual level are fine.
            got = jvpcli.jvp(torch.sin, x, v, method=method)[1]
            torch.testing.assert_close(got, x.cos() * v)

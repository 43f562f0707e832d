"""The fast tangent rules give PyTorch's numbers, with and without create_graph.

Each case runs through jvpcli's forward method (where the rules are active) and is compared with
torch.autograd.functional.jvp (double backward, no rules involved); create_graph cases are checked
with gradcheck / gradgradcheck.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jvp as torch_jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from jvpcli import _onednn, jvp
from jvpcli._tangent_rules import _RULES

torch.manual_seed(0)
D = torch.float64
C = torch.randn(3, 4, dtype=D)  # a constant: no tangent
W = torch.randn(5, 4, dtype=D)
B = torch.randn(5, dtype=D)
K2 = torch.randn(2, 2, 2, 2, dtype=D)
KT = torch.randn(2, 3, 2, 2, dtype=D)

# (id, func, input shapes): every func has exactly one dual operand per rule application, which is
# the case the rules take over; "both-dual" cases check the hand-off to PyTorch's own rule.
CASES = [
    ("mul-scalar", lambda x: x * 0.5, [(3, 4)]),
    ("rmul-scalar", lambda x: 0.5 * x, [(3, 4)]),
    ("mul-const-broadcast", lambda x: x[0] * C, [(3, 4)]),
    ("torch-mul-const", lambda x: torch.mul(C, x), [(3, 4)]),
    ("mul-both-dual", lambda x, y: x * y, [(3, 4), (3, 4)]),
    ("add-scalar", lambda x: x + 1.5, [(3, 4)]),
    ("radd-scalar", lambda x: 1.5 + x, [(3, 4)]),
    ("add-const-broadcast-up", lambda x: x[0] + C, [(3, 4)]),
    ("add-alpha-const-first", lambda x: torch.add(C, x, alpha=-2.5), [(3, 4)]),
    ("add-alpha-dual-first", lambda x: torch.add(x, C, alpha=3.0), [(3, 4)]),
    ("add-float32-const-promotes", lambda x: x + C.float(), [(3, 4)]),
    ("add-both-dual", lambda x, y: x + y, [(3, 4), (4,)]),
    ("sub-const", lambda x: x - C, [(3, 4)]),
    ("sub-from-const", lambda x: C - x, [(3, 4)]),
    ("sub-alpha", lambda x: torch.sub(C, x, alpha=2.0), [(3, 4)]),
    ("rsub-scalar", lambda x: 1.0 - x, [(3, 4)]),
    ("torch-rsub-alpha", lambda x: torch.rsub(x, 2.0, alpha=3.0), [(3, 4)]),
    ("div-scalar", lambda x: x / 4.0, [(3, 4)]),
    ("div-const", lambda x: x / (C.abs() + 1), [(3, 4)]),
    ("div-by-dual", lambda x: C / (x.abs() + 1), [(3, 4)]),
    ("div-floor-mode", lambda x: torch.div(x, 0.3, rounding_mode="floor") + x, [(3, 4)]),
    ("matmul-left", lambda x: x @ W.T, [(3, 4)]),
    ("matmul-right", lambda x: W @ x, [(4, 3)]),
    ("matmul-vector", lambda x: torch.matmul(x, W[0]), [(3, 4)]),
    ("matmul-both-dual", lambda x, y: x @ y, [(3, 4), (4, 2)]),
    ("mm", lambda x: torch.mm(x, W.T), [(3, 4)]),
    ("bmm", lambda x: torch.bmm(x, W.T.expand(2, 4, 5)), [(2, 3, 4)]),
    ("linear-bias", lambda x: F.linear(x, W, B), [(3, 4)]),
    ("linear-bias-kwarg", lambda x: F.linear(x, W, bias=B), [(3, 4)]),
    ("linear-no-bias", lambda x: F.linear(x, W), [(2, 3, 4)]),
    ("linear-strided-batch", lambda x: F.linear(x.transpose(0, 1), W, B), [(3, 2, 4)]),
    ("linear-strided-batch-no-bias", lambda x: F.linear(x.transpose(0, 2), W), [(4, 2, 3)]),
    ("linear-dual-weight", lambda x, w: F.linear(x, w, B), [(3, 4), (5, 4)]),
    ("linear-dual-bias", lambda x, b: F.linear(x, W, b), [(3, 4), (5,)]),
    ("linear-only-weight-dual", lambda w: F.linear(C, w, B), [(5, 4)]),
    ("linear-only-bias-dual", lambda b: F.linear(C, W, b), [(5,)]),
    ("linear-weight-and-bias-dual", lambda w, b: F.linear(C, w, b), [(5, 4), (5,)]),
    ("linear-all-dual", lambda x, w, b: F.linear(x, w, b), [(3, 4), (5, 4), (5,)]),
    ("linear-all-dual-bias-kwarg", lambda x, w, b: F.linear(x, w, bias=b), [(3, 4), (5, 4), (5,)]),
    ("linear-dual-weight-no-bias", lambda x, w: F.linear(x, w), [(2, 3, 4), (5, 4)]),
    ("linear-dual-weight-vector-input", lambda x, w: F.linear(x, w, B), [(4,), (5, 4)]),
    ("linear-dual-weight-3d-const-input", lambda w: F.linear(C.expand(2, 3, 4), w), [(5, 4)]),
    (
        "mlp-every-weight-dual",
        lambda x, w1, b1, w2: F.linear(F.linear(x, w1, b1).tanh(), w2, B),
        [(3, 4), (4, 4), (4,), (5, 4)],
    ),
    ("addmm", lambda x: torch.addmm(B, x, W.T), [(3, 4)]),
    ("addmm-alpha-beta", lambda x: torch.addmm(B, x, W.T, beta=0.5, alpha=2.0), [(3, 4)]),
    ("addmm-dual-right", lambda x: torch.addmm(B[:3, None], W[:3], x, alpha=-1.0), [(4, 5)]),
    ("addmm-dual-bias", lambda b, x: torch.addmm(b, x, W.T), [(5,), (3, 4)]),
    ("baddbmm", lambda x: torch.baddbmm(B, x, W.T.expand(2, 4, 5), alpha=0.5), [(2, 3, 4)]),
    ("conv1d", lambda x: F.conv1d(x, K2[:, :, 0], B[:2]), [(1, 2, 3)]),
    ("conv2d-stride-padding", lambda x: F.conv2d(x, K2, None, 2, 1), [(1, 2, 3, 3)]),
    (
        "conv2d-bias-kwarg",
        lambda x: F.conv2d(x, K2, bias=B[:2], padding=1),
        [(1, 2, 5, 5)],
    ),
    ("conv2d-groups", lambda x: F.conv2d(x, K2[:, :1], groups=2), [(1, 2, 3, 3)]),
    ("conv3d", lambda x: F.conv3d(x, K2[..., None], padding=(1, 0, 0)), [(1, 2, 3, 2, 2)]),
    ("conv-transpose2d", lambda x: F.conv_transpose2d(x, KT, None, 2, 1, 1), [(1, 2, 3, 3)]),
    ("conv-transpose1d", lambda x: F.conv_transpose1d(x, KT[:, :, 0]), [(1, 2, 4)]),
    ("layer-norm", lambda x: F.layer_norm(x, (4,)), [(3, 4)]),
    ("layer-norm-affine", lambda x: F.layer_norm(x, (4,), W[0], B[:4], 1e-3), [(2, 3, 4)]),
    ("layer-norm-two-dims", lambda x: F.layer_norm(x, (3, 4), weight=C), [(2, 3, 4)]),
    ("layer-norm-dual-weight", lambda x, w: F.layer_norm(x, (4,), w), [(3, 4), (4,)]),
    ("module-layer-norm", torch.nn.LayerNorm(4).double(), [(3, 4)]),
    ("module-linear", torch.nn.Linear(4, 5).double(), [(3, 4)]),
    ("module-conv", torch.nn.Conv2d(2, 3, 2, padding=1).double(), [(1, 2, 3, 3)]),
    ("chain", lambda x: ((x * 2 - 1) @ W.T + B).tanh() / 3 + 0.1, [(3, 4)]),
]


def _inputs(shapes, requires_grad=False):
    return tuple(torch.randn(*s, dtype=D, requires_grad=requires_grad) for s in shapes)


@pytest.mark.parametrize(("func", "shapes"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_matches_torch(func, shapes):
    inputs, v = _inputs(shapes), _inputs(shapes)
    expected = torch_jvp(func, inputs, v)
    got = jvp(func, inputs, v, method="forward")
    torch.testing.assert_close(got, expected)


PYTORCH_NORM_SECOND_DERIVATIVE = pytest.mark.xfail(
    strict=True,
    reason="a dual weight goes to PyTorch's own layer norm rule, whose second derivatives treat "
    "mean and rstd as constants (torch.autograd.functional.jvp is wrong here too)",
)


@pytest.mark.parametrize(
    ("func", "shapes"),
    [
        pytest.param(
            *c[1:],
            id=c[0],
            marks=[PYTORCH_NORM_SECOND_DERIVATIVE] if c[0] == "layer-norm-dual-weight" else [],
        )
        for c in CASES
    ],
)
def test_rule_is_differentiable_with_create_graph(func, shapes):
    n = len(shapes)

    def jvp_of_inputs_and_v(*tensors):
        return jvp(func, tensors[:n], tensors[n:], create_graph=True, method="forward")

    tensors = _inputs(shapes, requires_grad=True) + _inputs(shapes, requires_grad=True)
    assert torch.autograd.gradcheck(jvp_of_inputs_and_v, tensors)
    assert torch.autograd.gradgradcheck(jvp_of_inputs_and_v, tensors)


def test_linear_rule_takes_a_dual_weight_and_bias():
    x, w, b = _inputs([(3, 4), (5, 4), (5,)])
    with torch.autograd.forward_ad.dual_level() as level:
        duals = [torch.autograd.forward_ad.make_dual(t, torch.randn_like(t)) for t in (x, w, b)]
        for args in [duals, (x, duals[1], duals[2]), (x, W, duals[2])]:
            assert _RULES[F.linear](level, F.linear, tuple(args), {}) is not NotImplemented


@pytest.mark.filterwarnings("error")  # vmap warns when an op falls back to a per-direction loop
def test_linear_rule_with_every_operand_dual_under_batched_tangents():
    inputs = _inputs([(3, 4), (5, 4), (5,)])
    directions = tuple(torch.randn(3, *x.shape, dtype=D) for x in inputs)
    got = jvp(F.linear, inputs, directions, method="forward", batched_v=True)
    for k in range(3):
        expected = torch_jvp(F.linear, inputs, tuple(d[k] for d in directions))
        torch.testing.assert_close((got[0], got[1][k]), expected)


LARGE = 1 << 9  # a 512 x 512 float32 weight: 2^18 values, enough for oneDNN's matmul


def _large_linear_case(case: str) -> tuple[object, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    w, b = torch.randn(LARGE, LARGE) / 20, torch.randn(LARGE)
    if case == "rows":
        return (lambda x: F.linear(x, w, b)), (torch.randn(64, LARGE),)
    if case == "batch":
        return (lambda x: F.linear(x, w)), (torch.randn(4, 16, LARGE),)
    if case == "strided-batch":
        return (lambda x: F.linear(x.transpose(0, 1), w, b)), (torch.randn(16, 4, LARGE),)
    if case == "dual-weight":
        return F.linear, (torch.randn(8, LARGE), w, b)
    constant = torch.randn(8, LARGE)  # "dual-weight-constant-input"
    return (lambda w_, b_: F.linear(constant, w_, b_)), (w, b)


@pytest.mark.parametrize(
    "case", ["rows", "batch", "strided-batch", "dual-weight", "dual-weight-constant-input"]
)
def test_float32_linear_with_a_large_weight_takes_onednn_for_the_tangent_only(
    case: str, monkeypatch: pytest.MonkeyPatch
):
    # oneDNN's matmul (0.65-0.85x MKL's time here) computes the tangent; the primal stays
    # F.linear's, so it is the function's own output to the bit (a strided batch's rows are
    # multiplied contiguous: equal to rounding). With create_graph the tangent must be
    # differentiable: F.linear again.
    func, inputs = _large_linear_case(case)
    v = tuple(torch.randn_like(x) for x in inputs)
    calls = []
    linear, reorder = _onednn.OPS

    def counting(*args: object) -> torch.Tensor:
        calls.append(args)
        return linear(*args)

    monkeypatch.setattr(_onednn, "OPS", (counting, reorder))
    expected = torch_jvp(func, inputs, v)
    output, tangent = jvp(func, inputs, v)
    assert calls
    if case == "strided-batch":
        torch.testing.assert_close(output, func(*inputs))
    else:
        assert torch.equal(output, func(*inputs))
    torch.testing.assert_close(tangent, expected[1], rtol=1e-4, atol=1e-4)

    calls.clear()
    output, tangent = jvp(func, inputs, v, create_graph=True)
    assert not calls
    torch.testing.assert_close((output, tangent), expected, rtol=1e-4, atol=1e-4)


def test_rules_are_used_for_the_ops_they_cover():
    for func in (torch.mul, torch.Tensor.__rmul__, F.linear, F.conv2d, torch.addmm, torch.rsub):
        assert func in _RULES


def test_float32_model_matches_torch():
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 6 * 6, 10),
    )
    x, v = torch.randn(2, 3, 6, 6), torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(jvp(model, x, v), torch_jvp(model, x, v))


@pytest.mark.parametrize(
    "func",
    [
        pytest.param(lambda x: (x + 0.1).mul_(2) + x * 3, id="add-scalar-then-in-place"),
        pytest.param(lambda x: (x - C).mul_(2) + x, id="sub-const-then-in-place"),
        pytest.param(lambda x: (C + x).div_(2) + x, id="radd-const-then-in-place"),
        pytest.param(lambda x: (x[0] + C).mul_(2), id="broadcast-add-then-in-place"),
    ],
)
def test_in_place_op_on_a_result_leaves_the_operands_tangent_and_v_alone(func):
    x, v = torch.randn(3, 4, dtype=D), torch.randn(3, 4, dtype=D)
    v_before = v.clone()
    expected = torch_jvp(func, x, v)
    got = jvp(func, x, v, method="forward")
    torch.testing.assert_close(got, expected)
    assert torch.equal(v, v_before)


MASK = torch.randn(5, 6, dtype=D)
BOOL_MASK = torch.rand(5, 6) > 0.3
BOOL_MASK[:, 0] = True  # every query sees at least one key

EMPTY_ROW_MASK = BOOL_MASK.clone()
EMPTY_ROW_MASK[2] = False  # query 2 sees no key: the math backend gives it 0, not NaN
FLOAT_EMPTY_ROW_MASK = torch.zeros(5, 6, dtype=D).masked_fill(~EMPTY_ROW_MASK, float("-inf"))
Q = torch.randn(5, 4, dtype=D)
KEYS = torch.randn(2, 6, 4, dtype=D)
VALUES = torch.randn(2, 6, 3, dtype=D)

ATTENTION_CASES = [
    ("self", lambda q: F.scaled_dot_product_attention(q, q, q), [(2, 3, 5, 4)]),
    ("key-only-dual", lambda k: F.scaled_dot_product_attention(Q, k, VALUES), [(2, 6, 4)]),
    (
        "query-and-key-dual",
        lambda q, k: F.scaled_dot_product_attention(q, k, VALUES),
        [(2, 5, 4), (2, 6, 4)],
    ),
    (
        "query-and-value-dual",
        lambda q, v: F.scaled_dot_product_attention(q, KEYS, v, scale=1.7),
        [(2, 5, 4), (2, 6, 3)],
    ),
    (
        "key-broadcast-over-heads",
        lambda q, k: F.scaled_dot_product_attention(q, k, k),
        [(2, 3, 5, 4), (2, 1, 6, 4)],
    ),
    (
        "bool-mask-empty-row",
        lambda q, k: F.scaled_dot_product_attention(q, k, k, EMPTY_ROW_MASK),
        [(2, 5, 4), (2, 6, 4)],
    ),
    (
        "float-mask-empty-row",
        lambda q, k: F.scaled_dot_product_attention(q, k, k, FLOAT_EMPTY_ROW_MASK, scale=0.5),
        [(2, 5, 4), (2, 6, 4)],
    ),
    (
        "causal-fewer-queries-than-keys",
        lambda q, k: F.scaled_dot_product_attention(q, k, k, is_causal=True),
        [(3, 4), (6, 4)],
    ),
    (
        "causal-more-queries-than-keys",
        lambda q, k: F.scaled_dot_product_attention(q, k, k, is_causal=True, scale=0.2),
        [(6, 4), (3, 4)],
    ),
    (
        "separate-qkv",
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
        [(2, 5, 4), (2, 6, 4), (2, 6, 3)],
    ),
    ("query-only-dual", lambda q: F.scaled_dot_product_attention(q, C, C[:, :2]), [(5, 4)]),
    ("value-only-dual", lambda v: F.scaled_dot_product_attention(C.T, C.T, v), [(4, 2)]),
    (
        "additive-mask-scale",
        lambda q, k: F.scaled_dot_product_attention(q, k, k, attn_mask=MASK, scale=0.3),
        [(5, 4), (6, 4)],
    ),
    (
        "bool-mask",
        lambda q, k: F.scaled_dot_product_attention(q, k, k, BOOL_MASK),
        [(2, 5, 4), (2, 6, 4)],
    ),
    ("causal", lambda q: F.scaled_dot_product_attention(q, q, q, is_causal=True), [(1, 5, 4)]),
    (
        "gqa-goes-to-pytorch",
        lambda q, k: F.scaled_dot_product_attention(q, k, k, enable_gqa=True),
        [(4, 5, 3), (2, 6, 3)],
    ),
]


@pytest.mark.parametrize(
    ("func", "shapes"), [c[1:] for c in ATTENTION_CASES], ids=[c[0] for c in ATTENTION_CASES]
)
def test_attention_rule_matches_torch_on_the_math_backend(func, shapes):
    inputs, v = _inputs(shapes), _inputs(shapes)
    with sdpa_kernel(SDPBackend.MATH):
        expected = torch_jvp(func, inputs, v)
    got = jvp(func, inputs, v, method="forward")
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    ("func", "shapes"),
    [c[1:] for c in ATTENTION_CASES if "pytorch" not in c[0]],
    ids=[c[0] for c in ATTENTION_CASES if "pytorch" not in c[0]],
)
def test_attention_rule_is_differentiable_with_create_graph(func, shapes):
    n = len(shapes)

    def jvp_of_inputs_and_v(*tensors):
        return jvp(func, tensors[:n], tensors[n:], create_graph=True, method="forward")

    tensors = _inputs(shapes, requires_grad=True) + _inputs(shapes, requires_grad=True)
    assert torch.autograd.gradcheck(jvp_of_inputs_and_v, tensors)


def test_rules_reach_ops_inside_python_level_torch_functions():
    # nn.MultiheadAttention runs F.multi_head_attention_forward, a Python function that the mode
    # intercepts as a whole: the linear layers and the attention inside must still use the rules.
    seen = []

    torch.manual_seed(0)
    attention = torch.nn.MultiheadAttention(8, 2, batch_first=True).double().eval()
    x, v = torch.randn(2, 5, 8, dtype=D), torch.randn(2, 5, 8, dtype=D)
    original = _RULES[F.linear]
    _RULES[F.linear] = lambda *args: seen.append("linear") or original(*args)
    try:
        got = jvp(lambda t: attention(t, t, t, need_weights=False)[0], x, v, method="forward")
    finally:
        _RULES[F.linear] = original
    assert "linear" in seen
    with sdpa_kernel(SDPBackend.MATH):
        expected = torch_jvp(lambda t: attention(t, t, t, need_weights=False)[0], x, v)
    torch.testing.assert_close(got, expected)


RULED_ATTENTION = [c for c in ATTENTION_CASES if "pytorch" not in c[0]]
RULED_ATTENTION_IDS = [c[0] for c in RULED_ATTENTION]


@pytest.mark.parametrize(
    ("func", "shapes"), [c[1:] for c in RULED_ATTENTION], ids=RULED_ATTENTION_IDS
)
def test_attention_rule_matches_central_differences(func, shapes):
    inputs, v = _inputs(shapes), _inputs(shapes)
    step = 1e-6
    ahead = func(*(x + step * t for x, t in zip(inputs, v, strict=True)))
    behind = func(*(x - step * t for x, t in zip(inputs, v, strict=True)))
    _, got = jvp(func, inputs, v, method="forward")
    torch.testing.assert_close(got, (ahead - behind) / (2 * step), rtol=1e-6, atol=1e-7)


def _float32_layer():
    torch.manual_seed(2)
    return torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True).eval()


FLOAT32_ATTENTION = [
    ("self-causal", lambda q: F.scaled_dot_product_attention(q, q, q, is_causal=True), [(2, 5, 4)]),
    (
        "separate-qkv-bool-mask",
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, EMPTY_ROW_MASK),
        [(2, 5, 4), (2, 6, 4), (2, 6, 3)],
    ),
    (
        "float-mask-scale",
        lambda q, k: F.scaled_dot_product_attention(q, k, k, MASK.float(), scale=0.3),
        [(5, 4), (6, 4)],
    ),
    ("transformer-encoder-layer", _float32_layer(), [(2, 5, 8)]),
]


@pytest.mark.parametrize(
    ("func", "shapes"), [c[1:] for c in FLOAT32_ATTENTION], ids=[c[0] for c in FLOAT32_ATTENTION]
)
def test_attention_rule_in_float32_matches_torch(func, shapes):
    inputs = tuple(x.float() for x in _inputs(shapes))
    v = tuple(x.float() for x in _inputs(shapes))
    with sdpa_kernel(SDPBackend.MATH):
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            expected = torch_jvp(func, inputs, v)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
    got = jvp(func, inputs, v, method="forward")
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    ("func", "shapes"), [c[1:] for c in RULED_ATTENTION], ids=RULED_ATTENTION_IDS
)
def test_attention_rule_in_strict_mode_matches_torch(func, shapes):
    inputs, v = _inputs(shapes), _inputs(shapes)
    with sdpa_kernel(SDPBackend.MATH):
        expected = torch_jvp(func, inputs, v, strict=True)
    got = jvp(func, inputs, v, strict=True, method="forward")
    torch.testing.assert_close(got, expected)


@pytest.mark.filterwarnings("error")  # vmap warns when an op falls back to a per-direction loop
@pytest.mark.parametrize(
    ("func", "shapes"), [c[1:] for c in RULED_ATTENTION], ids=RULED_ATTENTION_IDS
)
def test_attention_rule_under_batched_tangents_matches_torch(func, shapes):
    inputs = _inputs(shapes)
    directions = tuple(torch.randn(3, *x.shape, dtype=D) for x in inputs)
    got = jvp(func, inputs, directions, method="forward", batched_v=True)
    for k in range(3):
        with sdpa_kernel(SDPBackend.MATH):
            expected = torch_jvp(func, inputs, tuple(d[k] for d in directions))
        torch.testing.assert_close((got[0], got[1][k]), expected)


@pytest.mark.parametrize(
    "name", ["separate-qkv", "query-and-key-dual", "bool-mask-empty-row", "causal"]
)
def test_attention_rule_has_second_derivatives_with_create_graph(name):
    func, shapes = next(c[1:] for c in ATTENTION_CASES if c[0] == name)
    n = len(shapes)

    def jvp_of_inputs_and_v(*tensors):
        return jvp(func, tensors[:n], tensors[n:], create_graph=True, method="forward")

    tensors = _inputs(shapes, requires_grad=True) + _inputs(shapes, requires_grad=True)
    assert torch.autograd.gradgradcheck(jvp_of_inputs_and_v, tensors)


def test_attention_with_a_mask_and_is_causal_raises_as_pytorch_does():
    q, v = _inputs([(5, 4), (5, 4)])
    with pytest.raises(RuntimeError, match="attn_mask should not be set when is_causal"):
        jvp(
            lambda x: F.scaled_dot_product_attention(x, x, x, BOOL_MASK[:, :5], is_causal=True),
            q,
            v,
        )

"""Fast forward-mode rules for the ops where PyTorch's own rule wastes work.

PyTorch's forward-mode formula for a product differentiates *both* factors: ``linear(x, W)`` gets
the tangent ``linear(x_t, W) + linear(x, W_t)``, with ``W_t`` a zero tensor when, as usual, only the
input carries a tangent — a whole extra matmul per layer. For elementwise arithmetic with a
constant (``x * 0.5``, ``x + bias``) the zero tangent is worse: it sends the op through Python
reference implementations, ~50x slower than the op itself. Attention, decomposed op by op on the
math backend, pays both.

:class:`FastTangentRules` is a ``TorchFunctionMode`` that intercepts these ops while a jvp runs:

- an operand that is a Python number goes to the op's Scalar overload, whose rule is lean;
- when exactly one operand of a (bi)linear op (``mul``, ``matmul``, ``linear``, ``conv*``,
  ``addmm``, ...) carries a tangent, the rule computes the primal and that one tangent term;
- ``linear`` with a dual weight or bias (tangents on parameters) accumulates its tangent terms
  inside the matrix products rather than adding them afterwards; a float32 tangent's product with
  a large weight goes to oneDNN's matmul where it is faster than MKL's (:mod:`jvpcli._onednn`),
  while the primal keeps ``F.linear``'s;
- ``scaled_dot_product_attention`` computes its probabilities once and the tangent from them;
  ``layer_norm`` computes its statistics so that its tangent stays differentiable;
- the recurrent layers (``torch.lstm``, ``torch.gru``, ``torch.rnn_tanh`` / ``rnn_relu``, padded
  and packed) push primal and tangent through one matmul a step, and ``_pack_padded_sequence``,
  which has no forward-mode rule in PyTorch, gathers the tangent like the values
  (:mod:`jvpcli._recurrent_rules`).

Every other case (both operands of a product dual, a dual weight of a convolution, an unusual
argument) goes to PyTorch's own rule unchanged. The rules are exact — the same terms PyTorch
computes, minus the zeros — and differentiable, so ``create_graph`` and strict mode see through
them (the LSTM's faster route without a reverse graph to record writes into buffers, and runs
only with grad mode off).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from jvpcli import _onednn
from jvpcli._recurrent_rules import RECURRENT_RULES

Rule = Callable[[int, Callable[..., Any], tuple, dict], Any]

_NUMBERS = frozenset({int, float})


def _split(value: Any, level: int) -> tuple[Any, Tensor | None]:
    """The primal and tangent of ``value`` (a tangent of None: a constant)."""
    if isinstance(value, Tensor):
        return torch._unpack_dual(value, level)
    return value, None


def _dual(primal: Tensor, tangent: Tensor, level: int) -> Tensor:
    # A tangent of another shape is expanded here; make_dual copies it into the primal's layout.
    if tangent.dtype != primal.dtype:
        tangent = tangent.to(primal.dtype)
    if tangent.shape != primal.shape:
        tangent = tangent.expand(primal.shape)
    return torch._make_dual(primal, tangent, level)


def _bilinear(level: int, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """``func(a, b)`` linear in each of ``a`` and ``b``: the tangent of the one dual operand."""
    if len(args) != 2:
        return NotImplemented
    a, a_t = _split(args[0], level)
    b, b_t = _split(args[1], level)
    if (a_t is None) == (b_t is None):
        return NotImplemented
    primal = func(a, b, **kwargs)
    tangent = func(a_t, b, **kwargs) if b_t is None else func(a, b_t, **kwargs)
    return _dual(primal, tangent, level)


def _additive(sign_of_second: float) -> Rule:
    """``a + alpha * b`` (sign 1) or ``a - alpha * b`` (sign -1), one operand dual."""

    def rule(level: int, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        if len(args) != 2 or set(kwargs) - {"alpha"}:
            return NotImplemented
        a, a_t = _split(args[0], level)
        b, b_t = _split(args[1], level)
        if (a_t is None) == (b_t is None):
            return NotImplemented
        primal = func(a, b, **kwargs)
        scale = 1 if b_t is None else sign_of_second * kwargs.get("alpha", 1)
        tangent = a_t if b_t is None else b_t
        if scale != 1:
            tangent = tangent * scale
        elif tangent.shape == primal.shape:
            # A fresh tensor: the result's tangent must not alias the operand's, or an in-place op
            # on the result would change the operand's tangent (and the caller's v) too.
            tangent = tangent.clone()
        return _dual(primal, tangent, level)

    return rule


def _reversed_subtraction(level: int, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """``other - alpha * self`` (``Tensor.__rsub__``, ``torch.rsub``) with only ``self`` dual."""
    if len(args) != 2 or set(kwargs) - {"alpha"}:
        return NotImplemented
    a, a_t = _split(args[0], level)
    b, b_t = _split(args[1], level)
    if a_t is None or b_t is not None:
        return NotImplemented
    return _dual(func(a, b, **kwargs), a_t * -kwargs.get("alpha", 1), level)


def _division(level: int, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """``a / b`` with only the numerator dual (true division)."""
    if len(args) != 2 or kwargs.get("rounding_mode") is not None:
        return NotImplemented
    a, a_t = _split(args[0], level)
    b, b_t = _split(args[1], level)
    if a_t is None or b_t is not None:
        return NotImplemented
    return _dual(func(a, b), a_t / b, level)


def _weighted(
    level: int, func: Callable[..., Any], args: tuple, kwargs: dict, *, bias_index: int
) -> Any:
    """``func(input, weight, bias, ...)``, linear in ``input``, with a constant weight and bias."""
    if len(args) < 2:
        return NotImplemented
    x, x_t = _split(args[0], level)
    weight, weight_t = _split(args[1], level)
    bias = args[bias_index] if len(args) > bias_index else kwargs.get("bias")
    if (
        x_t is None
        or weight_t is not None
        or (bias is not None and _split(bias, level)[1] is not None)
    ):
        return NotImplemented
    primal = func(x, weight, *args[2:], **kwargs)
    rest = list(args[2:])
    if len(args) > bias_index:
        rest[bias_index - 2] = None
    tangent_kwargs = {**kwargs, "bias": None} if "bias" in kwargs else kwargs
    return _dual(primal, func(x_t, weight, *rest, **tangent_kwargs), level)


def _linear(level: int, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """``linear(x, W, b)`` with any of ``x``, ``W`` and ``b`` dual.

    ``out_t = b_t + x_t W^T + x W_t^T``, accumulated inside the matrix products (addmm adds its
    first operand in the GEMM itself): PyTorch's rule computes the same products, then adds them
    in two more passes over the output. A dual weight is the case of tangents on parameters.
    """
    options = dict(zip(("input", "weight", "bias"), args, strict=False)) | kwargs
    if len(args) < 2 or len(args) > 3 or set(options) - {"input", "weight", "bias"}:
        return NotImplemented
    x, x_t = _split(options["input"], level)
    weight, weight_t = _split(options["weight"], level)
    bias, bias_t = _split(options.get("bias"), level)
    if weight.dim() != 2 or x.dim() == 0:
        return NotImplemented
    if weight_t is None and bias_t is None and x_t is not None and _strided_batch(x):
        # aten::linear multiplies a strided batch (multi_head_attention_forward's transposed
        # inputs) as a bmm with the weight expanded per batch entry, ~2.5x slower than one addmm
        # on rows copied contiguous.
        rows = x.reshape(-1, x.size(-1))
        primal = func(rows, weight, bias).view(*x.shape[:-1], -1)
        tangent = _tangent_product(x_t.reshape(rows.shape), weight).view(primal.shape)
        return _dual(primal, tangent, level)
    if weight_t is None and bias_t is None:
        if x_t is not None and _onednn.usable(x_t, weight):
            primal = func(x, weight, bias)
            tangent = _onednn.linear(x_t.reshape(-1, x_t.size(-1)), weight)
            return _dual(primal, tangent.view(primal.shape), level)
        return _weighted(level, func, args, kwargs, bias_index=2)
    primal = func(x, weight, bias)
    if x_t is None and weight_t is None:
        return _dual(primal, bias_t, level)  # expanded to the output's shape
    rows = x.reshape(-1, x.size(-1))  # addmm takes matrices
    if x_t is None:
        tangent = _tangent_product(rows, weight_t, bias_t)
    else:
        tangent = _tangent_product(x_t.reshape(rows.shape), weight, bias_t)
        if weight_t is not None and torch._C._functorch.maybe_current_level() is None:
            # In place, into the fresh product: out of place, addmm would first copy it whole.
            # Its backward needs none of the values it overwrites, so create_graph still works.
            tangent = tangent.addmm_(rows, weight_t.t())
        elif weight_t is not None:
            tangent = torch.addmm(tangent, rows, weight_t.t())  # vmap has no rule for addmm_
    return _dual(primal, tangent.reshape(primal.shape), level)


def _tangent_product(rows: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(rows, weight, bias)`` for a tangent: by oneDNN where that is faster
    (:mod:`jvpcli._onednn`). The primal keeps ``F.linear``, so that it is the function's own
    output to the bit; a tangent's last bits differ between any two ways of computing it."""
    if _onednn.usable(rows, weight) and (bias is None or bias.dtype == rows.dtype):
        return _onednn.linear(rows, weight, bias)
    return F.linear(rows, weight, bias)


def _strided_batch(x: Tensor) -> bool:
    """Whether ``x`` has batch dimensions that cannot be merged into rows without a copy."""
    return x.dim() > 2 and not x.is_contiguous()


def _add_matmul(level: int, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """``beta * input + alpha * (m1 @ m2)`` (addmm, baddbmm) with one matrix dual."""
    if len(args) != 3 or set(kwargs) - {"beta", "alpha"}:
        return NotImplemented
    bias, bias_t = _split(args[0], level)
    m1, m1_t = _split(args[1], level)
    m2, m2_t = _split(args[2], level)
    if bias_t is not None or (m1_t is None) == (m2_t is None):
        return NotImplemented
    primal = func(bias, m1, m2, **kwargs)
    product = torch.matmul(m1_t, m2) if m2_t is None else torch.matmul(m1, m2_t)
    alpha = kwargs.get("alpha", 1)
    return _dual(primal, product if alpha == 1 else product * alpha, level)


_SDPA_PARAMETERS = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_SAFE_SOFTMAX = getattr(torch.ops.aten, "_safe_softmax", None)  # 0, not NaN, on a row masked whole
"""The ATen op, not ``torch._safe_softmax``, whose C entry point dynamo cannot trace."""


def _attention(level: int, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """``scaled_dot_product_attention`` without dropout: primal and tangent in one pass.

    With ``P = softmax(q k^T s + mask)``: ``out = P v`` and
    ``out_t = P_t v + P v_t``, ``P_t = P (S_t - rowsum(P S_t))``, ``S_t = (q_t k^T + q k_t^T) s``.
    PyTorch's own route (the math backend, decomposed op by op under forward mode) computes the
    same terms with far more kernel launches and copies. Here each term is one kernel where one
    exists: ``S_t`` is a single matmul over concatenated operands (``[q_t, q] [k, k_t]^T``, twice
    the inner dimension, rather than two matmuls and an add over the L x S scores), and ``P_t`` is
    softmax's backward kernel applied to ``S_t`` (the same formula, one pass instead of four).
    """
    options = dict(zip(_SDPA_PARAMETERS, args[3:], strict=False)) | kwargs
    if (
        _SAFE_SOFTMAX is None
        or len(args) < 3
        or set(options) - set(_SDPA_PARAMETERS)
        or options.get("dropout_p", 0.0) != 0.0
        or options.get("enable_gqa", False)
    ):
        return NotImplemented
    q, q_t = _split(args[0], level)
    k, k_t = _split(args[1], level)
    v, v_t = _split(args[2], level)
    mask, mask_t = _split(options.get("attn_mask"), level)
    if (
        mask_t is not None
        or (mask is not None and options.get("is_causal", False))  # PyTorch's error, not a guess
        or (q_t is None and k_t is None and v_t is None)
        or q.dtype not in (torch.float32, torch.float64)
        or not q.dtype == k.dtype == v.dtype
    ):
        return NotImplemented
    scale = options.get("scale")
    if scale is None:
        scale = q.size(-1) ** -0.5
    probabilities = _attention_probabilities(q * scale, k, mask, options.get("is_causal", False))
    out = torch.matmul(probabilities, v)

    out_t = None
    if q_t is not None or k_t is not None:
        score_t = _score_tangent(q, q_t, k, k_t, scale)
        probability_t = torch._softmax_backward_data(score_t, probabilities, -1, q.dtype)
        out_t = torch.matmul(probability_t, v)
    if v_t is not None:
        term = torch.matmul(probabilities, v_t)
        out_t = term if out_t is None else out_t + term
    return _dual(out, out_t, level)


def _attention_probabilities(
    scaled_q: Tensor, k: Tensor, mask: Tensor | None, is_causal: bool
) -> Tensor:
    """``softmax(q k^T s + mask)``, as the math backend computes it.

    Masks are applied in place to the fresh scores, as the math backend does (neither
    ``masked_fill_`` nor ``add_`` needs the values it overwrites for its backward; a mask that
    would broadcast the scores to a larger shape fails as it does there). Without a mask no row
    can be hidden whole (a causal mask always leaves the diagonal), and plain softmax gives what
    ``_safe_softmax`` does at a fifth of its cost.
    """
    scores = torch.matmul(scaled_q, k.transpose(-2, -1))
    if is_causal:
        allowed = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill_(~allowed, float("-inf"))
    if mask is None:
        return torch.softmax(scores, -1)
    if mask.dtype == torch.bool:
        scores = scores.masked_fill_(~mask, float("-inf"))
    else:
        scores = scores.add_(mask)
    return _SAFE_SOFTMAX(scores, -1)


def _score_tangent(
    q: Tensor, q_t: Tensor | None, k: Tensor, k_t: Tensor | None, scale: float
) -> Tensor:
    """``S_t = (q_t k^T + q k_t^T) s``: with both tangents, one matmul of twice the inner size."""
    if k_t is None:
        return torch.matmul(q_t * scale, k.transpose(-2, -1))
    if q_t is None:
        return torch.matmul(q * scale, k_t.transpose(-2, -1))
    left = torch.cat((q_t, q), -1).mul_(scale)
    right = torch.cat((k, k_t), -1)
    return torch.matmul(left, right.transpose(-2, -1))


_LAYER_NORM_PARAMETERS = ("input", "normalized_shape", "weight", "bias", "eps")


def _layer_norm(level: int, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """``layer_norm`` of a dual input with constant weight and bias.

    With ``x̂ = (x - mean) rstd``: ``out_t = rstd (c - x̂ mean(x̂ c)) w``, ``c = x_t - mean(x_t)``.
    The statistics are computed here, not taken from the fused kernel, so that the tangent stays
    differentiable in ``x`` (the fused kernel's mean and rstd are constants to autograd, which
    makes second derivatives through PyTorch's own layer norm rules wrong). It also spares the
    zero tangents of weight and bias that PyTorch's rule sends through the slow path.
    """
    options = dict(zip(_LAYER_NORM_PARAMETERS, args, strict=False)) | kwargs
    if len(args) < 2 or set(options) - set(_LAYER_NORM_PARAMETERS):
        return NotImplemented
    x, x_t = _split(options["input"], level)
    weight, weight_t = _split(options.get("weight"), level)
    bias, bias_t = _split(options.get("bias"), level)
    if (
        x_t is None
        or weight_t is not None
        or bias_t is not None
        or x.dtype not in (torch.float32, torch.float64)
    ):
        return NotImplemented
    dims = tuple(range(-len(options["normalized_shape"]), 0))
    centered = x - x.mean(dims, keepdim=True)
    # Two passes, not var_mean: its Welford kernel is ~20x slower on CPU over a last dimension.
    rstd = torch.rsqrt((centered * centered).mean(dims, keepdim=True) + options.get("eps", 1e-5))
    normalized = centered * rstd
    centered_t = x_t - x_t.mean(dims, keepdim=True)
    projection = (normalized * centered_t).mean(dims, keepdim=True)
    tangent = torch.addcmul(centered_t, normalized, projection, value=-1) * rstd
    out = normalized
    if weight is not None:
        out, tangent = out * weight, tangent * weight
    if bias is not None:
        out = out + bias
    return _dual(out, tangent, level)


def _build_rules() -> dict[Callable[..., Any], Rule]:
    rules: dict[Callable[..., Any], Rule] = {}
    for funcs, rule in [
        (
            [torch.mul, Tensor.mul, Tensor.__mul__, Tensor.__rmul__, torch.multiply],
            _bilinear,
        ),
        (
            [torch.matmul, Tensor.matmul, Tensor.__matmul__, Tensor.__rmatmul__, torch.mm],
            _bilinear,
        ),
        ([Tensor.mm, torch.bmm, Tensor.bmm], _bilinear),
        ([torch.add, Tensor.add, Tensor.__add__, Tensor.__radd__], _additive(1.0)),
        ([torch.sub, Tensor.sub, Tensor.__sub__, torch.subtract], _additive(-1.0)),
        ([Tensor.__rsub__, torch.rsub], _reversed_subtraction),
        ([torch.div, Tensor.div, Tensor.__truediv__, torch.true_divide], _division),
        ([F.linear], _linear),
        ([F.conv1d, F.conv2d, F.conv3d], _linear),
        ([F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d], _linear),
        ([torch.addmm, Tensor.addmm, torch.baddbmm, Tensor.baddbmm], _add_matmul),
        ([F.scaled_dot_product_attention], _attention),
        ([F.layer_norm], _layer_norm),
    ]:
        for func in funcs:
            rules[func] = rule
    rules.update(RECURRENT_RULES)
    return rules


_RULES = _build_rules()


def _build_number_ops() -> dict[Callable[..., Any], Callable[..., Any]]:
    """``op(tensor, number)`` → the ATen overload for a Scalar operand.

    The hottest case of all (``x * 0.5``, ``x + 1``). The Python binding turns the number into a
    tensor and calls the Tensor overload, whose forward rule differentiates the number too (a zero
    tensor, ~50x the op's cost); the Scalar overload's rule does not. Same results otherwise.
    """
    aten = torch.ops.aten
    ops: dict[Callable[..., Any], Callable[..., Any]] = {}
    for funcs, op in [
        ([torch.mul, Tensor.mul, Tensor.__mul__, Tensor.__rmul__, torch.multiply], aten.mul.Scalar),
        ([torch.add, Tensor.add, Tensor.__add__, Tensor.__radd__], aten.add.Scalar),
        ([torch.sub, Tensor.sub, Tensor.__sub__, torch.subtract], aten.sub.Scalar),
        ([Tensor.__rsub__, torch.rsub], aten.rsub.Scalar),
        ([torch.div, Tensor.div, Tensor.__truediv__, torch.true_divide], aten.div.Scalar),
    ]:
        for func in funcs:
            ops[func] = op
    return ops


_NUMBER_OVERLOADS = _build_number_ops()
"""For a traced call (``compile=True``): dynamo traces an OpOverload, not its C++ entry point."""

_NUMBER_OPS = {func: getattr(op, "_op", op) for func, op in _NUMBER_OVERLOADS.items()}
"""For an eager call: the C++ entry point, skipping a Python frame."""


def _always_false(*_: object) -> bool:
    return False


_DISPATCH_CHECKS = ("has_torch_function", "has_torch_function_unary", "has_torch_function_variadic")
_OPENED: dict[Callable[..., Any], Callable[..., Any] | None] = {}


def _checks_for_torch_function(func: object) -> bool:
    return isinstance(func, types.FunctionType) and any(
        name in func.__code__.co_names for name in _DISPATCH_CHECKS
    )


def _rebuilt(func: types.FunctionType, namespace: dict[str, Any]) -> Callable[..., Any]:
    """``func`` with ``namespace`` for its globals."""
    rebuilt = types.FunctionType(
        func.__code__, namespace, func.__name__, func.__defaults__, func.__closure__
    )
    rebuilt.__kwdefaults__ = func.__kwdefaults__
    return rebuilt


def _opened_namespace(module_globals: dict[str, Any]) -> dict[str, Any]:
    """A copy of a module's globals that says "no torch function here"."""
    return {**module_globals, **dict.fromkeys(_DISPATCH_CHECKS, _always_false)}


def _opened(func: Callable[..., Any]) -> Callable[..., Any] | None:
    """``func``, a Python-level torch function, rebuilt to skip its own ``__torch_function__``
    check, so that its body runs under the mode; None if it is not such a function.

    A TorchFunctionMode is popped while it handles a call, so the ops *inside* a Python-level
    function it intercepted (``F.multi_head_attention_forward``, ``F.layer_norm``, ...) would run
    without the rules. Running a copy whose globals say "no torch function here" lets the mode see
    them; nothing global changes.
    """
    if func in _OPENED:
        return _OPENED[func]
    opened = None
    if _checks_for_torch_function(func):
        opened = _rebuilt(func, _opened_namespace(func.__globals__))
    _OPENED[func] = opened
    return opened


_DIFFERENTIATING = frozenset({torch.autograd.grad, torch.autograd.backward, Tensor.backward})
"""The calls by which a function differentiates inside itself (``torch.autograd.functional`` and
``torch.func.grad`` end in them too)."""

AUTOGRAD_STATE = {Tensor.requires_grad.__get__: "requires_grad"}
"""The attributes of autograd's state watched: ``requires_grad`` is False on every tensor computed
in the rules' world (grad mode off, inputs that do not require grad), where under
torch.autograd.functional.jvp it says whether the tensor depends on the inputs or a parameter.
(``grad_fn`` and ``is_leaf`` are not: the rerun would answer them otherwise for the inputs, which
are views of the leaves there.)"""


_ENTRIES: dict[Callable[..., Any], Callable[..., Any] | bool] = {}
"""What the mode does with each function it has seen: call its Scalar overload (the ATen op) when
its second operand is a number, consult the rules and opened functions (True), or nothing
(False). One lookup for the common case, the many functions the mode leaves alone."""


def _entry(func: Callable[..., Any]) -> Callable[..., Any] | bool:
    if func in _DIFFERENTIATING or func in AUTOGRAD_STATE:
        return True
    number_op = _NUMBER_OPS.get(func)
    if number_op is not None:
        return number_op
    return func in _RULES or _opened(func) is not None


_TRACED_RULES: tuple[Rule, ...] = tuple(dict.fromkeys(_RULES.values()))
_TRACED_RULE_INDEX = {func: _TRACED_RULES.index(rule) for func, rule in _RULES.items()}
_NUMBER_OVERLOAD_NAMES = {
    func: op.overloadpacket.__name__ for func, op in _NUMBER_OVERLOADS.items()
}


def _traced_openings() -> dict[Callable[..., Any], Callable[..., Any]]:
    """The Python-level functions of ``torch.nn.functional`` and ``torch.functional`` that check
    for ``__torch_function__`` themselves, each with its opened copy (see :func:`_opened`; one
    namespace per module, which is fixed). Not ``Tensor``'s Python methods: their ``super()``
    calls are beyond dynamo in a copy of the function."""
    import torch.functional

    openings = {}
    for module in (F, torch.functional):
        module_globals = vars(module)
        namespace = _opened_namespace(module_globals)
        for value in module_globals.values():
            if _checks_for_torch_function(value) and value.__globals__ is module_globals:
                openings[value] = _rebuilt(value, namespace)
    return openings


_TRACED_OPENINGS = _traced_openings()
_TRACED_OPENED = tuple(_TRACED_OPENINGS.values())
_TRACED_OPENED_INDEX = {func: index for index, func in enumerate(_TRACED_OPENINGS)}


def traced_lookup(func: Callable[..., Any]) -> tuple[str | None, int | None, int | None]:
    """For a mode that dynamo traces: the name of ``func``'s ATen op with a Scalar overload, the
    index of its rule in ``_TRACED_RULES`` and that of its opened copy in ``_TRACED_OPENED``
    (each None if it has none).

    Plain constants, so that dynamo can take the result as one
    (``torch._dynamo.assume_constant_result``) and guard on no table: guarded key by key, the
    hundred rules would cost each call more than a small function's whole graph. The traced mode
    calls OpOverloads (dynamo cannot trace their C++ entry points), and opens only the functions
    of ``_TRACED_OPENINGS``, a table fixed at import: without it, the ops inside
    ``F.multi_head_attention_forward`` would run with PyTorch's own rules (the zero-tangent
    matmul of every projection, attention decomposed op by op), 2.3x slower than eager jvpcli.
    """
    return (
        _NUMBER_OVERLOAD_NAMES.get(func),
        _TRACED_RULE_INDEX.get(func),
        _TRACED_OPENED_INDEX.get(func),
    )


class NeedsAutograd(RuntimeError):
    """The function uses autograd inside: the rules' world cannot give it what it asks for.

    The rules run the function with grad mode off on inputs that do not require grad, and record
    the graph of the primal alone. A function that differentiates inside itself (a force, a
    saliency map, a gradient penalty) needs tangents on what its own backward pass reads, the
    saved tensors, which the rules' saved tensors do not carry, and inputs that do not require
    grad make such functions detach them (as ``torch.autograd.functional``'s do): its tangent
    would be lost, silently. A function that reads ``requires_grad`` of a tensor it computed
    would read False where under ``torch.autograd.functional.jvp`` it may read True, and may take
    another branch. The engine reruns either with inputs that require grad and PyTorch's own
    forward rules, as that function sees them there.

    Attributes:
        because: why the engine reruns the function, in a clause ("the function differentiates").
    """

    def __init__(self, message: str, because: str) -> None:
        super().__init__(message)
        self.because = because

    def again(self) -> NeedsAutograd:
        """The same error, new (without the traceback, and the frames, of the first)."""
        return NeedsAutograd(str(self), self.because)


def differentiates_inside(func: Callable[..., Any]) -> NeedsAutograd:
    """The error for a call of ``func``, one of :data:`_DIFFERENTIATING`."""
    name = "Tensor.backward" if func is Tensor.backward else f"torch.autograd.{func.__name__}"
    return NeedsAutograd(
        f"the function calls {name} (it differentiates inside itself), which jvpcli's fast "
        "tangent rules cannot follow",
        "the function differentiates",
    )


def reads_autograd_state(attribute: str) -> NeedsAutograd:
    """The error for a read of ``Tensor.<attribute>`` that forward mode answers False."""
    return NeedsAutograd(
        f"the function reads Tensor.{attribute}, which jvpcli's fast tangent rules (grad mode "
        "off) may answer otherwise than torch.autograd.functional.jvp",
        "the function reads autograd's state",
    )


class FastTangentRules(TorchFunctionMode):
    """While active, ops in the rule table skip PyTorch's zero-tangent work (see module doc).

    A call that differentiates inside the function (:data:`_DIFFERENTIATING`), or a read of
    autograd's state that the rules' world answers False (:data:`AUTOGRAD_STATE`), raises
    :class:`NeedsAutograd`, and keeps it in :attr:`needs_autograd`, should the function catch it.
    """

    def __init__(
        self,
        level: int,
        traced_lookup: Callable[[Callable[..., Any]], tuple[str | None, int | None, int | None]]
        | None = None,
    ) -> None:
        """``level``: the forward AD level of the dual tensors; ``traced_lookup``: for a mode that
        dynamo traces (``compile=True``), :func:`traced_lookup` as dynamo may call it."""
        super().__init__()
        self.level = level
        self._running: set[Callable[..., Any]] = set()
        self._traced_lookup = traced_lookup
        self.needs_autograd: NeedsAutograd | None = None
        # Made with grad mode on (strict, create_graph: inputs that require grad), the function
        # sees autograd's state as under torch.autograd.functional.jvp.
        self._as_autograd = torch.is_grad_enabled()

    def __torch_function__(
        self, func: Callable[..., Any], types: tuple, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        if self._traced_lookup is not None:
            return self._traced(func, args, kwargs or {})
        entry = _ENTRIES.get(func)
        if entry is None:
            entry = _ENTRIES[func] = _entry(func)
        if entry is False:
            return func(*args, **kwargs) if kwargs else func(*args)
        if (
            entry is not True
            and not kwargs
            and len(args) == 2
            and type(args[1]) in _NUMBERS
            and isinstance(args[0], Tensor)
            and args[0].is_floating_point()
        ):
            return entry(*args)
        return self._ruled(func, args, kwargs or {})

    def _traced(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """:meth:`__torch_function__` while dynamo traces the mode."""
        number_op, rule_index, opened_index = self._traced_lookup(func)
        if (
            number_op is not None
            and not kwargs
            and len(args) == 2
            and type(args[1]) in _NUMBERS
            and isinstance(args[0], Tensor)
            and args[0].is_floating_point()
        ):
            return getattr(torch.ops.aten, number_op).Scalar(*args)
        if rule_index is not None:
            result = _TRACED_RULES[rule_index](self.level, func, args, kwargs)
            if result is not NotImplemented:
                return result
        if opened_index is not None and func not in self._running:
            self._running.add(func)
            try:
                with self:
                    return _TRACED_OPENED[opened_index](*args, **kwargs)
            finally:
                self._running.discard(func)
        if func is Tensor.unflatten and not kwargs and len(args) == 3:
            # What multi_head_attention_forward calls, as the ATen op it ends in (dynamo cannot
            # trace the method's super() call from a mode).
            return torch.ops.aten.unflatten.int(*args)
        return func(*args, **kwargs)

    def _ruled(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """``func`` through its rule, else its opened copy under the mode, else as it is."""
        if func in _DIFFERENTIATING:
            self.needs_autograd = differentiates_inside(func)
            raise self.needs_autograd.again()
        attribute = AUTOGRAD_STATE.get(func)
        if attribute is not None:
            value = func(*args)
            # A False the function reads itself may be a True under PyTorch's jvp (a tensor
            # computed from the inputs or a parameter); torch's own functions (repr, deepcopy,
            # the checks of nn's fast paths) compute the same either way.
            if not (value or self._as_autograd or self._running):
                self.needs_autograd = reads_autograd_state(attribute)
                raise self.needs_autograd.again()
            return value
        rule = _RULES.get(func)
        if rule is not None:
            result = rule(self.level, func, args, kwargs)
            if result is not NotImplemented:
                return result
        opened = _opened(func)
        if opened is not None and func not in self._running:
            # A function whose C part dispatches back to it (Tensor.unflatten) runs plainly the
            # second time.
            self._running.add(func)
            try:
                with self:
                    return opened(*args, **kwargs)
            finally:
                self._running.discard(func)
        return func(*args, **kwargs)

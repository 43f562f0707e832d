"""The recurrent-layer rules (jvpcli/_recurrent_rules.py) give PyTorch's numbers.

Every variant (LSTM, GRU, RNN tanh / relu; one and two layers; bidirectional; batch_first;
unbatched; packed sequences, sorted and not; initial states given, with tangents, or not;
projections) runs through ``jvpcli.jvp`` with each method and is compared with
``torch.autograd.functional.jvp`` (double backward: no rule involved) and, in float64, with central
finite differences. create_graph results are checked with gradcheck / gradgradcheck, strict mode
and batched tangents against PyTorch. Separate tests pin down that the rule is what ran, and that
the cases it does not cover go to PyTorch's own rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.autograd.functional import jvp as torch_jvp
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import jvpcli
from jvpcli import _onednn, _recurrent_rules
from jvpcli.engine import _onednn_disabled

METHODS = ("auto", "forward", "double-backward")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
TOLERANCES = {
    torch.float32: {"rtol": 1e-4, "atol": 1e-5},
    torch.float64: {"rtol": 1e-9, "atol": 1e-10},
}
STEPS, BATCH, FEATURES, HIDDEN = 4, 3, 3, 4
LENGTHS_SORTED = torch.tensor([4, 3, 1])
LENGTHS_UNSORTED = torch.tensor([2, 4, 2])

Func = Callable[..., tuple[Tensor, ...]]


@pytest.fixture(autouse=True)
def seeded_rng() -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def randn(*shape: int, dtype: torch.dtype) -> Tensor:
    return torch.randn(shape, dtype=dtype)


def flat(result: tuple) -> tuple[Tensor, ...]:
    """``(output, h_n)`` or ``(output, (h_n, c_n))`` as a flat tuple; packed output as its data."""
    output, state = result
    if isinstance(output, nn.utils.rnn.PackedSequence):
        output = output.data
    return (output, *(state if isinstance(state, tuple) else (state,)))


def layer_only(layer: nn.RNNBase) -> Func:
    return lambda x: flat(layer(x))


def with_state(layer: nn.RNNBase) -> Func:
    if isinstance(layer, nn.LSTM):
        return lambda x, h0, c0: flat(layer(x, (h0, c0)))
    return lambda x, h0: flat(layer(x, h0))


def packed(layer: nn.RNNBase, lengths: Tensor, *, sorted_: bool, state: bool) -> Func:
    """The layer on a packed sequence; returns the packed data, the padded output and the states."""

    def func(x: Tensor, *initial: Tensor) -> tuple[Tensor, ...]:
        sequence = pack_padded_sequence(
            x, lengths, batch_first=layer.batch_first, enforce_sorted=sorted_
        )
        hidden = tuple(initial) if isinstance(layer, nn.LSTM) else initial[0] if state else None
        out, states = layer(sequence, hidden if state else None)
        padded, _ = pad_packed_sequence(out, batch_first=layer.batch_first)
        return (out.data, padded, *(states if isinstance(states, tuple) else (states,)))

    return func


def states_of(layer: nn.RNNBase, dtype: torch.dtype, *, batch: int | None = BATCH) -> list[Tensor]:
    """Initial states of the right sizes (``batch=None``: for unbatched input)."""
    count = layer.num_layers * (2 if layer.bidirectional else 1)
    lead = (count,) if batch is None else (count, batch)
    out_size = layer.proj_size or layer.hidden_size
    states = [randn(*lead, out_size, dtype=dtype)]
    if isinstance(layer, nn.LSTM):
        states.append(randn(*lead, layer.hidden_size, dtype=dtype))
    return states


def sequence(dtype: torch.dtype, *, batch_first: bool = False) -> Tensor:
    shape = (BATCH, STEPS, FEATURES) if batch_first else (STEPS, BATCH, FEATURES)
    return randn(*shape, dtype=dtype)


def variant_lstm_one_layer(dtype):
    return layer_only(nn.LSTM(FEATURES, HIDDEN).to(dtype)), (sequence(dtype),)


def variant_lstm_two_layer_bidirectional(dtype):
    layer = nn.LSTM(FEATURES, HIDDEN, num_layers=2, bidirectional=True).to(dtype)
    return layer_only(layer), (sequence(dtype),)


def variant_lstm_batch_first_with_state(dtype):
    layer = nn.LSTM(FEATURES, HIDDEN, num_layers=2, batch_first=True).to(dtype)
    return with_state(layer), (sequence(dtype, batch_first=True), *states_of(layer, dtype))


def variant_lstm_projection_bidirectional_with_state(dtype):
    layer = nn.LSTM(FEATURES, HIDDEN, num_layers=2, bidirectional=True, proj_size=2).to(dtype)
    return with_state(layer), (sequence(dtype), *states_of(layer, dtype))


def variant_lstm_unbatched_with_state(dtype):
    layer = nn.LSTM(FEATURES, HIDDEN, bidirectional=True).to(dtype)
    return with_state(layer), (
        randn(STEPS, FEATURES, dtype=dtype),
        *states_of(layer, dtype, batch=None),
    )


def variant_lstm_state_tangents_only(dtype):
    layer = nn.LSTM(FEATURES, HIDDEN, num_layers=2).to(dtype)
    x = sequence(dtype)  # a constant: only the initial states carry tangents
    return (lambda h0, c0: flat(layer(x, (h0, c0)))), tuple(states_of(layer, dtype))


def variant_lstm_no_bias_eval(dtype):
    return layer_only(nn.LSTM(FEATURES, HIDDEN, bias=False).to(dtype).eval()), (sequence(dtype),)


def variant_lstm_packed_sorted(dtype):
    layer = nn.LSTM(FEATURES, HIDDEN, num_layers=2).to(dtype)
    return packed(layer, LENGTHS_SORTED, sorted_=True, state=False), (sequence(dtype),)


def variant_lstm_packed_unsorted_bidirectional_with_state(dtype):
    layer = nn.LSTM(FEATURES, HIDDEN, num_layers=2, bidirectional=True).to(dtype)
    func = packed(layer, LENGTHS_UNSORTED, sorted_=False, state=True)
    return func, (sequence(dtype), *states_of(layer, dtype))


def variant_gru_two_layer_bidirectional_with_state(dtype):
    layer = nn.GRU(FEATURES, HIDDEN, num_layers=2, bidirectional=True).to(dtype)
    return with_state(layer), (sequence(dtype), *states_of(layer, dtype))


def variant_gru_batch_first_no_bias(dtype):
    layer = nn.GRU(FEATURES, HIDDEN, batch_first=True, bias=False).to(dtype)
    return layer_only(layer), (sequence(dtype, batch_first=True),)


def variant_gru_unbatched(dtype):
    return layer_only(nn.GRU(FEATURES, HIDDEN).to(dtype)), (randn(STEPS, FEATURES, dtype=dtype),)


def variant_gru_packed_unsorted_bidirectional(dtype):
    layer = nn.GRU(FEATURES, HIDDEN, bidirectional=True, batch_first=True).to(dtype)
    func = packed(layer, LENGTHS_UNSORTED, sorted_=False, state=True)
    return func, (sequence(dtype, batch_first=True), *states_of(layer, dtype))


def variant_rnn_tanh_two_layer_bidirectional(dtype):
    layer = nn.RNN(FEATURES, HIDDEN, num_layers=2, bidirectional=True).to(dtype)
    return layer_only(layer), (sequence(dtype),)


def variant_rnn_relu_with_state(dtype):
    layer = nn.RNN(FEATURES, HIDDEN, num_layers=2, nonlinearity="relu").to(dtype)
    return with_state(layer), (sequence(dtype), *states_of(layer, dtype))


def variant_rnn_relu_packed_sorted(dtype):
    layer = nn.RNN(FEATURES, HIDDEN, nonlinearity="relu", bidirectional=True).to(dtype)
    return packed(layer, LENGTHS_SORTED, sorted_=True, state=False), (sequence(dtype),)


VARIANTS: dict[str, Callable[[torch.dtype], tuple[Func, tuple[Tensor, ...]]]] = {
    name.removeprefix("variant_").replace("_", "-"): builder
    for name, builder in dict(globals()).items()
    if name.startswith("variant_")
}
NAMES = sorted(VARIANTS)


def directions_for(inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(torch.randn_like(x) for x in inputs)


def central_differences(func: Func, inputs: tuple[Tensor, ...], v: tuple[Tensor, ...]):
    step = 1e-6
    with torch.no_grad():
        plus = func(*(x + step * t for x, t in zip(inputs, v, strict=True)))
        minus = func(*(x - step * t for x, t in zip(inputs, v, strict=True)))
    return tuple((p - m) / (2 * step) for p, m in zip(plus, minus, strict=True))


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", NAMES)
def test_jvp_matches_pytorch(name: str, method: str, dtype: torch.dtype) -> None:
    func, inputs = VARIANTS[name](dtype)
    v = directions_for(inputs)
    expected = torch_jvp(func, inputs, v)

    actual = jvpcli.jvp(func, inputs, v, method=method)

    torch.testing.assert_close(actual, expected, **TOLERANCES[dtype])


@pytest.mark.parametrize("name", NAMES)
def test_jvp_matches_central_differences(name: str) -> None:
    func, inputs = VARIANTS[name](torch.float64)
    v = directions_for(inputs)

    _, actual = jvpcli.jvp(func, inputs, v, method="forward")

    torch.testing.assert_close(actual, central_differences(func, inputs, v), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_the_rule_computes_the_jvp(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = []
    run = _recurrent_rules._run
    monkeypatch.setattr(
        _recurrent_rules, "_run", lambda cell, call: runs.append(cell) or run(cell, call)
    )
    func, inputs = VARIANTS[name](torch.float32)

    result = jvpcli.jvp_with_info(func, inputs, directions_for(inputs), method="forward")

    assert runs, "the recurrent rule did not run"
    # PyTorch's own rule, had it run, would have failed on oneDNN's LSTM kernel and been retried.
    assert result.info.fallbacks == ()


def flat_jvp(func: Func, count: int, **options: bool) -> Callable[..., tuple[Tensor, ...]]:
    """``(*inputs, *v) -> (*func_output, *jvp)`` through jvpcli's forward method."""

    def call(*tensors: Tensor) -> tuple[Tensor, ...]:
        output, tangent = jvpcli.jvp(
            func, tensors[:count], tensors[count:], create_graph=True, method="forward", **options
        )
        return (*output, *tangent)

    return call


GRADCHECK_NAMES = [
    "lstm-projection-bidirectional-with-state",
    "lstm-packed-unsorted-bidirectional-with-state",
    "gru-two-layer-bidirectional-with-state",
    "gru-packed-unsorted-bidirectional",
    "rnn-tanh-two-layer-bidirectional",
    "rnn-relu-with-state",
]


@pytest.mark.parametrize("strict", [False, True], ids=["plain", "strict"])
@pytest.mark.parametrize("name", GRADCHECK_NAMES)
def test_create_graph_results_pass_gradcheck_and_gradgradcheck(name: str, strict: bool) -> None:
    func, inputs = VARIANTS[name](torch.float64)
    tensors = tuple(t.requires_grad_() for t in (*inputs, *directions_for(inputs)))
    call = flat_jvp(func, len(inputs), strict=strict)

    assert torch.autograd.gradcheck(call, tensors, fast_mode=True)
    assert torch.autograd.gradgradcheck(call, tensors, fast_mode=True)


@pytest.mark.parametrize("create_graph", [False, True], ids=["plain", "create-graph"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", NAMES)
def test_strict_jvp_matches_pytorch(name: str, method: str, create_graph: bool) -> None:
    func, inputs = VARIANTS[name](torch.float64)
    v = directions_for(inputs)
    if create_graph:
        inputs = tuple(x.requires_grad_() for x in inputs)
    expected = torch_jvp(func, inputs, v, create_graph=create_graph, strict=True)

    actual = jvpcli.jvp(func, inputs, v, create_graph=create_graph, strict=True, method=method)

    torch.testing.assert_close(actual, expected, **TOLERANCES[torch.float64])


def test_strict_mode_names_an_input_that_no_output_depends_on() -> None:
    layer = nn.GRU(FEATURES, HIDDEN).double()
    inputs = (sequence(torch.float64), randn(FEATURES, dtype=torch.float64))

    with pytest.raises(RuntimeError, match="independent of input 1"):
        jvpcli.jvp(lambda x, _: flat(layer(x)), inputs, inputs, strict=True, method="forward")


@pytest.mark.parametrize("create_graph", [False, True], ids=["plain", "create-graph"])
@pytest.mark.parametrize("name", NAMES)
def test_batched_v_equals_one_pytorch_call_per_direction(name: str, create_graph: bool) -> None:
    func, inputs = VARIANTS[name](torch.float64)
    directions = tuple(torch.randn(3, *x.shape, dtype=x.dtype) for x in inputs)

    # Batched tangents of a packed sequence go through vmap only with create_graph (one direction
    # at a time, through the rule); otherwise they need "auto"'s double backward (PyTorch's limit).
    method = "auto" if "packed" in name and not create_graph else "forward"
    output, tangents = jvpcli.jvp(
        func, inputs, directions, create_graph=create_graph, method=method, batched_v=True
    )

    for k in range(3):
        expected = torch_jvp(func, inputs, tuple(d[k] for d in directions))
        torch.testing.assert_close(
            (output, tuple(t[k] for t in tangents)), expected, **TOLERANCES[torch.float64]
        )


def test_float32_workload_of_realistic_size_matches_pytorch() -> None:
    # Long enough that the rule's float32 rounding (it recomputes the primal without oneDNN) would
    # show if it drifted.
    layer = nn.LSTM(16, 32, num_layers=2, bidirectional=True).eval()
    x, v = torch.randn(30, 8, 16), torch.randn(30, 8, 16)

    actual = jvpcli.jvp(layer_only(layer), x, v)

    torch.testing.assert_close(
        actual, torch_jvp(layer_only(layer), x, v), **TOLERANCES[torch.float32]
    )


@pytest.mark.parametrize(
    ("build", "onednn"),
    [
        pytest.param(
            lambda: (layer_only(nn.LSTM(24, 256, num_layers=2, bidirectional=True)), 3 * 7),
            True,
            id="two-layer-bidirectional",
        ),
        pytest.param(
            lambda: (
                packed(nn.LSTM(24, 256), torch.tensor([7, 3, 6]), sorted_=False, state=False),
                3,
            ),
            True,
            id="packed-unsorted",
        ),
        pytest.param(
            lambda: (layer_only(nn.LSTM(24, 256, proj_size=128, batch_first=True)), 7),
            True,
            id="projection",
        ),
        pytest.param(lambda: (layer_only(nn.LSTM(24, 64)), 3 * 7), False, id="small-weights"),
    ],
)
def test_grad_free_lstm_path_matches_pytorch_with_onednn_matmuls_where_weights_are_large(
    build, onednn: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without create_graph or strict, the LSTM takes its lean path (gates i, f, o, g with g
    # doubled, buffers written in place, oneDNN's matmul for weights of 2^17 values or more, the
    # recurrent weights laid out once in its blocked format). The small tests above have tiny
    # weights: these are large enough for oneDNN.
    torch.manual_seed(0)
    func, _ = build()
    x = torch.randn(7, 3, 24)
    v = torch.randn_like(x)
    calls = []
    linear, reorder = _onednn.OPS

    def counting(*args: object) -> Tensor:
        calls.append(args)
        return linear(*args)

    monkeypatch.setattr(_onednn, "OPS", (counting, reorder))

    result = jvpcli.jvp_with_info(func, x, v)

    torch.testing.assert_close(
        (result.func_output, result.jvp), torch_jvp(func, x, v), **TOLERANCES[torch.float32]
    )
    assert result.info.method_used == "forward"
    assert bool(calls) is onednn
    if onednn:  # each step's recurrent product takes the weight laid out once in oneDNN's format
        assert any(weight.is_mkldnn for _, weight, *_ in calls)
        with _onednn_disabled():  # then torch.mm, and the same numbers
            calls.clear()
            unfused = jvpcli.jvp(func, x, v)
        assert not calls
        torch.testing.assert_close(unfused, (result.func_output, result.jvp))


def lstm_arguments(layer: nn.LSTM, x: Tensor) -> tuple:
    """The padded overload's arguments, as ``nn.LSTM`` passes them to ``torch.lstm``."""
    count = layer.num_layers * (2 if layer.bidirectional else 1)
    zeros = torch.zeros(count, x.size(1), layer.hidden_size, dtype=x.dtype)
    return (
        x,
        [zeros, zeros],
        list(layer._flat_weights),
        layer.bias,
        layer.num_layers,
        layer.dropout,
        layer.training,
        layer.bidirectional,
        layer.batch_first,
    )


def rule_result(arguments: tuple, dual_positions: dict[int, int | None]) -> object:
    """The LSTM rule's answer with a tangent on ``arguments[i]`` (or on ``arguments[i][j]``)."""
    with fwAD.dual_level() as level:
        arguments = list(arguments)
        for i, j in dual_positions.items():
            if j is None:
                arguments[i] = fwAD.make_dual(arguments[i], torch.randn_like(arguments[i]))
            else:
                arguments[i] = list(arguments[i])
                arguments[i][j] = fwAD.make_dual(arguments[i][j], torch.randn_like(arguments[i][j]))
        return _recurrent_rules.RECURRENT_RULES[torch.lstm](level, torch.lstm, tuple(arguments), {})


def test_rule_takes_the_input_tangent_of_an_lstm() -> None:
    layer = nn.LSTM(FEATURES, HIDDEN).double()
    assert (
        rule_result(lstm_arguments(layer, sequence(torch.float64)), {0: None}) is not NotImplemented
    )


@pytest.mark.parametrize(
    ("layer", "dtype", "duals"),
    [
        pytest.param(nn.LSTM(FEATURES, HIDDEN), torch.float64, {0: None, 2: 0}, id="dual-weight"),
        pytest.param(
            nn.LSTM(FEATURES, HIDDEN, num_layers=2, dropout=0.5).train(),
            torch.float64,
            {0: None},
            id="dropout-in-training",
        ),
        pytest.param(nn.LSTM(FEATURES, HIDDEN), torch.bfloat16, {0: None}, id="bfloat16"),
        pytest.param(nn.LSTM(FEATURES, HIDDEN), torch.float64, {}, id="no-tangent"),
    ],
)
def test_rule_leaves_what_it_does_not_cover_to_pytorch(layer, dtype, duals) -> None:
    layer = layer.to(dtype)
    assert rule_result(lstm_arguments(layer, sequence(dtype)), duals) is NotImplemented


def test_tangents_on_weights_go_to_pytorchs_rule_and_are_right() -> None:
    layer = nn.LSTM(FEATURES, HIDDEN, num_layers=2).double()
    x = sequence(torch.float64)
    names = [name for name, _ in layer.named_parameters()]

    def func(x: Tensor, *weights: Tensor) -> tuple[Tensor, ...]:
        return flat(torch.func.functional_call(layer, dict(zip(names, weights, strict=True)), (x,)))

    inputs = (x, *(p.detach() for p in layer.parameters()))
    v = directions_for(inputs)

    actual = jvpcli.jvp(func, inputs, v, method="forward")

    torch.testing.assert_close(actual, torch_jvp(func, inputs, v), **TOLERANCES[torch.float64])


def test_pack_padded_sequence_has_a_forward_rule() -> None:
    # PyTorch has none: without the rule, a packed input sends jvp to double backward.
    x, v = sequence(torch.float64), sequence(torch.float64)

    def func(t: Tensor) -> Tensor:
        return pack_padded_sequence(t, LENGTHS_UNSORTED, enforce_sorted=False).data.sin()

    result = jvpcli.jvp_with_info(func, x, v)

    torch.testing.assert_close((result.func_output, result.jvp), torch_jvp(func, x, v))
    assert result.info.method_used == "forward"
    assert result.info.fallbacks == ()

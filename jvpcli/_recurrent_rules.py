"""Forward-mode rules for the recurrent layers: ``torch.lstm``, ``torch.gru``, ``torch.rnn_tanh``
and ``torch.rnn_relu`` (what ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` call), padded and packed.

PyTorch's forward-mode route through these ops differentiates each time step op by op: a matmul
with the zero tangent of every weight, zero fills and copies per step, and on CPU it cannot use
oneDNN's fused kernel at all. Here the primal and the tangent run side by side, stacked: the
hidden state of each step is kept as ``[h; h_t]`` (the primal rows, then the tangent rows), so the
recurrent product of the primal and of the tangent is *one* matmul per step, and the input
product of all time steps is one matmul per layer. A matmul with a few dozen rows is bound by its
fixed cost on CPU, so twice the rows cost about the same: the tangent's matmuls come almost free.

Recomputing the primal is faster than calling the fused kernel for it: the tangent needs every
step's gates, which the fused kernel does not return, and recomputing them would cost another
pass as large as the forward itself.

The rules cover constant weights (tangents on the input and the initial states); a dual weight,
dropout between layers in training mode, a dtype other than float32 / float64, and calls inside a
functorch transform (batched tangents, whose stacking with the primal would copy the primal per
direction) go to PyTorch's own rule. Everything is computed with ordinary differentiable ops, out
of place, so ``create_graph`` and strict mode see through it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

_DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class _Weights:
    """One direction of one layer; ``*_t`` are transposed views, ready for ``mm``."""

    w_ih_t: Tensor
    w_hh_t: Tensor
    b_ih: Tensor | None
    b_hh: Tensor | None
    w_hr_t: Tensor | None  # LSTM projection (proj_size > 0)


Step = Callable[[Tensor, tuple[Tensor, ...], int, _Weights], tuple[Tensor, ...]]


@dataclass(frozen=True)
class _Cell:
    """How one kind of recurrent layer steps.

    ``step(inputs, states, n, weights)`` takes this step's input products (``(2, n, gates)``:
    primal rows, tangent rows; input bias included) and the stacked states (each ``(2n, size)``)
    and returns the new stacked states, the hidden state first (it is also the step's output).
    """

    gates: int
    step: Step
    input_bias: Callable[[_Weights], Tensor | None]


def _sum_of_biases(weights: _Weights) -> Tensor | None:
    if weights.b_ih is None:
        return None
    return weights.b_ih + weights.b_hh


def _sigmoid_slope(activation: Tensor) -> Tensor:
    return torch.addcmul(
        activation, activation, activation, value=-1
    )  # s - s², the slope of s = sigmoid


def _tanh_tangent(tangent_in: Tensor, value: Tensor) -> Tensor:
    return torch.addcmul(tangent_in, tangent_in * value, value, value=-1)  # (1 - tanh²) t


def _recurrent_products(inputs: Tensor, hidden: Tensor, n: int, weight_t: Tensor) -> Tensor:
    return torch.add(inputs, hidden.mm(weight_t).view(2, n, -1))


def _lstm_step(
    inputs: Tensor, states: tuple[Tensor, ...], n: int, weights: _Weights
) -> tuple[Tensor, ...]:
    """``c' = f c + i g``, ``h' = o tanh(c')`` (gates i, f, g, o) and its tangent."""
    hidden, cell = states
    size = cell.size(1)
    gates = _recurrent_products(inputs, hidden, n, weights.w_hh_t)
    pre, pre_t = gates[0], gates[1]
    activation = pre.sigmoid()
    candidate = pre[:, 2 * size : 3 * size].tanh()
    activation_t = pre_t * _sigmoid_slope(activation)
    candidate_t = _tanh_tangent(pre_t[:, 2 * size : 3 * size], candidate)
    i, f, o = activation[:, :size], activation[:, size : 2 * size], activation[:, 3 * size :]
    i_t, f_t = activation_t[:, :size], activation_t[:, size : 2 * size]
    o_t = activation_t[:, 3 * size :]
    c, c_t = cell[:n], cell[n:]
    new_cell = torch.addcmul(f * c, i, candidate)
    new_cell_t = torch.addcmul(
        torch.addcmul(torch.addcmul(f * c_t, f_t, c), i_t, candidate), i, candidate_t
    )
    squashed = new_cell.tanh()
    out_scaled_t = o * new_cell_t
    new_hidden = o * squashed
    new_hidden_t = torch.addcmul(
        torch.addcmul(out_scaled_t, o_t, squashed), out_scaled_t * squashed, squashed, value=-1
    )
    stacked = torch.cat([new_hidden, new_hidden_t])
    if weights.w_hr_t is not None:
        stacked = stacked.mm(weights.w_hr_t)
    return stacked, torch.cat([new_cell, new_cell_t])


def _gru_input_bias(weights: _Weights) -> Tensor | None:
    """``b_ih`` plus the reset and update parts of ``b_hh`` (its new-gate part is reset-scaled)."""
    if weights.b_ih is None:
        return None
    size = weights.b_hh.size(0) // 3
    return weights.b_ih + torch.cat([weights.b_hh[: 2 * size], weights.b_hh.new_zeros(size)])


def _gru_step(
    inputs: Tensor, states: tuple[Tensor, ...], n: int, weights: _Weights
) -> tuple[Tensor, ...]:
    """``h' = m + z (h - m)``, ``m = tanh(W_in x + b_in + r (W_hn h + b_hn))`` and its tangent."""
    (hidden,) = states
    size = hidden.size(1)
    recurrent = hidden.mm(weights.w_hh_t).view(2, n, -1)
    gates = torch.add(inputs[:, :, : 2 * size], recurrent[:, :, : 2 * size])
    activation = gates[0].sigmoid()
    activation_t = gates[1] * _sigmoid_slope(activation)
    r, z = activation[:, :size], activation[:, size:]
    r_t, z_t = activation_t[:, :size], activation_t[:, size:]
    candidate_in, candidate_in_t = recurrent[0, :, 2 * size :], recurrent[1, :, 2 * size :]
    if weights.b_hh is not None:
        candidate_in = candidate_in + weights.b_hh[2 * size :]
    new = torch.addcmul(inputs[0, :, 2 * size :], r, candidate_in).tanh()
    pre_t = torch.addcmul(
        torch.addcmul(inputs[1, :, 2 * size :], r_t, candidate_in), r, candidate_in_t
    )
    new_t = _tanh_tangent(pre_t, new)
    h, h_t = hidden[:n], hidden[n:]
    new_hidden = torch.addcmul(new, z, h - new)
    new_hidden_t = torch.addcmul(torch.addcmul(new_t, z_t, h - new), z, h_t - new_t)
    return (torch.cat([new_hidden, new_hidden_t]),)


def _tanh_step(
    inputs: Tensor, states: tuple[Tensor, ...], n: int, weights: _Weights
) -> tuple[Tensor, ...]:
    pre = _recurrent_products(inputs, states[0], n, weights.w_hh_t)
    new = pre[0].tanh()
    return (torch.cat([new, _tanh_tangent(pre[1], new)]),)


def _relu_step(
    inputs: Tensor, states: tuple[Tensor, ...], n: int, weights: _Weights
) -> tuple[Tensor, ...]:
    pre = _recurrent_products(inputs, states[0], n, weights.w_hh_t)
    new = pre[0].relu()
    return (torch.cat([new, pre[1] * (new > 0)]),)


_LSTM = _Cell(4, _lstm_step, _sum_of_biases)
_GRU = _Cell(3, _gru_step, _gru_input_bias)
_RNN_TANH = _Cell(1, _tanh_step, _sum_of_biases)
_RNN_RELU = _Cell(1, _relu_step, _sum_of_biases)


@dataclass(frozen=True)
class _Call:
    """A recurrent op's arguments, unpacked into primals and tangents (None: a constant)."""

    data: Tensor  # (N, input): the time steps one after another, each its active rows
    data_t: Tensor | None
    batch_sizes: list[int]  # active rows of each time step
    initial: list[tuple[Tensor, Tensor | None]]  # (layers * directions, batch, size) each
    weights: list[_Weights]  # per layer, per direction
    num_layers: int
    directions: int


def _unpack(value: Tensor, level: int) -> tuple[Tensor, Tensor | None]:
    return torch._unpack_dual(value, level)


def _layer_weights(
    params: Sequence[Tensor], has_biases: bool, has_projections: bool, count: int
) -> list[_Weights] | None:
    per = (4 if has_biases else 2) + has_projections
    if len(params) != per * count:
        return None
    weights = []
    for k in range(count):
        group = list(params[k * per : (k + 1) * per])
        w_ih, w_hh = group[0], group[1]
        b_ih, b_hh = (group[2], group[3]) if has_biases else (None, None)
        w_hr = group[-1] if has_projections else None
        weights.append(_Weights(w_ih.t(), w_hh.t(), b_ih, b_hh, None if w_hr is None else w_hr.t()))
    return weights


def _parse(level: int, args: tuple, kwargs: dict, states: int) -> _Call | None:
    """The arguments of the padded or packed overload, or None where PyTorch's rule must run."""
    if kwargs or len(args) != 9 or torch._C._functorch.maybe_current_level() is not None:
        return None
    packed = isinstance(args[3], (list, tuple))
    if packed:
        data, batch_sizes, hx, params, has_biases, num_layers, dropout, train, bidirectional = args
        batch_first = False
    else:
        data, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first = args
        batch_sizes = None
    hx = list(hx) if isinstance(hx, (list, tuple)) else [hx]
    if (
        not isinstance(data, Tensor)
        or len(hx) != states
        or not all(isinstance(t, Tensor) for t in [*hx, *params])
        or (train and dropout > 0 and num_layers > 1)
    ):
        return None
    x, x_t = _unpack(data, level)
    initial = [_unpack(h, level) for h in hx]
    unpacked = [_unpack(p, level) for p in params]
    if (
        any(t is not None for _, t in unpacked)
        or (x_t is None and all(t is None for _, t in initial))
        or x.dtype not in _DTYPES
        or any(t.dtype != x.dtype for t in [*(h for h, _ in initial), *(p for p, _ in unpacked)])
        or x.dim() != (2 if packed else 3)
        or x.numel() == 0
    ):
        return None
    directions = 2 if bidirectional else 1
    has_projections = states == 2 and initial[0][0].size(-1) != initial[1][0].size(-1)
    weights = _layer_weights(
        [p for p, _ in unpacked], has_biases, has_projections, num_layers * directions
    )
    if weights is None:
        return None
    if packed:
        sizes = batch_sizes.tolist()
    else:
        if batch_first:
            x = x.transpose(0, 1)
            x_t = None if x_t is None else x_t.transpose(0, 1)
        sizes = [x.size(1)] * x.size(0)
        x = x.reshape(-1, x.size(-1))
        x_t = None if x_t is None else x_t.reshape(x.shape)
    return _Call(x, x_t, sizes, initial, weights, num_layers, directions)


def _input_products(
    layer_input: Tensor, layer_input_t: Tensor | None, weight_t: Tensor, bias: Tensor | None
) -> Tensor:
    """``[x W^T + b; x_t W^T]`` for all time steps at once, as ``(2, N, gates)``."""
    if layer_input_t is None:
        primal = (
            layer_input.mm(weight_t) if bias is None else torch.addmm(bias, layer_input, weight_t)
        )
        return torch.stack([primal, torch.zeros_like(primal)])
    both = torch.cat([layer_input, layer_input_t]).mm(weight_t).view(2, layer_input.size(0), -1)
    if bias is not None:
        both[0].add_(bias)  # a fresh product: the mm's backward needs none of its values
    return both


def _resized(
    states: list[Tensor], initial: list[Tensor], active: int, n: int, finished: list[list[Tensor]]
) -> list[Tensor]:
    """Stacked states for ``n`` active rows, from ``active``: rows that stop are set aside in
    ``finished`` (a forward pass over a packed sequence); rows that start come from ``initial``
    (a reverse pass)."""
    resized = []
    for k, state in enumerate(states):
        if n < active:
            finished[k].append(torch.cat([state[n:active], state[active + n :]]))
            resized.append(torch.cat([state[:n], state[active : active + n]]))
        else:
            batch = initial[k].size(0) // 2
            resized.append(
                torch.cat(
                    [
                        state[:active],
                        initial[k][active:n],
                        state[active:],
                        initial[k][batch + active : batch + n],
                    ]
                )
            )
    return resized


def _run_direction(
    cell: _Cell,
    products: Tensor,
    batch_sizes: list[int],
    initial: list[Tensor],
    weights: _Weights,
    reverse: bool,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """One direction of one layer.

    Returns the outputs of all steps (primal and tangent, each ``(N, hidden)``) and the final
    stacked states (each ``(2 * batch, size)``).
    """
    offsets = [0]
    for n in batch_sizes[:-1]:
        offsets.append(offsets[-1] + n)
    order = range(len(batch_sizes) - 1, -1, -1) if reverse else range(len(batch_sizes))
    batch = batch_sizes[0]
    active = 0 if reverse else batch
    states = [s[:0] for s in initial] if reverse else list(initial)
    finished: list[list[Tensor]] = [[] for _ in initial]
    outputs, outputs_t = [], []
    for t in order:
        n, offset = batch_sizes[t], offsets[t]
        if n != active:
            states = _resized(states, initial, active, n, finished)
            active = n
        states = list(cell.step(products[:, offset : offset + n], tuple(states), n, weights))
        outputs.append(states[0][:n])
        outputs_t.append(states[0][n:])
    if reverse:
        outputs.reverse()
        outputs_t.reverse()
    finals = []
    for state, pieces in zip(states, finished, strict=True):
        if pieces:
            parts = [state[:active], *(p[: p.size(0) // 2] for p in reversed(pieces))]
            parts += [state[active:], *(p[p.size(0) // 2 :] for p in reversed(pieces))]
            state = torch.cat(parts)
        finals.append(state)
    return torch.cat(outputs), torch.cat(outputs_t), finals


def _run(cell: _Cell, call: _Call) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]:
    """All layers: the last layer's outputs (primal, tangent) and each state's final values."""
    layer_input, layer_input_t = call.data, call.data_t
    finals: list[list[Tensor]] = [[] for _ in call.initial]
    for layer in range(call.num_layers):
        outputs, outputs_t = [], []
        for direction in range(call.directions):
            index = layer * call.directions + direction
            weights = call.weights[index]
            initial = [
                torch.cat([h[index], torch.zeros_like(h[index]) if h_t is None else h_t[index]])
                for h, h_t in call.initial
            ]
            products = _input_products(
                layer_input, layer_input_t, weights.w_ih_t, cell.input_bias(weights)
            )
            out, out_t, states = _run_direction(
                cell, products, call.batch_sizes, initial, weights, reverse=direction == 1
            )
            outputs.append(out)
            outputs_t.append(out_t)
            for k, state in enumerate(states):
                finals[k].append(state)
        layer_input = torch.cat(outputs, 1) if len(outputs) > 1 else outputs[0]
        layer_input_t = torch.cat(outputs_t, 1) if len(outputs_t) > 1 else outputs_t[0]
    batch = call.batch_sizes[0]
    stacked_finals = [
        (torch.stack([s[:batch] for s in per]), torch.stack([s[batch:] for s in per]))
        for per in finals
    ]
    return layer_input, layer_input_t, stacked_finals


def _rule(cell: _Cell, states: int) -> Callable[[int, Callable[..., Any], tuple, dict], Any]:
    def rule(level: int, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        call = _parse(level, args, kwargs, states)
        if call is None:
            return NotImplemented
        out, out_t, finals = _run(cell, call)
        packed = isinstance(args[3], (list, tuple))
        if not packed:
            steps = len(call.batch_sizes)
            out, out_t = out.view(steps, -1, out.size(-1)), out_t.view(steps, -1, out.size(-1))
            if args[8]:  # batch_first
                out, out_t = out.transpose(0, 1), out_t.transpose(0, 1)
        return (
            torch._make_dual(out, out_t, level),
            *(torch._make_dual(p, t, level) for p, t in finals),
        )

    return rule


def _pack_padded_sequence(level: int, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """``torch._pack_padded_sequence`` (``nn.utils.rnn.pack_padded_sequence``), which has no
    forward-mode rule in PyTorch: it only gathers rows, so the tangent is gathered alike.

    Not inside a functorch transform: PyTorch's recurrent ops cannot take the batched tangent of a
    packed sequence, so there the missing rule makes ``auto`` fall back to double backward."""
    if (
        kwargs
        or len(args) != 3
        or not isinstance(args[0], Tensor)
        or torch._C._functorch.maybe_current_level() is not None
    ):
        return NotImplemented
    padded, padded_t = _unpack(args[0], level)
    if padded_t is None:
        return NotImplemented
    data, batch_sizes = func(padded, *args[1:])
    return torch._make_dual(data, func(padded_t, *args[1:])[0], level), batch_sizes


RECURRENT_RULES: dict[Callable[..., Any], Callable[[int, Callable[..., Any], tuple, dict], Any]] = {
    torch.lstm: _rule(_LSTM, 2),
    torch.gru: _rule(_GRU, 1),
    torch.rnn_tanh: _rule(_RNN_TANH, 1),
    torch.rnn_relu: _rule(_RNN_RELU, 1),
    torch._pack_padded_sequence: _pack_padded_sequence,
}
"""The rules, by the torch function they replace, for :mod:`jvpcli._tangent_rules`'s table."""

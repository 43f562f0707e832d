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

Without a reverse graph to record (no ``create_graph``, no strict mode: grad mode is off), the
LSTM takes a leaner route to the same arithmetic (:func:`_lstm_direction_into`): the weights' gate
rows reordered to ``i, f, o, g`` once per call, with ``g``'s doubled so that one sigmoid covers all
four gates (``tanh p = 2 sigmoid 2p - 1``), and the cell state kept doubled so that ``tanh c`` is a
sigmoid too; each slope one kernel (``sigmoid_backward``); the gates, cell states and
``sigmoid 2c`` in buffers allocated once and their views made once; the hidden state written
straight into the layer's output, which the next step reads as its ``[h; h_t]``; and oneDNN's
matmul, which PyTorch's fused forward uses too, for large float32 weights, the recurrent weight
laid out once a call in oneDNN's blocked format.

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

from jvpcli import _onednn

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
Direction = Callable[
    [Tensor, list[int], list[Tensor], _Weights, bool, Tensor], tuple[Tensor, list[Tensor]]
]


@dataclass(frozen=True)
class _Cell:
    """How one kind of recurrent layer steps.

    ``step(inputs, states, n, weights)`` takes this step's input products (``(2n, gates)``: the
    primal rows, then the tangent rows; input bias included) and the states (each ``(2, n, size)``:
    value and tangent) and returns the new states, the hidden state first (also the step's output).

    ``direction_into``, where a cell has one, runs a whole direction of a layer with grad mode off
    (see :func:`_run_direction` for its arguments), writing the outputs into its last argument; its
    weights are those of ``prepare(weights)``.
    """

    step: Step
    input_bias: Callable[[_Weights], Tensor | None]
    direction_into: Direction | None = None
    prepare: Callable[[_Weights], _Weights] | None = None


def _sum_of_biases(weights: _Weights) -> Tensor | None:
    if weights.b_ih is None:
        return None
    return weights.b_ih + weights.b_hh


def _sigmoid_slope(activation: Tensor) -> Tensor:
    return torch.addcmul(activation, activation, activation, value=-1)  # s - s², s = sigmoid


def _tanh_tangent(tangent_in: Tensor, value: Tensor) -> Tensor:
    return torch.addcmul(tangent_in, tangent_in * value, value, value=-1)  # (1 - tanh²) t


def _rows(state: Tensor) -> Tensor:
    """A ``(2, n, size)`` state as the ``(2n, size)`` matrix of a matmul."""
    return state.reshape(-1, state.size(-1))


# In place below: only add_ / addcmul_ on a fresh result, whose backward needs none of the values
# they overwrite, so that create_graph and strict mode see through the steps.


def _lstm_step(
    inputs: Tensor, states: tuple[Tensor, ...], n: int, weights: _Weights
) -> tuple[Tensor, ...]:
    """``c' = f c + i g``, ``h' = o tanh(c')`` (gates i, f, g, o) and its tangent."""
    hidden, cell = states
    size = cell.size(-1)
    pre, pre_t = torch.addmm(inputs, _rows(hidden), weights.w_hh_t).view(2, n, -1).unbind(0)
    activation = pre.sigmoid()
    gates = torch.stack([activation, pre_t * _sigmoid_slope(activation)])  # g's slot unused
    i, f, _, o = gates.chunk(4, -1)
    candidate = pre[:, 2 * size : 3 * size].tanh()
    candidate_t = _tanh_tangent(pre_t[:, 2 * size : 3 * size], candidate)
    new_cell = torch.addcmul(cell * f[0], i, candidate)  # [f c + i g; f c_t + i_t g]
    new_cell[1].addcmul_(f[1], cell[0]).addcmul_(i[0], candidate_t)
    squashed = new_cell[0].tanh()
    new_hidden = o * squashed  # [o tanh c'; o_t tanh c']
    scaled = o[0] * new_cell[1]
    new_hidden[1].add_(scaled).addcmul_(scaled * squashed, squashed, value=-1)
    if weights.w_hr_t is not None:
        new_hidden = _rows(new_hidden).mm(weights.w_hr_t).view(2, n, -1)
    return new_hidden, new_cell


def _matmul_for(x: Tensor, weight_t: Tensor, rows: int | None = None) -> Callable[[Tensor], Tensor]:
    """``lambda y: y @ weight_t`` for ``y`` like ``x``: oneDNN's matmul where
    :func:`jvpcli._onednn.usable` (as PyTorch's fused LSTM forward runs), else ``torch.mm``.

    ``rows``: for a product made once per time step, the most rows it will have; the weight is
    then laid out once in oneDNN's blocked format for that many rows (as the fused forward's
    weights are), which a plain weight would be again on every call (another 5-20% of each
    step's matmul).
    """
    weight = weight_t.t()
    if _onednn.usable(x, weight):
        linear, reorder = _onednn.OPS
        if rows is not None:
            weight = reorder(weight, rows)
        return lambda y: linear(y, weight, None, "none", [], "")
    return lambda y: y.mm(weight_t)


def _product(x: Tensor, weight_t: Tensor) -> Tensor:
    """``x @ weight_t`` (:func:`_matmul_for`)."""
    return _matmul_for(x, weight_t)(x)


_MINUS_ONE = torch.tensor(-1.0)
"""``-1`` as a 0-dim tensor: ``torch.add(_MINUS_ONE, x, alpha=2, out=x)`` is one kernel, where
``x.mul_(2).sub_(1)`` is two, each first copying its Python number into a tensor (3 µs a step)."""
_SIGMOID_BACKWARD = torch.ops.aten.sigmoid_backward.grad_input  # grad * s (1 - s), into grad_input
_SIGMOID_SLOPE = torch.ops.aten.sigmoid_backward.default


def _gates_ifog(weights: _Weights) -> _Weights:
    """The weights for :func:`_lstm_direction_into`: the gate rows reordered from PyTorch's
    ``i, f, g, o`` to ``i, f, o, g``, and those of ``g`` doubled.

    With ``g``'s pre-activation doubled, one sigmoid covers all four gates:
    ``tanh(p) = 2 sigmoid(2p) - 1``, and on this project's machine torch's float32 tanh costs seven
    times its sigmoid. Each transposed weight stays a transposed view, as the matmuls of the other
    path see it.
    """

    def reordered(weight: Tensor) -> Tensor:  # grad mode is off: in place on the fresh copy
        gates = weight.reshape(4, -1, *weight.shape[1:])[[0, 1, 3, 2]]
        gates[3] *= 2
        return gates.reshape(weight.shape)

    def bias(b: Tensor | None) -> Tensor | None:
        return None if b is None else reordered(b)

    return _Weights(
        reordered(weights.w_ih_t.t()).t(),
        reordered(weights.w_hh_t.t()).t(),
        bias(weights.b_ih),
        bias(weights.b_hh),
        weights.w_hr_t,
    )


@dataclass(frozen=True)
class _StepViews:
    """The views one step of :func:`_lstm_direction_into` works on, for ``n`` active rows: each
    gate stacked (``(2, n, size)``: value, tangent) and its rows, and the cell buffers."""

    gates: Tensor  # (2, n, 4 size): the pre-activations, then the gates, in place
    flat: Tensor | None  # gates as (2n, 4 size), where that is a view (all rows active)
    value: Tensor
    tangent: Tensor
    i: Tensor
    i0: Tensor
    f0: Tensor
    f1: Tensor
    g0: Tensor
    g1: Tensor
    o: Tensor
    o0: Tensor
    cells: tuple[tuple[Tensor, Tensor, Tensor], ...]  # per buffer: (2, n, size), value, tangent
    sigmoid_c: Tensor

    @staticmethod
    def of(gates: Tensor, cells: tuple[Tensor, Tensor], sigmoid_c: Tensor, n: int) -> _StepViews:
        block = gates[:, :n]
        value, tangent = block.unbind(0)
        i, f, o, g = block.split(block.size(-1) // 4, -1)
        return _StepViews(
            block,
            gates.view(-1, gates.size(-1)) if n == gates.size(1) else None,
            value,
            tangent,
            i,
            i[0],
            f[0],
            f[1],
            g[0],
            g[1],
            o,
            o[0],
            tuple((c[:, :n], *c[:, :n].unbind(0)) for c in cells),
            sigmoid_c[:n],
        )


def _lstm_direction_into(
    products: Tensor,
    batch_sizes: list[int],
    initial: list[Tensor],
    weights: _Weights,
    reverse: bool,
    out: Tensor,
) -> tuple[Tensor, list[Tensor]]:
    """:func:`_run_direction` of :func:`_lstm_step`, grad mode off, the weights of
    :func:`_gates_ifog`, the outputs written into ``out``.

    Every Python-level op costs a microsecond or more whatever its size, and a step of a small
    batch is a few dozen of them: the gates, the cell states and ``sigmoid 2c`` live in buffers
    allocated once, with their views made once per number of active rows.

    The cell state is kept doubled (``[2c; 2c_t]``), so that ``tanh c = 2 sigmoid(2c) - 1`` takes
    one sigmoid of the state as it is; ``g``'s slots hold ``sigmoid 2p`` and ``g_t / 2``, and the
    products with them carry the factors that make ``2g`` and ``2 g_t``.
    """
    hidden0, cell0 = initial
    size = cell0.size(-1)
    rows = max(batch_sizes)
    gates = products.new_empty(2, rows, 4 * size)
    cells = (products.new_empty(2, rows, size), products.new_empty(2, rows, size))
    views: dict[int, _StepViews] = {}
    sigmoid_c = products.new_empty(rows, size)
    recurrent = _matmul_for(products, weights.w_hh_t, 2 * rows)
    project = None if weights.w_hr_t is None else _matmul_for(products, weights.w_hr_t, 2 * rows)
    steps = len(batch_sizes)
    padded = batch_sizes.count(rows) == steps
    if padded:  # every step's blocks, in one op each
        blocks = products.view(steps, 2 * rows, -1).unbind(0)
        targets = out.view(steps, 2, rows, -1).unbind(0)

    offsets = [0]
    for n in batch_sizes[:-1]:
        offsets.append(offsets[-1] + n)
    order = range(len(batch_sizes) - 1, -1, -1) if reverse else range(len(batch_sizes))
    active = 0 if reverse else batch_sizes[0]
    torch.mul(cell0[:, :active], 2, out=cells[0][:, :active])
    hidden = _rows(hidden0[:, :active])
    finished: list[list[Tensor]] = [[], []]
    for step, t in enumerate(order):
        n, offset = batch_sizes[t], offsets[t]
        if n != active:
            previous = cells[step % 2]
            stacked = hidden.view(2, active, hidden0.size(-1))
            if n < active:  # rows stop: their states are final (nothing writes them again)
                finished[0].append(stacked[:, n:active])
                finished[1].append(previous[:, n:active])
                hidden = _rows(stacked[:, :n])
            else:  # rows start, from the initial states
                hidden = _rows(torch.cat([stacked, hidden0[:, active:n]], 1))
                torch.mul(cell0[:, active:n], 2, out=previous[:, active:n])
            active = n
        views_n = views.get(n)
        if views_n is None:
            views_n = views[n] = _StepViews.of(gates, cells, sigmoid_c, n)
        cell, cell_value, _ = views_n.cells[step % 2]
        new_cell, new_value, new_tangent = views_n.cells[(step + 1) % 2]
        if padded:
            torch.add(recurrent(hidden), blocks[t], out=views_n.flat)
        else:
            shape = views_n.gates.shape
            block = products[2 * offset : 2 * (offset + n)]
            torch.add(recurrent(hidden).view(shape), block.view(shape), out=views_n.gates)
        value = views_n.value
        value.sigmoid_()  # i, f, o, and g's sigmoid 2p = (g + 1) / 2
        _SIGMOID_BACKWARD(views_n.tangent, value, grad_input=views_n.tangent)  # and g_t / 2
        torch.mul(cell, views_n.f0, out=new_cell)  # [2 f c; 2 f c_t]
        new_cell.addcmul_(views_n.i, views_n.g0, value=4).add_(views_n.i, alpha=-2)  # + 2 i g
        new_tangent.addcmul_(views_n.f1, cell_value).addcmul_(views_n.i0, views_n.g1, value=4)
        squashed = torch.sigmoid(new_value, out=views_n.sigmoid_c)  # sigmoid 2c'
        slope = _SIGMOID_SLOPE(new_tangent, squashed)  # (1 - tanh² c') c'_t / 2
        torch.add(_MINUS_ONE, squashed, alpha=2, out=squashed)  # tanh c'
        target = targets[t] if padded else out[2 * offset : 2 * (offset + n)].view(2, n, -1)
        if project is None:
            torch.mul(views_n.o, squashed, out=target)  # [o tanh c'; o_t tanh c']
            target[1].addcmul_(views_n.o0, slope, value=2)
        else:
            unprojected = torch.mul(views_n.o, squashed)
            unprojected[1].addcmul_(views_n.o0, slope, value=2)
            target.copy_(project(_rows(unprojected)).view(target.shape))
        hidden = _rows(target)
    final_cell = cells[len(batch_sizes) % 2][:, :active]
    finals = [
        torch.cat([state, *reversed(pieces)], 1) if pieces else state
        for state, pieces in zip(
            (hidden.view(2, active, hidden0.size(-1)), final_cell), finished, strict=True
        )
    ]
    finals[1] = finals[1] * 0.5  # the cell state, no longer doubled
    return out, finals


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
    size = hidden.size(-1)
    inputs = inputs.view(2, n, -1)
    recurrent = _rows(hidden).mm(weights.w_hh_t).view(2, n, -1)
    gates = torch.add(inputs[:, :, : 2 * size], recurrent[:, :, : 2 * size])
    activation = gates[0].sigmoid()
    activation_t = gates[1] * _sigmoid_slope(activation)
    r, z = activation[:, :size], activation[:, size:]
    r_t, z_t = activation_t[:, :size], activation_t[:, size:]
    candidate_in, candidate_in_t = recurrent[0, :, 2 * size :], recurrent[1, :, 2 * size :]
    if weights.b_hh is not None:
        candidate_in = candidate_in + weights.b_hh[2 * size :]
    new = torch.addcmul(inputs[0, :, 2 * size :], r, candidate_in).tanh()
    pre_t = torch.addcmul(inputs[1, :, 2 * size :], r_t, candidate_in).addcmul_(r, candidate_in_t)
    new_t = _tanh_tangent(pre_t, new)
    difference = hidden[0] - new
    new_hidden = torch.addcmul(new, z, difference)
    new_hidden_t = torch.addcmul(new_t, z_t, difference).addcmul_(z, hidden[1] - new_t)
    return (torch.stack([new_hidden, new_hidden_t]),)


def _tanh_step(
    inputs: Tensor, states: tuple[Tensor, ...], n: int, weights: _Weights
) -> tuple[Tensor, ...]:
    pre, pre_t = torch.addmm(inputs, _rows(states[0]), weights.w_hh_t).view(2, n, -1).unbind(0)
    new = pre.tanh()
    return (torch.stack([new, _tanh_tangent(pre_t, new)]),)


def _relu_step(
    inputs: Tensor, states: tuple[Tensor, ...], n: int, weights: _Weights
) -> tuple[Tensor, ...]:
    pre, pre_t = torch.addmm(inputs, _rows(states[0]), weights.w_hh_t).view(2, n, -1).unbind(0)
    new = pre.relu()
    return (torch.stack([new, pre_t * (new > 0)]),)


_LSTM = _Cell(_lstm_step, _sum_of_biases, _lstm_direction_into, _gates_ifog)
_GRU = _Cell(_gru_step, _gru_input_bias)
_RNN_TANH = _Cell(_tanh_step, _sum_of_biases)
_RNN_RELU = _Cell(_relu_step, _sum_of_biases)


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


@dataclass(frozen=True)
class _Run:
    """Consecutive time steps with the same number of active rows: a regular block."""

    first_row: int  # of the time-major (N, features) layout
    steps: int
    rows: int

    def of(self, stacked: Tensor) -> Tensor:
        """This block of an interleaved ``(2N, features)`` tensor, as ``(steps, 2, rows, f)``."""
        span = stacked[2 * self.first_row : 2 * (self.first_row + self.steps * self.rows)]
        return span.view(self.steps, 2, self.rows, -1)


def _runs(batch_sizes: list[int]) -> list[_Run]:
    runs: list[_Run] = []
    row = 0
    for n in batch_sizes:
        if runs and runs[-1].rows == n:
            runs[-1] = _Run(runs[-1].first_row, runs[-1].steps + 1, n)
        else:
            runs.append(_Run(row, 1, n))
        row += n
    return runs


def _interleaved(primal: Tensor, tangent: Tensor, runs: list[_Run]) -> Tensor:
    """``(N, f)`` primal and tangent rows as ``(2N, f)``: each time step's primal rows, then its
    tangent rows. A step's primal and tangent then form one contiguous block: one matmul."""
    pieces = []
    for run in runs:
        span = slice(run.first_row, run.first_row + run.steps * run.rows)
        shape = (run.steps, run.rows, primal.size(-1))
        pieces.append(torch.stack([primal[span].view(shape), tangent[span].view(shape)], 1))
    return torch.cat([piece.view(-1, primal.size(-1)) for piece in pieces])


def _deinterleaved(stacked: Tensor, runs: list[_Run]) -> tuple[Tensor, Tensor]:
    blocks = [run.of(stacked) for run in runs]
    size = stacked.size(-1)
    return (
        torch.cat([block[:, 0].reshape(-1, size) for block in blocks]),
        torch.cat([block[:, 1].reshape(-1, size) for block in blocks]),
    )


def _input_products(
    layer_input: Tensor, weight_t: Tensor, bias: Tensor | None, runs: list[_Run]
) -> Tensor:
    """``[x W^T + b; x_t W^T]`` of all time steps at once, interleaved like ``layer_input``."""
    products = _product(layer_input, weight_t)
    if bias is not None:
        for run in runs:  # a fresh product: the mm's backward needs none of its values
            run.of(products)[:, 0].add_(bias)
    return products


def _run_direction(
    cell: _Cell,
    products: Tensor,
    batch_sizes: list[int],
    initial: list[Tensor],
    weights: _Weights,
    reverse: bool,
) -> tuple[Tensor, list[Tensor]]:
    """One direction of one layer: the interleaved outputs of all steps and the final states
    (``(2, batch, size)`` each).

    Over a packed sequence, the rows of a forward pass stop one by one (their final states are set
    aside); those of a reverse pass start one by one (from the initial states).
    """
    offsets = [0]
    for n in batch_sizes[:-1]:
        offsets.append(offsets[-1] + n)
    order = range(len(batch_sizes) - 1, -1, -1) if reverse else range(len(batch_sizes))
    active = 0 if reverse else batch_sizes[0]
    states = tuple(s[:, :active] for s in initial)
    finished: list[list[Tensor]] = [[] for _ in initial]
    outputs = []
    for t in order:
        n, offset = batch_sizes[t], offsets[t]
        if n < active:
            for pieces, state in zip(finished, states, strict=True):
                pieces.append(state[:, n:active])
            states = tuple(s[:, :n] for s in states)
        elif n > active:
            states = tuple(
                torch.cat([s, s0[:, active:n]], 1) for s, s0 in zip(states, initial, strict=True)
            )
        active = n
        states = cell.step(products[2 * offset : 2 * (offset + n)], states, n, weights)
        outputs.append(states[0])
    if reverse:
        outputs.reverse()
    finals = [
        torch.cat([state, *reversed(pieces)], 1) if pieces else state
        for state, pieces in zip(states, finished, strict=True)
    ]
    return torch.cat([_rows(out) for out in outputs]), finals


def _run(cell: _Cell, call: _Call) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]:
    """All layers: the last layer's outputs (primal, tangent) and each state's final values."""
    runs = _runs(call.batch_sizes)
    data_t = torch.zeros_like(call.data) if call.data_t is None else call.data_t
    layer_input = _interleaved(call.data, data_t, runs)
    into = cell.direction_into is not None and not torch.is_grad_enabled()
    finals: list[list[Tensor]] = [[] for _ in call.initial]
    for layer in range(call.num_layers):
        outputs = []
        layer_output = None
        if into:
            size = call.initial[0][0].size(-1)  # the hidden state's (projected) size
            layer_output = layer_input.new_empty(layer_input.size(0), call.directions * size)
        for direction in range(call.directions):
            index = layer * call.directions + direction
            weights = call.weights[index]
            if into:
                weights = cell.prepare(weights)
            initial = [
                torch.stack([h[index], torch.zeros_like(h[index]) if h_t is None else h_t[index]])
                for h, h_t in call.initial
            ]
            products = _input_products(layer_input, weights.w_ih_t, cell.input_bias(weights), runs)
            reverse = direction == 1
            if layer_output is None:
                out, states = _run_direction(
                    cell, products, call.batch_sizes, initial, weights, reverse
                )
            else:
                columns = layer_output[:, direction * size : (direction + 1) * size]
                out, states = cell.direction_into(
                    products, call.batch_sizes, initial, weights, reverse, columns
                )
            outputs.append(out)
            for per_state, state in zip(finals, states, strict=True):
                per_state.append(state)
        if layer_output is not None:
            layer_input = layer_output
        else:
            layer_input = torch.cat(outputs, 1) if len(outputs) > 1 else outputs[0]
    out, out_t = _deinterleaved(layer_input, runs)
    stacked_finals = [
        (torch.stack([s[0] for s in per]), torch.stack([s[1] for s in per])) for per in finals
    ]
    return out, out_t, stacked_finals


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

"""Property-based conformance: ``jvpcli.jvp`` equals ``torch.autograd.functional.jvp``.

Hypothesis draws small programs — a few inputs of one random shape (0-dim and size-1 dimensions
included), each output a chain of differentiable ops over them — and checks every method against
PyTorch's own jvp: values, dtypes, shapes, Tensor-or-tuple structure and history.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from test_engine_conformance import (
    METHODS,
    TOLERANCES,
    as_tuple,
    assert_no_history,
    assert_results_match,
    differentiate,
    snapshots,
    weighted_sum,
)
from torch import Tensor
from torch.autograd.functional import jvp as torch_jvp

import jvpcli

UNARY_OPS: dict[str, Callable[[Tensor], Tensor]] = {
    "sin": torch.sin,
    "tanh": torch.tanh,
    "gaussian": lambda t: torch.exp(-t * t),
    "softplus": F.softplus,
    "square": torch.square,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "cumsum": lambda t: t.cumsum(0) if t.dim() else t,
    "flip": lambda t: t.flip(0) if t.dim() else t,
    "mean-broadcast": lambda t: t - t.mean(),
    "in-place-scale": lambda t: t.clone().mul_(1.5).add_(0.5),
    "softmax": lambda t: t.softmax(-1) if t.dim() else t,
}
# PyTorch's forward-mode softmax cannot be differentiated again (it modifies exp's output in
# place), so the create_graph property leaves it out; test_engine_conformance covers that case.
SECOND_ORDER_UNARY_OPS = [name for name in UNARY_OPS if name != "softmax"]

BINARY_OPS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "damped-div": lambda a, b: a / (1 + b * b),
    "smooth-norm": lambda a, b: torch.sqrt(a * a + b * b + 1),
    "maximum": torch.maximum,
}

FINAL_OPS: dict[str, Callable[[Tensor], Tensor]] = {
    "none": lambda t: t,
    "sum": torch.sum,
    "mean-over-first": lambda t: t.mean(0) if t.dim() else t,
    "transpose": lambda t: t.mT if t.dim() >= 2 else t,
    "double": lambda t: t.double(),
}


@dataclass(frozen=True)
class Step:
    op: str
    other_input: int | None  # the second operand of a binary op


@dataclass(frozen=True)
class Expression:
    start_input: int
    steps: tuple[Step, ...]
    final: str


@dataclass(frozen=True)
class Program:
    shape: tuple[int, ...]
    n_inputs: int
    inputs_as_tuple: bool
    outputs: tuple[Expression, ...]
    outputs_as_tuple: bool

    def __call__(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        results = []
        for expression in self.outputs:
            value = inputs[expression.start_input]
            for step in expression.steps:
                if step.other_input is None:
                    value = UNARY_OPS[step.op](value)
                else:
                    value = BINARY_OPS[step.op](value, inputs[step.other_input])
            results.append(FINAL_OPS[expression.final](value))
        return tuple(results) if self.outputs_as_tuple else results[0]


@st.composite
def programs(draw: st.DrawFn, unary_ops: list[str] | None = None) -> Program:
    unary = unary_ops or list(UNARY_OPS)
    shape = tuple(draw(st.lists(st.integers(1, 3), max_size=3)))
    n_inputs = draw(st.integers(1, 3))

    def step() -> st.SearchStrategy[Step]:
        return st.one_of(
            st.builds(Step, st.sampled_from(unary), st.none()),
            st.builds(Step, st.sampled_from(list(BINARY_OPS)), st.integers(0, n_inputs - 1)),
        )

    expression = st.builds(
        Expression,
        st.integers(0, n_inputs - 1),
        st.lists(step(), max_size=4).map(tuple),
        st.sampled_from(list(FINAL_OPS)),
    )
    outputs = tuple(draw(st.lists(expression, min_size=1, max_size=3)))
    return Program(
        shape=shape,
        n_inputs=n_inputs,
        inputs_as_tuple=n_inputs > 1 or draw(st.booleans()),
        outputs=outputs,
        outputs_as_tuple=len(outputs) > 1 or draw(st.booleans()),
    )


def random_tensors(
    program: Program, seed: int, dtype: torch.dtype, *, transposed: bool
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Inputs and v for ``program``; ``transposed``: laid out in memory in reverse order."""
    generator = torch.Generator().manual_seed(seed)

    def draw() -> Tensor:
        tensor = torch.randn(program.shape, generator=generator, dtype=dtype)
        if transposed:
            reverse = tuple(reversed(range(tensor.dim())))
            tensor = tensor.permute(reverse).contiguous().permute(reverse)
        return tensor

    inputs = tuple(draw() for _ in range(program.n_inputs))
    return inputs, tuple(draw() for _ in range(program.n_inputs))


def structured(program: Program, tensors: tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
    return tensors if program.inputs_as_tuple else tensors[0]


# No "explain" phase: it re-runs failing examples many times to annotate them, which is slow here.
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink),
)
DTYPES = st.sampled_from([torch.float32, torch.float64])
SEEDS = st.integers(0, 2**32 - 1)


@pytest.mark.parametrize("method", METHODS)
@SETTINGS
@given(
    program=programs(),
    dtype=DTYPES,
    seed=SEEDS,
    transposed=st.booleans(),
    requires_grad=st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_jvp_of_random_programs_matches_pytorch(
    method: str,
    program: Program,
    dtype: torch.dtype,
    seed: int,
    transposed: bool,
    requires_grad: list[bool],
) -> None:
    inputs, v = random_tensors(program, seed, dtype, transposed=transposed)
    inputs = tuple(x.requires_grad_(r) for x, r in zip(inputs, requires_grad, strict=False))
    expected = torch_jvp(program, structured(program, inputs), structured(program, v))
    untouched = snapshots(inputs, v)

    actual = jvpcli.jvp(program, structured(program, inputs), structured(program, v), method=method)

    # Outputs cast to float64 still carry float32 rounding when the inputs are float32.
    assert_results_match(actual, expected, **TOLERANCES[dtype])
    assert_no_history(actual)
    for snapshot in untouched:
        snapshot.assert_untouched()


@pytest.mark.parametrize("method", METHODS)
@SETTINGS
@given(program=programs(unary_ops=SECOND_ORDER_UNARY_OPS), seed=SEEDS)
def test_create_graph_jvp_of_random_programs_has_pytorchs_gradients(
    method: str, program: Program, seed: int
) -> None:
    inputs, v = random_tensors(program, seed, torch.float64, transposed=False)
    inputs = tuple(x.requires_grad_() for x in inputs)
    v = tuple(t.requires_grad_() for t in v)
    expected = torch_jvp(
        program, structured(program, inputs), structured(program, v), create_graph=True
    )
    generator = torch.Generator().manual_seed(seed)
    results = (*as_tuple(expected[0]), *as_tuple(expected[1]))
    weights = tuple(torch.randn(t.shape, generator=generator, dtype=t.dtype) for t in results)

    actual = jvpcli.jvp(
        program,
        structured(program, inputs),
        structured(program, v),
        create_graph=True,
        method=method,
    )

    assert_results_match(actual, expected)
    actual_results = (*as_tuple(actual[0]), *as_tuple(actual[1]))
    with_history = [i for i, t in enumerate(results) if t.requires_grad]
    expected_gradients = differentiate(
        weighted_sum(
            tuple(results[i] for i in with_history), tuple(weights[i] for i in with_history)
        ),
        (*inputs, *v),
    )
    actual_gradients = differentiate(
        weighted_sum(
            tuple(actual_results[i] for i in with_history), tuple(weights[i] for i in with_history)
        ),
        (*inputs, *v),
    )
    for got, want in zip(actual_gradients, expected_gradients, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("method", METHODS)
@SETTINGS
@given(
    program=programs(),
    seed=SEEDS,
    shape=st.sampled_from([(), (1,), (1, 1), (1, 1, 1)]),
)
def test_v_none_for_a_random_one_element_input_matches_pytorch(
    method: str, program: Program, seed: int, shape: tuple[int, ...]
) -> None:
    one_input = Program(
        shape=shape,
        n_inputs=1,
        inputs_as_tuple=program.inputs_as_tuple,
        outputs=tuple(
            Expression(
                0,
                tuple(Step(s.op, None if s.other_input is None else 0) for s in e.steps),
                e.final,
            )
            for e in program.outputs
        ),
        outputs_as_tuple=program.outputs_as_tuple,
    )
    inputs, _ = random_tensors(one_input, seed, torch.float64, transposed=False)
    expected = torch_jvp(one_input, structured(one_input, inputs))

    actual = jvpcli.jvp(one_input, structured(one_input, inputs), method=method)

    assert_results_match(actual, expected)

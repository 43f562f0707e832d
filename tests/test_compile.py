"""jvpcli and torch.compile: inside someone else's compiled function, and jvpcli's own compile=True.

The oracle is torch.autograd.functional.jvp (and, for the compiled path, float64 central
differences). Compiling takes seconds on a small machine: the tests are few and small, use the
"eager" backend where only the plumbing is checked, and inductor for a couple.
"""

from __future__ import annotations

import dataclasses

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


def test_jvp_after_a_graph_break_runs_eagerly_and_equals_pytorchs() -> None:
    # There dynamo's frame callback is set while jvpcli runs: jvpcli must switch it off, or the
    # outer compile would trace the user's function on jvpcli's dual tensors. (A plain eager
    # call, with no callback set, skips that switch.)
    func = linear()
    x = torch.randn(2, 4)
    v = torch.randn(2, 4)
    expected = torch_jvp(func, x, v)[1]
    graphs: list[torch.fx.GraphModule] = []

    def counting(graph: torch.fx.GraphModule, _: object) -> object:
        graphs.append(graph)
        return graph.forward

    def outer(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        y = x * 1
        torch._dynamo.graph_break()
        return jvpcli.jvp(func, y, v)[1]

    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(outer, backend=counting)(x, v), expected)
    assert graphs
    assert not any("linear" in graph.code for graph in graphs)
    torch.testing.assert_close(jvpcli.jvp(func, x, v)[1], expected)


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


# ------------------------------------------------------------------------------------------------
# compile=True: the forward method, compiled. "aot_eager" checks the tracing (dynamo and
# AOTAutograd, as inductor gets them) at a fraction of inductor's compile time.


def sin_chain(x):
    for _ in range(4):
        x = torch.sin(x) * 0.9 + 0.1
    return x


def mlp(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    return model.to(dtype).eval().requires_grad_(False)


def conv(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU())
    return model.to(dtype).eval().requires_grad_(False)


def two_outputs(x, y):
    return x * y.exp(), (x - y).tanh().sum()


def central_differences(func, inputs, v, step=1e-6):
    """J·v of ``func`` at ``inputs``, from float64 central differences (the oracle for float64)."""
    plus = func(*(x + step * t for x, t in zip(inputs, v, strict=True)))
    minus = func(*(x - step * t for x, t in zip(inputs, v, strict=True)))
    if isinstance(plus, tuple):
        return tuple((p - m) / (2 * step) for p, m in zip(plus, minus, strict=True))
    return (plus - minus) / (2 * step)


CASES = {
    "sin chain": (lambda dtype: sin_chain, [(5, 7)]),
    "MLP": (mlp, [(4, 6)]),
    "conv": (conv, [(2, 2, 5, 5)]),
    "tuple outputs": (lambda dtype: two_outputs, [(3, 4), (3, 4)]),
}


def case(name: str, dtype: torch.dtype):
    make, shapes = CASES[name]
    torch.manual_seed(1)
    inputs = tuple(torch.randn(shape, dtype=dtype) for shape in shapes)
    return make(dtype), inputs, tuple(torch.randn_like(x) for x in inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", CASES)
def test_compiled_jvp_equals_pytorchs_and_finite_differences(name, dtype) -> None:
    func, inputs, v = case(name, dtype)
    expected_out, expected_jvp = torch_jvp(func, inputs, v)
    result = jvpcli.jvp_with_info(func, inputs, v, compile="aot_eager")
    assert result.info.method_used == "forward (compiled)", str(result.info)
    torch.testing.assert_close(result.func_output, expected_out)
    torch.testing.assert_close(result.jvp, expected_jvp)
    if dtype == torch.float64:
        differences = central_differences(func, inputs, v)
        torch.testing.assert_close(result.jvp, differences, rtol=1e-6, atol=1e-6)


def transformer_layer(dtype: torch.dtype):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    return layer.to(dtype).eval().requires_grad_(False)


def attention_with_padding(dtype: torch.dtype):
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True).to(dtype).eval()
    mha.requires_grad_(False)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    return lambda x: mha(x, x, x, key_padding_mask=padding, need_weights=False)[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(
    "make", [transformer_layer, attention_with_padding], ids=["encoder layer", "padded attention"]
)
def test_compiled_attention_traces_jvpclis_rules_and_equals_pytorchs(make, dtype) -> None:
    # F.multi_head_attention_forward is a Python function that the mode opens: compiled, it once
    # ran with PyTorch's own rules inside (a zero-tangent matmul a projection, attention
    # decomposed op by op), 2.3x slower than eager jvpcli. With a key padding mask, dynamo cannot
    # trace the opened copy's mask check (a torch._check message closure over values the mode
    # returned), and the product is computed eagerly, with the reason.
    func = make(dtype)
    x = torch.randn(2, 5, 8, dtype=dtype)
    v = torch.randn_like(x)
    graphs = []

    def recording(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    result = jvpcli.jvp_with_info(func, x, v, compile=recording)

    if make is attention_with_padding:
        assert result.info.method_used == "forward", str(result.info)
        (fallback,) = result.info.fallbacks
        assert "torch._check" in fallback.reason, fallback.reason
    else:
        assert result.info.method_used == "forward (compiled)", str(result.info)
        (graph,) = graphs
        targets = {str(node.target) for node in graph.graph.nodes}
        assert any("_softmax_backward_data" in target for target in targets), targets  # the rule
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(
        False
    )  # the oracle needs attention it can differentiate
    try:
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            expected = torch_jvp(func, x, v)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    torch.testing.assert_close((result.func_output, result.jvp), expected)
    if dtype == torch.float64:
        differences = central_differences(func, (x,), (v,))
        torch.testing.assert_close(result.jvp, differences, rtol=1e-6, atol=1e-6)


def test_compiled_batched_tangents_equal_pytorchs_one_by_one() -> None:
    func, (x,), _ = case("MLP", torch.float32)
    directions = torch.randn(5, *x.shape)
    result = jvpcli.jvp_with_info(func, x, directions, batched_v=True, compile="aot_eager")
    assert result.info.method_used == "forward (compiled)", str(result.info)
    expected = torch.stack([torch_jvp(func, x, d)[1] for d in directions])
    torch.testing.assert_close(result.jvp, expected)
    torch.testing.assert_close(result.func_output, func(x))


@pytest.mark.parametrize("batched_v", [False, True], ids=["one direction", "batched_v"])
def test_compiled_float32_layers_large_enough_for_onednn_trace_and_equal_pytorchs(batched_v):
    # Eagerly, such a layer's tangent goes to oneDNN (jvpcli._onednn); traced, the rule must
    # decide before asking anything dynamo cannot trace (functorch's level, under vmap: once,
    # every batched compile of a large layer fell back to eager).
    torch.manual_seed(0)
    func = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.Tanh()).eval()
    x = torch.randn(4, 512)
    v = torch.randn(3, 4, 512) if batched_v else torch.randn(4, 512)
    torch._dynamo.reset()
    result = jvpcli.jvp_with_info(func, x, v, batched_v=batched_v, compile="eager")
    assert result.info.method_used == "forward (compiled)", str(result.info)
    expected = [torch_jvp(func, x, d)[1] for d in (v if batched_v else [v])]
    torch.testing.assert_close(
        result.jvp, torch.stack(expected) if batched_v else expected[0], rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("batched_v", [False, True], ids=["one direction", "batched_v"])
def test_inductor_compiled_jvp_equals_pytorchs(batched_v) -> None:
    func, (x,), (v,) = case("MLP" if batched_v else "sin chain", torch.float32)
    directions = torch.stack([v, -2 * v]) if batched_v else v
    result = jvpcli.jvp_with_info(func, x, directions, batched_v=batched_v, compile=True)
    assert result.info.method_used == "forward (compiled)", str(result.info)
    assert result.info.compile_seconds > 0
    expected = torch_jvp(func, x, v)[1]
    torch.testing.assert_close(
        result.jvp, torch.stack([expected, -2 * expected]) if batched_v else expected
    )


def branchy(x):
    return x.sin() if x.sum() > 0 else x.cos()


class StraightThrough(torch.autograd.Function):
    """Rounds, and passes gradients straight through: its derivative is not its forward's."""

    @staticmethod
    def forward(ctx, x):
        return x.round()

    @staticmethod
    def backward(ctx, grad):
        return grad


@pytest.mark.parametrize(
    ("func", "reason"),
    [
        (branchy, "Data-dependent branching"),
        (StraightThrough.apply, "custom autograd.Function (StraightThroughBackward)"),
    ],
    ids=["data-dependent control flow", "custom autograd.Function"],
)
def test_untraceable_function_falls_back_with_the_reason_and_the_right_answer(func, reason) -> None:
    x = torch.randn(6, dtype=torch.float64)
    v = torch.randn(6, dtype=torch.float64)
    for _ in range(2):  # the second call skips the trace that failed, with the same reason
        result = jvpcli.jvp_with_info(func, x, v, compile="aot_eager")
        (compiled, *_) = result.info.fallbacks
        assert compiled.method == "forward (compiled)"
        assert reason in compiled.reason
        assert result.info.method_used != "forward (compiled)"
        torch.testing.assert_close(result.jvp, torch_jvp(func, x, v)[1])


@pytest.mark.parametrize("flags", [{"create_graph": True}, {"strict": True}], ids=str)
def test_create_graph_and_strict_compute_eagerly_and_say_so(flags) -> None:
    x = torch.randn(4, dtype=torch.float64)
    v = torch.randn(4, dtype=torch.float64)
    result = jvpcli.jvp_with_info(torch.sin, x, v, compile="aot_eager", **flags)
    (fallback,) = result.info.fallbacks
    assert fallback.method == "forward (compiled)"
    assert next(iter(flags)) in fallback.reason
    assert result.info.compile_seconds is None
    torch.testing.assert_close(result.jvp, torch_jvp(torch.sin, x, v, **flags)[1])


class CountingBackend:
    """A torch.compile backend that counts the graphs it compiles (and runs them as they are)."""

    def __init__(self) -> None:
        self.compiles = 0

    def __call__(self, graph, example_inputs):
        self.compiles += 1
        return graph.forward


def test_second_call_reuses_the_compiled_function_and_a_new_shape_compiles_again() -> None:
    backend = CountingBackend()
    func = mlp(torch.float32)

    def call(batch):
        x = torch.randn(batch, 6)
        v = torch.randn(batch, 6)
        result = jvpcli.jvp_with_info(func, x, v, compile=backend)
        torch.testing.assert_close(result.jvp, torch_jvp(func, x, v)[1])
        return result.info

    first = call(4)
    assert (backend.compiles, first.method_used) == (1, "forward (compiled)")
    assert first.compile_seconds > 0
    second = call(4)
    assert (backend.compiles, second.compile_seconds) == (1, 0.0)
    call(5)
    assert backend.compiles == 2


def test_weights_changed_after_compiling_are_read_at_each_call() -> None:
    func = mlp(torch.float32)
    x = torch.randn(4, 6)
    v = torch.randn(4, 6)
    jvpcli.jvp(func, x, v, compile="aot_eager")
    with torch.no_grad():
        func[0].weight.mul_(3)
    torch.testing.assert_close(
        jvpcli.jvp(func, x, v, compile="aot_eager")[1], torch_jvp(func, x, v)[1]
    )
    func[2].weight = torch.nn.Parameter(torch.randn(3, 8), requires_grad=False)
    torch.testing.assert_close(
        jvpcli.jvp(func, x, v, compile="aot_eager")[1], torch_jvp(func, x, v)[1]
    )


# A graph dynamo compiles again after a guard failed (here: the module put in train mode) is
# probed as the first one is: a custom autograd.Function or dropout that only the new graph
# reaches is computed eagerly, with PyTorch's result, dropout mask and random state after.


class RoundStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad

    @staticmethod
    def jvp(ctx, tangent):
        return tangent


class TrainOnly(torch.nn.Module):
    """tanh in eval mode; in train mode ``path``: a straight-through rounding or dropout."""

    def __init__(self, path: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 8).double()
        self.path = path

    def forward(self, x):
        y = self.linear(x)
        if not self.training:
            return y.tanh()
        if self.path == "function":
            return RoundStraightThrough.apply(y * 3)
        return torch.nn.functional.dropout(y, 0.5)


@pytest.mark.parametrize(
    ("path", "backend", "refused"),
    [
        ("function", "aot_eager", "custom autograd.Function"),
        ("dropout", "aot_eager", "draws random numbers"),
        ("dropout", True, "draws random numbers"),  # inductor draws a mask of its own
    ],
)
def test_a_graph_compiled_again_after_a_guard_failed_is_probed_like_the_first(
    path, backend, refused
) -> None:
    module = TrainOnly(path).eval()
    x = torch.randn(6, 4, dtype=torch.float64)
    v = torch.randn(6, 4, dtype=torch.float64)
    first = jvpcli.jvp_with_info(module, x, v, compile=backend)
    assert first.info.method_used == "forward (compiled)"
    module.train()
    for _ in range(2):  # refused once, the entry stays eager
        torch.manual_seed(7)
        expected, after = torch_jvp(module, x, v), torch.rand(3)
        torch.manual_seed(7)
        result = jvpcli.jvp_with_info(module, x, v, compile=backend)
        assert result.info.method_used == "forward"
        assert refused in result.info.fallbacks[0].reason
        torch.testing.assert_close((result.func_output, result.jvp), expected)
        torch.testing.assert_close(torch.rand(3), after)


def test_results_a_compiled_call_cannot_return_are_computed_eagerly_from_then_on() -> None:
    # A dataclass is a leaf to torch's pytrees: the compiled graph runs, its results cannot be
    # unpacked, and the entry is not run again (in train mode, the graph traced again draws its
    # own dropout mask, which neither the result nor the random state after may show).
    @dataclasses.dataclass
    class Out:
        y: torch.Tensor

    module = TrainOnly("dropout").eval()
    backend = CountingBackend()

    def func(x):
        return Out(module(x))

    x = torch.randn(6, 4, dtype=torch.float64)
    v = torch.randn(6, 4, dtype=torch.float64)
    for train in (False, True, True):
        module.train(train)
        torch.manual_seed(7)
        expected, after = torch_jvp(module, x, v), torch.rand(3)
        torch.manual_seed(7)
        result = jvpcli.jvp_tree(func, (x,), tangents=(v,), compile=backend)
        assert result.info.method_used == "forward"
        torch.testing.assert_close((result.func_output.y, result.jvp.y), expected)
        torch.testing.assert_close(torch.rand(3), after)
    assert backend.compiles == 1


def test_compiled_jvp_tree_along_parameters_and_keyword_arguments() -> None:
    model = mlp(torch.float64)
    x = torch.randn(4, 6, dtype=torch.float64)
    directions = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    result = jvpcli.jvp_tree(model, (x,), param_tangents=directions, compile="aot_eager")
    assert result.info.method_used == "forward (compiled)", str(result.info)

    def of_params(*values):
        return torch.func.functional_call(model, dict(zip(directions, values, strict=True)), (x,))

    params = tuple(dict(model.named_parameters()).values())
    torch.testing.assert_close(
        result.jvp, torch_jvp(of_params, params, tuple(directions.values()))[1]
    )

    def scaled(x, *, scale, ids):
        return {"y": x.sin() * scale, "ids": ids + 1, "count": 3}

    ids = torch.arange(4)
    v = torch.randn(4, dtype=torch.float64)
    result = jvpcli.jvp_tree(
        scaled,
        (),
        {"x": x[0, :4], "scale": 2.0, "ids": ids},
        kwarg_tangents={"x": v},
        compile="aot_eager",
    )
    assert result.info.method_used == "forward (compiled)", str(result.info)
    torch.testing.assert_close(result.jvp["y"], 2 * x[0, :4].cos() * v)
    torch.testing.assert_close(result.jvp["ids"], torch.zeros_like(ids))
    assert result.func_output["count"] == 3 and result.jvp["count"] is None


# ------------------------------------------------------------------------------------------------
# The command line: compile: true


def test_cli_run_with_compile_true_writes_pytorchs_jvp_and_shows_the_compile_time(tmp_path) -> None:
    import json
    import subprocess
    import sys

    from safetensors.torch import load_file
    from test_cli import expected_jvp, relocated_config

    config = relocated_config("tiny_mlp", tmp_path, compile=True)
    completed = subprocess.run(
        [sys.executable, "-m", "jvpcli", "compute", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    (run,) = json.loads(completed.stdout)["runs"]
    assert (run["compile"], run["method_used"]) == (True, "forward (compiled)"), run["fallbacks"]
    assert run["compile_seconds"] > 0
    written = load_file(tmp_path / "out.safetensors")
    expected_out, expected_tangent = expected_jvp("tiny_mlp", ["x"])
    torch.testing.assert_close(written["func_output"], expected_out)
    torch.testing.assert_close(written["jvp"], expected_tangent)

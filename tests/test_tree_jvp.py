"""jvp_tree: nested arguments, outputs and module parameters, checked against independent oracles.

The oracle is torch.autograd.functional.jvp over a closure that picks the tensors by hand (and over
torch.func.functional_call for parameters), on the math SDPA backend where attention is involved,
or float64 central finite differences.
"""

from __future__ import annotations

import dataclasses
import re
from collections import OrderedDict, namedtuple

import pytest
import torch
from torch.autograd.functional import jvp as torch_jvp
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from jvpcli import METHODS, OutputLeaf, TreeJvpResult, jvp_tree

D = torch.float64
Stats = namedtuple("Stats", "mean std")


@dataclasses.dataclass(frozen=True)
class Pair:
    first: torch.Tensor
    second: torch.Tensor
    label: str = "pair"


def randn(*shape):
    return torch.randn(*shape, dtype=D)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------------------------
# Output structures and paths.

OUTPUT_CASES = [
    ("tensor", lambda x: x.sin(), [""], lambda out: (out,), []),
    (
        "dict",
        lambda x: {"logits": x * 2, "probs": x.softmax(-1)},
        ["logits", "probs"],
        lambda out: (out["logits"], out["probs"]),
        [],
    ),
    (
        "list",
        lambda x: [x.exp(), x.cos(), x.sum()],
        ["0", "1", "2"],
        lambda out: tuple(out),
        [],
    ),
    (
        "nested-tuple",
        lambda x: (x.sin(), (x.cos(), (x * x,))),
        ["0", "1.0", "1.1.0"],
        lambda out: (out[0], out[1][0], out[1][1][0]),
        [],
    ),
    (
        "namedtuple",
        lambda x: (Stats(x.mean(), x.std()), x),
        ["0.mean", "0.std", "1"],
        lambda out: (out[0].mean, out[0].std, out[1]),
        [],
    ),
    (
        "dataclass",
        lambda x: Pair(x.tanh(), x.sigmoid()),
        ["first", "second"],
        lambda out: (out.first, out.second),
        [("label", "str")],  # the dataclass's str field
    ),
    (
        "ordered-dict",
        lambda x: OrderedDict(z=x.sin(), a={"hidden_states": [x, x * 3, x * 5]}),
        ["z", "a.hidden_states.0", "a.hidden_states.1", "a.hidden_states.2"],
        lambda out: (out["z"], *out["a"]["hidden_states"]),
        [],
    ),
]


@pytest.mark.parametrize(
    ("func", "paths", "pick", "dropped"),
    [c[1:] for c in OUTPUT_CASES],
    ids=[c[0] for c in OUTPUT_CASES],
)
def test_output_structure_paths_and_tangents_match_the_oracle(func, paths, pick, dropped):
    x, v = randn(3, 4), randn(3, 4)
    result = jvp_tree(func, (x,), tangents=(v,))
    expected_out, expected_jvp = torch_jvp(lambda t: pick(func(t)), x, v)
    assert isinstance(result, TreeJvpResult)
    assert [leaf.path for leaf in result.leaves] == paths
    assert all(isinstance(leaf, OutputLeaf) for leaf in result.leaves)
    torch.testing.assert_close(pick(result.jvp), expected_jvp)
    torch.testing.assert_close(pick(result.func_output), expected_out)
    torch.testing.assert_close(tuple(leaf.tangent for leaf in result.leaves), expected_jvp)
    assert type(result.jvp) is type(result.func_output) is type(func(x))
    assert list(result.dropped) == dropped


def test_model_output_is_keyed_by_its_fields_and_omits_none():
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    def func(x):
        return BaseModelOutputWithPooling(
            last_hidden_state=x.sin(), pooler_output=None, hidden_states=(x, x.cos())
        )

    x, v = randn(2, 3), randn(2, 3)
    result = jvp_tree(func, (x,), tangents=(v,))
    assert [leaf.path for leaf in result.leaves] == [
        "last_hidden_state",
        "hidden_states.0",
        "hidden_states.1",
    ]
    assert isinstance(result.jvp, BaseModelOutputWithPooling)
    assert result.jvp.pooler_output is None
    _, expected = torch_jvp(lambda t: (t.sin(), t, t.cos()), x, v)
    torch.testing.assert_close((result.jvp.last_hidden_state, *result.jvp.hidden_states), expected)


def test_non_tensor_output_leaves_are_dropped_and_reported():
    marker = object()

    def func(x):
        return {"y": x.exp(), "none": None, "count": 3, "name": "out", "obj": marker}

    x, v = randn(3), randn(3)
    result = jvp_tree(func, (x,), tangents=(v,))
    assert result.dropped == (
        ("none", "NoneType"),
        ("count", "int"),
        ("name", "str"),
        ("obj", "object"),
    )
    assert result.jvp == {
        "y": result.jvp["y"],
        "none": None,
        "count": None,
        "name": None,
        "obj": None,
    }
    assert result.func_output["obj"] is marker
    assert result.func_output["count"] == 3
    torch.testing.assert_close(result.jvp["y"], x.exp() * v)


def test_integer_and_bool_output_tensors_get_a_zero_tangent():
    x, v = randn(5), randn(5)
    result = jvp_tree(lambda t: {"arg": t.argmax(), "pos": t > 0, "y": t * 2}, (x,), tangents=(v,))
    assert torch.equal(result.jvp["arg"], torch.zeros((), dtype=torch.int64))
    assert not result.jvp["pos"].any()
    torch.testing.assert_close(result.jvp["y"], 2 * v)


# --------------------------------------------------------------------------------------------
# Arguments: nesting, kwargs, constants.


def test_nested_inputs_with_a_subset_differentiated():
    def func(batch, weights):
        return (batch["x"] @ weights[0] + batch["y"]).tanh() * weights[1]

    x, y, w0, w1 = randn(3, 4), randn(3, 5), randn(4, 5), randn(5)
    vx, vw1 = randn(3, 4), randn(5)
    result = jvp_tree(
        func,
        ({"x": x, "y": y}, [w0, w1]),
        tangents=({"x": vx, "y": None}, [None, vw1]),
    )
    _, expected = torch_jvp(lambda a, b: func({"x": a, "y": y}, [w0, b]), (x, w1), (vx, vw1))
    torch.testing.assert_close(result.jvp, expected)


def test_a_none_tangent_holds_a_whole_subtree_constant():
    def func(a, b):
        return a[0] * b["p"][0] + a[1]

    a, b = (randn(3), randn(3)), {"p": [randn(3)], "q": 7}
    va = (randn(3), randn(3))
    result = jvp_tree(func, (a, b), tangents=(va, None))
    _, expected = torch_jvp(lambda s, t: func((s, t), b), a, va)
    torch.testing.assert_close(result.jvp, expected)


def test_dataclass_and_namedtuple_inputs_are_rebuilt_faithfully():
    seen = []

    def func(pair, stats):
        seen.append((type(pair), pair.label, type(stats)))
        return pair.first * pair.second + stats.mean / stats.std

    pair, stats = Pair(randn(3), randn(3), "kept"), Stats(randn(3), randn(3).abs() + 1)
    tangent_pair, tangent_stats = Pair(randn(3), None, None), Stats(None, randn(3))
    result = jvp_tree(func, (pair, stats), tangents=(tangent_pair, tangent_stats))
    _, expected = torch_jvp(
        lambda f, s: func(Pair(f, pair.second, "kept"), Stats(stats.mean, s)),
        (pair.first, stats.std),
        (tangent_pair.first, tangent_stats.std),
    )
    torch.testing.assert_close(result.jvp, expected)
    assert set(seen) == {(Pair, "kept", Stats)}


def test_kwargs_keyword_only_and_var_keyword_parameters_bind_like_python():
    def func(x, *, scale, offset=None, **extra):
        return x * scale + offset + extra["shift"].sin()

    x, scale, offset, shift = randn(4), randn(4), randn(4), randn(4)
    vx, vshift, vscale = randn(4), randn(4), randn(4)
    result = jvp_tree(
        func,
        (x,),
        {"scale": scale, "offset": offset, "shift": shift},
        tangents=(vx,),
        kwarg_tangents={"shift": vshift, "scale": vscale},
    )
    _, expected = torch_jvp(
        lambda a, s, c: func(a, scale=c, offset=offset, shift=s),
        (x, shift, scale),
        (vx, vshift, vscale),
    )
    torch.testing.assert_close(result.jvp, expected)


def test_kwarg_tangents_alone_differentiate_a_keyword_argument():
    x, v = randn(3), randn(3)
    result = jvp_tree(
        lambda *, value: {"out": value.exp()}, (), {"value": x}, kwarg_tangents={"value": v}
    )
    torch.testing.assert_close(result.jvp["out"], x.exp() * v)


def test_constants_are_passed_unchanged():
    received = {}
    marker = object()

    def func(x, ids, mask, nothing, number, obj):
        received.update(ids=ids, mask=mask, nothing=nothing, number=number, obj=obj)
        return x[ids].sum(-1) * mask * number

    x, v = randn(6, 3), randn(6, 3)
    ids = torch.tensor([0, 2, 5])
    mask = torch.tensor([True, False, True])
    result = jvp_tree(
        func, (x, ids, mask, None, 2.5, marker), tangents=(v, None, None, None, None, None)
    )
    assert received["ids"] is ids
    assert received["mask"] is mask
    assert received["nothing"] is None
    assert received["number"] == 2.5
    assert received["obj"] is marker
    torch.testing.assert_close(result.jvp, v[ids].sum(-1) * mask * 2.5)


def test_tangents_may_be_left_out_for_constant_positional_arguments():
    x, y, v = randn(3), randn(3), randn(3)
    result = jvp_tree(lambda a, b: a * b, (x, y), tangents=[v, None])
    torch.testing.assert_close(result.jvp, v * y)


def test_single_element_input_without_tangents_gets_tangent_one_like_torch():
    x = randn(())
    func = lambda t, ids: {"y": t.sin() * ids.sum()}  # noqa: E731
    ids = torch.tensor([1, 2])
    result = jvp_tree(func, (x, ids))
    _, expected = torch_jvp(lambda t: func(t, ids)["y"], x)
    torch.testing.assert_close(result.jvp["y"], expected)


def test_matches_central_finite_differences():
    def func(inputs, *, power):
        return {"a": (inputs[0] ** power).sum(0), "b": [inputs[1].atan() * inputs[0].mean()]}

    x, y, vx, vy = randn(3, 2), randn(2), randn(3, 2), randn(2)
    result = jvp_tree(func, ([x, y],), {"power": 3}, tangents=([vx, vy],))
    eps = 1e-6
    plus = func([x + eps * vx, y + eps * vy], power=3)
    minus = func([x - eps * vx, y - eps * vy], power=3)
    torch.testing.assert_close(result.jvp["a"], (plus["a"] - minus["a"]) / (2 * eps))
    torch.testing.assert_close(result.jvp["b"][0], (plus["b"][0] - minus["b"][0]) / (2 * eps))


# --------------------------------------------------------------------------------------------
# Module parameters.


def _mlp():
    return torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3), torch.nn.Softplus()
    ).double()


@pytest.mark.parametrize("method", METHODS)
def test_param_tangents_on_a_subset_of_weights_and_an_input_tangent(method):
    model = _mlp()
    x, vx = randn(5, 4), randn(5, 4)
    names = ["0.weight", "2.bias"]
    params = dict(model.named_parameters())
    directions = {n: torch.randn_like(params[n]) for n in names}
    result = jvp_tree(model, (x,), tangents=(vx,), param_tangents=directions, method=method)

    def oracle(inp, *weights):
        return functional_call(model, dict(zip(names, weights, strict=True)), (inp,))

    _, expected = torch_jvp(
        oracle, (x, *(params[n] for n in names)), (vx, *(directions[n] for n in names))
    )
    torch.testing.assert_close(result.jvp, expected)
    assert result.info.method == method


def test_parameters_and_requires_grad_flags_are_left_as_they_were():
    model = _mlp()
    model[2].bias.requires_grad_(False)
    before = {n: (p, p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    x = randn(5, 4)
    x_flag = x.requires_grad
    for create_graph in (False, True):
        jvp_tree(
            model,
            (x,),
            tangents=(randn(5, 4),),
            param_tangents={"0.weight": randn(6, 4), "2.bias": randn(3)},
            create_graph=create_graph,
        )
    after = dict(model.named_parameters())
    for name, (param, values, flag) in before.items():
        assert after[name] is param
        assert torch.equal(param.detach(), values)
        assert param.requires_grad is flag
        assert param.grad is None
    assert x.requires_grad is x_flag


def test_embedding_table_tangent_with_integer_ids():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2)).double()
    ids = torch.tensor([[1, 3, 3], [9, 0, 2]])
    table = model[0].weight
    direction = torch.randn_like(table)
    result = jvp_tree(model, (ids,), param_tangents={"0.weight": direction})
    _, expected = torch_jvp(
        lambda w: functional_call(model, {"0.weight": w}, (ids,)), table, direction
    )
    torch.testing.assert_close(result.jvp, expected)


@pytest.mark.parametrize("method", ["auto", "double-backward"])
def test_batched_param_tangents_match_separate_oracle_calls(method):
    model = _mlp()
    x = randn(5, 4)
    names = ["0.weight", "2.weight"]
    params = dict(model.named_parameters())
    k = 3
    directions = {n: torch.randn(k, *params[n].shape, dtype=D) for n in names}
    vx = torch.randn(k, 5, 4, dtype=D)
    result = jvp_tree(
        model, (x,), tangents=(vx,), param_tangents=directions, batched_v=True, method=method
    )
    assert result.jvp.shape == (k, 5, 3)
    for i in range(k):
        _, expected = torch_jvp(
            lambda inp, w0, w2: functional_call(model, {"0.weight": w0, "2.weight": w2}, (inp,)),
            (x, params["0.weight"], params["2.weight"]),
            (vx[i], directions["0.weight"][i], directions["2.weight"][i]),
        )
        torch.testing.assert_close(result.jvp[i], expected)


@pytest.mark.parametrize("method", METHODS)
def test_create_graph_gives_the_oracles_gradients(method):
    model = _mlp()
    x = randn(5, 4).requires_grad_()
    vx = randn(5, 4).requires_grad_()
    weight = model[0].weight
    vw = randn(6, 4).requires_grad_()
    result = jvp_tree(
        model,
        (x,),
        tangents=(vx,),
        param_tangents={"0.weight": vw},
        create_graph=True,
        method=method,
    )
    got = torch.autograd.grad(result.jvp.square().sum(), (x, vx, weight, vw))
    _, expected_jvp = torch_jvp(
        lambda inp, w: functional_call(model, {"0.weight": w}, (inp,)),
        (x, weight),
        (vx, vw),
        create_graph=True,
    )
    expected = torch.autograd.grad(expected_jvp.square().sum(), (x, vx, weight, vw))
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("method", METHODS)
def test_strict_looks_at_the_differentiated_leaves_only(method):
    constant = randn(3).requires_grad_()  # requires grad, yet is not differentiated
    x, v = randn(3), randn(3)
    ok = jvp_tree(
        lambda a, c: {"y": a * c}, (x, constant), tangents=(v, None), strict=True, method=method
    )
    torch.testing.assert_close(ok.jvp["y"], v * constant.detach())
    with pytest.raises(RuntimeError, match="independent"):
        jvp_tree(
            lambda a, c: {"y": a * 2, "z": c.exp()},
            (x, constant),
            tangents=(v, None),
            strict=True,
            method=method,
        )


def test_strict_with_param_tangents_rejects_a_parameter_that_influences_nothing():
    model = torch.nn.ModuleDict({"used": torch.nn.Linear(3, 2), "unused": torch.nn.Linear(3, 2)})
    model.forward = lambda x: model["used"](x)
    with pytest.raises(RuntimeError, match="independent of input"):
        jvp_tree(
            model,
            (torch.randn(4, 3),),
            param_tangents={"unused.weight": torch.randn(2, 3)},
            strict=True,
        )


# --------------------------------------------------------------------------------------------
# Hugging Face models, tiny, built from configs.


@pytest.fixture(scope="module")
def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=64,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="sdpa",
    )
    model = GPT2LMHeadModel(config).double().eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    return model


PADDED_MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])


def test_gpt2_along_inputs_embeds_with_a_padded_mask_held_constant(gpt2):
    embeds, v = randn(2, 6, 32), randn(2, 6, 32)
    mask = PADDED_MASK.clone()
    result = jvp_tree(
        gpt2,
        (),
        {"inputs_embeds": embeds, "attention_mask": mask},
        kwarg_tangents={"inputs_embeds": v},
    )
    assert [leaf.path for leaf in result.leaves] == ["logits"]
    assert "DynamicCache" in {type_name for _, type_name in result.dropped}
    with sdpa_kernel(SDPBackend.MATH):
        expected_out, expected = torch_jvp(
            lambda e: gpt2(inputs_embeds=e, attention_mask=mask).logits, embeds, v
        )
    torch.testing.assert_close(result.jvp.logits, expected)
    torch.testing.assert_close(result.func_output.logits, expected_out)
    assert torch.equal(mask, PADDED_MASK)


GPT2_WEIGHTS = [
    "transformer.wte.weight",
    "transformer.h.0.attn.c_attn.weight",
    "transformer.ln_f.bias",
]


@pytest.mark.parametrize("batched_v", [False, True])
def test_gpt2_along_a_subset_of_weights_including_the_tied_embedding(gpt2, batched_v):
    ids = torch.randint(0, 64, (2, 6))
    params = dict(gpt2.named_parameters())
    k = 3 if batched_v else 1
    directions = {n: torch.randn(k, *params[n].shape, dtype=D) for n in GPT2_WEIGHTS}
    result = jvp_tree(
        gpt2,
        (ids,),
        {"attention_mask": PADDED_MASK, "use_cache": False},
        param_tangents={n: d if batched_v else d[0] for n, d in directions.items()},
        batched_v=batched_v,
    )

    def oracle(*weights):
        return functional_call(
            gpt2,
            dict(zip(GPT2_WEIGHTS, weights, strict=True)),
            (ids,),
            {"attention_mask": PADDED_MASK, "use_cache": False},
        ).logits

    got = result.jvp.logits if batched_v else result.jvp.logits[None]
    for i in range(k):
        with sdpa_kernel(SDPBackend.MATH):
            _, expected = torch_jvp(
                oracle,
                tuple(params[n] for n in GPT2_WEIGHTS),
                tuple(directions[n][i] for n in GPT2_WEIGHTS),
            )
        torch.testing.assert_close(got[i], expected)


def test_gpt2_tied_weight_tangent_under_either_name_is_the_same(gpt2):
    ids = torch.randint(0, 64, (1, 4))
    direction = randn(64, 32)
    by_embedding = jvp_tree(gpt2, (ids,), param_tangents={"transformer.wte.weight": direction})
    by_head = jvp_tree(gpt2, (ids,), param_tangents={"lm_head.weight": direction})
    torch.testing.assert_close(by_head.jvp.logits, by_embedding.jvp.logits)
    with pytest.raises(ValueError, match="tied"):
        jvp_tree(
            gpt2,
            (ids,),
            param_tangents={"lm_head.weight": direction, "transformer.wte.weight": direction},
        )


def test_bert_with_token_type_ids_held_constant():
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        type_vocab_size=2,
        attn_implementation="sdpa",
    )
    model = BertModel(config).double().eval()
    embeds, v = randn(2, 6, 32), randn(2, 6, 32)
    token_types = torch.tensor([[0, 0, 0, 1, 1, 1]] * 2)
    kwargs = {"inputs_embeds": embeds, "attention_mask": PADDED_MASK, "token_type_ids": token_types}
    result = jvp_tree(model, (), kwargs, kwarg_tangents={"inputs_embeds": v})
    assert [leaf.path for leaf in result.leaves] == ["last_hidden_state", "pooler_output"]

    def oracle(e):
        out = model(inputs_embeds=e, attention_mask=PADDED_MASK, token_type_ids=token_types)
        return out.last_hidden_state, out.pooler_output

    with sdpa_kernel(SDPBackend.MATH):
        _, expected = torch_jvp(oracle, embeds, v)
    torch.testing.assert_close((result.jvp.last_hidden_state, result.jvp.pooler_output), expected)
    with pytest.raises(TypeError, match=r"param_tangents\['embeddings.position_ids'\].*int64"):
        jvp_tree(
            model,
            (),
            kwargs,
            param_tangents={"embeddings.position_ids": torch.zeros(1, 32, dtype=torch.int64)},
        )


# --------------------------------------------------------------------------------------------
# Validation at the boundary.


def _two(a, b):
    return a["a"] * b


X = torch.randn(3)
IDS = torch.tensor([1, 2, 3])

ERROR_CASES = [
    (
        "tangent-structure-differs",
        dict(args=({"a": X}, X), tangents=({"b": X}, None)),
        ValueError,
        r"tangents\[0\]\['b'\] has no counterpart",
    ),
    (
        "tangent-missing-a-key",
        dict(args=({"a": X, "c": X}, X), tangents=({"a": X}, None)),
        ValueError,
        r"tangents\[0\] does not match the structure of args\[0\].*\['c'\]",
    ),
    (
        "tensor-tangent-for-a-container",
        dict(args=({"a": X}, X), tangents=(X, None)),
        ValueError,
        r"tangents\[0\] is a Tensor, but args\[0\] is a container",
    ),
    (
        "tangent-for-an-integer-tensor",
        dict(args=({"a": X}, IDS), tangents=(None, IDS)),
        TypeError,
        r"tangents\[1\].*args\[1\] has dtype torch.int64.*None there to hold it constant",
    ),
    (
        "tangent-for-a-non-tensor",
        dict(args=({"a": X}, 2.0), tangents=(None, X)),
        TypeError,
        r"tangents\[1\].*args\[1\] is not a Tensor \(it is a float\)",
    ),
    (
        "tangent-not-a-tensor",
        dict(args=({"a": X}, X), tangents=({"a": 1.0}, None)),
        TypeError,
        r"tangents\[0\]\['a'\] must be a Tensor or None, but got float",
    ),
    (
        "tangent-size",
        dict(args=({"a": X}, X), tangents=({"a": torch.randn(4)}, None)),
        RuntimeError,
        r"tangents\[0\]\['a'\] has size torch.Size\(\[4\]\), but its primal has size",
    ),
    (
        "tangent-dtype",
        dict(args=({"a": X}, X), tangents=(None, X.double())),
        RuntimeError,
        r"tangents\[1\] has dtype torch.float64, but its primal has dtype torch.float32",
    ),
    (
        "batched-tangents-with-different-k",
        dict(
            args=({"a": X}, X),
            tangents=({"a": torch.randn(2, 3)}, torch.randn(3, 3)),
            batched_v=True,
        ),
        RuntimeError,
        r"tangents\[1\] has size torch.Size\(\[3, 3\]\), but with batched_v=True .*\[2, 3\]",
    ),
    (
        "tangents-length",
        dict(args=({"a": X}, X), tangents=(None,)),
        ValueError,
        "args has 2 but tangents has 1",
    ),
    (
        "tangents-a-bare-tensor",
        dict(args=(X,), tangents=X),
        TypeError,
        r"tangents must be a tuple or list \(for a single positional argument x: \(x,\)\)",
    ),
    (
        "unknown-kwarg",
        dict(args=({"a": X},), kwargs={"b": X}, kwarg_tangents={"bb": X}),
        ValueError,
        r"kwarg_tangents names 'bb'.*did you mean 'b'\?",
    ),
    (
        "kwarg-tangent-structure",
        dict(args=({"a": X},), kwargs={"b": X}, kwarg_tangents={"b": [X]}),
        ValueError,
        r"kwarg_tangents\['b'\]\[0\] has no counterpart",
    ),
    (
        "param-tangents-without-a-module",
        dict(args=({"a": X}, X), param_tangents={"weight": X}),
        TypeError,
        "func is a function, not an nn.Module",
    ),
    (
        "nothing-differentiated",
        dict(args=({"a": X}, X)),
        ValueError,
        "no tangents, so nothing is differentiated",
    ),
    (
        "every-tangent-none",
        dict(args=({"a": X}, X), tangents=({"a": None}, None)),
        ValueError,
        "nothing is differentiated",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "message"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_validation_errors_name_the_leaf(call, error, message):
    with pytest.raises(error, match=message):
        jvp_tree(_two, **call)


def test_unknown_parameter_name_suggests_the_closest():
    model = _mlp()
    with pytest.raises(
        ValueError, match=re.escape("names '0.weigth'") + ".*did you mean '0.weight'"
    ):
        jvp_tree(model, (randn(2, 4),), param_tangents={"0.weigth": randn(6, 4)})


def test_parameter_tangent_shape_is_checked_by_name():
    model = _mlp()
    with pytest.raises(RuntimeError, match=r"param_tangents\['2.bias'\] has size"):
        jvp_tree(model, (randn(2, 4),), param_tangents={"2.bias": randn(4)})


def test_validation_happens_before_func_runs():
    calls = []
    with pytest.raises(RuntimeError):
        jvp_tree(lambda x: calls.append(x) or x, (X,), tangents=(torch.randn(2),))
    assert calls == []


class _SquareWithoutJvp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


def test_a_fallback_that_calls_func_again_still_rebuilds_the_output():
    calls = []

    def func(x):
        calls.append(1)
        return {"sq": _SquareWithoutJvp.apply(x), "tag": "kept", "id": len(calls)}

    x, v = randn(4), randn(4)
    result = jvp_tree(func, (x,), tangents=(v,))
    assert result.info.method_used == "double-backward"
    assert len(calls) == 2
    torch.testing.assert_close(result.jvp["sq"], 2 * x * v)
    assert result.func_output["tag"] == "kept"
    assert result.func_output["id"] == 2  # the output of the call that produced the result
    assert result.dropped == (("tag", "str"), ("id", "int"))


def test_outputs_keeps_the_named_leaves_and_strict_ignores_the_rest() -> None:
    x, v = torch.randn(3), torch.randn(3)

    def func(a: torch.Tensor) -> dict:
        # "unused" does not depend on a: strict would refuse it, were it kept.
        return {"y": {"sin": a.sin(), "cos": a.cos()}, "unused": torch.ones(2), "n": 3}

    result = jvp_tree(func, (x,), tangents=(v,), strict=True, outputs=["y"])
    assert [leaf.path for leaf in result.leaves] == ["y.sin", "y.cos"]
    _, (sin_t, cos_t) = torch.autograd.functional.jvp(lambda a: (a.sin(), a.cos()), (x,), (v,))
    torch.testing.assert_close(result.jvp["y.sin"], sin_t)
    torch.testing.assert_close(result.jvp["y.cos"], cos_t)
    assert result.dropped == ()
    with pytest.raises(RuntimeError, match=r"does not require gradients"):
        jvp_tree(func, (x,), tangents=(v,), strict=True, outputs=["y.sin", "unused"])
    with pytest.raises(ValueError, match=r"outputs names 'logits'.*y\.sin, y\.cos, unused, n"):
        jvp_tree(func, (x,), tangents=(v,), outputs=["logits"])


@pytest.mark.parametrize("batched", [False, True])
def test_integer_outputs_are_exempt_from_strict_with_a_zero_tangent(batched: bool) -> None:
    x = torch.randn(4)
    v = torch.randn(2, 4) if batched else torch.randn(4)
    result = jvp_tree(
        lambda a: {"y": a * 2, "index": a.argmax(), "mask": a > 0},
        (x,),
        tangents=(v,),
        strict=True,
        batched_v=batched,
    )
    tangents = {leaf.path: leaf.tangent for leaf in result.leaves}
    torch.testing.assert_close(tangents["y"], 2 * v)
    assert tangents["index"].shape == ((2,) if batched else ())
    assert not tangents["index"].any() and not tangents["mask"].any()
    assert tangents["mask"].shape == v.shape

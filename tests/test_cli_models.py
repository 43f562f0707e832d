"""`jvpcli compute` on real saved models: Hugging Face folders, integer and constant inputs,
keyword arguments, pytree outputs, directions in weight space, random directions.

Every result is checked against an oracle built here without jvpcli: torch.autograd.functional.jvp
over a closure (over torch.func.functional_call for directions in weight space), on the math SDPA
backend where PyTorch's fused attention kernels have no double backward.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from typer.testing import CliRunner

from jvpcli.cli import app

transformers = pytest.importorskip("transformers")

MODELS = textwrap.dedent(
    """
    from collections import namedtuple
    from dataclasses import dataclass

    import torch
    from torch import nn

    Pair = namedtuple("Pair", ["mean", "total"])


    @dataclass
    class Report:
        score: torch.Tensor
        label: str


    class Embedder(nn.Module):
        # Token ids (int64) in, through an embedding table and a linear head.
        def __init__(self, vocab=11, width=6):
            super().__init__()
            self.embed = nn.Embedding(vocab, width)
            self.head = nn.Linear(width, 3)

        def forward(self, input_ids, *, scale=None):
            hidden = self.embed(input_ids).tanh()
            if scale is not None:
                hidden = hidden * scale
            return self.head(hidden)


    class Nested(nn.Module):
        # Every kind of container an output can be.
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x, mask):
            y = self.lin(x) * mask
            return {
                "pair": Pair(y.mean(0), y.sum()),
                "report": Report(y.exp(), "not a tensor"),
                "layers": [y, (y.sin(), None)],
                "argmax": y.argmax(-1),
                "steps": 3,
            }


    def with_kwargs(x, **extra):
        return x * extra["w"].sum() + extra["bias"]


    def mixed(x, ids, *, gain):
        return x[ids] * gain
    """
)


def import_file(path: Path) -> ModuleType:
    """The module at ``path``, imported without jvpcli and without touching sys.modules."""
    spec = importlib.util.spec_from_file_location(f"oracle_{path.parent.name}_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def invoke(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def write_config(folder: Path, text: str, name: str = "run.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def compute_json(config: Path, *options: str) -> dict[str, Any]:
    result = invoke("compute", config, "--json", *options)
    assert result.exit_code == 0, result.output
    (run,) = json.loads(result.stdout)["runs"]
    return run


def error_of(config: Path, exit_code: int = 2, *options: str) -> str:
    result = invoke("compute", config, *options)
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=16, vocab_size=40, n_positions=16, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "tiny-bert"
    torch.manual_seed(1)
    config = transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=24, max_position_embeddings=16, type_vocab_size=2,
    )  # fmt: skip
    transformers.BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "models.py").write_text(MODELS)
    return tmp_path


def load_reference(folder: Path, cls: Any) -> torch.nn.Module:
    return cls.from_pretrained(folder, attn_implementation="sdpa").eval()


def gpt2_batch(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(2)
    embeds = torch.randn(2, 5, 16, generator=generator)
    mask = torch.ones(2, 5, dtype=torch.int64)
    mask[1, 3:] = 0  # the second sequence is padded
    save_file({"inputs_embeds": embeds, "attention_mask": mask}, folder / "batch.safetensors")
    v = {"inputs_embeds": torch.randn(2, 5, 16, generator=generator)}
    save_file(v, folder / "v.safetensors")
    return {"inputs_embeds": embeds, "attention_mask": mask}, v


def test_gpt2_logits_along_inputs_embeds_with_a_padded_mask_held_constant(
    tmp_path: Path, gpt2_folder: Path
) -> None:
    inputs, v = gpt2_batch(tmp_path)
    config = write_config(
        tmp_path,
        f"""
        function:
          pretrained: {gpt2_folder}
          class: transformers:AutoModelForCausalLM
          init: {{attn_implementation: sdpa}}
        inputs: batch.safetensors
        v: v.safetensors
        outputs: [logits]
        output: out.safetensors
        """,
    )
    run = compute_json(config)
    assert run["roles"] == {"attention_mask": "constant", "inputs_embeds": "differentiated"}
    assert [o["path"] for o in run["outputs"]] == ["logits"]
    written = load_file(tmp_path / "out.safetensors")
    assert set(written) == {"func_output.logits", "jvp.logits"}

    model = load_reference(gpt2_folder, transformers.GPT2LMHeadModel)
    mask = inputs["attention_mask"]
    with sdpa_kernel(SDPBackend.MATH):
        output, expected = torch.autograd.functional.jvp(
            lambda e: model(inputs_embeds=e, attention_mask=mask).logits,
            inputs["inputs_embeds"],
            v["inputs_embeds"],
        )
    torch.testing.assert_close(written["func_output.logits"], output)
    torch.testing.assert_close(written["jvp.logits"], expected, rtol=1e-4, atol=1e-5)
    # The mask matters: the padded positions' logits differ from an unmasked run's.
    with torch.no_grad():
        unmasked = model(inputs_embeds=inputs["inputs_embeds"]).logits
    assert not torch.allclose(unmasked[1], written["func_output.logits"][1])


def test_gpt2_along_a_subset_of_its_weights_tied_embedding_included(
    tmp_path: Path, gpt2_folder: Path
) -> None:
    inputs, _ = gpt2_batch(tmp_path)
    model = load_reference(gpt2_folder, transformers.GPT2LMHeadModel)
    params = dict(model.named_parameters())
    names = ["transformer.wte.weight", "transformer.h.1.attn.c_attn.weight"]
    generator = torch.Generator().manual_seed(3)
    tangents = {n: torch.randn(params[n].shape, generator=generator) for n in names}
    save_file(tangents, tmp_path / "v_params.safetensors")
    config = write_config(
        tmp_path,
        f"""
        function: {{pretrained: {gpt2_folder}, class: transformers:GPT2LMHeadModel}}
        inputs: batch.safetensors
        v_params: v_params.safetensors
        outputs: [logits]
        output: out.safetensors
        """,
    )
    run = compute_json(config)
    assert run["params"] == names
    assert set(run["roles"].values()) == {"constant"}
    written = load_file(tmp_path / "out.safetensors")

    def logits(*weights: torch.Tensor) -> torch.Tensor:
        replaced = dict(zip(names, weights, strict=True))
        return functional_call(model, replaced, (), dict(inputs)).logits

    with sdpa_kernel(SDPBackend.MATH):
        _, expected = torch.autograd.functional.jvp(
            logits, tuple(params[n].detach() for n in names), tuple(tangents[n] for n in names)
        )
    torch.testing.assert_close(written["jvp.logits"], expected, rtol=1e-4, atol=1e-5)


def test_bert_with_constant_token_type_ids_and_random_weight_directions(
    tmp_path: Path, bert_folder: Path
) -> None:
    ids = torch.tensor([[2, 7, 9, 4, 0], [5, 3, 3, 8, 1]])
    inputs = {
        "input_ids": ids,
        "token_type_ids": torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool),
    }
    save_file(inputs, tmp_path / "batch.safetensors")
    config = write_config(
        tmp_path,
        f"""
        function: {{pretrained: {bert_folder}}}
        inputs: batch.safetensors
        v_params: {{random: rademacher, seed: 4, match: ["*.query.weight"]}}
        outputs: [last_hidden_state]
        save_v: true
        output: out.safetensors
        """,
    )
    run = compute_json(config)
    assert run["params"] == [f"encoder.layer.{i}.attention.self.query.weight" for i in (0, 1)]
    assert run["v_params"] == {"random": "rademacher", "seed": 4, "match": ["*.query.weight"]}
    written = load_file(tmp_path / "out.safetensors")
    directions = {n: written[f"v_params.{n}"] for n in run["params"]}
    assert all(set(d.unique().tolist()) == {-1.0, 1.0} for d in directions.values())

    model = load_reference(bert_folder, transformers.BertModel)
    params = dict(model.named_parameters())

    def hidden(*weights: torch.Tensor) -> torch.Tensor:
        replaced = dict(zip(run["params"], weights, strict=True))
        return functional_call(model, replaced, (), dict(inputs)).last_hidden_state

    with sdpa_kernel(SDPBackend.MATH):
        _, expected = torch.autograd.functional.jvp(
            hidden,
            tuple(params[n].detach() for n in run["params"]),
            tuple(directions[n] for n in run["params"]),
        )
    torch.testing.assert_close(written["jvp.last_hidden_state"], expected, rtol=1e-4, atol=1e-5)


def test_embedding_model_fed_int64_ids_along_its_table(workspace: Path) -> None:
    ids = torch.tensor([[1, 4, 4, 9], [0, 2, 10, 3]])
    save_file({"input_ids": ids}, workspace / "ids.safetensors")
    torch.manual_seed(5)
    table = torch.randn(11, 6)
    save_file({"embed.weight": table}, workspace / "v_params.safetensors")
    config = write_config(
        workspace,
        """
        function: {target: models.py:Embedder}
        inputs: ids.safetensors
        v_params: v_params.safetensors
        output: out.safetensors
        seed: 0
        """,
    )
    run = compute_json(config)
    assert run["roles"] == {"input_ids": "constant"}
    written = load_file(workspace / "out.safetensors")

    models = import_file(workspace / "models.py")
    torch.manual_seed(0)
    model = models.Embedder().eval()
    _, expected = torch.autograd.functional.jvp(
        lambda w: functional_call(model, {"embed.weight": w}, (ids,)),
        model.embed.weight.detach(),
        table,
    )
    torch.testing.assert_close(written["jvp"], expected)


def nested_inputs(folder: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(3, 4, generator=generator)
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0]]).expand(3, 4).contiguous()
    v = torch.randn(3, 4, generator=generator)
    save_file({"x": x, "mask": mask}, folder / "inputs.safetensors")
    save_file({"x": v}, folder / "v.safetensors")
    return x, mask, v


NESTED = """
function: {target: models.py:Nested}
inputs: inputs.safetensors
v: v.safetensors
output: out.safetensors
seed: 0
"""


def test_nested_outputs_are_named_by_their_dotted_paths(workspace: Path) -> None:
    x, mask, v = nested_inputs(workspace)
    run = compute_json(write_config(workspace, NESTED))
    paths = [o["path"] for o in run["outputs"]]
    assert paths == [
        "pair.mean", "pair.total", "report.score", "layers.0", "layers.1.0", "argmax"
    ]  # fmt: skip
    assert run["roles"] == {"x": "differentiated", "mask": "constant"}
    assert any("steps (int)" in note for note in run["notes"])
    assert any("report.label (str)" in note for note in run["notes"])
    written = load_file(workspace / "out.safetensors")

    models = import_file(workspace / "models.py")
    torch.manual_seed(0)
    model = models.Nested().eval()
    y = model.lin(x) * mask
    y_t = (v @ model.lin.weight.T).detach() * mask
    expected = {
        "pair.mean": y_t.mean(0),
        "pair.total": y_t.sum(),
        "report.score": y.exp() * y_t,
        "layers.0": y_t,
        "layers.1.0": y.cos() * y_t,
        "argmax": torch.zeros(3, dtype=torch.int64),
    }
    for path, tangent in expected.items():
        torch.testing.assert_close(written[f"jvp.{path}"], tangent.detach())
    assert written["func_output.argmax"].dtype == torch.int64


def test_outputs_keeps_the_named_leaves_and_everything_below_them(workspace: Path) -> None:
    nested_inputs(workspace)
    config = write_config(workspace, NESTED + "outputs: [layers, pair.total]\n")
    run = compute_json(config)
    assert [o["path"] for o in run["outputs"]] == ["pair.total", "layers.0", "layers.1.0"]
    assert set(load_file(workspace / "out.safetensors")) == {
        "func_output.pair.total", "jvp.pair.total", "func_output.layers.0", "jvp.layers.0",
        "func_output.layers.1.0", "jvp.layers.1.0",
    }  # fmt: skip
    # Only the non-tensor leaves inside the selection are reported.
    assert run["notes"] == ["dropped layers.1.1 (NoneType): not a tensor"]


def test_an_unknown_output_path_lists_the_real_ones(workspace: Path) -> None:
    nested_inputs(workspace)
    # Exit 1: the output's paths are known only once the function ran.
    message = error_of(write_config(workspace, NESTED + "outputs: [logits]\n"), 1)
    assert "outputs names 'logits'" in message
    assert "pair.mean, pair.total, report.score" in message
    assert not (workspace / "out.safetensors").exists()


def test_goldens_and_finite_differences_on_a_pytree_output(workspace: Path) -> None:
    nested_inputs(workspace)
    config = write_config(
        workspace,
        NESTED
        + "expect: golden.safetensors\ncheck: finite-differences\n"
        + "v_params: {random: normal, seed: 1}\n",
    )
    updated = invoke("compute", config, "--update-golden")
    assert updated.exit_code == 0, updated.output
    run = compute_json(config)
    checks = {check["check"]: check for check in run["checks"]}
    assert checks["finite-differences"]["status"] == "passed"
    checked = {t["name"]: t["status"] for t in checks["finite-differences"]["tensors"]}
    assert checked["jvp.report.score"] == "passed"
    assert checked["jvp.argmax"] == "skipped"
    assert checks["golden"]["status"] == "passed"
    # A wrong golden fails the run, naming the pytree tensor.
    golden = load_file(workspace / "golden.safetensors")
    golden["jvp.layers.1.0"] = golden["jvp.layers.1.0"] + 1
    save_file(golden, workspace / "golden.safetensors")
    message = error_of(config, 1)
    assert "jvp.layers.1.0" in message


def test_a_wrong_jvp_fails_finite_differences_along_weights(workspace: Path) -> None:
    # The oracle here is float64 central differences: a model whose forward-mode rule is wrong
    # (a custom Function with a wrong jvp) must fail the check along a weight direction.
    (workspace / "wrong.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            class Cube(torch.autograd.Function):
                @staticmethod
                def forward(ctx, x):
                    ctx.save_for_forward(x)
                    return x**3

                @staticmethod
                def jvp(ctx, x_t):
                    (x,) = ctx.saved_tensors
                    return 2.9 * x**2 * x_t  # 3, not 2.9

            class Model(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.lin = nn.Linear(4, 4)

                def forward(self, x):
                    return Cube.apply(self.lin(x))
            """
        )
    )
    save_file({"x": torch.randn(3, 4)}, workspace / "x.safetensors")
    config = write_config(
        workspace,
        """
        function: {target: wrong.py:Model}
        inputs: x.safetensors
        v_params: {random: normal, seed: 0}
        check: finite-differences
        method: forward
        output: out.safetensors
        """,
    )
    assert "differs from central differences" in error_of(config, 1)


def test_kwargs_and_keyword_only_parameters_bind_by_name(workspace: Path) -> None:
    generator = torch.Generator().manual_seed(7)
    x, w, bias = (torch.randn(3, generator=generator) for _ in range(3))
    save_file({"x": x, "w": w, "bias": bias}, workspace / "inputs.safetensors")
    save_file({"w": torch.ones(3)}, workspace / "v.safetensors")
    config = write_config(
        workspace,
        """
        function: models.py:with_kwargs
        inputs: inputs.safetensors
        v: v.safetensors
        output: out.safetensors
        """,
    )
    run = compute_json(config)
    assert run["roles"] == {"x": "constant", "w": "differentiated", "bias": "constant"}
    written = load_file(workspace / "out.safetensors")
    torch.testing.assert_close(written["jvp"], x * 3)

    ids = torch.tensor([2, 0, 0])
    save_file({"x": x, "ids": ids, "gain": w}, workspace / "mixed.safetensors")
    save_file({"x": torch.ones(3), "gain": torch.ones(3)}, workspace / "mixed_v.safetensors")
    mixed = write_config(
        workspace,
        """
        function: models.py:mixed
        inputs: mixed.safetensors
        v: mixed_v.safetensors
        output: mixed_out.safetensors
        """,
        "mixed.yaml",
    )
    compute_json(mixed)
    _, expected = torch.autograd.functional.jvp(
        lambda a, g: a[ids] * g, (x, w), (torch.ones(3), torch.ones(3))
    )
    torch.testing.assert_close(load_file(workspace / "mixed_out.safetensors")["jvp"], expected)


def test_batched_directions_in_weight_space_match_one_call_per_direction(workspace: Path) -> None:
    x, mask, _ = nested_inputs(workspace)
    models = import_file(workspace / "models.py")
    torch.manual_seed(0)
    model = models.Nested().eval()
    generator = torch.Generator().manual_seed(8)
    weight_t = torch.randn(3, 4, 4, generator=generator)
    x_t = torch.randn(3, 3, 4, generator=generator)
    save_file({"lin.weight": weight_t}, workspace / "v_params.safetensors")
    save_file({"x": x_t}, workspace / "v.safetensors")
    config = write_config(
        workspace,
        NESTED
        + "v_params: v_params.safetensors\nbatched_v: true\noutputs: [layers.0, pair.total]\n",
    )
    run = compute_json(config)
    assert run["outputs"][1]["jvp_shape"] == [3, 3, 4]
    written = load_file(workspace / "out.safetensors")
    for k in range(3):

        def layer(w: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = functional_call(model, {"lin.weight": w}, (a, mask))["layers"][0]
            return y.sum(), y

        _, (total, layer0) = torch.autograd.functional.jvp(
            layer, (model.lin.weight.detach(), x), (weight_t[k], x_t[k])
        )
        torch.testing.assert_close(written["jvp.layers.0"][k], layer0)
        torch.testing.assert_close(written["jvp.pair.total"][k], total)


def test_create_graph_and_strict_along_weights(workspace: Path) -> None:
    nested_inputs(workspace)
    base = NESTED + "v_params: {random: normal, seed: 2}\noutputs: [layers.0]\n"
    plain = compute_json(write_config(workspace, base))
    strict = compute_json(write_config(workspace, base + "strict: true\n", "strict.yaml"))
    graph = compute_json(write_config(workspace, base + "create_graph: true\n", "graph.yaml"))
    assert graph["method_used"] == "double-backward"
    assert strict["method_used"] == plain["method_used"] == "forward"
    (out,) = graph["outputs"]
    assert out["jvp"]["norm"] == pytest.approx(plain["outputs"][0]["jvp"]["norm"], rel=1e-5)
    # An output that ignores the differentiated input fails strict mode; an integer output
    # (argmax) does not: it cannot depend differentiably on anything.
    (workspace / "ignores.py").write_text(
        "def f(x, y):\n    return {'scaled': y * 2, 'index': y.argmax()}\n"
    )
    save_file({"x": torch.randn(3), "y": torch.randn(3)}, workspace / "xy.safetensors")
    ignored = (
        "function: ignores.py:f\ninputs: xy.safetensors\nv: {random: normal, seed: 0}\n"
        "output: out.safetensors\nstrict: true\n"
    )
    message = error_of(write_config(workspace, ignored, "z.yaml"), 1)
    assert "independent of input 0" in message
    fine = ignored.replace("seed: 0}", "seed: 0, match: [y]}")
    assert compute_json(write_config(workspace, fine, "y.yaml"))["status"] == "ok"


def random_draw(config: Path, output: Path) -> dict[str, torch.Tensor]:
    # In a fresh process, as a user (or another machine) would run it.
    done = subprocess.run(
        [sys.executable, "-m", "jvpcli", "compute", str(config), "-q", "-o", str(output)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return load_file(output)


def test_random_directions_reproduce_across_processes_and_differ_by_seed(
    workspace: Path,
) -> None:
    nested_inputs(workspace)
    spec = "v: {random: normal, seed: SEED, match: [x]}\nv_params: {random: rademacher, seed: SEED}"
    text = NESTED.replace("v: v.safetensors", spec) + "save_v: true\noutputs: [layers.0]\n"
    seeded = write_config(workspace, text.replace("SEED", "11"), "a.yaml")
    other = write_config(workspace, text.replace("SEED", "12"), "b.yaml")
    first = random_draw(seeded, workspace / "first.safetensors")
    second = random_draw(seeded, workspace / "second.safetensors")
    third = random_draw(other, workspace / "third.safetensors")
    assert set(first) == {
        "func_output.layers.0", "jvp.layers.0", "v.x", "v_params.lin.weight", "v_params.lin.bias"
    }  # fmt: skip
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert not torch.equal(first["v.x"], third["v.x"])
    assert not torch.equal(first["jvp.layers.0"], third["jvp.layers.0"])


def test_a_sweep_over_v_params_files(workspace: Path) -> None:
    _, mask, _ = nested_inputs(workspace)
    for index in range(2):
        torch.manual_seed(20 + index)
        save_file({"lin.bias": torch.randn(4)}, workspace / f"bias{index}.safetensors")
    config = write_config(
        workspace,
        NESTED.replace("v: v.safetensors\n", "").replace(
            "out.safetensors", "'results/{name}.safetensors'"
        )
        + "outputs: [layers.0]\nsweep:\n  v_params: [bias0.safetensors, bias1.safetensors]\n",
    )
    result = invoke("compute", config, "--json")
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)["runs"]
    assert [run["name"] for run in runs] == ["bias0", "bias1"]
    for index in range(2):
        bias_t = load_file(workspace / f"bias{index}.safetensors")["lin.bias"]
        jvp = load_file(workspace / "results" / f"bias{index}.safetensors")["jvp.layers.0"]
        torch.testing.assert_close(jvp, (bias_t * mask).expand(3, 4))


def test_resume_recomputes_when_a_pretrained_weights_file_changes(
    tmp_path: Path, gpt2_folder: Path
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for file in gpt2_folder.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    gpt2_batch(tmp_path)
    config = write_config(
        tmp_path,
        """
        function: {pretrained: model, class: transformers:AutoModelForCausalLM}
        inputs: batch.safetensors
        v: v.safetensors
        outputs: [logits]
        output: out.safetensors
        """,
    )
    first = compute_json(config, "--resume")
    again = compute_json(config, "--resume")
    assert (first["status"], again["status"]) == ("ok", "skipped")
    weights = load_file(folder / "model.safetensors")
    name = next(n for n in weights if n.endswith("ln_f.weight"))
    weights[name] = weights[name] * 2
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    changed = compute_json(config, "--resume")
    assert changed["status"] == "ok"
    assert changed["outputs"][0]["jvp"]["norm"] != first["outputs"][0]["jvp"]["norm"]


def test_validate_binds_a_pretrained_forward_without_computing(
    tmp_path: Path, gpt2_folder: Path
) -> None:
    gpt2_batch(tmp_path)
    config = write_config(
        tmp_path,
        f"""
        function: {{pretrained: {gpt2_folder}, class: transformers:AutoModelForCausalLM}}
        inputs: batch.safetensors
        v: v.safetensors
        output: out.safetensors
        """,
    )
    result = invoke("validate", config, "--json")
    assert result.exit_code == 0, result.output
    (run,) = json.loads(result.stdout)["runs"]
    roles = {entry["name"]: (entry["role"], entry["position"]) for entry in run["inputs"]}
    assert roles == {
        "attention_mask": ("constant", None),
        "inputs_embeds": ("differentiated", None),
    }
    assert not (tmp_path / "out.safetensors").exists()
    # forward takes **kwargs, and a misspelled input would vanish into them: refused.
    text = config.read_text().replace("batch", "typo").replace("v.safetensors", "typo.safetensors")
    typo = write_config(tmp_path, text, "typo.yaml")
    save_file({"inputs_embed": torch.zeros(1, 2, 16)}, tmp_path / "typo.safetensors")
    result = invoke("validate", typo)
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "'inputs_embed', which GPT2LMHeadModel" in message
    assert "misspelling of its parameter 'inputs_embeds'" in message


ERRORS = [
    ("v-names-an-unknown-input", "v: vx.safetensors", ["holds 'xx'", "Did you mean 'x' for 'xx'?"]),
    ("tangent-for-integer-input", "v: vids.safetensors",
     ["tensor 'ids' is int64", "leave 'ids' out of v"]),
    ("unknown-parameter", "v_params: vp_typo.safetensors",
     ["holds 'lin.wieght', which is not a floating-point parameter", "Did you mean 'lin.weight'?"]),
    ("parameter-shape", "v_params: vp_shape.safetensors",
     ["tensor 'lin.weight' has shape (4,)", "needs (4, 4)"]),
    ("parameter-dtype", "v_params: vp_dtype.safetensors",
     ["'lin.bias' is float64, but the parameter 'lin.bias' is float32"]),
    ("random-matches-nothing", "v_params: {random: normal, seed: 0, match: ['*.wieght']}",
     ["v_params.match", "'*.wieght' selects nothing", "'lin.weight'"]),
    ("random-k-without-batched", "v: {random: normal, seed: 0, k: 4}",
     ["'v.k' draws K directions, which needs batched_v: true"]),
    ("random-unknown-distribution", "v: {random: uniform, seed: 0}",
     ["'v.random' must be one of normal, rademacher"]),
    ("random-without-seed", "v: {random: normal}", ["need seed"]),
    ("random-unknown-key", "v: {random: normal, seed: 0, count: 3}",
     ["unknown key 'v.count'"]),
    ("nothing-differentiated", "v: vempty.safetensors", ["holds no tensors"]),
]  # fmt: skip


@pytest.mark.parametrize(("line", "fragments"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_direction_errors_exit_2_naming_the_tensor(
    workspace: Path, line: str, fragments: list[str]
) -> None:
    save_file(
        {"x": torch.randn(3, 4), "ids": torch.tensor([0, 2, 1])}, workspace / "in.safetensors"
    )
    save_file({"xx": torch.randn(3, 4)}, workspace / "vx.safetensors")
    save_file({"ids": torch.tensor([0, 2, 1])}, workspace / "vids.safetensors")
    save_file({"lin.wieght": torch.randn(4, 4)}, workspace / "vp_typo.safetensors")
    save_file({"lin.weight": torch.randn(4)}, workspace / "vp_shape.safetensors")
    save_file({"lin.bias": torch.randn(4).double()}, workspace / "vp_dtype.safetensors")
    save_file({}, workspace / "vempty.safetensors")
    (workspace / "plain.py").write_text(
        "import torch\nlin = torch.nn.Linear(4, 4)\n\ndef f(x, ids):\n    return lin(x)[ids]\n"
        "\nclass Model(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.lin = torch.nn.Linear(4, 4)\n\n    def forward(self, x, ids):\n"
        "        return self.lin(x)[ids]\n"
    )
    config = write_config(
        workspace,
        f"function: {{target: plain.py:Model}}\ninputs: in.safetensors\n{line}\n"
        "output: out.safetensors\n",
    )
    message = error_of(config)
    for fragment in fragments:
        assert fragment in message
    assert not (workspace / "out.safetensors").exists()


def test_v_params_needs_a_model(workspace: Path) -> None:
    (workspace / "plain.py").write_text("def f(x):\n    return x * 2\n")
    save_file({"x": torch.randn(3)}, workspace / "in.safetensors")
    config = write_config(
        workspace,
        "function: plain.py:f\ninputs: in.safetensors\nv_params: {random: normal, seed: 0}\n"
        "output: out.safetensors\n",
    )
    assert "f is a function, not an nn.Module" in error_of(config)


@pytest.mark.parametrize(
    ("function", "fragments"),
    [
        ("{pretrained: missing}", ["missing", "does not exist"]),
        ("{pretrained: pickled}", ["pytorch_model.bin", "never unpickles"]),
        ("{pretrained: HF, class: transformers:NoSuchModel}", ["NoSuchModel"]),
        ("{pretrained: HF, target: models.py:Nested}", ["cannot be combined with target"]),
        ("{target: models.py:Nested, class: transformers:AutoModel}",
         ["'function.class'", "needs function.pretrained"]),
    ],
)  # fmt: skip
def test_pretrained_errors_exit_2(
    workspace: Path, gpt2_folder: Path, function: str, fragments: list[str]
) -> None:
    pickled = workspace / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((gpt2_folder / "config.json").read_text())
    torch.save({"w": torch.zeros(1)}, pickled / "pytorch_model.bin")
    gpt2_batch(workspace)
    config = write_config(
        workspace,
        f"function: {function.replace('HF', str(gpt2_folder))}\ninputs: batch.safetensors\n"
        "v: v.safetensors\noutput: out.safetensors\n",
    )
    message = error_of(config)
    for fragment in fragments:
        assert fragment in message


def test_the_shipped_samples_run_as_the_readme_says(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    for name in ("gpt2", "weight_direction"):
        data = yaml.safe_load((root / "configs" / f"{name}.yaml").read_text())
        result = invoke(
            "compute", root / "configs" / f"{name}.yaml", "-o", tmp_path / f"{name}.safetensors"
        )
        assert result.exit_code == 0, result.output
        written = load_file(tmp_path / f"{name}.safetensors")
        expected = {"jvp.logits"} if data.get("outputs") == ["logits"] else {"jvp"}
        assert expected <= set(written)
        assert all(torch.isfinite(t).all() for t in written.values())


@pytest.mark.parametrize("form", ["target", "exported", "instance"])
def test_v_params_works_for_every_model_form(tmp_path: Path, form: str) -> None:
    root = Path(__file__).resolve().parent.parent
    data = root / "samples" / "data"
    functions = {
        "target": f"{{target: {root}/samples/models.py:TinyMLP, init: {{width: 32, depth: 2}}, "
        f"weights: {data}/tiny_mlp_weights.safetensors}}",
        "exported": f"{{exported: {data}/tiny_mlp.pt2}}",
        "instance": "instance.py:model",
    }
    (tmp_path / "instance.py").write_text(
        textwrap.dedent(
            f"""
            import sys
            from safetensors.torch import load_file
            sys.path.insert(0, {str(root / "samples")!r})
            from models import TinyMLP
            model = TinyMLP(width=32, depth=2)
            model.load_state_dict(load_file({str(data / "tiny_mlp_weights.safetensors")!r}))
            """
        )
    )
    config = write_config(
        tmp_path,
        f"""
        function: {functions[form]}
        inputs: {data}/tiny_mlp_inputs.safetensors
        v_params: {{random: normal, seed: 5, match: ["net.2.*"]}}
        save_v: true
        output: out.safetensors
        """,
    )
    run = compute_json(config)
    assert run["params"] == ["net.2.weight", "net.2.bias"]
    written = load_file(tmp_path / "out.safetensors")

    models = import_file(root / "samples" / "models.py")
    model = models.TinyMLP(width=32, depth=2)
    model.load_state_dict(load_file(data / "tiny_mlp_weights.safetensors"))
    model.eval()
    x = load_file(data / "tiny_mlp_inputs.safetensors")["x"]
    names = run["params"]
    params = dict(model.named_parameters())
    _, expected = torch.autograd.functional.jvp(
        lambda *w: functional_call(model, dict(zip(names, w, strict=True)), (x,)),
        tuple(params[n].detach() for n in names),
        tuple(written[f"v_params.{n}"] for n in names),
    )
    torch.testing.assert_close(written["jvp"], expected)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("outputs: []", "'outputs' is empty"),
        ("outputs: logits", "'outputs' must be a list"),
        ("outputs: [logits, logits]", "names logits more than once"),
        ("save_v: 3", "'save_v' must be true or false"),
        ("v_params: {random: normal, seed: -1}", "'v_params.seed' must be a whole number"),
        ("v_params: {random: normal, seed: 0, k: 0}", "'v_params.k' must be a whole number"),
    ],
)
def test_the_new_keys_refuse_their_worst_values(workspace: Path, line: str, fragment: str) -> None:
    nested_inputs(workspace)
    assert fragment in error_of(write_config(workspace, NESTED + line + "\n"))

"""Pretrained folders: loaded offline, from safetensors, without remote code, through any class."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import jvpcli
from jvpcli.errors import FunctionLoadError
from jvpcli.pretrained import PretrainedModel, load_pretrained

transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
)

EMBEDDINGS = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
IDS = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(1)
    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return GPT2LMHeadModel(config).eval()


def tiny_bert() -> BertModel:
    torch.manual_seed(2)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        vocab_size=64, max_position_embeddings=16,
    )  # fmt: skip
    return BertModel(config).eval()


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> tuple[GPT2LMHeadModel, Path]:
    model = tiny_gpt2()
    folder = tmp_path_factory.mktemp("models") / "tiny-gpt2"
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> tuple[BertModel, Path]:
    model = tiny_bert()
    folder = tmp_path_factory.mktemp("models") / "tiny-bert"
    model.save_pretrained(folder)
    return model, folder


def copy_folder(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def logits(model: torch.nn.Module) -> torch.Tensor:
    return model(inputs_embeds=EMBEDDINGS, attention_mask=MASK).logits


# Loading through each kind of class


def test_auto_model_loads_the_base_model_with_the_saved_weights(gpt2):
    original, folder = gpt2
    loaded = load_pretrained(folder)
    assert type(loaded.model).__name__ == "GPT2Model"
    expected = original.transformer(inputs_embeds=EMBEDDINGS, attention_mask=MASK)
    got = loaded.model(inputs_embeds=EMBEDDINGS, attention_mask=MASK)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state)
    assert loaded.warnings == ()


def test_auto_model_for_causal_lm_gives_the_original_logits(gpt2):
    original, folder = gpt2
    loaded = load_pretrained(folder, "transformers:AutoModelForCausalLM")
    assert isinstance(loaded.model, GPT2LMHeadModel)
    torch.testing.assert_close(logits(loaded.model), logits(original))
    assert loaded.name == f"GPT2LMHeadModel from {folder}"


def test_an_explicit_model_class_loads_its_own_model_type(gpt2, bert):
    original, folder = gpt2
    loaded = load_pretrained(folder, "transformers:GPT2LMHeadModel")
    torch.testing.assert_close(logits(loaded.model), logits(original))
    original_bert, bert_folder = bert
    loaded_bert = load_pretrained(bert_folder, "transformers.models.bert:BertModel")
    torch.testing.assert_close(
        loaded_bert.model(input_ids=IDS, attention_mask=MASK).last_hidden_state,
        original_bert(input_ids=IDS, attention_mask=MASK).last_hidden_state,
    )


def test_auto_model_loads_a_bert_folder(bert):
    original, folder = bert
    loaded = load_pretrained(folder)
    assert isinstance(loaded.model, BertModel)
    torch.testing.assert_close(
        loaded.model(input_ids=IDS).pooler_output, original(input_ids=IDS).pooler_output
    )


WRAPPER = """
from transformers import GPT2LMHeadModel


class LogitsOnly(GPT2LMHeadModel):
    def forward(self, inputs_embeds, attention_mask):
        return super().forward(inputs_embeds=inputs_embeds, attention_mask=attention_mask).logits
"""


def test_a_subclass_in_a_file_loads_relative_to_the_search_dir(gpt2, tmp_path):
    original, folder = gpt2
    (tmp_path / "wrapper.py").write_text(WRAPPER)
    loaded = load_pretrained(folder, "wrapper.py:LogitsOnly", search_dir=tmp_path)
    assert type(loaded.model).__name__ == "LogitsOnly"
    torch.testing.assert_close(loaded.model(EMBEDDINGS, MASK), logits(original))
    assert loaded.source_files == (tmp_path / "wrapper.py",)
    assert loaded.files["function.class"] == tmp_path / "wrapper.py"


def test_the_model_is_in_eval_mode_with_every_parameter_frozen(gpt2):
    _, folder = gpt2
    model = load_pretrained(folder, "transformers:AutoModelForCausalLM").model
    assert not model.training
    assert all(not module.training for module in model.modules())
    parameters = list(model.parameters())
    assert parameters
    assert all(not p.requires_grad for p in parameters)


def test_init_reaches_from_pretrained(gpt2):
    _, folder = gpt2
    loaded = load_pretrained(
        folder,
        "transformers:AutoModelForCausalLM",
        {"attn_implementation": "sdpa", "dtype": "float64"},
    )
    assert loaded.model.config._attn_implementation == "sdpa"
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float64}
    in_float64 = tiny_gpt2().double()
    torch.testing.assert_close(
        loaded.model(inputs_embeds=EMBEDDINGS.double(), attention_mask=MASK).logits,
        in_float64(inputs_embeds=EMBEDDINGS.double(), attention_mask=MASK).logits,
    )


def test_files_name_the_config_and_the_weights(gpt2):
    _, folder = gpt2
    loaded = load_pretrained(folder)
    assert loaded.files == {
        "function.pretrained/config.json": folder / "config.json",
        "function.pretrained/model.safetensors": folder / "model.safetensors",
    }
    assert loaded.source_files == ()
    assert isinstance(loaded, PretrainedModel)


def test_files_of_a_sharded_folder_list_the_index_and_every_shard(tmp_path):
    original = tiny_gpt2()
    folder = tmp_path / "sharded"
    original.save_pretrained(folder, max_shard_size="40KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    loaded = load_pretrained(folder, "transformers:AutoModelForCausalLM")
    expected = {f"function.pretrained/{name}": folder / name for name in shards}
    expected["function.pretrained/model.safetensors.index.json"] = (
        folder / "model.safetensors.index.json"
    )
    expected["function.pretrained/config.json"] = folder / "config.json"
    assert loaded.files == expected
    torch.testing.assert_close(logits(loaded.model), logits(original))


def test_weights_the_folder_lacks_or_does_not_use_become_warnings(bert, capfd):
    _, folder = bert
    loaded = load_pretrained(folder, "transformers:AutoModelForSequenceClassification")
    assert len(loaded.warnings) == 1
    assert (
        "2 weight(s) of BertForSequenceClassification are not in the folder" in (loaded.warnings[0])
    )
    assert "'classifier.bias', 'classifier.weight'" in loaded.warnings[0]
    pretraining = load_pretrained(folder, "transformers:BertForMaskedLM")
    assert any("not in the folder" in w for w in pretraining.warnings)
    assert any(
        "not used by BertForMaskedLM: 'pooler.dense.bias'" in w for w in pretraining.warnings
    )
    captured = capfd.readouterr()
    assert "LOAD REPORT" not in captured.err
    assert "Loading weights" not in captured.err


def test_loading_writes_nothing_to_the_terminal_and_restores_transformers_logging(gpt2, capfd):
    _, folder = gpt2
    logging = transformers.utils.logging
    logging.set_verbosity_info()
    try:
        load_pretrained(folder, "transformers:AutoModelForCausalLM")
        assert logging.get_verbosity() == logging.INFO
        assert logging.is_progress_bar_enabled()
    finally:
        logging.set_verbosity_warning()
    captured = capfd.readouterr()
    assert captured.out == ""
    assert captured.err == ""


# Offline and safe


def test_loading_never_opens_a_network_connection(gpt2, monkeypatch):
    _, folder = gpt2
    attempts = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError(f"test: network access to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    loaded = load_pretrained(folder, "transformers:AutoModelForCausalLM")
    assert attempts == []
    assert isinstance(loaded.model, GPT2LMHeadModel)


def test_offline_mode_holds_only_during_the_call(gpt2, monkeypatch):
    import huggingface_hub.constants

    _, folder = gpt2
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    seen = {}
    original_from_pretrained = GPT2LMHeadModel.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen["environment"] = (os.environ.get("HF_HUB_OFFLINE"), os.environ["TRANSFORMERS_OFFLINE"])
        seen["hub"] = huggingface_hub.constants.is_offline_mode()
        seen["kwargs"] = kwargs
        return original_from_pretrained(cls, *args, **kwargs)

    monkeypatch.setattr(GPT2LMHeadModel, "from_pretrained", classmethod(spy))
    load_pretrained(folder, "transformers:GPT2LMHeadModel")
    assert seen["environment"] == ("1", "1")
    assert seen["hub"] is True
    assert seen["kwargs"]["local_files_only"] is True
    assert seen["kwargs"]["use_safetensors"] is True
    assert seen["kwargs"]["trust_remote_code"] is False
    assert "HF_HUB_OFFLINE" not in os.environ
    assert os.environ["TRANSFORMERS_OFFLINE"] == "0"
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False


def test_a_folder_with_only_pickled_weights_is_refused(gpt2, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_bytes((gpt2[1] / "config.json").read_bytes())
    torch.save(tiny_gpt2().state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(FunctionLoadError) as error:
        load_pretrained(folder)
    message = str(error.value)
    assert "pytorch_model.bin" in message
    assert "never unpickles" in message
    assert "save_pretrained(folder, safe_serialization=True)" in message


def test_remote_code_in_auto_map_is_refused(gpt2, tmp_path):
    folder = copy_folder(gpt2[1], tmp_path / "remote")
    config = {
        "model_type": "my-model",
        "auto_map": {"AutoConfig": "my_code.MyConfig", "AutoModel": "my_code.MyModel"},
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "my_code.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(FunctionLoadError, match="never runs remote code") as error:
        load_pretrained(folder)
    assert "'my-model'" in str(error.value)


def test_an_auto_class_that_only_remote_code_provides_is_refused(bert, tmp_path):
    folder = copy_folder(bert[1], tmp_path / "remote")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageClassification": "my_code.MyClassifier"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "my_code.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(FunctionLoadError, match="never runs remote code"):
        load_pretrained(folder, "transformers:AutoModelForImageClassification")


def test_an_auto_map_beside_a_known_model_type_loads_the_library_class(gpt2, tmp_path):
    folder = copy_folder(gpt2[1], tmp_path / "known")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "my_code.Mine"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "my_code.py").write_text("raise SystemExit('remote code ran')\n")
    loaded = load_pretrained(folder, "transformers:AutoModelForCausalLM")
    assert type(loaded.model) is GPT2LMHeadModel


@pytest.mark.parametrize(
    "key",
    ["trust_remote_code", "local_files_only", "use_safetensors", "cache_dir", "token", "revision"],
)
def test_init_cannot_relax_the_guarantees(gpt2, key):
    with pytest.raises(FunctionLoadError, match=f"function.init cannot set {key!r}"):
        load_pretrained(gpt2[1], init={key: True})


# Errors, one paragraph each


def test_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(FunctionLoadError, match=r"folder .*nowhere does not exist"):
        load_pretrained(tmp_path / "nowhere")


def test_a_file_is_not_a_folder(gpt2):
    with pytest.raises(FunctionLoadError, match=r"must be a folder .* is a file"):
        load_pretrained(gpt2[1] / "model.safetensors")


def test_a_folder_without_config_json_is_refused(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FunctionLoadError, match=r"has no config.json"):
        load_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [("{not json", "cannot read .* as JSON"), ("[1, 2]", "holds a JSON list")],
)
def test_an_invalid_config_json_is_refused(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(FunctionLoadError, match=message):
        load_pretrained(tmp_path)


def test_a_folder_without_weights_is_refused(gpt2, tmp_path):
    (tmp_path / "config.json").write_bytes((gpt2[1] / "config.json").read_bytes())
    with pytest.raises(FunctionLoadError, match=r"no weights: no \*.safetensors file"):
        load_pretrained(tmp_path)


def test_a_misspelled_class_gets_a_suggestion(gpt2):
    with pytest.raises(FunctionLoadError) as error:
        load_pretrained(gpt2[1], "transformers:AutoModelForCausalLm")
    assert str(error.value) == (
        "transformers has no 'AutoModelForCausalLm'. Did you mean 'AutoModelForCausalLM'?"
    )


@pytest.mark.parametrize(
    ("class_ref", "kind"),
    [("torch.nn:Linear", "a class"), ("transformers:set_seed", "function")],
)
def test_a_class_ref_without_from_pretrained_is_refused(gpt2, class_ref, kind):
    with pytest.raises(FunctionLoadError, match=f"is {kind} without a from_pretrained"):
        load_pretrained(gpt2[1], class_ref)


def test_a_malformed_class_ref_is_refused(gpt2):
    with pytest.raises(FunctionLoadError, match=r"must look like package.module:Name"):
        load_pretrained(gpt2[1], "AutoModel")


def test_a_missing_class_file_is_refused(gpt2, tmp_path):
    with pytest.raises(FunctionLoadError, match=r"nope.py does not exist"):
        load_pretrained(gpt2[1], "nope.py:Model", search_dir=tmp_path)


def test_a_model_class_of_another_type_is_refused(bert):
    with pytest.raises(FunctionLoadError) as error:
        load_pretrained(bert[1], "transformers:GPT2LMHeadModel")
    assert "GPT2LMHeadModel is a model of type 'gpt2'" in str(error.value)
    assert "holds a model of type 'bert'" in str(error.value)


def test_a_class_that_rejects_the_folder_shows_the_first_line_of_its_error(gpt2):
    with pytest.raises(FunctionLoadError) as error:
        load_pretrained(gpt2[1], "transformers:AutoModelForImageClassification")
    message = str(error.value)
    assert message.startswith("AutoModelForImageClassification.from_pretrained(")
    assert "ValueError: Unrecognized configuration class" in message
    assert "\n" not in message


FAILING = """
from transformers import GPT2LMHeadModel


class Broken(GPT2LMHeadModel):
    def __init__(self, config):
        super().__init__(config)
        raise RuntimeError("no good")
"""


def test_a_failure_in_the_users_class_points_at_their_file(gpt2, tmp_path):
    (tmp_path / "broken.py").write_text(FAILING)
    with pytest.raises(FunctionLoadError) as error:
        load_pretrained(gpt2[1], "broken.py:Broken", search_dir=tmp_path)
    assert "RuntimeError: no good" in error.value.message
    assert error.value.location is not None
    assert error.value.location.path == tmp_path / "broken.py"
    assert error.value.exit_code == 2


def test_missing_transformers_says_how_to_install_it(gpt2, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(FunctionLoadError, match=r"pip install 'jvpcli\[hf\]'"):
        load_pretrained(gpt2[1])


def test_the_module_imports_without_importing_transformers():
    root = str(Path(jvpcli.__file__).resolve().parents[1])
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import jvpcli.pretrained\n"
        "print(sorted(m for m in sys.modules if m.startswith(('transformers.', 'huggingface'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert done.stdout.strip() == "[]"

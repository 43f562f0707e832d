"""The shipped tiny GPT-2 sample: small, loadable, and what transformers itself loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import jvpcli
from jvpcli.pretrained import load_pretrained

transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "samples" / "models" / "tiny-gpt2"
BATCH = REPO / "samples" / "data" / "gpt2_batch.safetensors"
DIRECTION = REPO / "samples" / "data" / "gpt2_v.safetensors"


def test_the_tiny_gpt2_folder_is_minimal_and_small():
    assert sorted(p.name for p in FOLDER.iterdir()) == ["config.json", "model.safetensors"]
    assert sum(p.stat().st_size for p in FOLDER.iterdir()) < 1_000_000


def test_the_tiny_gpt2_gives_the_logits_transformers_gives_on_the_shipped_batch():
    batch = load_file(BATCH)
    loaded = load_pretrained(
        FOLDER, "transformers:AutoModelForCausalLM", {"attn_implementation": "sdpa"}
    )
    reference = transformers.GPT2LMHeadModel.from_pretrained(FOLDER, local_files_only=True).eval()
    got = loaded.model(**batch).logits
    expected = reference(**batch).logits
    assert got.shape == (2, 8, 128)
    torch.testing.assert_close(got, expected)
    assert loaded.warnings == ()


def test_the_shipped_batch_pads_the_second_sequence_and_v_leaves_the_mask_constant():
    batch = load_file(BATCH)
    assert batch["inputs_embeds"].dtype == torch.float32
    assert batch["inputs_embeds"].shape == (2, 8, 32)
    assert batch["attention_mask"].dtype == torch.int64
    assert batch["attention_mask"].tolist() == [[1] * 8, [1] * 5 + [0] * 3]
    direction = load_file(DIRECTION)
    assert list(direction) == ["inputs_embeds"]
    assert direction["inputs_embeds"].shape == (2, 8, 32)


def test_the_gpt2_config_points_at_the_shipped_files():
    config = yaml.safe_load((REPO / "configs" / "gpt2.yaml").read_text())
    base = REPO / "configs"
    assert (base / config["function"]["pretrained"]).resolve() == FOLDER
    assert (base / config["inputs"]).resolve() == BATCH
    assert (base / config["v"]).resolve() == DIRECTION


def test_jvpcli_differentiates_the_sample_along_inputs_embeds_as_finite_differences_do():
    batch = load_file(BATCH)
    direction = load_file(DIRECTION)["inputs_embeds"].double()
    init = {"attn_implementation": "sdpa", "dtype": "float64"}
    model = load_pretrained(FOLDER, "transformers:AutoModelForCausalLM", init).model

    def logits(embeds: torch.Tensor) -> torch.Tensor:
        return model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits

    embeds = batch["inputs_embeds"].double()
    _, tangent = jvpcli.jvp(logits, embeds, direction)
    step = 1e-6
    central = (logits(embeds + step * direction) - logits(embeds - step * direction)) / (2 * step)
    torch.testing.assert_close(tangent, central, rtol=1e-6, atol=1e-6)

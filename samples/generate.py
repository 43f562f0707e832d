"""Regenerate the sample data in samples/data: inputs, tangents, weights and the exported archive;
and the tiny GPT-2 folder in samples/models (it needs transformers: ``pip install 'jvpcli[hf]'``).

Run ``python samples/generate.py`` from anywhere; every value comes from a fixed seed, so the
tensors are the same each time.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
MODELS = HERE / "models"
sys.path.insert(0, str(HERE))

from models import SmallCNN, TinyMLP, transformer_encoder_layer  # noqa: E402


def normal(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def uniform(seed: int, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def save(name: str, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: t.contiguous() for k, t in tensors.items()}, DATA / f"{name}.safetensors")


def weights(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters") and module is not model:
            module.reset_parameters()
    return {k: t.detach().clone() for k, t in model.state_dict().items()}


def main() -> None:
    DATA.mkdir(exist_ok=True)
    # The examples of torch.autograd.functional.jvp's documentation.
    save("exp_reducer_inputs", {"x": uniform(0, 4, 4)})
    save("exp_reducer_v", {"x": torch.ones(4, 4)})
    # Eight directions at once, for batched_v: true (configs/sweep.yaml).
    save("exp_reducer_v_batched", {"x": normal(14, 8, 4, 4)})
    save("adder_inputs", {"x": uniform(1, 2), "y": uniform(2, 2)})
    save("adder_v", {"x": torch.ones(2), "y": torch.ones(2)})

    mlp = TinyMLP(width=32, depth=2)
    save("tiny_mlp_weights", weights(mlp, 3))
    save("tiny_mlp_inputs", {"x": normal(4, 3, 4)})
    save("tiny_mlp_v", {"x": normal(5, 3, 4)})
    mlp.eval().requires_grad_(False)
    program = torch.export.export(mlp, (normal(4, 3, 4),))
    torch.export.save(program, DATA / "tiny_mlp.pt2")

    cnn = SmallCNN(channels=4, classes=3)
    save("small_cnn_weights", weights(cnn, 6))
    save("small_cnn_inputs", {"image": normal(7, 2, 1, 8, 8)})
    save("small_cnn_v", {"image": normal(8, 2, 1, 8, 8)})

    layer = transformer_encoder_layer(d_model=16, nhead=2, dim_feedforward=32)
    save("transformer_layer_weights", weights(layer, 9))
    save("transformer_layer_inputs", {"src": normal(10, 2, 5, 16)})
    save("transformer_layer_v", {"src": normal(11, 2, 5, 16)})

    save("custom_function_inputs", {"x": normal(12, 3, 6)})
    save("custom_function_v", {"x": normal(13, 3, 6)})

    tiny_gpt2(MODELS / "tiny-gpt2", seed=15)
    # Two sequences of 8 embeddings; the second is padded (its last 3 positions masked out).
    mask = torch.ones(2, 8, dtype=torch.int64)
    mask[1, 5:] = 0
    save("gpt2_batch", {"inputs_embeds": normal(16, 2, 8, 32), "attention_mask": mask})
    # A direction for the embeddings only: the mask is a constant.
    save("gpt2_v", {"inputs_embeds": normal(17, 2, 8, 32)})


def tiny_gpt2(folder: Path, seed: int) -> None:
    """Write a randomly initialised two-layer GPT-2 (about 130 KB) as a save_pretrained folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        vocab_size=128,
        n_positions=64,
        # Token ids inside the tiny vocabulary (GPT-2's own, 50256, is not): transformers warns
        # about ids outside it on every load.
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder, safe_serialization=True)
    # Generation settings: a forward pass never reads them.
    (folder / "generation_config.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()

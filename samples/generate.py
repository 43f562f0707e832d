"""Regenerate the sample data in samples/data: inputs, tangents, weights and the exported archive.

Run ``python samples/generate.py`` from anywhere; every value comes from a fixed seed, so the
tensors are the same each time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
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


if __name__ == "__main__":
    main()

"""Small models for ``function: {target, init, weights}`` configs."""

from torch import Tensor, nn


class TinyMLP(nn.Module):
    """A tanh MLP from ``features`` to ``features``, with ``depth`` hidden layers of ``width``."""

    def __init__(self, width: int = 32, depth: int = 2, features: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = features
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.Tanh()]
            size = width
        layers.append(nn.Linear(size, features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two convolutions and a linear head: (N, 1, 8, 8) images to (N, classes) logits."""

    def __init__(self, channels: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(channels * 4, classes)

    def forward(self, image: Tensor) -> Tensor:
        return self.head(self.features(image).flatten(1))


def transformer_encoder_layer(
    d_model: int = 16, nhead: int = 2, dim_feedforward: int = 32
) -> nn.TransformerEncoderLayer:
    """A batch-first ``nn.TransformerEncoderLayer`` without dropout: (N, S, d_model) to the same."""
    return nn.TransformerEncoderLayer(
        d_model, nhead, dim_feedforward, dropout=0.0, batch_first=True
    )

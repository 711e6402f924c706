"""Conv6 (edge-popup / IteRand small-scale model): 64-64-128-128-256-256 3x3 convs, three FC layers."""

from __future__ import annotations

from torch import Tensor, nn

from metaticket.models.registry import DENSE, Layers, register_model


class Conv6(nn.Module):
    """Three [conv-ReLU, conv-ReLU, 2x2 max-pool] stages, then FC 256-256 and the head. x: [N, C, H, W].

    No normalization layers, as in the edge-popup and IteRand papers' Conv2-Conv8 family.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: float, layers: Layers) -> None:
        super().__init__()

        def w(c: int) -> int:
            return max(1, int(round(c * width)))

        blocks: list[nn.Module] = []
        prev = in_channels
        for c in (64, 128, 256):
            blocks += [layers.conv(prev, w(c), 3, stride=1, padding=1, bias=False), nn.ReLU(),
                       layers.conv(w(c), w(c), 3, stride=1, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2)]
            prev = w(c)
        self.features = nn.Sequential(*blocks, nn.Flatten())
        flat = prev * (image_size // 8) ** 2
        self.classifier = nn.Sequential(layers.linear(flat, w(256), bias=False), nn.ReLU(),
                                        layers.linear(w(256), w(256), bias=False), nn.ReLU())
        self.head = layers.head(w(256), num_classes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.classifier(self.features(x)))


@register_model("conv6")
def conv6(*, num_classes: int, in_channels: int = 3, image_size: int = 32, width: float = 1.0,
          layers: Layers = DENSE) -> nn.Module:
    """Every layer's width times ``width``; needs ``image_size >= 8``."""
    if image_size < 8:
        raise ValueError(f"conv6 needs images of at least 8x8 pixels, got {image_size}")
    return Conv6(in_channels, num_classes, image_size, width, layers)

"""Conv4: four [3x3 conv, BatchNorm, ReLU, 2x2 max-pool] blocks and a linear head (ReLU applied after the pool)."""

from __future__ import annotations

from torch import Tensor, nn

from metaticket.models.registry import DENSE, Layers, register_model


class Conv4(nn.Module):
    """x: [N, C, H, W] -> logits [N, num_classes]."""

    def __init__(self, in_channels: int, num_classes: int, channels: int, image_size: int, layers: Layers) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        prev = in_channels
        size = image_size
        for _ in range(4):
            # pool before ReLU: max(relu(x)) == relu(max(x)) (ReLU is monotonic), so the function and its
            # gradients are the usual conv-BN-ReLU-pool block's, with ReLU (and its backward) on 4x fewer values
            blocks += [layers.conv(prev, channels, 3, stride=1, padding=1, bias=True), layers.norm2d(channels),
                       nn.MaxPool2d(2), nn.ReLU()]
            prev = channels
            size //= 2
        self.features = nn.Sequential(*blocks)
        self.head = layers.head(channels * max(size, 1) ** 2, num_classes, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


@register_model("conv4")
def conv4(*, num_classes: int, in_channels: int = 1, image_size: int = 28, width: float = 1.0, channels: int = 64,
          layers: Layers = DENSE) -> nn.Module:
    """``channels`` filters per block (times ``width``)."""
    return Conv4(in_channels, num_classes, max(1, int(round(channels * width))), image_size, layers)

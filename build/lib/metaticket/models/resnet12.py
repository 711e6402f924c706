"""ResNet-12 for few-shot learning: four residual blocks of three 3x3 convs, each followed by 2x2 max-pool."""

from __future__ import annotations

from torch import Tensor, nn

from metaticket.models.registry import DENSE, FeaturesHead, Layers, register_model


class Block(nn.Module):
    """[conv-BN-ReLU] x 2, conv-BN, plus a 1x1 conv-BN shortcut, ReLU, max-pool. x: [N, C_in, H, W]."""

    def __init__(self, c_in: int, c_out: int, layers: Layers) -> None:
        super().__init__()
        self.conv1 = layers.conv(c_in, c_out, 3, stride=1, padding=1, bias=False)
        self.bn1 = layers.norm2d(c_out)
        self.conv2 = layers.conv(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = layers.norm2d(c_out)
        self.conv3 = layers.conv(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn3 = layers.norm2d(c_out)
        self.shortcut = nn.Sequential(layers.conv(c_in, c_out, 1, stride=1, padding=0, bias=False),
                                      layers.norm2d(c_out))
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2, ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.pool(self.relu(out + self.shortcut(x)))


class ResNet12(FeaturesHead):
    """x: [N, C, H, W] -> logits [N, num_classes]; features are globally average-pooled."""

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...], layers: Layers) -> None:
        super().__init__()
        blocks = []
        prev = in_channels
        for w in widths:
            blocks.append(Block(prev, w, layers))
            prev = w
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = layers.head(prev, num_classes, bias=True)


@register_model("resnet12")
def resnet12(*, num_classes: int, in_channels: int = 3, image_size: int = 84, width: float = 1.0,
             layers: Layers = DENSE) -> nn.Module:
    """Widths 64-128-256-512 times ``width`` (the variant used by BOIL and Meta-ticket)."""
    widths = tuple(max(1, int(round(c * width))) for c in (64, 128, 256, 512))
    return ResNet12(in_channels, num_classes, widths, layers)

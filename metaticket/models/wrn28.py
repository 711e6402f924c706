"""Wide ResNet-28-k (Zagoruyko & Komodakis 2016): pre-activation basic blocks, widths 16, 16k, 32k, 64k."""

from __future__ import annotations

from torch import Tensor, nn

from metaticket.models.registry import DENSE, FeaturesHead, Layers, register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus identity or a 1x1 conv shortcut. x: [N, C_in, H, W]."""

    def __init__(self, c_in: int, c_out: int, stride: int, layers: Layers) -> None:
        super().__init__()
        self.bn1 = layers.norm2d(c_in)
        self.conv1 = layers.conv(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = layers.norm2d(c_out)
        self.conv2 = layers.conv(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = layers.conv(c_in, c_out, 1, stride=stride, padding=0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv2(self.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(FeaturesHead):
    """x: [N, C, H, W] -> logits [N, num_classes]."""

    def __init__(self, in_channels: int, num_classes: int, depth: int, widen: float, layers: Layers) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, int(round(16 * widen)), int(round(32 * widen)), int(round(64 * widen))]
        body: list[nn.Module] = [layers.conv(in_channels, widths[0], 3, stride=1, padding=1, bias=False)]
        prev = widths[0]
        for group, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                body.append(PreActBlock(prev, group, stride if i == 0 else 1, layers))
                prev = group
        body += [layers.norm2d(prev), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*body)
        self.head = layers.head(prev, num_classes, bias=True)


@register_model("wrn28-10")
def wrn28_10(*, num_classes: int, in_channels: int = 3, image_size: int = 84, width: float = 1.0,
             layers: Layers = DENSE) -> nn.Module:
    """WRN-28-10 (the Meta-ticket paper's): widen factor 10 times ``width``, a multiplier as for every model."""
    return WideResNet(in_channels, num_classes, 28, 10.0 * width, layers)


@register_model("wrn28-5")
def wrn28_5(*, num_classes: int, in_channels: int = 3, image_size: int = 84, width: float = 1.0,
            layers: Layers = DENSE) -> nn.Module:
    """WRN-28-5: widen factor 5 times ``width``."""
    return WideResNet(in_channels, num_classes, 28, 5.0 * width, layers)

"""ResNets for supervised pruning: ResNet-18/34 (CIFAR variant), ResNet-50 and wide ResNet-50-2 (ImageNet variant).

CIFAR variant: 3x3 stride-1 stem, no max-pool (32x32 inputs; also used for 64x64 Tiny-ImageNet).
ImageNet variant: 7x7 stride-2 stem and 3x3 max-pool, bottleneck blocks (expansion 4). ``width`` scales every
layer's channels; ``wide_resnet50_2`` doubles the bottleneck's inner width as in Zagoruyko & Komodakis.
"""

from __future__ import annotations

from torch import Tensor, nn

from metaticket.models.registry import DENSE, Layers, register_model


def _scale(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1-conv shortcut. x: [N, C_in, H, W]."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, layers: Layers, inner: int | None = None) -> None:
        super().__init__()
        self.conv1 = layers.conv(c_in, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = layers.norm2d(planes)
        self.conv2 = layers.conv(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = layers.norm2d(planes)
        self.shortcut = _shortcut(c_in, planes, stride, layers)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here, as torchvision v1.5), 1x1 expand to ``4 * planes``. x: [N, C_in, H, W]."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, layers: Layers, inner: int | None = None) -> None:
        super().__init__()
        inner = inner or planes
        out = planes * self.expansion
        self.conv1 = layers.conv(c_in, inner, 1, stride=1, padding=0, bias=False)
        self.bn1 = layers.norm2d(inner)
        self.conv2 = layers.conv(inner, inner, 3, stride=stride, padding=1, bias=False)
        self.bn2 = layers.norm2d(inner)
        self.conv3 = layers.conv(inner, out, 1, stride=1, padding=0, bias=False)
        self.bn3 = layers.norm2d(out)
        self.shortcut = _shortcut(c_in, out, stride, layers)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _shortcut(c_in: int, c_out: int, stride: int, layers: Layers) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(layers.conv(c_in, c_out, 1, stride=stride, padding=0, bias=False), layers.norm2d(c_out))


class ResNet(nn.Module):
    """x: [N, C, H, W] -> logits [N, num_classes]; four stages, global average pool, linear ``head``."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: tuple[int, ...], in_channels: int,
                 num_classes: int, width: float, layers: Layers, imagenet_stem: bool, inner_factor: float = 1.0,
                 ) -> None:
        super().__init__()
        base = _scale(64, width)
        if imagenet_stem:
            stem = [layers.conv(in_channels, base, 7, stride=2, padding=3, bias=False), layers.norm2d(base),
                    nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1)]
        else:
            stem = [layers.conv(in_channels, base, 3, stride=1, padding=1, bias=False), layers.norm2d(base), nn.ReLU()]
        self.stem = nn.Sequential(*stem)
        stages = []
        prev = base
        for i, depth in enumerate(depths):
            planes = _scale(64 * 2 ** i, width)
            inner = _scale(64 * 2 ** i * inner_factor, width)
            blocks = []
            for j in range(depth):
                blocks.append(block(prev, planes, 2 if (j == 0 and i > 0) else 1, layers, inner))
                prev = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = layers.head(prev, num_classes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.stages(self.stem(x))))


@register_model("resnet18")
def resnet18(*, num_classes: int, in_channels: int = 3, image_size: int = 32, width: float = 1.0,
             layers: Layers = DENSE) -> nn.Module:
    """CIFAR-variant ResNet-18 (basic blocks 2-2-2-2, widths 64-128-256-512 times ``width``)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels, num_classes, width, layers, imagenet_stem=False)


@register_model("resnet34")
def resnet34(*, num_classes: int, in_channels: int = 3, image_size: int = 32, width: float = 1.0,
             layers: Layers = DENSE) -> nn.Module:
    """CIFAR-variant ResNet-34 (basic blocks 3-4-6-3)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), in_channels, num_classes, width, layers, imagenet_stem=False)


@register_model("resnet50")
def resnet50(*, num_classes: int, in_channels: int = 3, image_size: int = 224, width: float = 1.0,
             layers: Layers = DENSE) -> nn.Module:
    """ImageNet-variant ResNet-50 (bottlenecks 3-4-6-3, 25.6M parameters at width 1 with 1000 classes)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels, num_classes, width, layers, imagenet_stem=True)


@register_model("wide_resnet50_2")
def wide_resnet50_2(*, num_classes: int, in_channels: int = 3, image_size: int = 224, width: float = 1.0,
                    layers: Layers = DENSE) -> nn.Module:
    """Wide ResNet-50-2: ResNet-50 with bottleneck inner widths doubled (68.9M parameters at width 1)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels, num_classes, width, layers, imagenet_stem=True,
                  inner_factor=2.0)

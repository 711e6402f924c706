"""ResNets for supervised pruning: ResNet-18/34 (CIFAR variant), ResNet-50 and wide ResNet-50-2 (ImageNet variant).

CIFAR variant: 3x3 stride-1 stem, no max-pool (32x32 inputs; also used for 64x64 Tiny-ImageNet).
ImageNet variant: 7x7 stride-2 stem and 3x3 max-pool, bottleneck blocks (expansion 4). ``width`` scales every
layer's channels; ``wide_resnet50_2`` doubles the bottleneck's inner width as in Zagoruyko & Komodakis.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from metaticket.models.registry import DENSE, Layers, register_model


def _scale(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


def _conv_bn(layers: Layers, c_in: int, c_out: int, kernel: int, stride: int) -> tuple[nn.Module, nn.Module]:
    """A bias-free ``kernel`` x ``kernel`` conv ('same' padding) and its BatchNorm, drawn in this order."""
    return layers.conv(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False), layers.norm2d(c_out)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1-conv shortcut. x: [N, C_in, H, W]."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, layers: Layers, inner: int | None = None) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(layers, c_in, planes, 3, stride)
        self.conv2, self.bn2 = _conv_bn(layers, planes, planes, 3, 1)
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
        self.conv1, self.bn1 = _conv_bn(layers, c_in, inner, 1, 1)
        self.conv2, self.bn2 = _conv_bn(layers, inner, inner, 3, stride)  # stride here, as torchvision v1.5
        self.conv3, self.bn3 = _conv_bn(layers, inner, out, 1, 1)
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


# name: (block, blocks per stage, native image side, ImageNet stem, bottleneck inner-width factor, description)
VARIANTS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), 32, False, 1.0,
                 "CIFAR-variant ResNet-18 (basic blocks 2-2-2-2, widths 64-128-256-512 times ``width``)."),
    "resnet34": (BasicBlock, (3, 4, 6, 3), 32, False, 1.0, "CIFAR-variant ResNet-34 (basic blocks 3-4-6-3)."),
    "resnet50": (Bottleneck, (3, 4, 6, 3), 224, True, 1.0,
                 "ImageNet-variant ResNet-50 (bottlenecks 3-4-6-3, 25.6M parameters at width 1 with 1000 classes)."),
    "wide_resnet50_2": (Bottleneck, (3, 4, 6, 3), 224, True, 2.0,
                        "Wide ResNet-50-2: ResNet-50 with bottleneck inner widths doubled (68.9M parameters at width "
                        "1)."),
}


def _builder(name: str, block: type[BasicBlock] | type[Bottleneck], depths: tuple[int, ...], side: int,
             imagenet_stem: bool, inner_factor: float, doc: str) -> Callable[..., nn.Module]:
    def build(*, num_classes: int, in_channels: int = 3, image_size: int = side, width: float = 1.0,
              layers: Layers = DENSE) -> nn.Module:
        return ResNet(block, depths, in_channels, num_classes, width, layers, imagenet_stem, inner_factor)

    build.__name__, build.__qualname__, build.__doc__ = name, name, doc
    return build


for _name, _variant in VARIANTS.items():
    register_model(_name)(_builder(_name, *_variant))

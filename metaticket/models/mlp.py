"""The Omniglot MLP of MAML and Meta-ticket: 784-256-128-64-64, BatchNorm + ReLU, linear head."""

from __future__ import annotations

from torch import Tensor, nn

from metaticket.models.registry import DENSE, Layers, register_model

HIDDEN = (256, 128, 64, 64)


class MLP(nn.Module):
    """x: [N, C, H, W] or [N, in_features] -> logits [N, num_classes]."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...], layers: Layers,
                 norm: bool = True) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        prev = in_features
        for h in hidden:  # norm=False: linear layers and ReLU only (the sinusoid network)
            blocks += [layers.linear(prev, h, bias=True), *([layers.norm1d(h)] if norm else []), nn.ReLU()]
            prev = h
        self.features = nn.Sequential(*blocks)
        self.head = layers.head(prev, num_classes, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x.flatten(1)))


@register_model("mlp")
def mlp(*, num_classes: int, in_channels: int = 1, image_size: int = 28, width: float = 1.0,
        layers: Layers = DENSE) -> nn.Module:
    """Hidden sizes 256-128-64-64 times ``width``."""
    hidden = tuple(max(1, int(round(h * width))) for h in HIDDEN)
    return MLP(in_channels * image_size * image_size, num_classes, hidden, layers)



@register_model("sinusoid-mlp")
def sinusoid_mlp(*, num_classes: int = 1, in_channels: int = 1, image_size: int = 1, width: float = 1.0,
                 layers: Layers = DENSE) -> nn.Module:
    """The sinusoid network of MAML and of the Meta-ticket code: 1 -> 40 -> 40 -> 1 with ReLU and no norm, hidden
    sizes times ``width``; ``num_classes`` is the number of outputs (1 for a sinusoid) and the input has
    ``in_channels * image_size ** 2`` features (1)."""
    hidden = tuple(max(1, int(round(h * width))) for h in (40, 40))
    return MLP(in_channels * image_size * image_size, num_classes, hidden, layers, norm=False)

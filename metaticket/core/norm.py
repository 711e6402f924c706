"""BatchNorm over each task's own batch statistics, for meta-learning: the models build it, the learner switches
its kernel (fused outside ``vmap``, plain ops inside)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TaskBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over each task's batch statistics (no running estimates), written with plain tensor ops.

    Why not ``F.batch_norm``: in torch 2.14 its double backward under ``torch.func.vmap`` gives wrong
    second-order meta-gradients (tests/test_meta.py compares vmap with a per-task loop). x: [N, C] or [N, C, L].
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_features, eps=eps, affine=affine, track_running_stats=False)
        self.fused = False  # True: torch's batch_norm kernel (correct and faster when no vmap is involved)

    def forward(self, x: Tensor) -> Tensor:
        if self.fused:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, unbiased=False, keepdim=True)
        out = (x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is None:
            return out
        return out * self.weight.view(shape) + self.bias.view(shape)


class TaskBatchNorm2d(TaskBatchNorm1d):
    """:class:`TaskBatchNorm1d` for images: x [N, C, H, W], statistics over N, H, W."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"expected a 4-D input [N, C, H, W], got {input.dim()}-D")

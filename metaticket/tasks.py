"""``Tasks``: a batch of few-shot tasks, the container the episode sampler fills and the meta-learners consume."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Tasks:
    """A batch of B few-shot tasks (``ways`` classes labelled 0..ways-1 in each task; regression tasks hold float
    targets [B, N, D] in ``support_y``/``query_y``).

    support_x: [B, ways*shots, C, H, W] float; support_y: [B, ways*shots] long;
    query_x: [B, ways*queries, C, H, W] float; query_y: [B, ways*queries] long.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    def to(self, device: torch.device | str) -> Tasks:
        """The batch on ``device``; to a GPU through pinned memory, so the copy runs behind the host's next work."""
        pin = torch.device(device).type == "cuda"
        return Tasks(*((t.pin_memory() if pin and not t.is_pinned() else t).to(device, non_blocking=True)
                       for t in (self.support_x, self.support_y, self.query_x, self.query_y)))

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def task(self, i: int) -> Tasks:
        """The i-th task as a batch of one."""
        return Tasks(self.support_x[i:i + 1], self.support_y[i:i + 1], self.query_x[i:i + 1], self.query_y[i:i + 1])

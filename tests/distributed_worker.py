"""Run under ``torchrun --nproc_per_node=N`` (or plainly, as one process) by tests/test_distributed.py.

Builds the quickstart Meta-ticket learner, draws 3 meta-batches of synthetic tasks from a fixed seed (the same on
every rank), does 3 outer steps and writes, from rank 0, the gradients of the first step and the parameters after
the third to ``argv[1]``. Arguments: output file, meta.method, meta.vectorize, dtype (float32 / float64).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metaticket.config import load_config  # noqa: E402
from metaticket.distributed import from_environment, shutdown  # noqa: E402
from metaticket.runs.factory import build_learner  # noqa: E402
from metaticket.tasks import Tasks  # noqa: E402


def main() -> None:
    out, method, vectorize, dtype = Path(sys.argv[1]), sys.argv[2], sys.argv[3], getattr(torch, sys.argv[4])
    torch.set_num_threads(1)
    group = from_environment(dict(os.environ), torch.device("cpu"))
    # MAML: plain SGD. Adam would turn the rounding noise of gradients that are exactly zero in exact arithmetic
    # (biases right before a BatchNorm) into full-size steps of either sign, in one process as in two.
    sane = ["meta.optimizer=sgd", "meta.outer_lr=0.1"] if method == "maml" else []
    config = load_config(REPO / "configs" / "omniglot" / "quickstart.yaml",
                         [f"meta.method={method}", f"meta.vectorize={vectorize}", "meta.meta_batch=6", *sane])
    learner = build_learner(config, collective=group)
    learner.model.to(dtype)  # in place: the optimizer keeps the same parameter objects
    learner.twin.to(dtype)
    g = torch.Generator().manual_seed(0)
    first = None
    for _ in range(3):
        tasks = Tasks(torch.randn(6, 5, 1, 28, 28, generator=g, dtype=dtype), torch.arange(5).repeat(6, 1),
                      torch.randn(6, 25, 1, 28, 28, generator=g, dtype=dtype),
                      torch.arange(5).repeat_interleave(5).repeat(6, 1))
        stats = learner.meta_step(tasks)
        if os.environ.get("DEBUG_WORKER"):
            print(group.rank, stats, float(next(learner.model.parameters()).detach().abs().sum()), flush=True)
        if first is None:
            first = {n: p.grad.clone() for n, p in learner.model.named_parameters() if p.grad is not None}
            first_stats = stats
    if group.main:
        torch.save({"grads": first, "params": {k: v.clone() for k, v in learner.model.state_dict().items()},
                    "loss": first_stats["loss"], "world": group.world}, out)
    shutdown()


if __name__ == "__main__":
    main()

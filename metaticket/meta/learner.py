"""The meta-learners: :class:`MetaLearner` trains a :class:`~metaticket.meta.metaloss.MetaLoss` (the meta-objective:
method roles, inner loop, execution path) with an outer optimizer, lr schedule, IteRand, a collective for data
parallelism and the non-finite guard; :class:`MAML`, :class:`ANIL`, :class:`BOIL` and :class:`MetaTicket` name its
methods. The methods, the score-gradient formulations and the execution paths are described in
:mod:`metaticket.meta.metaloss`.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from metaticket.core.supermask import IteRandSchedule
from metaticket.distributed import SINGLE, Collective
from metaticket.meta.metaloss import (  # noqa: F401 (METHODS and the constants are part of this module's API)
    METHODS,
    PRECISIONS,
    SCORE_GRADS,
    VECTORIZE,
    MetaLoss,
    Method,
)
from metaticket.meta.objective import Objective, RowLoss
from metaticket.tasks import Tasks


def fused_update(params: list[Tensor]) -> bool | None:
    """``fused=True`` for torch's optimizers when every parameter is a float tensor on a device with fused kernels
    (CPU, CUDA, ...): the whole update of a tensor in one pass over it. At MLP width 8 the unfused Adam made ~8
    weight-sized passes, a quarter of a MAML meta-step's time on a CPU (benchmarks/README.md, speed); its results
    differ from the unfused update's in the last bits only (SGD's are identical). None (torch's default) otherwise."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    ok = params and all(p.is_floating_point() and p.device.type in _get_fused_kernels_supported_devices()
                        for p in params)
    return True if ok else None


def outer_defaults(method: str, optimizer: str = "auto", outer_lr: float | None = None, schedule: str = "auto",
                   warmup_steps: int | None = None, steps: int = 10000) -> tuple[str, float, str, int]:
    """(optimizer, outer lr, lr schedule, warm-up steps) with ``auto``/None replaced by the method's defaults, the one
    place these live: Meta-ticket methods SGD (+ momentum) lr 10 with a cosine schedule and min(1000, steps / 10)
    warm-up steps, as in the paper; the dense methods Adam lr 1e-3 at a constant rate without warm-up (MAML)."""
    masks = METHODS[method].needs_supermask
    opt = ("sgd" if masks else "adam") if optimizer == "auto" else optimizer
    lr = outer_lr if outer_lr is not None else (10.0 if opt == "sgd" else 1e-3)
    sched = ("cosine" if masks else "constant") if schedule == "auto" else schedule
    warmup = warmup_steps if warmup_steps is not None else (min(1000, steps // 10) if sched == "cosine" else 0)
    return opt, lr, sched, warmup


def cosine_warmup(steps: int, warmup: int) -> Callable[[int], float]:
    """LR factor: linear warmup over ``warmup`` steps, then cosine decay to 0 at ``steps``."""

    def factor(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        progress = (t - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def all_finite(tensors: list[Tensor]) -> bool:
    """Whether every element of every tensor is finite, with one host read: a NaN or Inf anywhere makes its
    tensor's sum non-finite, so finite sums settle it in one pass per tensor (``isfinite(t).all()`` makes
    several: 10.5 vs 0.2 ms on a 2M-element gradient, one thread); only a sum that overflowed is checked
    element by element."""
    if not tensors:
        return True
    if bool(torch.isfinite(torch.stack([t.detach().sum().float() for t in tensors])).all()):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class MetaLearner(MetaLoss):
    """Meta-trains ``model`` with ``method`` on batches of :class:`Tasks`.

    ``meta_step(tasks)`` does one outer update; ``adapt(tasks)`` returns adapted parameters per task;
    ``evaluate(tasks)`` returns per-task query loss and accuracy after ``inner_steps_test`` steps.

    The objective's settings and methods are :class:`~metaticket.meta.metaloss.MetaLoss`'s; this adds the outer
    optimizer (``optimizer``, ``outer_lr``, ``momentum``, ``weight_decay``), the schedule (``schedule``,
    ``warmup_steps`` over ``outer_steps``), IteRand (``rerand_every``, ``rerand_rate``, seeded by ``seed``), the
    ``collective`` of a data-parallel run, and ``state_dict()``/``load_state_dict()`` (model, optimizer, schedule,
    step and IteRand state). ``to(device)`` moves the optimizer's state too.
    """

    def __init__(self, model: nn.Module, *, method: str = "metaticket", inner_lr: float = 0.4,
                 inner_steps: int = 1, inner_steps_test: int = 3, first_order: bool = False,
                 optimizer: str = "auto", outer_lr: float | None = None, momentum: float = 0.9,
                 weight_decay: float = 0.0,
                 schedule: str = "auto", warmup_steps: int | None = None, outer_steps: int = 10000,
                 rerand_every: int = 0, rerand_rate: float = 0.1, vectorize: str = "auto", seed: int = 0,
                 head: str | Callable[[str], bool] | None = None, collective: Collective = SINGLE,
                 precision: str = "float32", score_grad: str = "reference",
                 loss: str | Objective | RowLoss = "cross_entropy", learn_dense: bool = False,
                 steps: int | None = None) -> None:
        if steps is not None:  # the name before: "steps" also named inner steps in this class's methods
            warnings.warn("MetaLearner(steps=...) is now outer_steps=... (the outer steps the schedule spans)",
                          DeprecationWarning, stacklevel=3 if type(self) is not MetaLearner else 2)
            outer_steps = steps
        super().__init__(model, method=method, inner_lr=inner_lr, inner_steps=inner_steps,
                         inner_steps_test=inner_steps_test, first_order=first_order, vectorize=vectorize, head=head,
                         precision=precision, score_grad=score_grad, loss=loss, learn_dense=learn_dense)
        opt_name, lr, sched, warmup = outer_defaults(method, optimizer, outer_lr, schedule, warmup_steps,
                                                     outer_steps)
        params = [p for n, p in model.named_parameters() if n in self.outer_names]
        fused = fused_update(params)
        if opt_name == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum,
                                                                    weight_decay=weight_decay, fused=fused)
        elif opt_name == "adamw":  # decoupled weight decay (the reference code's MAML optimizer)
            self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
        elif opt_name == "adam":
            self.optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)
        else:
            raise ValueError(f"unknown optimizer {opt_name!r}; known: auto, adam, adamw, sgd")
        factor = cosine_warmup(outer_steps, warmup) if sched == "cosine" else (lambda t: min(1.0, (t + 1) / warmup)
                                                                          if warmup else 1.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        if rerand_every and not self.masked:
            raise ValueError(f"rerand_every = {rerand_every} turns IteRand on, which re-draws pruned supermask "
                             f"weights; this model has no supermask layers: use rerand_every = 0")
        self.iterand = IteRandSchedule(rerand_every, rerand_rate, seed + 1) if self.masked else None
        self.collective = collective  # data parallel: this process's slice of each meta-batch, summed gradients
        self.step = 0

    def to(self, *args, **kwargs) -> MetaLearner:  # noqa: ANN002, ANN003 (nn.Module.to's arguments)
        """``to()``, ``double()``...: the model, the twin and the optimizer's state tensors move."""
        super().to(*args, **kwargs)
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        for state in self.optimizer.state.values():
            for k, v in state.items():
                if isinstance(v, Tensor) and v.dim() > 0:  # not Adam's scalar step counter (stays on the CPU)
                    state[k] = v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
        return self

    # ------------------------------------------------------------------------------------------- training
    def meta_step(self, tasks: Tasks, sync: bool = True) -> dict[str, float | Tensor]:
        """One outer update on a batch of tasks; returns loss, accuracy, lr (and IteRand's changed fraction).

        ``sync=False`` leaves loss and accuracy as 0-d tensors on the model's device, so the step never waits for
        the device (no ``.item()``): a GPU runs ahead until the caller reads them. IteRand's changed fraction is
        read on the steps that re-draw (every ``rerand_every``)."""
        self.check(tasks, values=sync)
        self.train()
        self.optimizer.zero_grad(set_to_none=True)
        group = self.collective
        if group.world == 1:
            losses, accs = self.backward(tasks, self.inner_steps, self.first_order)
            loss, acc = losses.mean(), accs.mean()
        else:
            if len(tasks) < group.world:
                raise ValueError(f"a meta-batch of {len(tasks)} tasks cannot be split over {group.world} processes")
            mine = group.shard(tasks)
            losses, accs = self.backward(mine, self.inner_steps, self.first_order)
            # the slice's mean-loss gradient, weighted by its share of the meta-batch, summed over processes
            share = len(mine) / len(tasks)
            grads = [p.grad for p in self.optimizer.param_groups[0]["params"] if p.grad is not None]
            for g in grads:
                g.mul_(share)
            sums = torch.stack([losses.sum(), accs.sum()]).detach()
            group.all_reduce_sum([*grads, sums])
            loss, acc = sums[0] / len(tasks), sums[1] / len(tasks)
        lr = self.optimizer.param_groups[0]["lr"]
        if sync:  # never apply a non-finite update (sync=False: the training loop stops at its next read)
            grads = [p.grad for p in self.optimizer.param_groups[0]["params"] if p.grad is not None]
            if not all_finite([loss, *grads]):
                self.optimizer.zero_grad(set_to_none=True)
                raise ValueError(f"the meta-loss ({float(loss)}) or its gradient is not finite; nothing was "
                                 f"updated (lower inner_lr or the outer lr, or check the tasks)")
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        loss, acc = loss.detach(), acc.detach()
        out: dict[str, float | Tensor] = {"loss": float(loss) if sync else loss,
                                          self.objective.log_key: float(acc) if sync else acc, "outer_lr": lr}
        if self.iterand is not None:
            changed = self.iterand(self.model, self.step)
            if changed is not None:
                out["rerandomized"] = changed
        return out

    def state_dict(self) -> dict:
        """Everything a resumed run needs: model, optimizer, schedule, step, IteRand state."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.step,
                "iterand": self.iterand.state_dict() if self.iterand is not None else None}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s contents, all or nothing: a state of another model, width or optimizer is
        refused with a ``ValueError`` and the learner is left exactly as it was."""
        missing = [k for k in ("model", "optimizer", "scheduler", "step")
                   if not isinstance(state, dict) or k not in state]
        if missing:
            raise ValueError(f"not a MetaLearner state: it lacks {', '.join(missing)}")
        own = self.model.state_dict()
        shapes = {k: tuple(v.shape) for k, v in state["model"].items() if isinstance(v, Tensor)}
        wrong = [k for k, v in own.items() if k in shapes and shapes[k] != tuple(v.shape)]
        if wrong or set(shapes) != {k for k, v in own.items() if isinstance(v, Tensor)}:
            what = f"{wrong[0]} is {shapes[wrong[0]]}, here {tuple(own[wrong[0]].shape)}" if wrong else \
                "its parameter names differ"
            raise ValueError(f"the state is of another model ({what}); build the learner with the same model")
        groups = state["optimizer"].get("param_groups", []) if isinstance(state["optimizer"], dict) else []
        mine = self.optimizer.state_dict()["param_groups"]
        if len(groups) != len(mine) or any(set(a) - {"initial_lr"} != set(b) - {"initial_lr"} or
                                           len(a["params"]) != len(b["params"]) for a, b in zip(groups, mine)):
            raise ValueError(f"the optimizer state is of another optimizer or other parameters (this learner's is "
                             f"{type(self.optimizer).__name__}); build the learner with the same optimizer")
        before = copy.deepcopy(self.state_dict())
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.step = int(state["step"])
            if self.iterand is not None and state.get("iterand") is not None:
                self.iterand.load_state_dict(state["iterand"])
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            self.model.load_state_dict(before["model"])
            self.optimizer.load_state_dict(before["optimizer"])
            self.scheduler.load_state_dict(before["scheduler"])
            self.step = before["step"]
            if self.iterand is not None and before.get("iterand") is not None:
                self.iterand.load_state_dict(before["iterand"])
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise ValueError(f"the state does not fit this learner ({first}); nothing was changed") from None


class MAML(MetaLearner):
    """MAML (Finn et al. 2017): meta-learns the initialization of every parameter; ``first_order=True`` is FO-MAML."""

    def __init__(self, model: nn.Module, **kwargs) -> None:
        super().__init__(model, method="maml", **kwargs)


class ANIL(MetaLearner):
    """ANIL (Raghu et al. 2020): MAML whose inner loop adapts only the head."""

    def __init__(self, model: nn.Module, **kwargs) -> None:
        super().__init__(model, method="anil", **kwargs)


class BOIL(MetaLearner):
    """BOIL (Oh et al. 2021): MAML whose inner loop adapts only the body; the head stays as meta-learned."""

    def __init__(self, model: nn.Module, **kwargs) -> None:
        super().__init__(model, method="boil", **kwargs)


class MetaTicket(MetaLearner):
    """Meta-ticket (Chijiwa et al. 2022): meta-learns only the masks of frozen random weights (a supermask model);
    the inner loop adapts the masked weights, norms and head. ``boil=True`` leaves the head as initialized."""

    def __init__(self, model: nn.Module, *, boil: bool = False, **kwargs) -> None:
        super().__init__(model, method="metaticket_boil" if boil else "metaticket", **kwargs)

"""Meta-learners over one model: what the outer loop learns and what the inner loop adapts.

- ``maml``: the outer loop meta-learns every parameter (the initialization); the inner loop adapts all.
- ``anil``: as MAML, but the inner loop adapts only the head (Raghu et al. 2020).
- ``boil``: as MAML, but the inner loop adapts only the body; the head keeps its meta-learned values
  (Oh et al. 2021).
- ``metaticket``: weights are frozen random values; the outer loop meta-learns only the mask scores;
  the inner loop adapts the masked weights, biases, norms and head of each task, so pruned weights stay zero.
- ``metaticket_boil``: Meta-ticket whose inner loop leaves the (random, dense) head as initialized.

The mask of a meta-step is computed once: the inner loop starts from the masked weights ``w * mask(scores)``
(the straight-through gradient of the mask reaches the scores through them), updates them with masked
gradients so pruned weights stay zero, and runs them through a dense twin of the model (plain
``Linear``/``Conv2d`` kernels, no mask multiply in any inner forward).

``score_grad`` says which function of the mask the outer loop differentiates; both adapt the same networks:

- ``reference`` (the Meta-ticket code's): the inner loop adapts the dense weights ``w`` and applies the mask in
  every forward, ``w_k+1 = w_k - lr * grad_w L(w_k * m)``. Its masked weights ``w_k * m`` equal
  ``w * m - lr * sum_j G_j * m * m`` (``G_j`` the gradient at the masked weight), so it runs here as the start
  ``w * m`` updated with the gradient mask ``m * m``, both factors carrying the straight-through gradient (first
  order: ``stop_grad(m) * m``, the inner gradient ``G_j * m`` detached, the forward's mask not). The scores then
  also get the terms of every inner forward and update, not only of the start.
- ``start``: the mask's gradient enters only at the start ``w * m``; the updates use a detached 0/1 mask.
  metaticket's formulation before config format 3. At initialization the two score gradients have cosine
  0.998-1.000 and drift apart as training goes on (issue 31).

``vectorize`` chooses how a meta-batch runs, all with the same meta-gradient: ``factored`` (MLP-like chains of
Linear, BatchNorm1d and activations: each task's weight changes kept as low-rank factors,
:mod:`metaticket.meta.factored`), ``vmap`` over tasks, or a
per-task ``loop``; ``auto`` picks what measured fastest for the model on a CPU.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from metaticket.core.norm import TaskBatchNorm1d
from metaticket.core.supermask import IteRandSchedule, dense_like, masks, supermask_layers
from metaticket.distributed import SINGLE, Collective
from metaticket.meta.clone import Clone
from metaticket.meta.factored import FactoredInner, chain_of, fits
from metaticket.meta.inner import Params, adapt
from metaticket.meta.modules import head_predicate, prepare_model
from metaticket.meta.objective import Objective, RowLoss, objective
from metaticket.tasks import Tasks


@dataclass(frozen=True)
class Method:
    """Which parameters the outer loop learns (``all``, or only the mask ``scores``) and the inner loop adapts
    (``all``, only the ``head``, or the ``body``: all but the head)."""

    outer: str
    inner: str
    needs_supermask: bool

    def learns(self, name: str) -> bool:
        return self.outer == "all" or name.endswith("scores")

    def adapts(self, name: str, is_head: Callable[[str], bool]) -> bool:
        return self.inner == "all" or (self.inner == "head") == is_head(name)


METHODS: dict[str, Method] = {
    "maml": Method(outer="all", inner="all", needs_supermask=False),
    "anil": Method(outer="all", inner="head", needs_supermask=False),
    "boil": Method(outer="all", inner="body", needs_supermask=False),
    "metaticket": Method(outer="scores", inner="all", needs_supermask=True),
    "metaticket_boil": Method(outer="scores", inner="body", needs_supermask=True),
}


VMAP_MAX_WEIGHT = 2 ** 18
PRECISIONS = ("float32", "bfloat16")
SCORE_GRADS = ("reference", "start")
VECTORIZE = ("auto", "factored", "vmap", "loop")


def _vmap_wins(model: nn.Module) -> bool:
    """Whether vmap over tasks beats a per-task loop, by what we measured on 2 CPU cores (benchmarks/meta_step.py).

    vmap materializes every task's copy of every weight at once; that pays only for small linear layers, where
    the loop's per-op overhead dominates (Omniglot MLP width 1: 100 vs 130 ms per MAML meta-step; width 2: 270 vs
    205 ms). Over convolutions it is 2-3x slower.
    """
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return False
    return max((m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)), default=0) <= VMAP_MAX_WEIGHT


def _full(logits: Tensor) -> Tensor:
    """Autocast's bfloat16 logits as float32 (the loss and its gradient in full precision); others unchanged."""
    return logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits


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


class MetaLearner(nn.Module):
    """Meta-trains ``model`` with ``method`` on batches of :class:`Tasks`.

    ``meta_step(tasks)`` does one outer update; ``adapt(tasks)`` returns adapted parameters per task;
    ``evaluate(tasks)`` returns per-task query loss and accuracy after ``inner_steps_test`` steps.

    Any ``nn.Module`` classifier works: BatchNorm layers are replaced by task-statistics BatchNorm (with a
    :class:`~metaticket.meta.modules.ModelChanged` warning), what the functional inner loop cannot run is refused
    with a ``ValueError`` naming the module. ``head`` names the classifier for ANIL/BOIL (a module name or a
    predicate over parameter names; default: the module called ``head``, else the last ``Linear``).
    ``precision="bfloat16"`` runs the query pass's matrix products in bfloat16 (:meth:`_autocast`).

    The learner is an ``nn.Module``: ``to(device)``, ``train()``/``eval()``, ``parameters()`` (what the outer loop
    learns), ``state_dict()``/``load_state_dict()`` (model, optimizer, schedule, step and IteRand state).
    """

    def __init__(self, model: nn.Module, *, method: str = "metaticket", inner_lr: float = 0.4,
                 inner_steps: int = 1, inner_steps_test: int = 3, first_order: bool = False,
                 optimizer: str = "auto", outer_lr: float | None = None, momentum: float = 0.9,
                 weight_decay: float = 0.0,
                 schedule: str = "auto", warmup_steps: int | None = None, steps: int = 10000,
                 rerand_every: int = 0, rerand_rate: float = 0.1, vectorize: str = "auto", seed: int = 0,
                 head: str | Callable[[str], bool] | None = None, collective: Collective = SINGLE,
                 precision: str = "float32", score_grad: str = "reference",
                 loss: str | Objective | RowLoss = "cross_entropy", learn_dense: bool = False) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; known: {', '.join(sorted(METHODS))}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
        if score_grad not in SCORE_GRADS:
            raise ValueError(f"unknown score_grad {score_grad!r}; known: {', '.join(SCORE_GRADS)}")
        self.precision = precision
        self.score_grad = score_grad
        self.objective = objective(loss)  # what a task's loss and metric are (cross-entropy/accuracy, mse, ...)
        self.method = method
        self.roles = METHODS[method]
        has_masks = any(True for _ in supermask_layers(model))
        self._masked = has_masks
        if self.roles.needs_supermask and not has_masks:
            raise ValueError(f"method {method!r} needs a supermask model (model.mask set), got a dense one")
        prepare_model(model, second_order=not first_order)
        self.model = model
        # the function the parameter dicts are applied to: not a submodule (its parameters are never used, the
        # model's are), but moved with the learner (its buffers are)
        self._twin = [dense_like(model)]
        self.twin.requires_grad_(False)
        self.inner_lr, self.inner_steps, self.inner_steps_test = inner_lr, inner_steps, inner_steps_test
        self.first_order = first_order
        is_head, what = head_predicate(model, head)
        twin_names = [n for n, _ in self.twin.named_parameters()]
        self.inner_names = [n for n in twin_names if self.roles.adapts(n, is_head)]
        if learn_dense and not self.roles.needs_supermask:
            raise ValueError(f"learn_dense adds the dense parameters to what Meta-ticket meta-learns; method "
                             f"{method!r} meta-learns every parameter already: leave learn_dense off")
        frozen = {f"{n}.weight" if n else "weight" for n, _ in supermask_layers(model)}  # stay frozen random values
        self.learn_dense = learn_dense
        self.outer_names = [n for n, p in model.named_parameters()
                            if self.roles.learns(n) or (learn_dense and n not in frozen)]
        if not self.inner_names:
            raise ValueError(f"method {method!r} adapts the {self.roles.inner} ({what}) in the inner loop, but no "
                             f"parameter of the model is there; pass head= naming the classifier module")
        if not self.outer_names:
            raise ValueError(f"method {method!r} meta-learns {self.roles.outer} parameters, but the model has none")
        for n, p in model.named_parameters():  # only the outer parameters take part in outer autograd
            p.requires_grad_(n in self.outer_names)
        if vectorize not in VECTORIZE:
            raise ValueError(f"unknown vectorize {vectorize!r}; known: {', '.join(VECTORIZE)}")
        self._chain = chain_of(self.twin)
        if vectorize == "factored" and self._chain is None:
            raise ValueError("vectorize='factored' runs models whose forward is a chain of Linear, BatchNorm1d, "
                             "elementwise activations, Flatten and Dropout; use vectorize='auto' for this model")
        # what runs the batches factors would not suit (and every batch of a model that is not the MLP)
        self._per_task = "vmap" if _vmap_wins(self.twin) else "loop"
        if vectorize == "auto":
            vectorize = "factored" if self._chain is not None else self._per_task
        self.vectorize = vectorize
        # outside vmap the fused batch_norm kernel is correct (and faster); under vmap only the plain-op version is
        fused = (self._per_task if vectorize == "factored" else vectorize) == "loop"
        for m in self.twin.modules():
            if isinstance(m, TaskBatchNorm1d):
                m.fused = fused
        self.channels_last = self.vectorize == "loop" and any(isinstance(m, nn.Conv2d) for m in self.twin.modules())

        opt_name, lr, sched, warmup = outer_defaults(method, optimizer, outer_lr, schedule, warmup_steps, steps)
        params = [p for n, p in model.named_parameters() if n in self.outer_names]
        if opt_name == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum,
                                                                    weight_decay=weight_decay)
        elif opt_name == "adamw":  # decoupled weight decay (the reference code's MAML optimizer)
            self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        elif opt_name == "adam":
            self.optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        else:
            raise ValueError(f"unknown optimizer {opt_name!r}; known: auto, adam, adamw, sgd")
        factor = cosine_warmup(steps, warmup) if sched == "cosine" else (lambda t: min(1.0, (t + 1) / warmup)
                                                                          if warmup else 1.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        if rerand_every and not has_masks:
            raise ValueError(f"rerand_every = {rerand_every} turns IteRand on, which re-draws pruned supermask "
                             f"weights; this model has no supermask layers: use rerand_every = 0")
        self.iterand = IteRandSchedule(rerand_every, rerand_rate, seed + 1) if has_masks else None
        self.collective = collective  # data parallel: this process's slice of each meta-batch, summed gradients
        self.step = 0

    # ------------------------------------------------------------------------------------------- module
    @property
    def twin(self) -> nn.Module:
        """The dense copy of the model that parameter dicts run through (``functional_call``)."""
        return self._twin[0]

    def _apply(self, fn, recurse=True):  # noqa: ANN001 (nn.Module's signature)
        """``to()``, ``cuda()``, ``double()``...: the model, the twin and the optimizer's state tensors move."""
        super()._apply(fn, recurse)
        self.twin._apply(fn, recurse)
        for state in self.optimizer.state.values():
            for k, v in state.items():
                if isinstance(v, Tensor) and v.dim() > 0:  # not Adam's scalar step counter (stays on the CPU)
                    state[k] = fn(v)
        return self

    def train(self, mode: bool = True) -> MetaLearner:
        super().train(mode)
        self.twin.train(mode)
        return self

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):  # noqa: ANN201
        """The parameters the outer loop learns (the mask scores for Meta-ticket), under the model's names."""
        own = dict(self.model.named_parameters())
        for n in self.outer_names:
            yield prefix + n, own[n]

    def forward(self, x: Tensor) -> Tensor:
        """The model itself (without adaptation) on x [N, ...] -> logits [N, ways]."""
        return self.model(x)

    # ------------------------------------------------------------------------------------------- functions
    def _autocast(self) -> torch.autocast:
        """``precision: bfloat16``: the query pass's matrix products (linear, conv; forward and backward) in
        bfloat16 with float32 accumulation. The inner loop stays float32, as do parameters, losses and optimizer
        state: with the inner loop in bfloat16 too, the meta-gradient's cosine to float32's fell to 0.19-0.49 at
        1 query per class (0.99 with the query pass only; benchmarks/README.md, precision)."""
        device = next(self.model.parameters()).device.type
        return torch.autocast(device, dtype=torch.bfloat16, enabled=self.precision == "bfloat16")

    def _forward(self, params: Params, x: Tensor) -> Tensor:
        return functional_call(self.twin, params, (x,))

    def _initial_params(self, first_order: bool = True) -> tuple[Params, dict[str, Tensor]]:
        """The inner loop's start under the twin's names, and the masks of the masked weights' gradients.

        Masked weights enter as ``w * mask(scores)``: the mask is computed once per call and its
        straight-through gradient reaches the scores; the inner loop then keeps pruned weights at zero. The
        gradient masks are 0/1 in value; under ``score_grad="reference"`` they carry the mask's gradient too
        (``m * m``, or ``stop_grad(m) * m`` with ``first_order``: module docstring), else they are detached.
        """
        own = dict(self.model.named_parameters())
        params = {n: own[n] for n, _ in self.twin.named_parameters()}
        weight_masks = masks(self.model)
        for k, m in weight_masks.items():
            params[k] = params[k] * m
        if self.channels_last:
            params = {k: self._layout(v) for k, v in params.items()}
        if self.score_grad == "reference":  # m * m is m for a 0/1 mask; for any other mask it is the reference's
            return params, {k: (m.detach() if first_order else m) * m for k, m in weight_masks.items()}
        return params, {k: m.detach() for k, m in weight_masks.items()}

    def _layout(self, x: Tensor) -> Tensor:
        """``x`` in the memory order the convolutions run in: channels-last (NHWC) for a conv model in the loop
        path, where it measured 1.34x faster on 84 x 84 Conv4 meta-steps on a CPU (benchmarks/README.md, speed);
        unchanged otherwise. The stored parameters keep their order; only each step's working copies change."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def _mode(self, tasks: Tasks, steps: int) -> str:
        """How this batch runs: ``vectorize``, except that a factored learner runs batches whose sizes factors do
        not suit (:func:`~metaticket.meta.factored.fits`) with vmap or the per-task loop, as ``auto`` would."""
        if self.vectorize != "factored":
            return self.vectorize
        fit = fits(self._masked, tasks.support_x.shape[1], tasks.query_x.shape[1], steps)
        return "factored" if fit and self._chain.runs(tasks.support_x) else self._per_task

    def _task_losses(self, tasks: Tasks, steps: int, first_order: bool) -> tuple[Tensor, Tensor]:
        """Per-task query loss and metric (accuracy as a fraction for classification) after adaptation: [B] each."""
        params, hard = self._initial_params(first_order)

        def one_task(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> tuple[Tensor, Tensor]:
            adapted = adapt(self._forward, params, self.inner_names, xs, ys, lr=self.inner_lr, steps=steps,
                            first_order=first_order, grad_masks=hard, loss=self.objective.loss)
            logits = self.logits(adapted, xq)
            return self.objective.loss(logits, yq), self.objective.score(logits.detach(), yq)

        mode = self._mode(tasks, steps)
        if mode == "factored":
            inner = FactoredInner(self._chain.layers, params, self.inner_names, hard, len(tasks), lr=self.inner_lr,
                                  first_order=first_order, objective=self.objective)
            inner.adapt(tasks.support_x, tasks.support_y, steps)
            with self._autocast():
                logits = _full(inner.logits(tasks.query_x))  # [B, m, ways]
            yq = tasks.query_y
            return self.objective.task_losses(logits, yq), self.objective.score(logits.detach(), yq)
        args = (tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y)
        if mode == "vmap":
            return vmap(one_task, randomness="different")(*args)  # dropout: each task its own draws
        results = [one_task(*(self._layout(a[i]) for a in args)) for i in range(len(tasks))]
        return torch.stack([r[0] for r in results]), torch.stack([r[1] for r in results])

    def _meta_gradient(self, tasks: Tasks, steps: int, first_order: bool) -> tuple[Tensor, Tensor]:
        """Accumulate the gradient of the mean query loss into the outer parameters' ``.grad``.

        Returns the per-task query losses and accuracies ([B] each, detached). ``vmap`` and ``factored``: one
        graph over all tasks. ``loop``: one task's graph at a time from detached copies of the start point (peak
        memory of a single task), then one backward from the start point into the outer parameters (``w * mask``
        -> scores for Meta-ticket; the identity for MAML).
        """
        if self._mode(tasks, steps) != "loop":
            losses, accs = self._task_losses(tasks, steps, first_order)
            losses.mean().backward()
            return losses.detach(), accs
        start, gmasks = self._initial_params(first_order)
        leaves = {k: v.detach().requires_grad_() for k, v in start.items()}
        # score_grad reference: the gradient masks carry the scores' gradient too, collected like the start's
        mask_leaves = {k: v.detach().requires_grad_() if v.requires_grad else v for k, v in gmasks.items()}
        n = len(tasks)
        losses, accs = [], []
        for i in range(n):
            adapted = adapt(self._forward, leaves, self.inner_names, self._layout(tasks.support_x[i]),
                            tasks.support_y[i], lr=self.inner_lr, steps=steps, first_order=first_order,
                            grad_masks=mask_leaves, engine="autograd", loss=self.objective.loss)
            logits = self.logits(adapted, tasks.query_x[i])
            loss = self.objective.loss(logits, tasks.query_y[i])
            (loss / n).backward()
            losses.append(loss.detach())
            accs.append(self.objective.score(logits.detach(), tasks.query_y[i]))
        pairs = [(start[k], leaves[k].grad) for k in start if start[k].requires_grad and leaves[k].grad is not None]
        pairs += [(gmasks[k], v.grad) for k, v in mask_leaves.items() if gmasks[k].requires_grad and v.grad is not None]
        if pairs:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
        return torch.stack(losses), torch.stack(accs)

    def meta_gradient(self, tasks: Tasks, steps: int | None = None,
                      first_order: bool | None = None) -> tuple[Tensor, Tensor]:
        """The meta-gradient of the mean query loss of ``tasks``, accumulated into the outer parameters' ``.grad``
        (nothing is updated: :meth:`meta_step` is this plus the optimizer step). ``steps`` and ``first_order``
        default to the training ones. Returns the per-task query losses and metrics, [B] each, detached."""
        self._check(tasks, values=False)
        self.train()
        return self._meta_gradient(tasks, self.inner_steps if steps is None else steps,
                                   self.first_order if first_order is None else first_order)

    def _check(self, tasks: Tasks, values: bool) -> None:
        """Refuse a batch (or settings) the step would silently make meaningless, before anything changes: the
        shapes and the inner-loop settings always; with ``values`` also label ranges and non-finite inputs (reading
        values waits for the device, so ``meta_step(sync=False)`` leaves them to the training loop's checks)."""
        if not isinstance(tasks, Tasks):
            raise ValueError(f"expected a Tasks batch (metaticket.Tasks), got {type(tasks).__name__}")
        sx, sy, qx, qy = tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y
        if sx.dim() < 2 or sx.shape[0] == 0:
            raise ValueError("the meta-batch holds no tasks; sample at least 1")
        if sx.shape[1] == 0 or qx.dim() < 2 or qx.shape[1] == 0:
            raise ValueError(f"every task needs support and query examples, got {sx.shape[1]} support and "
                             f"{qx.shape[1] if qx.dim() >= 2 else 0} query per task")
        if sy.shape[:2] != sx.shape[:2] or qy.shape[:2] != qx.shape[:2] or qx.shape[0] != sx.shape[0]:
            raise ValueError(f"inputs and targets disagree: support {tuple(sx.shape)} / {tuple(sy.shape)}, query "
                             f"{tuple(qx.shape)} / {tuple(qy.shape)} (the first two dims are tasks and examples)")
        if not (isinstance(self.inner_lr, (int, float)) and math.isfinite(self.inner_lr) and self.inner_lr > 0):
            raise ValueError(f"inner_lr = {self.inner_lr!r}: use a positive finite inner learning rate")
        for name in ("inner_steps", "inner_steps_test"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name} = {getattr(self, name)!r}: use at least 1 inner step")
        if not values:
            return
        if self.objective.metric == "accuracy":
            for where, y in (("support", sy), ("query", qy)):
                if y.is_floating_point() or y.dtype == torch.bool:
                    raise ValueError(f"{where} labels are {y.dtype}; classification labels are integers 0..ways-1")
                if int(y.min()) < 0:
                    raise ValueError(f"{where} label {int(y.min())} is negative (-100 is cross-entropy's ignore "
                                     f"index: its loss would be 0); labels are 0..ways-1")
        for where, t in (("support inputs", sx), ("query inputs", qx), ("support targets", sy),
                         ("query targets", qy)):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"the {where} hold NaN or Inf values; clean the data before meta_step")

    # ------------------------------------------------------------------------------------------- public
    def meta_step(self, tasks: Tasks, sync: bool = True) -> dict[str, float | Tensor]:
        """One outer update on a batch of tasks; returns loss, accuracy, lr (and IteRand's changed fraction).

        ``sync=False`` leaves loss and accuracy as 0-d tensors on the model's device, so the step never waits for
        the device (no ``.item()``): a GPU runs ahead until the caller reads them. IteRand's changed fraction is
        read on the steps that re-draw (every ``rerand_every``)."""
        self._check(tasks, values=sync)
        self.train()
        self.optimizer.zero_grad(set_to_none=True)
        group = self.collective
        if group.world == 1:
            losses, accs = self._meta_gradient(tasks, self.inner_steps, self.first_order)
            loss, acc = losses.mean(), accs.mean()
        else:
            if len(tasks) < group.world:
                raise ValueError(f"a meta-batch of {len(tasks)} tasks cannot be split over {group.world} processes")
            mine = group.shard(tasks)
            losses, accs = self._meta_gradient(mine, self.inner_steps, self.first_order)
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
            if not bool(torch.isfinite(loss)) or not all(bool(torch.isfinite(g).all()) for g in grads):
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

    def clone(self, first_order: bool | None = None) -> Clone:
        """A differentiable copy of the network for one task, for a meta-training loop of your own (learn2learn's
        ``clone``): ``c = learner.clone(); c.adapt(loss(c(xs), ys)); loss(c(xq), yq).backward()`` puts the
        meta-gradient of that task into the outer parameters' ``.grad`` (:mod:`metaticket.meta.clone`). The
        start is this learner's (``w * mask`` for Meta-ticket, with its ``score_grad`` gradient masks), adapted
        with ``inner_lr``; ``first_order`` defaults to the learner's. Runs in float32 whatever ``precision``."""
        first = self.first_order if first_order is None else first_order
        self.train()
        params, grad_masks = self._initial_params(first)
        return Clone(lambda p, x: self._forward(p, self._layout(x)), params, self.inner_names, lr=self.inner_lr,
                     first_order=first, grad_masks=grad_masks)

    def adapt(self, tasks: Tasks, steps: int | None = None) -> list[Params]:
        """Adapted parameter dicts (dense-twin names, pruned weights zero) for each task of the batch."""
        return self._adapt_from(*self._initial_params(), tasks, steps)

    def _adapt_from(self, start: Params, hard: dict[str, Tensor], tasks: Tasks, steps: int | None) -> list[Params]:
        n_steps = self.inner_steps_test if steps is None else steps
        params = {k: v.detach() for k, v in start.items()}
        hard = {k: v.detach() for k, v in hard.items()}
        return [{k: v.detach() for k, v in adapt(self._forward, params, self.inner_names,
                                                 self._layout(tasks.support_x[i]),
                                                 tasks.support_y[i], lr=self.inner_lr, steps=n_steps,
                                                 first_order=True, grad_masks=hard,
                                                 loss=self.objective.loss).items()}
                for i in range(len(tasks))]

    def logits(self, params: Params, x: Tensor) -> Tensor:
        """The network with parameters ``params`` (e.g. one of :meth:`adapt`'s dicts) on x [N, ...] -> [N, ways] in
        the parameters' dtype: the query pass of training and evaluation (``precision="bfloat16"``: bfloat16
        products, float32 logits)."""
        with self._autocast():
            return _full(self._forward(params, self._layout(x)))

    @torch.no_grad()
    def inner_change(self, tasks: Tasks, steps: int | None = None) -> dict[str, float]:
        """How far the inner loop moves each adapted tensor: ``||theta' - theta|| / ||theta||``, mean over tasks.

        Keys are the dense twin's parameter names (``layers.0.weight``, ``head.bias``, ...); a tensor whose
        start is all zeros (a zero-initialized bias) reports the absolute norm of its change.
        """
        start, hard = self._initial_params()
        adapted = self._adapt_from(start, hard, tasks, steps)
        out: dict[str, float] = {}
        for name in self.inner_names:
            ref = start[name].detach()
            base = float(ref.norm())
            moved = [float((a[name] - ref).norm()) for a in adapted]
            out[name] = sum(moved) / len(moved) / (base if base > 0 else 1.0)
        return out

    @torch.no_grad()
    def evaluate(self, tasks: Tasks) -> tuple[Tensor, Tensor]:
        """Per-task query loss and accuracy ([B] each) after ``inner_steps_test`` inner steps."""
        self._check(tasks, values=False)
        return self._task_losses(tasks, self.inner_steps_test, first_order=True)

    def state_dict(self, *args, **kwargs) -> dict:  # noqa: ANN002, ANN003
        """Everything a resumed run needs: model, optimizer, schedule, step, IteRand state."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.step,
                "iterand": self.iterand.state_dict() if self.iterand is not None else None}

    def load_state_dict(self, state: dict, strict: bool = True, assign: bool = False) -> None:  # noqa: ARG002
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

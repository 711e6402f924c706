"""The meta-objective: what the outer loop learns and the inner loop adapts, and the query losses after adaptation.

:class:`MetaLoss` owns the method roles, the inner loop and the execution path; its :meth:`MetaLoss.losses` is a
function of the outer parameters (per-task query losses and metrics, [B] each, differentiable), and
:meth:`MetaLoss.backward` puts their mean's gradient into the outer parameters' ``.grad`` (the per-task loop path
one task's graph at a time). :func:`meta_loss` is the one-call form. The optimizer, schedule, IteRand, collective
and the rest of training are :class:`~metaticket.meta.learner.MetaLearner`'s, built on this.

- ``maml``: the outer loop meta-learns every parameter (the initialization); the inner loop adapts all.
- ``anil``: as MAML, but the inner loop adapts only the head (Raghu et al. 2020).
- ``boil``: as MAML, but the inner loop adapts only the body; the head keeps its meta-learned values
  (Oh et al. 2021).
- ``metaticket``: weights are frozen random values; the outer loop meta-learns only the mask scores (with
  ``learn_dense``, also every parameter no mask covers); the inner loop adapts the masked weights, biases, norms and
  head of each task, so pruned weights stay zero.
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

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from metaticket.core.norm import TaskBatchNorm1d
from metaticket.core.supermask import dense_like, masked_start, supermask_layers
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


def vmap_wins(model: nn.Module) -> bool:
    """Whether vmap over tasks beats a per-task loop, by what we measured on 2 CPU cores (benchmarks/meta_step.py).

    vmap materializes every task's copy of every weight at once; that pays only for small linear layers, where
    the loop's per-op overhead dominates (Omniglot MLP width 1: 100 vs 130 ms per MAML meta-step; width 2: 270 vs
    205 ms). Over convolutions it is 2-3x slower.
    """
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return False
    return max((m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)), default=0) <= VMAP_MAX_WEIGHT


def full_precision(logits: Tensor) -> Tensor:
    """Autocast's bfloat16 logits as float32 (the loss and its gradient in full precision); others unchanged."""
    return logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits


def choose_vectorize(model: nn.Module, vectorize: str = "auto") -> str:
    """How a meta-batch of ``model`` runs, the one place ``auto`` is decided: ``factored`` for a chain of Linear,
    BatchNorm1d and activations (:func:`~metaticket.meta.factored.chain_of` of its dense twin), else ``vmap`` where
    :func:`vmap_wins`, else ``loop``; an explicit choice is returned as it is (``factored`` refused for a model that
    is no chain)."""
    twin = dense_like(model)
    return _choose(vectorize, chain_of(twin) is not None, twin)


def _choose(vectorize: str, is_chain: bool, twin: nn.Module) -> str:
    if vectorize not in VECTORIZE:
        raise ValueError(f"unknown vectorize {vectorize!r}; known: {', '.join(VECTORIZE)}")
    if vectorize == "factored" and not is_chain:
        raise ValueError("vectorize='factored' runs models whose forward is a chain of Linear, BatchNorm1d, "
                         "elementwise activations, Flatten and Dropout; use vectorize='auto' for this model")
    if vectorize != "auto":
        return vectorize
    return "factored" if is_chain else ("vmap" if vmap_wins(twin) else "loop")


class MetaLoss:
    """The meta-objective of ``method`` over ``model``: :meth:`losses` (per-task query losses and metrics after
    the inner loop), :meth:`backward` (their mean's gradient into the outer parameters), :meth:`evaluate`,
    :meth:`adapt`, :meth:`clone`.

    Any ``nn.Module`` classifier works: BatchNorm layers are replaced by task-statistics BatchNorm (with a
    :class:`~metaticket.meta.modules.ModelChanged` warning), what the functional inner loop cannot run is refused
    with a ``ValueError`` naming the module. ``head`` names the classifier for ANIL/BOIL (a module name or a
    predicate over parameter names; default: the module called ``head``, else the last ``Linear``).
    ``precision="bfloat16"`` runs the query pass's matrix products in bfloat16 (:meth:`autocast`), and on the
    factored path the outer backward's too (:class:`~metaticket.meta.factored.FactoredInner`); ``loss`` is
    the task's loss (``"cross_entropy"``, ``"mse"``, an :class:`~metaticket.meta.objective.Objective` or a function
    of (predictions, targets) returning per-row losses); ``learn_dense`` (Meta-ticket) adds every parameter no mask
    covers to what the outer loop learns.

    ``to(...)``, ``double()``, ``train()``/``eval()`` move or switch the model and its dense twin together;
    ``parameters()``/``named_parameters()`` are what the outer loop learns (the mask scores for Meta-ticket).
    """

    def __init__(self, model: nn.Module, *, method: str = "metaticket", inner_lr: float = 0.4,
                 inner_steps: int = 1, inner_steps_test: int = 3, first_order: bool = False,
                 vectorize: str = "auto", head: str | Callable[[str], bool] | None = None,
                 precision: str = "float32", score_grad: str = "reference",
                 loss: str | Objective | RowLoss = "cross_entropy", learn_dense: bool = False) -> None:
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
        self.masked = any(True for _ in supermask_layers(model))
        if self.roles.needs_supermask and not self.masked:
            raise ValueError(f"method {method!r} needs a supermask model (model.mask set), got a dense one")
        if learn_dense and not self.roles.needs_supermask:
            raise ValueError(f"learn_dense adds the dense parameters to what Meta-ticket meta-learns; method "
                             f"{method!r} meta-learns every parameter already: leave learn_dense off")
        if vectorize not in VECTORIZE:
            raise ValueError(f"unknown vectorize {vectorize!r}; known: {', '.join(VECTORIZE)}")
        prepare_model(model, second_order=not first_order)
        self.model = model
        # the function the parameter dicts are applied to (``functional_call``): its own parameters are never used,
        # the model's are; it moves and switches mode with the model (its buffers are used)
        self.twin = dense_like(model)
        self.twin.requires_grad_(False)
        self.inner_lr, self.inner_steps, self.inner_steps_test = inner_lr, inner_steps, inner_steps_test
        self.first_order = first_order
        is_head, what = head_predicate(model, head)
        twin_names = [n for n, _ in self.twin.named_parameters()]
        self.inner_names = [n for n in twin_names if self.roles.adapts(n, is_head)]
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
        self.chain = chain_of(self.twin)
        # every masked layer under a task BatchNorm: one factor row fewer per step, which factors' cost counts
        self.normed = self.chain is not None and all(self.chain.normed(n) for n, _ in supermask_layers(model))
        self.vectorize = _choose(vectorize, self.chain is not None, self.twin)
        # what runs the batches factors would not suit (and every batch of a model that is no chain)
        self.per_task = "vmap" if vmap_wins(self.twin) else "loop"
        # outside vmap the fused batch_norm kernel is correct (and faster); under vmap only the plain-op version is
        fused = (self.per_task if self.vectorize == "factored" else self.vectorize) == "loop"
        for m in self.twin.modules():
            if isinstance(m, TaskBatchNorm1d):
                m.fused = fused
        self.channels_last = self.vectorize == "loop" and any(isinstance(m, nn.Conv2d) for m in self.twin.modules())
        self.training = True

    # ------------------------------------------------------------------------------------------- the model
    def to(self, *args, **kwargs) -> MetaLoss:  # noqa: ANN002, ANN003 (nn.Module.to's arguments)
        """Move (or cast) the model and its dense twin: ``nn.Module.to``'s arguments."""
        self.model.to(*args, **kwargs)
        self.twin.to(*args, **kwargs)
        return self

    def cpu(self) -> MetaLoss:
        return self.to("cpu")

    def cuda(self, device: int | str | torch.device | None = None) -> MetaLoss:
        return self.to(torch.device("cuda") if device is None else torch.device("cuda", device)
                       if isinstance(device, int) else torch.device(device))

    def double(self) -> MetaLoss:
        return self.to(torch.float64)

    def float(self) -> MetaLoss:
        return self.to(torch.float32)

    def train(self, mode: bool = True) -> MetaLoss:
        """Training mode for the model and its twin (dropout on, BatchNorm of each batch)."""
        self.training = mode
        self.model.train(mode)
        self.twin.train(mode)
        return self

    def eval(self) -> MetaLoss:
        return self.train(False)

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The parameters the outer loop learns (the mask scores for Meta-ticket), under the model's names."""
        own = dict(self.model.named_parameters())
        for n in self.outer_names:
            yield n, own[n]

    def parameters(self) -> Iterator[nn.Parameter]:
        for _, p in self.named_parameters():
            yield p

    def __call__(self, x: Tensor) -> Tensor:
        """The model itself (without adaptation) on x [N, ...] -> logits [N, ways]."""
        return self.model(x)

    # ------------------------------------------------------------------------------------------- the objective
    def autocast(self) -> torch.autocast:
        """``precision: bfloat16``: the query pass's matrix products (linear, conv; forward and backward) in
        bfloat16 with float32 accumulation. The inner loop stays float32, as do parameters, losses and optimizer
        state: with the inner loop in bfloat16 too, the meta-gradient's cosine to float32's fell to 0.19-0.49 at
        1 query per class (0.99 with the query pass only; benchmarks/README.md, precision). The factored path does
        not use autocast: it rounds the operands of its own products (the query pass's and the outer backward's)."""
        device = next(self.model.parameters()).device.type
        return torch.autocast(device, dtype=torch.bfloat16, enabled=self.precision == "bfloat16")

    def _forward(self, params: Params, x: Tensor) -> Tensor:
        return functional_call(self.twin, params, (x,))

    def initial_params(self, first_order: bool = True) -> tuple[Params, dict[str, Tensor]]:
        """The inner loop's start under the twin's names, and the masks of the masked weights' gradients.

        Masked weights enter as ``w * mask(scores)``: the mask is computed once per call and its
        straight-through gradient reaches the scores; the inner loop then keeps pruned weights at zero. The
        gradient masks are 0/1 in value; under ``score_grad="reference"`` they carry the mask's gradient too
        (``m * m``, or ``stop_grad(m) * m`` with ``first_order``: module docstring), else they are detached.
        """
        params, grad_masks, _ = self._start(first_order)
        return params, grad_masks

    def _start(self, first_order: bool, low: torch.dtype | None = None,
               ) -> tuple[Params, dict[str, Tensor], dict[str, tuple[Tensor, Tensor]]]:
        """:meth:`initial_params`, and with ``low`` each masked weight's and gradient mask's copies rounded to it
        (:func:`~metaticket.core.supermask.masked_start`), by the same names."""
        own = dict(self.model.named_parameters())
        params = {n: own[n] for n, _ in self.twin.named_parameters()}
        # the gradient masks: m * m (reference), stop_grad(m) * m (reference, first order) or detached (start)
        mask_grad = (1 if first_order else 2) if self.score_grad == "reference" else 0
        grad_masks, rounded = {}, {}
        for name, layer in supermask_layers(self.model):
            key = f"{name}.weight" if name else "weight"
            params[key], grad_masks[key], *low_pair = masked_start(layer, mask_grad, low)
            if low_pair:
                rounded[key] = tuple(low_pair)
        if self.channels_last:
            params = {k: self.layout(v) for k, v in params.items()}
        return params, grad_masks, rounded

    def layout(self, x: Tensor) -> Tensor:
        """``x`` in the memory order the convolutions run in: channels-last (NHWC) for a conv model in the loop
        path, where it measured 1.34x faster on 84 x 84 Conv4 meta-steps on a CPU (benchmarks/README.md, speed);
        unchanged otherwise. The stored parameters keep their order; only each step's working copies change."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def path(self, tasks: Tasks, steps: int) -> str:
        """The execution path this batch runs on: ``vectorize``, except that a factored learner runs batches whose
        sizes factors do not suit (:func:`~metaticket.meta.factored.fits`) with vmap or the per-task loop, as
        ``auto`` would."""
        if self.vectorize != "factored":
            return self.vectorize
        fit = fits(self.masked, tasks.support_x.shape[1], tasks.query_x.shape[1], steps, self.normed)
        return "factored" if fit and self.chain.runs(tasks.support_x) else self.per_task

    def losses(self, tasks: Tasks, steps: int | None = None, first_order: bool | None = None,
               ) -> tuple[Tensor, Tensor]:
        """Per-task query loss and metric (accuracy as a fraction for classification) after ``steps`` inner steps
        (default ``inner_steps``, ``first_order`` the learner's): [B] each, the losses differentiable in the outer
        parameters."""
        steps = self.inner_steps if steps is None else steps
        first_order = self.first_order if first_order is None else first_order
        mode = self.path(tasks, steps)
        low = torch.bfloat16 if self.precision == "bfloat16" and mode == "factored" else None
        params, hard, rounded = self._start(first_order, low)

        def one_task(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> tuple[Tensor, Tensor]:
            adapted = adapt(self._forward, params, self.inner_names, xs, ys, lr=self.inner_lr, steps=steps,
                            first_order=first_order, grad_masks=hard, loss=self.objective.loss)
            logits = self.logits(adapted, xq)
            return self.objective.loss(logits, yq), self.objective.score(logits.detach(), yq)

        if mode == "factored":
            inner = FactoredInner(self.chain.layers, params, self.inner_names, hard, len(tasks), lr=self.inner_lr,
                                  first_order=first_order, objective=self.objective, low=low, rounded=rounded)
            inner.adapt(tasks.support_x, tasks.support_y, steps)
            logits = inner.logits(tasks.query_x)  # [B, m, ways]; bfloat16: the products round, not the logits
            yq = tasks.query_y
            return self.objective.task_losses(logits, yq), self.objective.score(logits.detach(), yq)
        args = (tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y)
        if mode == "vmap":
            return vmap(one_task, randomness="different")(*args)  # dropout: each task its own draws
        results = [one_task(*(self.layout(a[i]) for a in args)) for i in range(len(tasks))]
        return torch.stack([r[0] for r in results]), torch.stack([r[1] for r in results])

    def backward(self, tasks: Tasks, steps: int, first_order: bool) -> tuple[Tensor, Tensor]:
        """Accumulate the gradient of the mean query loss into the outer parameters' ``.grad``.

        Returns the per-task query losses and accuracies ([B] each, detached). ``vmap`` and ``factored``: one
        graph over all tasks. ``loop``: one task's graph at a time from detached copies of the start point (peak
        memory of a single task), then one backward from the start point into the outer parameters (``w * mask``
        -> scores for Meta-ticket; the identity for MAML).
        """
        if self.path(tasks, steps) != "loop":
            losses, accs = self.losses(tasks, steps, first_order)
            losses.mean().backward()
            return losses.detach(), accs
        start, gmasks = self.initial_params(first_order)
        leaves = {k: v.detach().requires_grad_() for k, v in start.items()}
        # score_grad reference: the gradient masks carry the scores' gradient too, collected like the start's
        mask_leaves = {k: v.detach().requires_grad_() if v.requires_grad else v for k, v in gmasks.items()}
        n = len(tasks)
        losses, accs = [], []
        for i in range(n):
            adapted = adapt(self._forward, leaves, self.inner_names, self.layout(tasks.support_x[i]),
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
        self.check(tasks, values=False)
        self.train()
        return self.backward(tasks, self.inner_steps if steps is None else steps,
                                   self.first_order if first_order is None else first_order)

    def check(self, tasks: Tasks, values: bool) -> None:
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

    def clone(self, first_order: bool | None = None) -> Clone:
        """A differentiable copy of the network for one task, for a meta-training loop of your own (learn2learn's
        ``clone``): ``c = learner.clone(); c.adapt(loss(c(xs), ys)); loss(c(xq), yq).backward()`` puts the
        meta-gradient of that task into the outer parameters' ``.grad`` (:mod:`metaticket.meta.clone`). The
        start is this learner's (``w * mask`` for Meta-ticket, with its ``score_grad`` gradient masks), adapted
        with ``inner_lr``; ``first_order`` defaults to the learner's. Runs in float32 whatever ``precision``."""
        first = self.first_order if first_order is None else first_order
        self.train()
        params, grad_masks = self.initial_params(first)
        return Clone(lambda p, x: self._forward(p, self.layout(x)), params, self.inner_names, lr=self.inner_lr,
                     first_order=first, grad_masks=grad_masks)

    def adapt(self, tasks: Tasks, steps: int | None = None) -> list[Params]:
        """Adapted parameter dicts (dense-twin names, pruned weights zero) for each task of the batch."""
        return self._adapt_from(*self.initial_params(), tasks, steps)

    def _adapt_from(self, start: Params, hard: dict[str, Tensor], tasks: Tasks, steps: int | None) -> list[Params]:
        n_steps = self.inner_steps_test if steps is None else steps
        params = {k: v.detach() for k, v in start.items()}
        hard = {k: v.detach() for k, v in hard.items()}
        return [{k: v.detach() for k, v in adapt(self._forward, params, self.inner_names,
                                                 self.layout(tasks.support_x[i]),
                                                 tasks.support_y[i], lr=self.inner_lr, steps=n_steps,
                                                 first_order=True, grad_masks=hard,
                                                 loss=self.objective.loss).items()}
                for i in range(len(tasks))]

    def logits(self, params: Params, x: Tensor) -> Tensor:
        """The network with parameters ``params`` (e.g. one of :meth:`adapt`'s dicts) on x [N, ...] -> [N, ways] in
        the parameters' dtype: the query pass of training and evaluation (``precision="bfloat16"``: bfloat16
        products, float32 logits)."""
        with self.autocast():
            return full_precision(self._forward(params, self.layout(x)))

    @torch.no_grad()
    def inner_change(self, tasks: Tasks, steps: int | None = None) -> dict[str, float]:
        """How far the inner loop moves each adapted tensor: ``||theta' - theta|| / ||theta||``, mean over tasks.

        Keys are the dense twin's parameter names (``layers.0.weight``, ``head.bias``, ...); a tensor whose
        start is all zeros (a zero-initialized bias) reports the absolute norm of its change.
        """
        start, hard = self.initial_params()
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
        self.check(tasks, values=False)
        return self.losses(tasks, self.inner_steps_test, first_order=True)


def meta_loss(model: nn.Module, tasks: Tasks, *, method: str = "maml", steps: int | None = None,
              first_order: bool | None = None, **settings) -> tuple[Tensor, Tensor]:
    """The per-task query losses and metrics ([B] each) of ``method`` on ``tasks`` after ``steps`` inner steps
    (default ``inner_steps``): a differentiable function of ``model``'s outer parameters (all of them for MAML, the
    mask scores for Meta-ticket). ``settings`` are :class:`MetaLoss`'s (``inner_lr``, ``inner_steps``, ``vectorize``,
    ``score_grad``, ``loss``, ...). It builds a :class:`MetaLoss` (a dense twin of the model) per call: keep one for
    a training loop. ``meta_loss(model, tasks)[0].mean().backward()`` is one meta-gradient."""
    objective_ = MetaLoss(model, method=method, **({"first_order": first_order} if first_order is not None else {}),
                          **settings)
    return objective_.losses(tasks, objective_.inner_steps if steps is None else steps, objective_.first_order)

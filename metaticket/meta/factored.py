"""The inner loop of an MLP with each task's weight changes kept as factors, not as copies of the weights.

One SGD step on a linear layer ``y = x W^T + b`` changes ``W`` by ``-lr * G^T X``: ``X`` [n, in] is the layer's
input on the task's n support rows and ``G`` [n, out] the support loss's gradient at its output. After k steps
a task's weight is ``W - lr * sum_j G_j^T X_j``, and its product with new rows ``H`` [m, in] is

    H W^T - lr * (H Xc^T) Gc            (Xc, Gc: the k factors stacked, [K, in] and [K, out]),

one product with the shared ``W`` for every task of the meta-batch at once plus two small per-task products.
The loop path (:func:`metaticket.meta.inner.adapt`) instead writes, updates, reads and differentiates a copy of
every weight for every task: at MLP width 8 those weight-sized passes, not the arithmetic, were most of a
meta-step (benchmarks/README.md, speed). Masked weights (Meta-ticket: ``(G^T X) * M`` keeps pruned weights at
zero) have no low-rank form; their correction is ``sum_s G_s * ((H * X_s) M^T)``, which costs K times the
product of ``H`` with ``W``; it is used only while ``m * K`` is small (:func:`fits`), and the learner runs its
per-task loop otherwise.

Every product with a shared weight (support and query passes, and the input gradient of the support loss that
second order differentiates) leaves its weight gradient as row factors, multiplied out in one product per layer
when the outer backward reaches the weight (:class:`_Entry`): one weight-sized output where autograd wrote one per
use and summed them.

The result is the loop path's, up to float rounding (tests/test_factored.py compares meta-gradients in float64).
It runs any model whose forward is a chain of ``nn.Linear``, task BatchNorm1d, elementwise activations (modules
or functions), flattening and Dropout that is off (p = 0, or eval mode): the built-in MLP, a user's own MLP class
or an ``nn.Sequential``. :func:`chain_of` finds the chain by tracing the forward with ``torch.fx``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaticket.core.norm import TaskBatchNorm1d, TaskBatchNorm2d
from metaticket.meta.modules import ACTIVATIONS
from metaticket.meta.objective import CROSS_ENTROPY, Objective

# masked layers cost (rows per task) x (factor rows) products with the weight: beyond this many the per-task loop
# is faster (benchmarks/factored_masks.py, Meta-ticket, 5 support rows, meta-batch 16, one thread; at width 8:
# 5.4x faster at 5 query rows, 1.4x at 25, 1.1x at 35, 0.9x at 40, 0.5x at 75; at width 4: 1.1x at 35, 1.0x at 40)
MASKED_FACTOR_MAX = 175


def fits(masked: bool, support_rows: int, query_rows: int, steps: int, normed: bool = False) -> bool:
    """Whether factors beat the per-task loop for tasks of these sizes: always without masked layers; with them,
    while every pass multiplies at most :data:`MASKED_FACTOR_MAX` (row, factor row) pairs. ``normed``: every masked
    layer feeds a task BatchNorm, so each step leaves ``support_rows - 1`` factor rows (:meth:`_Linear.add_step`)."""
    factors = support_rows - 1 if normed and support_rows > 1 else support_rows
    return not masked or max(query_rows * factors * steps, support_rows * factors * (steps - 1)) <= MASKED_FACTOR_MAX


# elementwise functions a traced forward may call on the running tensor, with constant further arguments
_FUNCTIONS = (F.relu, torch.relu, F.relu6, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.leaky_relu, F.softplus,
              F.hardtanh, F.tanhshrink, F.softsign, torch.tanh, torch.sigmoid, F.tanh, F.sigmoid)
_METHODS = ("relu", "tanh", "sigmoid")
_CHAIN_MODULES = (nn.Linear, TaskBatchNorm1d, nn.Identity, nn.Flatten, nn.Dropout, *ACTIVATIONS)


class _ChainTracer(torch.fx.Tracer):
    """Keeps the modules a chain may hold as single calls (task BatchNorm's forward has a branch)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _CHAIN_MODULES) or super().is_leaf_module(m, qualname)


@dataclass(frozen=True)
class _Call:
    """An elementwise function of the running tensor, ``fn(h, *args, **kwargs)``; h [B, m, C]."""

    fn: object
    args: tuple
    kwargs: dict

    def __call__(self, h: Tensor) -> Tensor:
        return self.fn(h, *self.args, **self.kwargs) if callable(self.fn) else getattr(h, self.fn)(*self.args,
                                                                                                   **self.kwargs)


@dataclass(frozen=True)
class Chain:
    """A model's forward as a chain: ``layers`` (name, module or elementwise call) in the order it runs them, and
    whether its input is flattened before the first linear layer (else it must come in as [N, features])."""

    layers: list[tuple[str, object]]
    flattens: bool

    def runs(self, inputs: Tensor) -> bool:
        """Whether the factored loop computes what the model does on task inputs [B, N, ...]: every Dropout off
        (p = 0, or eval mode), and flat inputs unless the chain flattens them itself."""
        off = all(not (isinstance(m, nn.Dropout) and m.p > 0 and m.training) for _, m in self.layers)
        return off and (self.flattens or inputs.dim() == 3)

    def normed(self, name: str) -> bool:
        """Whether layer ``name``'s output goes straight into a task BatchNorm (Dropout that is off and Identity in
        between do not count), which makes its support gradients sum to zero over each task's rows."""
        names = [n for n, _ in self.layers]
        if name not in names:
            return False
        after = [m for _, m in self.layers[names.index(name) + 1:] if not isinstance(m, (nn.Dropout, nn.Identity))]
        return bool(after) and isinstance(after[0], TaskBatchNorm1d)


def _flattens_all(node: torch.fx.Node, module: nn.Module | None) -> bool:
    """Whether a flatten node (``nn.Flatten``, ``x.flatten(...)``, ``torch.flatten``) keeps the batch dim and
    flattens all the others, the only flatten a chain of linear layers can hold."""
    if module is not None:
        return module.start_dim == 1 and module.end_dim == -1
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    return start == 1 and end == -1


def chain_of(model: nn.Module) -> Chain | None:
    """``model``'s forward as a :class:`Chain` when the factored loop can run it, found by tracing with
    ``torch.fx``: one input, each step a function of the previous one only, each module called once. None for
    anything else (convolutions, branches, residuals, a module that does not trace)."""
    try:
        graph = _ChainTracer().trace(model)
    except Exception:  # noqa: BLE001 (whatever does not trace is not a chain)
        return None
    layers: list[tuple[str, object]] = []
    flattens, seen_linear, prev = False, False, None
    for node in graph.nodes:
        if node.op == "placeholder":
            if prev is not None:
                return None  # a second input
            prev = node
            continue
        if node.op == "output":
            return Chain(layers, flattens) if node.args[0] is prev and seen_linear else None
        others = [a for a in (*node.args[1:], *node.kwargs.values()) if isinstance(a, torch.fx.Node)]
        if prev is None or not node.args or node.args[0] is not prev or others or len(prev.users) != 1:
            return None
        module = model.get_submodule(node.target) if node.op == "call_module" else None
        is_flatten = isinstance(module, nn.Flatten) or (node.op == "call_method" and node.target == "flatten") or \
            (node.op == "call_function" and node.target is torch.flatten)
        if is_flatten:
            if not _flattens_all(node, module):
                return None
            flattens = flattens or not seen_linear
        elif module is not None:
            if not isinstance(module, _CHAIN_MODULES) or isinstance(module, TaskBatchNorm2d) or \
                    any(name == node.target for name, _ in layers):
                return None
            seen_linear = seen_linear or isinstance(module, nn.Linear)
            layers.append((node.target, module))
        elif node.op == "call_function" and node.target in _FUNCTIONS:
            layers.append((node.name, _Call(node.target, tuple(node.args[1:]), dict(node.kwargs))))
        elif node.op == "call_method" and node.target in _METHODS:
            layers.append((node.name, _Call(node.target, tuple(node.args[1:]), dict(node.kwargs))))
        else:
            return None
        prev = node
    return None


# ----------------------------------------------------------------------------------------------- shared weights
@dataclass
class _Low:
    """Where the factored path's matrix products may run in ``dtype`` (bfloat16 for ``precision: bfloat16``): the
    query pass and the outer backward, never the support steps. Rounding the support pass's forward products took
    the Omniglot meta-gradient's cosine to float32's to 0.05-0.58; the query pass's kept it at 0.97-0.999, the
    outer backward's at 1.000 (relative error 0.3-0.9%; benchmarks/README.md, "bfloat16 on the factored path").
    ``on`` turns true when the support steps are done (:meth:`FactoredInner.logits`)."""

    dtype: torch.dtype | None = None
    on: bool = False

    def active(self) -> bool:
        return self.dtype is not None and self.on


def _low_mm(a: Tensor, b: Tensor, dtype: torch.dtype, keep: bool = False) -> Tensor:
    """``a @ b`` with both rounded to ``dtype`` (float32 accumulation), returned in ``a``'s dtype (in ``dtype`` with
    ``keep``)."""
    out = a.to(dtype) @ b.to(dtype)
    return out if keep else out.to(a.dtype)


class _Bank:
    """The row factors of one shared weight's gradient, collected per backward pass: pairs (left [n, out],
    right [n, in]) whose products ``left^T right`` sum to the gradient. Each backward pass (autograd graph task)
    keeps its own list, so the pairs an inner-loop ``autograd.grad`` leaves behind never reach the outer one."""

    def __init__(self, collect: bool = True, low: _Low | None = None) -> None:
        self.collect = collect  # False: a weight whose gradient nobody asks for (no entry collects it)
        self.low = low or _Low()
        self.keep_low = False  # the entry is the weight's rounded copy: its gradient stays in the low dtype
        self.pairs: dict[int, list[tuple[Tensor, Tensor]]] = {}

    def add(self, left: Tensor, right: Tensor) -> None:
        if not self.collect:
            return
        self.pairs.setdefault(torch._C._current_graph_task_id(), []).append(
            (left.reshape(-1, left.shape[-1]), right.reshape(-1, right.shape[-1])))

    def gradient(self) -> Tensor | None:
        """This pass's pairs as one product, ``[all lefts]^T [all rights]`` [out, in] (None if there are none)."""
        pairs = self.pairs.pop(torch._C._current_graph_task_id(), [])
        self.pairs.clear()  # what inner-loop passes left (their weight gradients were not asked for)
        if not pairs:
            return None
        left = torch.cat([a for a, _ in pairs]) if len(pairs) > 1 else pairs[0][0]
        right = torch.cat([b for _, b in pairs]) if len(pairs) > 1 else pairs[0][1]
        return _low_mm(left.T, right, self.low.dtype, self.keep_low) if self.low.active() else left.T @ right


class _Entry(torch.autograd.Function):
    """Where a shared weight enters the factored graph: a 0-d token that every product with the weight takes.
    The products leave their weight gradients in the bank (as row factors) and pass a zero to the token; once they
    all have, this backward multiplies the factors out in one product and returns it as the weight's gradient. Per
    layer that is one weight-sized output where each use of the weight (support and query passes, the inner
    gradient's product) wrote its own and autograd summed them (width 8: three 8 MB products and two sums)."""

    @staticmethod
    def forward(ctx, weight: Tensor, bank: _Bank) -> Tensor:  # noqa: ANN001 (autograd's signature)
        ctx.bank = bank
        ctx.set_materialize_grads(False)
        return weight.new_zeros(())

    @staticmethod
    def backward(ctx, _token_grad: Tensor | None) -> tuple[Tensor | None, None]:  # noqa: ANN001
        return ctx.bank.gradient(), None


@dataclass
class _Shared:
    """What the products with one shared weight take besides their rows: the detached ``weight`` [out, in] and its
    ``bank`` (whose ``low`` switch the products follow), with the weight's rounded copy (made once, when needed)."""

    weight: Tensor
    bank: _Bank
    rounds: bool = True  # False: a layer whose input is the data has one low product, not worth the weight's cast
    _rounded: Tensor | None = None

    def product(self, h: Tensor, transposed: bool) -> Tensor:
        """``h @ weight^T``, or ``h @ weight`` when ``transposed``; rounded operands while ``low`` is active."""
        low = self.bank.low
        if not (self.rounds and low.active()):
            return h @ self.weight if transposed else F.linear(h, self.weight)
        if self._rounded is None:
            self._rounded = self.weight.to(low.dtype)
        x = h.to(low.dtype)
        return (x @ self._rounded if transposed else F.linear(x, self._rounded)).to(h.dtype)


class _Product(torch.autograd.Function):
    """``h @ weight^T`` (h [..., in] -> [..., out]), or with ``transposed`` ``h @ weight`` ([..., out] -> [..., in],
    the input gradient of the first, kept differentiable for the second-order meta-gradient). The weight comes in
    detached (in ``shared``), with its token (:class:`_Entry`); its gradient goes to the bank as the pair of rows
    whose product it is, never as a weight-sized tensor.

    This Function and the other hot ones here take ``ctx`` in ``forward``: with a separate ``setup_context`` torch
    binds every call's arguments to the signature in Python (``inspect``), 0.8-1.0 ms of a meta-step measured at
    MLP widths 1 and 8 (benchmarks/README.md, "The masked correction in bfloat16")."""

    @staticmethod
    def forward(ctx, h: Tensor, token: Tensor, shared: _Shared, transposed: bool) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(h, token)
        ctx.shared, ctx.transposed = shared, transposed
        ctx.set_materialize_grads(False)
        return shared.product(h, transposed)

    @staticmethod
    def backward(ctx, grad: Tensor | None) -> tuple:  # noqa: ANN001
        h, token = ctx.saved_tensors
        if grad is None:
            return None, None, None, None
        # the weight's gradient: grad^T h for h @ weight^T, h^T grad for h @ weight
        ctx.shared.bank.add(h, grad) if ctx.transposed else ctx.shared.bank.add(grad, h)
        dh = None
        if ctx.needs_input_grad[0]:  # under create_graph, a product of the same kind so it stays differentiable
            if torch.is_grad_enabled():
                dh = _Product.apply(grad, token, ctx.shared, not ctx.transposed)
            else:
                dh = ctx.shared.product(grad, not ctx.transposed)
        return dh, token.new_zeros(()), None, None


class _MaskProduct(torch.autograd.Function):
    """``rows @ mask^T`` for the masked correction (rows [N, in], mask [out, in] -> [N, out]). While ``low`` is
    active (the query pass, and the outer backward when it does not build a graph) its products round both operands
    to ``low.dtype``; the mask is cast once and its rounded copy serves the backward's ``grad @ mask`` too. The rows
    carry the differenced support factors (:meth:`_Linear.add_step`), which keeps what cancels over the support rows
    out of the rounding: rounding this forward moved the Omniglot meta-gradient's cosine to float32's by less than
    rounding the query pass's shared products did (benchmarks/README.md, "The masked correction in bfloat16")."""

    @staticmethod
    def forward(ctx, rows: Tensor, mask: Tensor, rounded: Tensor | None,  # noqa: ANN001 (autograd's signature)
                low: _Low) -> Tensor:
        ctx.low = low
        ctx.set_materialize_grads(False)
        if not low.active():
            ctx.save_for_backward(rows, mask, None, None)
            ctx.rounded_used = False
            return F.linear(rows, mask)
        ctx.rounded_used = rounded is not None  # the mask's gradient then goes to its rounded copy, in its dtype
        low_rows, low_mask = rows.to(low.dtype), (mask.to(low.dtype) if rounded is None else rounded)
        ctx.save_for_backward(rows, mask, low_rows, low_mask)
        return F.linear(low_rows, low_mask).to(rows.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor | None) -> tuple:  # noqa: ANN001
        rows, mask, low_rows, low_mask = ctx.saved_tensors
        if grad is None:
            return None, None, None, None
        low = ctx.low.active() and not torch.is_grad_enabled()
        d_rows = d_mask = None
        if ctx.needs_input_grad[0]:  # the forward's rounded copies where it made them (casting them again is free)
            d_rows = _low_mm(grad, mask if low_mask is None else low_mask, ctx.low.dtype) if low else grad @ mask
        slot = 2 if ctx.rounded_used else 1
        if ctx.needs_input_grad[slot]:
            d_mask = _low_mm(grad.T, rows if low_rows is None else low_rows, ctx.low.dtype, ctx.rounded_used) \
                if low else grad.T @ rows
        return (d_rows, None, d_mask, None) if ctx.rounded_used else (d_rows, d_mask, None, None)


@dataclass
class _Linear:
    """One linear layer of every task: shared start ``weight`` [out, in], per-task ``bias`` [B, out] (or None),
    0/1 ``mask`` of its gradient (or None), and the factors of the steps so far, [B, K, in] and [B, K, out]."""

    weight: Tensor
    bias: Tensor | None
    mask: Tensor | None
    rounded: tuple[Tensor, Tensor] | None = None  # weight and mask rounded to low.dtype (masked_start's copies)
    xs: list[Tensor] = field(default_factory=list)
    gs: list[Tensor] = field(default_factory=list)
    learned: bool = False  # whether the outer loop wants the weight's gradient
    normed: bool = False  # a task BatchNorm normalizes the output: each step's support gradients sum to zero
    low: _Low = field(default_factory=_Low)  # where products may round (precision: bfloat16)
    token: Tensor | None = None  # the weight's entry into the factored graph (None: no gradient flows)
    shared: _Shared | None = None  # what every product with the weight takes

    def __post_init__(self) -> None:
        rounded = self.rounded[0] if self.rounded is not None else None
        if not (self.weight.requires_grad and torch.is_grad_enabled()):
            self.shared = _Shared(self.weight, _Bank(collect=False, low=self.low), _rounded=rounded)
            return
        if self.learned:
            bank = _Bank(low=self.low)
            # with a rounded copy the gradient enters through it, in its dtype (masked_start forms the scores'
            # gradient there and casts once)
            bank.keep_low = rounded is not None and rounded.requires_grad
            self.token = _Entry.apply(rounded if bank.keep_low else self.weight, bank)
        else:  # a start made differentiable for the support steps only: its own gradient is never computed
            bank = _Bank(collect=False, low=self.low)
            self.token = self.weight.new_zeros(()).requires_grad_()
        self.shared = _Shared(self.weight.detach(), bank, _rounded=None if rounded is None else rounded.detach())

    def product(self, h: Tensor) -> Tensor:
        """h [..., in] @ weight^T; a learned weight's gradient from every such product comes out as one product
        (:class:`_Entry`). Without a gradient to carry (evaluation), the plain product."""
        if self.token is None:
            return self.shared.product(h, False)
        return _Product.apply(h, self.token, self.shared, False)

    def add_step(self, x: Tensor, g: Tensor) -> None:
        """Keep one support step's factors: x [B, n, in], the layer's input, and g [B, n, out], the support loss's
        gradient at its output. Under a task BatchNorm (``normed``) g's n rows sum to zero, so
        ``sum_s g_s x_s^T = sum_{s<n} g_s (x_s - x_n)^T``: n - 1 factor rows give the same change, and the
        masked correction costs (n - 1) / n of the products (4/5 at 1 shot, 5 ways). The meta-gradient is the
        same too, since every g the support pass can produce has that zero sum. Differencing also removes what
        the rows share, which no longer cancels only after rounding."""
        if self.normed and x.shape[1] > 1:
            x, g = x[:, :-1] - x[:, -1:], g[:, :-1]
        self.xs.append(x)
        self.gs.append(g)

    def __call__(self, h: Tensor, lr: float) -> Tensor:
        """h [B, m, in] -> [B, m, out] in the weight's dtype. With ``low`` active the product with the shared
        weight and the masked correction's product round their operands; the rest of the correction (the rows
        ``h * x_s``, the sum over the support rows) stays in the weight's dtype."""
        full = self.weight.dtype
        out = self.product(h).to(full)
        if self.bias is not None:
            out = out + self.bias.unsqueeze(1)
        if not self.xs:
            return out
        with torch.autocast(h.device.type, enabled=False):
            h = h.to(full)
            x, g = (self.xs[0], self.gs[0]) if len(self.xs) == 1 else (torch.cat(self.xs, 1), torch.cat(self.gs, 1))
            if self.mask is None:  # x [B, K, in], g [B, K, out]
                return torch.baddbmm(out, torch.bmm(h, x.transpose(1, 2)), g, alpha=-lr)
            # sum_s g[s, o] * sum_i h[r, i] x[s, i] mask[o, i]: the rows h * x_s through the mask, [B, m, K, out]
            b, m, k = h.shape[0], h.shape[1], x.shape[1]
            rows = (h.unsqueeze(2) * x.unsqueeze(1)).reshape(-1, x.shape[2])
            p = _MaskProduct.apply(rows, self.mask, None if self.rounded is None else self.rounded[1],
                                   self.low).view(b, m, k, -1)
            return torch.sub(out, (p * g.unsqueeze(1)).sum(2), alpha=lr)


@dataclass
class _Norm:
    """Task BatchNorm with per-task affine parameters [B, C] (or None)."""

    eps: float
    weight: Tensor | None
    bias: Tensor | None

    def __call__(self, h: Tensor) -> Tensor:
        """h [B, m, C]: each task normalized over its own m rows."""
        centered = h - h.mean(1, keepdim=True)
        var = (centered * centered).mean(1, keepdim=True)  # torch's var over a middle dim was 9% of a step
        out = centered * torch.rsqrt(var + self.eps)
        if self.weight is None:
            return out
        return out * self.weight.unsqueeze(1) + self.bias.unsqueeze(1)


class FactoredInner:
    """The inner loop of all B tasks of a meta-batch at once over an MLP's parameter dict ``params`` (dense-twin
    names; masked weights already multiplied by their masks), adapting ``inner_names`` with SGD at ``lr``.

    ``adapt(x, y, steps)`` runs the support steps (x [B, n, ...], y [B, n]); ``logits(x)`` then gives the adapted
    networks' logits [B, m, ways] on x [B, m, ...]. Second-order gradients flow through both unless
    ``first_order``. ``low`` (e.g. ``torch.bfloat16``): the products with the shared weights in the query pass and
    in the outer backward (input gradients, the weights' one product, the masked correction's backward) round
    their operands to it; the support steps stay in the parameters' dtype (:class:`_Low`).
    """

    def __init__(self, layers: Sequence[tuple[str, object]], params: dict[str, Tensor],
                 inner_names: Sequence[str], grad_masks: dict[str, Tensor], n_tasks: int, *, lr: float,
                 first_order: bool, objective: Objective = CROSS_ENTROPY, low: torch.dtype | None = None,
                 rounded: dict[str, tuple[Tensor, Tensor]] | None = None) -> None:
        self.lr, self.first_order, self.objective = lr, first_order, objective
        self.low = _Low(low)
        self.adapted = set(inner_names)
        self.ops: list[tuple[str, object]] = []

        def start(key: str, per_task: bool) -> Tensor | None:
            """The start of one parameter: a tensor the support loss is differentiated by when it adapts, one
            row per task (a view) when ``per_task``."""
            t = params.get(key)
            if t is None:
                return None
            if key in self.adapted and not t.requires_grad:
                t = t.detach().requires_grad_()
            return t.unsqueeze(0).expand(n_tasks, *t.shape) if per_task else t

        chain = Chain(list(layers), flattens=False)
        with torch.enable_grad():  # evaluation runs under no_grad; the support steps need their graph
            for name, m in layers:
                if isinstance(m, nn.Linear):
                    learned = params[f"{name}.weight"].requires_grad  # before start() makes a leaf of it
                    # normed: its output's support gradients sum to zero per task
                    self.ops.append((name, _Linear(start(f"{name}.weight", False), start(f"{name}.bias", True),
                                                   grad_masks.get(f"{name}.weight"),
                                                   (rounded or {}).get(f"{name}.weight"), learned=learned,
                                                   normed=chain.normed(name), low=self.low)))
                elif isinstance(m, TaskBatchNorm1d):
                    self.ops.append((name, _Norm(m.eps, start(f"{name}.weight", True), start(f"{name}.bias", True))))
                elif not isinstance(m, (nn.Dropout, nn.Identity)):  # Dropout runs only when off: Chain.runs
                    self.ops.append((name, m))
        linears = [op for _, op in self.ops if isinstance(op, _Linear)]
        if linears:  # the first layer's input is the data: no input gradient, so its query product alone would
            linears[0].shared.rounds = False  # round (0.3 ms saved at width 8 against a 0.8 ms cast of its weight)

        # what each support step differentiates by: (kind, layer name, op), kind "out" for a linear layer's output
        # (its weight's factors and its bias come from that gradient), "weight"/"bias" for a norm's parameters
        self.wrt: list[tuple[str, str, object]] = []
        for name, op in self.ops:
            if isinstance(op, _Linear):
                if f"{name}.weight" in self.adapted or (op.bias is not None and f"{name}.bias" in self.adapted):
                    self.wrt.append(("out", name, op))
            elif isinstance(op, _Norm) and op.weight is not None:
                self.wrt += [(part, name, op) for part in ("weight", "bias") if f"{name}.{part}" in self.adapted]

    def _forward(self, x: Tensor, taps: dict[str, tuple[Tensor, Tensor]] | None = None) -> Tensor:
        """x [B, m, ...] -> logits [B, m, ways]; ``taps`` collects each linear layer's (input, output)."""
        h = x.flatten(2)
        for name, op in self.ops:
            if isinstance(op, _Linear):
                out = op(h, self.lr)
                if taps is not None:
                    taps[name] = (h, out)
                h = out
            else:
                h = op(h)
        return h

    def logits(self, x: Tensor) -> Tensor:
        """The adapted networks on x [B, m, ...] -> logits [B, m, ways]. The support steps are done: from here on
        (this pass and the outer backward) products may round to ``low``."""
        self.low.on = True
        return self._forward(x)

    def adapt(self, x: Tensor, y: Tensor, steps: int) -> None:
        """``steps`` SGD steps of every task on its support set: x [B, n, ...], y [B, n] (labels) or [B, n, D]."""
        for _ in range(steps):
            with torch.enable_grad():
                taps: dict[str, tuple[Tensor, Tensor]] = {}
                logits = self._forward(x, taps)
                # each task's mean loss; their sum keeps every task's gradient its own
                loss = self.objective.task_losses(logits, y).sum()
                tensors = [taps[n][1] if kind == "out" else getattr(op, kind) for kind, n, op in self.wrt]
                grads = torch.autograd.grad(loss, tensors, create_graph=not self.first_order)
                for (kind, name, op), g in zip(self.wrt, grads):
                    if self.first_order:
                        g = g.detach()
                    if kind != "out":
                        setattr(op, kind, getattr(op, kind) - self.lr * g)
                        continue
                    if f"{name}.weight" in self.adapted:
                        h = taps[name][0]
                        op.add_step(h.detach() if self.first_order else h, g)
                    if op.bias is not None and f"{name}.bias" in self.adapted:
                        op.bias = op.bias - self.lr * g.sum(1)

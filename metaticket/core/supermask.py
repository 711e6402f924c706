"""Supermasks: frozen random weights times a binary mask learned through scores.

The mask rules have a straight-through estimator: the forward value is the 0/1 mask, the gradient passes to the
scores (``hard + (a - a.detach())`` in value and gradient; the threshold rule as an ``autograd.Function`` that
writes the mask in one pass). Every ``torch.func`` transform (grad, vmap, functional_call) works through them,
and nothing in a forward pass syncs with the host.

- ``topk`` (edge-popup, IteRand): per layer keep the ``round((1 - sparsity) * n)`` weights with the
  largest ``|score|``; the gradient reaches the scores through ``|score|`` as in edge-popup.
- ``threshold`` (Meta-ticket): keep the weights whose score is ``>=`` a per-layer threshold fixed at
  init as the ``init_sparsity`` quantile of the initial scores; sparsity then emerges from training.

``sparsity`` always means the fraction of weights pruned.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaticket.core.conv import Conv2d

MaskRule = Literal["topk", "threshold"]
WeightInit = Literal["kaiming_normal", "kaiming_uniform", "signed_constant"]
MASK_RULES: tuple[str, ...] = ("topk", "threshold")
WEIGHT_INITS: tuple[str, ...] = ("kaiming_normal", "kaiming_uniform", "signed_constant")


# ----------------------------------------------------------------------------------------------- masks
def topk_mask(scores: Tensor, sparsity: float, allowed: Tensor | None = None, allowed_count: int | None = None,
              ) -> Tensor:
    """Binary mask keeping exactly ``round((1 - sparsity) * n)`` entries of largest ``|scores|``.

    With ``allowed`` (0/1, shape of ``scores``, ``allowed_count`` ones) only allowed entries compete and ``n`` is
    ``allowed_count``: edge-popup inside a fixed random mask. Forward value is 0/1 (shape of ``scores``);
    backward is the identity onto ``|scores|``.
    """
    magnitude = scores.abs()
    flat = magnitude.flatten()
    ranked = flat.detach()
    n = flat.numel()
    if allowed is not None:
        ranked = ranked.masked_fill(allowed.flatten() == 0, -1.0)  # below every |score|
        n = int(allowed_count) if allowed_count is not None else int(allowed.sum())
    keep = int(round((1.0 - sparsity) * n))
    hard = torch.zeros_like(flat)
    if keep > 0:
        hard = hard.scatter(0, ranked.topk(keep, sorted=False).indices, 1.0)
    return hard.view_as(scores) + (magnitude - magnitude.detach())


def _ge(scores: Tensor, threshold: Tensor) -> Tensor:
    """``scores >= threshold`` as 0/1 values of the scores' dtype in one pass: the comparison written straight into
    a float tensor (0.19 ms on 2M entries of a CPU, where ``(s >= t).to(dtype)`` took 1.8 ms); vmap's batched
    tensors take the plain form."""
    if torch._C._functorch.is_batchedtensor(scores) or torch._C._functorch.is_batchedtensor(threshold):
        return (scores >= threshold).to(scores.dtype)
    return torch.ge(scores, threshold, out=torch.empty_like(scores))


class _ThresholdMask(torch.autograd.Function):
    """0/1 mask ``scores >= threshold`` whose gradient passes to the scores unchanged (straight through): the
    value and gradient of ``hard + (scores - scores.detach())`` without its two weight-sized passes."""

    generate_vmap_rule = True

    @staticmethod
    def forward(scores: Tensor, threshold: Tensor) -> Tensor:
        return _ge(scores.detach(), threshold.detach())

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 (autograd's signature)
        pass

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        return grad, None


def threshold_mask(scores: Tensor, threshold: Tensor) -> Tensor:
    """Binary mask ``scores >= threshold`` with a straight-through gradient onto ``scores``."""
    return _ThresholdMask.apply(scores, threshold)


class _MaskedStart(torch.autograd.Function):
    """A threshold layer's masked weight ``w * m`` and its mask ``m`` (the 0/1 value of ``scores >= threshold``) in
    two weight-sized passes, where the composed ops took seven forward and five backward. Gradients: ``w * g`` onto
    the scores from the masked weight (straight through), plus ``k * m * g`` from the mask: ``k = 2`` is ``m * m``'s,
    ``k = 1`` is ``stop_grad(m) * m``'s, ``k = 0`` leaves the mask without gradient. The weight gets ``m * g`` when
    it is learned.

    With ``low_weight`` (the weight rounded to a low dtype) it also returns both rounded, ``round(w * m)`` and ``m``
    in that dtype, for products that round their operands anyway. Their gradients then arrive in the low dtype and
    the scores' gradient is formed there, ``w_low * g + k * m * g``, and cast once: three weight-sized passes at half
    the width in place of two casts of the gradients and two float32 passes (benchmarks/README.md, "The scores'
    gradient in bfloat16")."""

    generate_vmap_rule = True

    @staticmethod
    def forward(scores: Tensor, weight: Tensor, threshold: Tensor, k: int,
                low_weight: Tensor | None) -> tuple[Tensor, ...]:
        hard = _ge(scores.detach(), threshold.detach())
        masked = weight.detach() * hard
        if low_weight is None:
            return masked, hard
        return masked, hard, masked.to(low_weight.dtype), hard.to(low_weight.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 (autograd's signature)
        _, weight, _, k, low_weight = inputs
        ctx.k = k
        ctx.save_for_backward(weight, output[1], low_weight, output[3] if low_weight is not None else None)
        ctx.set_materialize_grads(False)
        if k == 0:
            ctx.mark_non_differentiable(*output[1::2])

    @staticmethod
    def backward(ctx, g_masked: Tensor | None, g_mask: Tensor | None, g_masked_low: Tensor | None = None,
                 g_mask_low: Tensor | None = None) -> tuple:  # noqa: ANN001
        weight, hard, low_weight, low_hard = ctx.saved_tensors
        g_scores = g_weight = None
        if ctx.needs_input_grad[0]:
            g_scores = _score_grad(weight, hard, g_masked, g_mask, ctx.k)
            if low_weight is not None:
                low = _score_grad(low_weight, low_hard, g_masked_low, g_mask_low, ctx.k)
                if low is not None:
                    low = low.to(hard.dtype)  # then a float32 add: mixed-dtype elementwise ops are slower
                    g_scores = low if g_scores is None else g_scores.add_(low)
            if g_scores is None:
                g_scores = torch.zeros_like(hard)
        if ctx.needs_input_grad[1]:
            parts = [hard * g for g in (g_masked, g_masked_low) if g is not None]
            g_weight = sum(parts[1:], parts[0]) if parts else None
        return g_scores, g_weight, None, None, None


def _score_grad(weight: Tensor, hard: Tensor, g_masked: Tensor | None, g_mask: Tensor | None,
                k: int) -> Tensor | None:
    """``weight * g_masked + k * hard * g_mask`` with absent gradients left out (None when both are)."""
    out = weight * g_masked if g_masked is not None else None
    if k and g_mask is not None:
        out = torch.addcmul(out, hard, g_mask, value=k) if out is not None else hard * g_mask * k
    return out


# each layer's weight rounded to a low dtype, kept beside the layer rather than on it, so that deepcopy, pickling
# and state_dict never carry it; an entry goes with its layer
_ROUNDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _rounded_weight(layer: SupermaskMixin, dtype: torch.dtype) -> Tensor:
    """``layer.weight`` rounded to ``dtype``, cast once and kept until the weight changes (IteRand or a load edit
    it in place, which bumps its version; ``to()`` makes a new tensor)."""
    w = layer.weight
    key = (dtype, w.device, w.data_ptr(), w._version)
    kept = _ROUNDED.get(layer)
    if kept is None or kept[0] != key:
        kept = (key, w.detach().to(dtype))
        _ROUNDED[layer] = kept
    return kept[1]


def masked_start(layer: SupermaskMixin, mask_grad: int, low: torch.dtype | None = None) -> tuple[Tensor, ...]:
    """``(weight * mask, gradient mask)`` of a supermask layer, both shaped like its weight: the masked weight with
    the mask's straight-through gradient, and a 0/1 tensor equal to the mask whose own gradient reaches the scores
    as ``m * m``'s (``mask_grad = 2``), ``stop_grad(m) * m``'s (1) or not at all (0, detached). Threshold layers
    without a source take the fused :class:`_MaskedStart` (same values and gradients); other rules, and a layer whose
    ``mask`` is not the built-in one (a subclass's or a patched mask, e.g. a non-binary one), compose ops on
    ``layer.mask()``.

    ``low`` (e.g. ``torch.bfloat16``): two more, both rounded to ``low``, with the same gradients (formed in
    ``low`` on the fused path); the composed path casts them."""
    if mask_grad not in (0, 1, 2):
        raise ValueError(f"mask_grad = {mask_grad!r}: 0 (no gradient), 1 (stop_grad(m) * m) or 2 (m * m)")
    builtin = type(layer).mask is SupermaskMixin.mask and "mask" not in vars(layer)
    if builtin and layer.mask_rule == "threshold" and layer.source is None:
        rounded = _rounded_weight(layer, low) if low is not None else None
        return _MaskedStart.apply(layer.scores, layer.weight, layer.threshold, mask_grad, rounded)
    m = layer.mask()
    grad_mask = m.detach() if mask_grad == 0 else (m.detach() * m if mask_grad == 1 else m * m)
    masked = layer.weight * m
    return (masked, grad_mask) if low is None else (masked, grad_mask, masked.to(low), grad_mask.to(low))


def quantile_threshold(scores: Tensor, q: float) -> Tensor:
    """The ``q`` quantile of ``scores`` (an actual element, so ``q = 0`` keeps every entry)."""
    flat = scores.detach().flatten()
    k = 1 + int(round(q * (flat.numel() - 1)))
    return flat.kthvalue(k).values.clone()


# ----------------------------------------------------------------------------------------------- inits
def fan_in(shape: torch.Size) -> int:
    """Fan-in of a Linear ``[out, in]`` or Conv ``[out, in, *k]`` weight."""
    return int(math.prod(shape[1:]))


def _portable_randn(shape: torch.Size, generator: torch.Generator | None, device: torch.device | str | None) -> Tensor:
    """Standard normal float32 draws that are the same bits on every x86 CPU for a given generator state.

    Why float64 first: torch's float32 ``randn`` on CPU runs a vectorized kernel (SLEEF log/sin/cos) only in its AVX2
    build; the default and AVX-512 builds run the scalar one, and the two differ in the last bits (measured here with
    ``ATEN_CPU_CAPABILITY=default`` vs ``avx2``). The float64 kernel is the scalar one in every build.
    """
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float64).float()


def sample_init(shape: torch.Size, init: str, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> Tensor:
    """Draw a weight tensor from a ReLU-gain Kaiming distribution (fan-in mode).

    ``signed_constant`` is ``sign(w) * gain / sqrt(fan_in)`` with the sign of a normal draw.
    """
    std = math.sqrt(2.0) / math.sqrt(fan_in(shape))
    if init not in WEIGHT_INITS:
        raise ValueError(f"unknown weight init {init!r}; known: {', '.join(WEIGHT_INITS)}")
    target = torch.device(device) if device is not None else torch.get_default_device()
    if target.type == "meta":  # a build for shapes only (a ticket's size check): torch's meta draws took 6.5 s
        return torch.empty(shape, device="meta")
    if init == "kaiming_normal":
        return _portable_randn(shape, generator, device) * std
    if init == "kaiming_uniform":
        bound = math.sqrt(3.0) * std
        return (torch.rand(shape, generator=generator, device=device) * 2 - 1) * bound
    return _portable_randn(shape, generator, device).sign() * std  # signed_constant


# ----------------------------------------------------------------------------------------------- layers
class SupermaskMixin:
    """Shared state of supermask layers: frozen ``weight``, learned ``scores``, a mask rule.

    ``weight`` stays an ``nn.Parameter`` (with ``requires_grad=False``) so it is visible to
    state_dicts and to the meta inner loop; optimizers choose what they see by parameter name.
    """

    weight: nn.Parameter
    scores: nn.Parameter
    threshold: Tensor

    def _init_supermask(self, mask: str, sparsity: float, init: str, init_sparsity: float,
                        generator: torch.Generator | None) -> None:
        if mask not in MASK_RULES:
            raise ValueError(f"unknown mask rule {mask!r}; known: {', '.join(MASK_RULES)}")
        if not 0.0 <= sparsity < 1.0 or not 0.0 <= init_sparsity < 1.0:
            raise ValueError("sparsity and init_sparsity must lie in [0, 1)")
        self.mask_rule = mask
        self.topk_sparsity = float(sparsity)  # of the weights that compete: all, or a source's kept ones
        self.init = init
        shape = self.weight.shape
        with torch.no_grad():
            self.weight.copy_(sample_init(shape, init, generator))
        self.weight.requires_grad_(False)
        # Scores: Kaiming uniform (ReLU gain), as in edge-popup and Meta-ticket.
        self.scores = nn.Parameter(sample_init(shape, "kaiming_uniform", generator))
        thr = quantile_threshold(self.scores, init_sparsity) if mask == "threshold" else torch.tensor(0.0)
        self.register_buffer("threshold", thr)
        self.register_buffer("source", None)  # a fixed random mask the learned mask must lie inside (or None)
        self.source_count = 0
        self.init_scale = 1.0  # factor on the init distribution (weights and IteRand re-draws); see scale_weights

    @torch.no_grad()
    def scale_weights(self, factor: float) -> None:
        """Multiply the frozen weights, and the distribution IteRand re-draws from, by ``factor``."""
        self.weight.mul_(factor)
        self.init_scale *= factor

    @torch.no_grad()
    def set_source(self, source: Tensor) -> None:
        """Restrict the mask to the ones of ``source`` (0/1, shape of ``weight``): a sparse random source network.

        For ``topk``, ``topk_sparsity`` then is the fraction of the source's kept weights that the mask prunes;
        :attr:`sparsity` stays the fraction of the layer's weights pruned.
        """
        if source.shape != self.weight.shape:
            raise ValueError(f"source mask of shape {tuple(source.shape)} for a weight {tuple(self.weight.shape)}")
        self.source = source.to(device=self.weight.device, dtype=self.weight.dtype).clone()
        self.source_count = int(self.source.sum())

    @property
    def sparsity(self) -> float:
        """The fraction of this layer's weights the mask prunes: for ``topk`` what the rule keeps of the weights
        that compete (all, or a source's ones), for ``threshold`` the current mask's (it emerges from the scores)."""
        n = self.weight.numel()
        if self.mask_rule == "topk":
            competing = self.source_count if self.source is not None else n
            return 1.0 - int(round((1.0 - self.topk_sparsity) * competing)) / n
        return 1.0 - float(self.hard_mask().sum()) / n

    def mask(self, scores: Tensor | None = None) -> Tensor:
        """The 0/1 mask (shape of ``weight``) with a straight-through gradient to the scores."""
        s = self.scores if scores is None else scores
        if self.mask_rule == "topk":
            return topk_mask(s, self.topk_sparsity, self.source, self.source_count)
        m = threshold_mask(s, self.threshold)
        return m if self.source is None else m * self.source

    def hard_mask(self) -> Tensor:
        """The 0/1 mask without gradient."""
        return self.mask().detach()

    def masked_weight(self) -> Tensor:
        return self.weight * self.mask()

    def extra_repr(self) -> str:  # shown by print(model)
        rule = f"topk(sparsity={self.topk_sparsity})" if self.mask_rule == "topk" else "threshold"
        return f"{super().extra_repr()}, mask={rule}, init={self.init}"


class SupermaskLinear(SupermaskMixin, nn.Linear):
    """``y = x @ (weight * mask(scores)).T + bias``; x: [N, in], y: [N, out]."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, mask: str = "topk",
                 sparsity: float = 0.5, init: str = "kaiming_normal", init_sparsity: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias)
        if bias:
            nn.init.zeros_(self.bias)
        self._init_supermask(mask, sparsity, init, init_sparsity, generator)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.masked_weight(), self.bias)


class SupermaskConv2d(SupermaskMixin, Conv2d):
    """2-D convolution with weight ``weight * mask(scores)``; x: [N, C_in, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int = 0, bias: bool = False, *, mask: str = "topk",
                 sparsity: float = 0.5, init: str = "kaiming_normal", init_sparsity: float = 0.0,
                 generator: torch.Generator | None = None, **conv_kwargs) -> None:
        Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                           bias=bias, **conv_kwargs)
        if bias:
            nn.init.zeros_(self.bias)
        self._init_supermask(mask, sparsity, init, init_sparsity, generator)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.masked_weight(), self.bias)


SUPERMASK_LAYERS = (SupermaskLinear, SupermaskConv2d)


def supermask_layers(model: nn.Module) -> Iterator[tuple[str, SupermaskMixin]]:
    """(qualified name, layer) for every supermask layer of ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, SUPERMASK_LAYERS):
            yield name, module


def masks(model: nn.Module) -> dict[str, Tensor]:
    """``{"<layer>.weight": mask}`` for every supermask layer, each with its straight-through gradient."""
    return {(f"{name}.weight" if name else "weight"): layer.mask() for name, layer in supermask_layers(model)}


# ----------------------------------------------------------------------------------------------- IteRand
@torch.no_grad()
def rerandomize(model: nn.Module, rate: float, generator: torch.Generator | None = None) -> float:
    """IteRand: re-sample a Bernoulli(``rate``) fraction of the currently pruned weights.

    New values come from each layer's own init distribution; kept weights stay bit-identical.
    Returns the fraction of all supermask weights that were re-sampled.
    """
    changed = 0
    total = 0
    for _, layer in supermask_layers(model):
        w = layer.weight
        pruned = layer.mask().detach() == 0
        pick = torch.rand(w.shape, generator=generator).to(w.device) < rate
        fresh = sample_init(w.shape, layer.init, generator).to(device=w.device, dtype=w.dtype) * layer.init_scale
        where = pruned & pick
        w.copy_(torch.where(where, fresh, w))
        changed += int(where.sum())
        total += w.numel()
    return changed / max(total, 1)


class IteRandSchedule:
    """Calls :func:`rerandomize` every ``every`` steps (``every = 0`` disables it)."""

    def __init__(self, every: int, rate: float, seed: int) -> None:
        self.every = every
        self.rate = rate
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, model: nn.Module, step: int) -> float | None:
        """After finishing ``step`` (1-based): re-randomize if due; return the fraction changed."""
        if self.every <= 0 or self.rate <= 0 or step % self.every != 0:
            return None
        return rerandomize(model, self.rate, self.generator)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


@torch.no_grad()
def scale_fan_in(model: nn.Module) -> None:
    """edge-popup's "scaled" init: every top-k supermask layer's weights times ``1 / sqrt(1 - sparsity)``.

    A layer that keeps a ``1 - s`` fraction of its inputs then has the output variance of a dense Kaiming layer;
    without it (and without normalization layers, as in Conv6) the signal shrinks by ``sqrt(1 - s)`` per layer.
    """
    for _, layer in supermask_layers(model):
        if layer.mask_rule == "topk":
            layer.scale_weights(1.0 / math.sqrt(1.0 - layer.topk_sparsity))


# ----------------------------------------------------------------------------------------------- reports
def masked_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, layer) of every layer with a ``hard_mask()`` (supermask and fixed-random-mask layers)."""
    for name, module in model.named_modules():
        if callable(getattr(module, "hard_mask", None)):
            yield name, module


@torch.no_grad()
def sparsity_report(model: nn.Module) -> dict[str, float | dict[str, float]]:
    """Fraction pruned per masked layer (``layers``) and over all of them (``overall``)."""
    layers: dict[str, float] = {}
    pruned = 0
    total = 0
    for name, layer in masked_layers(model):
        hard = layer.hard_mask()
        n_pruned = int((hard == 0).sum())
        layers[name] = n_pruned / hard.numel()
        pruned += n_pruned
        total += hard.numel()
    return {"overall": pruned / total if total else 0.0, "layers": layers}


# ----------------------------------------------------------------------------------------------- convert
def convert(module: nn.Module, *, mask: str = "topk", sparsity: float = 0.5, init: str = "kaiming_normal",
            init_sparsity: float = 0.0, keep_dense: Iterable[str] = (), generator: torch.Generator | None = None,
            ) -> nn.Module:
    """Replace (in place) every ``nn.Linear``/``nn.Conv2d`` of ``module`` by a supermask layer of the same shape.

    Layers whose qualified name is in ``keep_dense`` (e.g. ``"head"``) stay as they are. Weights are re-drawn
    from ``init``; biases are kept. Returns ``module``.
    """
    keep = set(keep_dense)
    unknown = keep - {name for name, _ in module.named_modules()}
    if unknown:
        raise ValueError(f"keep_dense names {sorted(unknown)} are not modules of the model")
    for name, child in list(module.named_modules()):
        if name in keep or isinstance(child, SUPERMASK_LAYERS):
            continue
        opts = dict(mask=mask, sparsity=sparsity, init=init, init_sparsity=init_sparsity, generator=generator)
        if type(child) not in (nn.Linear, nn.Conv2d):
            continue
        new = same_geometry(child, SupermaskLinear, SupermaskConv2d, **opts)
        if child.bias is not None:
            with torch.no_grad():
                new.bias.copy_(child.bias)
        new.to(device=child.weight.device)
        replace_module(module, name, new)
    return module


def same_geometry(layer: nn.Module, linear: Callable[..., nn.Module] = nn.Linear,
                  conv: Callable[..., nn.Module] = Conv2d, **extra: Any) -> nn.Module:
    """A new ``linear`` (for a layer with ``in_features``) or ``conv`` layer of ``layer``'s geometry: features or
    channels, kernel, stride, padding, dilation, groups and whether it has a bias; ``extra`` goes to the new class.
    Its values are the new class's own (copy them yourself)."""
    bias = layer.bias is not None
    if hasattr(layer, "in_features"):
        return linear(layer.in_features, layer.out_features, bias=bias, **extra)
    return conv(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                dilation=getattr(layer, "dilation", 1), groups=getattr(layer, "groups", 1), bias=bias, **extra)


def dense_like(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose supermask layers are plain ``nn.Linear``/``nn.Conv2d`` with the same names.

    Used as the function in ``torch.func.functional_call`` once masks are applied to the weights
    outside the layers, so the mask of a meta-step is computed once, not at every inner step.
    """
    twin = copy.deepcopy(model)
    for name, layer in list(supermask_layers(twin)):
        plain = same_geometry(layer)
        plain.to(device=layer.weight.device)
        replace_module(twin, name, plain)
    return twin


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    if not name:
        raise ValueError("cannot replace the root module itself")
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)

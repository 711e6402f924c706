"""What a functional inner loop needs from a user's model, made so or refused in one line.

The inner loop runs the model as a function of a parameter dict (``torch.func.functional_call``), per task and
possibly under ``vmap``. Two things break that silently or loudly in ordinary models:

- BatchNorm with running statistics updates buffers inside the functional call (torchvision's ResNet crashes at
  the first ``adapt``), and torch's fused ``batch_norm`` gives wrong second-order meta-gradients under ``vmap``
  (3% off in float64, measured with a stock ``nn.BatchNorm1d(track_running_stats=False)``). Every
  ``nn.BatchNorm1d``/``nn.BatchNorm2d`` is therefore replaced by the task-statistics BatchNorm of
  :mod:`metaticket.core.norm` (the same affine parameters and eps; each task normalizes with its own batch statistics,
  in training and at test, as MAML does), with a notice.
- Modules the replacement cannot cover (BatchNorm3d, instance norms with running statistics, lazy modules) are
  refused with the module's name, and so, for second-order meta-gradients, are activations torch cannot
  differentiate twice (``nn.Hardsigmoid``, as in MobileNetV3's squeeze-excitation: ``first_order=True`` runs it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter

from metaticket.core.norm import TaskBatchNorm1d, TaskBatchNorm2d
from metaticket.core.supermask import replace_module

# parameter-free elementwise modules, probed once per type for a second derivative
_ACT = nn.modules.activation
ACTIVATIONS = tuple(c for c in vars(_ACT).values()
                    if isinstance(c, type) and issubclass(c, nn.Module) and c.__module__ == _ACT.__name__
                    and c.__name__ not in ("MultiheadAttention", "PReLU", "Softmax", "Softmin", "LogSoftmax",
                                           "Softmax2d", "GLU", "Threshold", "RReLU"))


class ModelChanged(UserWarning):
    """The learner replaced modules of the model it was given (see :func:`prepare_model`)."""


def _second_derivative_error(module: nn.Module) -> str | None:
    """Why torch cannot differentiate the activation ``module`` twice (None when it can)."""
    x = torch.linspace(-3, 3, 7, dtype=torch.float64, requires_grad=True)
    try:
        (g,) = torch.autograd.grad(module(x * 1.0).sum(), x, create_graph=True)  # * 1: inplace=True modules
        if g.requires_grad:
            torch.autograd.grad(g.sum(), x, allow_unused=True)
    except (RuntimeError, NotImplementedError) as e:
        return str(e).strip().splitlines()[0][:100]
    return None


def prepare_model(model: nn.Module, second_order: bool = True) -> list[str]:
    """Make ``model`` (in place) runnable by the functional inner loop; returns the names of replaced modules.

    Raises ``ValueError`` naming the first module it cannot handle (with ``second_order``, also activations
    without a second derivative)."""
    probed: dict[type, str | None] = {}
    for name, module in list(model.named_modules()):
        if second_order and isinstance(module, ACTIVATIONS):
            if type(module) not in probed:
                probed[type(module)] = _second_derivative_error(module)
            if probed[type(module)] is not None:
                raise ValueError(f"module {name!r} ({type(module).__name__}) has no second derivative in torch "
                                 f"({probed[type(module)]}); meta-train with first_order=True or replace it")
        if any(isinstance(p, UninitializedParameter) for p in module.parameters(recurse=False)):
            raise ValueError(f"module {name!r} ({type(module).__name__}) has uninitialized (lazy) parameters; run one "
                             f"forward pass on an example batch before building the learner")
        if isinstance(module, TaskBatchNorm1d):
            continue
        if isinstance(module, (nn.BatchNorm3d, nn.modules.instancenorm._InstanceNorm)) and \
                getattr(module, "track_running_stats", False):
            raise ValueError(f"module {name!r} ({type(module).__name__}) updates running statistics, which a "
                             f"functional inner loop cannot; use track_running_stats=False or a BatchNorm1d/2d")
        if isinstance(module, nn.SyncBatchNorm):
            raise ValueError(f"module {name!r} is a SyncBatchNorm; convert it back to BatchNorm2d before "
                             f"building the learner (tasks are normalized one by one)")
    replaced = []  # refusals come first: a refused model is left as it was
    for name, module in list(model.named_modules()):
        if isinstance(module, TaskBatchNorm1d):
            continue
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            cls = TaskBatchNorm2d if isinstance(module, nn.BatchNorm2d) else TaskBatchNorm1d
            new = cls(module.num_features, eps=module.eps, affine=module.affine)
            if module.affine:
                with torch.no_grad():
                    new.weight.copy_(module.weight)
                    new.bias.copy_(module.bias)
                new.weight.requires_grad_(module.weight.requires_grad)
                new.bias.requires_grad_(module.bias.requires_grad)
            ref = next(module.parameters(), None)
            if ref is not None:
                new.to(device=ref.device, dtype=ref.dtype)
            new.train(module.training)
            replace_module(model, name, new)
            replaced.append(name)
    if replaced:
        shown = ", ".join(replaced[:4]) + (f" and {len(replaced) - 4} more" if len(replaced) > 4 else "")
        warnings.warn(f"replaced {len(replaced)} BatchNorm layer(s) ({shown}) by task-statistics BatchNorm (each "
                      f"task normalizes with its own batch; running statistics are not used)", ModelChanged,
                      stacklevel=3)
    return replaced


def head_predicate(model: nn.Module, head: str | Callable[[str], bool] | None) -> tuple[Callable[[str], bool], str]:
    """(which parameter names belong to the classifier head, a description of it).

    ``head``: a module name (``"fc"``, ``"classifier.3"``), a predicate over parameter names, or None: the module
    named ``head`` (every registered model has one), else the last ``Linear`` of the model."""
    if callable(head):
        return head, "the head predicate"
    modules = dict(model.named_modules())
    if head is None:
        if "head" in modules:
            head = "head"
        else:
            linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
            if not linears:
                raise ValueError("the model has no module named 'head' and no Linear layer; pass head= (a module "
                                 "name or a predicate over parameter names)")
            head = linears[-1]
    elif head not in modules:
        raise ValueError(f"head={head!r} is not a module of the model; pass one of its module names, e.g. "
                         f"{', '.join(n for n in list(modules)[-3:] if n)}")
    prefix = f"{head}."
    return (lambda n: n.startswith(prefix)), f"head {head!r}"

"""The supervised methods (``train.method``) and what each builds and learns: the table the builder, the training
loop and the sweep read, like ``metaticket.meta.learner.METHODS`` for the meta-learners."""

from __future__ import annotations

from dataclasses import dataclass, replace

from metaticket.config import TrainConfig
from metaticket.errors import MetaticketError


@dataclass(frozen=True)
class SupervisedMethod:
    """``supermask``: supermask layers whose scores learn (top-k ``model.sparsity`` unless inside a random mask);
    ``slots``: Slot Machine layers (``model.slots`` values per connection, their scores learn); ``random_mask``: a
    fixed random mask of overall ``model.random_sparsity`` around the layers. Whatever has no scores learns its
    weights. IteRand (``train.rerand_every > 0``) applies to every method with a supermask."""

    supermask: bool = False
    slots: bool = False
    random_mask: bool = False

    @property
    def learns_weights(self) -> bool:
        return not (self.supermask or self.slots)


METHODS: dict[str, SupervisedMethod] = {
    "dense": SupervisedMethod(),
    "edgepopup": SupervisedMethod(supermask=True),
    "slot": SupervisedMethod(slots=True),
    "randommask": SupervisedMethod(random_mask=True),  # train.randommask_learns: scores adds edge-popup inside it
}
LEARNS = ("weights", "scores")


def method_of(train: TrainConfig) -> SupervisedMethod:
    """The method ``train`` runs (``randommask`` learning ``scores`` is edge-popup inside the random mask)."""
    if train.method not in METHODS:
        raise MetaticketError(f"unknown training method {train.method!r}; known: {', '.join(METHODS)}")
    if train.randommask_learns not in LEARNS:
        raise MetaticketError(f"train.randommask_learns = {train.randommask_learns!r}; use one of: "
                              f"{', '.join(LEARNS)}")
    method = METHODS[train.method]
    if method.random_mask and train.randommask_learns == "scores":
        method = replace(method, supermask=True)
    if train.rerand_every and not method.supermask:
        raise MetaticketError(f"train.rerand_every = {train.rerand_every} turns IteRand on, which re-draws the pruned "
                              f"weights of a supermask; train.method {train.method} has none: use edgepopup (or "
                              f"randommask with randommask_learns: scores), or set train.rerand_every: 0")
    return method


def method_label(method: str, rerand_every: int) -> str:
    """The name results tables give ``method`` (``train.method`` or ``meta.method``): itself, ``iterand`` for
    edge-popup with IteRand (``rerand_every > 0``), or ``<method>+iterand`` for any other method with it."""
    if not rerand_every:
        return method
    return "iterand" if method == "edgepopup" else f"{method}+iterand"

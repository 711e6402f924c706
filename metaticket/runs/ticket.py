"""The compact ticket: a supermask network stored as its config (architecture + seed), its mask bits and the few
tensors that differ from what the seed regenerates.

A ticket holds
- the resolved config as YAML text (architecture, init, mask rule, ``run.seed``) and the class count;
- one bit per weight of every supermask layer (all layers packed into one ``uint8`` tensor), and for a Slot
  Machine network ``ceil(log2 K)`` bits per connection naming its chosen value (the K values come from the seed);
- ``resampled``: kept weights whose value is not the seed's draw any more (IteRand re-sampled them), stored
  explicitly as flat indices + values. Why explicit rather than replaying the re-sampling generator: IteRand
  re-samples the weights pruned *at that moment*, so a replay would need the mask history of the whole run.
  Pruned weights are not stored: they are zero in every forward pass, and the rebuilt network keeps the seed's
  draw there;
- ``dense``: every other parameter or buffer that differs from its regenerated value (learned biases, norms,
  a meta-learned head, BatchNorm running statistics; for a dense run, all of it);
- ``init_sha256``: SHA-256 of the network the seed regenerates (before any of the above), and ``sha256`` of
  the network it describes (masked weights and all other tensors). Loading rebuilds the network and checks
  both, so a torch version whose generator draws other numbers, or a corrupted file, is an error rather than a
  silently different network.

The file is a ``torch.save`` dict of tensors, strings and numbers, read with ``weights_only=True``.
A loaded supermask layer keeps its mask rule; its ``scores`` become the 0/1 mask bits (``threshold`` layers get
the threshold 0.5), so its forward pass is the exported network's.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from metaticket.config import Config, ConfigError, config_from_dict, config_yaml, parse_yaml
from metaticket.core.norm import TaskBatchNorm1d
from metaticket.core.slots import freeze_slots, index_bits, slot_layers
from metaticket.core.supermask import dense_like, supermask_layers
from metaticket.errors import MetaticketError
from metaticket.runs.checkpoint import load_checkpoint, save_atomic
from metaticket.runs.factory import build_network

FORMAT = "metaticket-ticket"
VERSION = 1  # slot layers added "slot_layers"/"slot_numel"/"slot_bits"; files without them read as before
_SHIFTS = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0], dtype=torch.uint8)


def pack_bits(bits: Tensor) -> Tensor:
    """bool/0-1 tensor (any shape, n elements) -> uint8 [ceil(n / 8)], most significant bit first."""
    flat = bits.detach().flatten().to(torch.uint8).cpu()
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) << _SHIFTS).sum(1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, n: int) -> Tensor:
    """uint8 [ceil(n / 8)] -> bool [n]; inverse of :func:`pack_bits`."""
    return ((packed.view(-1, 1) >> _SHIFTS) & 1).flatten()[:n].bool()


def _digest(tensors: list[tuple[str, Tensor]]) -> str:
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _mask_keys(model: nn.Module) -> set[str]:
    """State-dict keys a ticket represents by bits (scores and thresholds of supermask layers, slot scores)."""
    keys = set()
    for name, _ in supermask_layers(model):
        prefix = f"{name}." if name else ""
        keys.update({f"{prefix}scores", f"{prefix}threshold"})
    for name, _ in slot_layers(model):
        keys.add(f"{name}.scores" if name else "scores")
    return keys


def pack_index(index: Tensor, k: int) -> Tensor:
    """int tensor of values in [0, k) (n elements) -> uint8 [ceil(n * ceil(log2 k) / 8)], bit-packed."""
    bits = index_bits(k)
    flat = index.detach().flatten().cpu().long()
    planes = (flat.view(-1, 1) >> torch.arange(bits - 1, -1, -1)) & 1
    return pack_bits(planes)


def unpack_index(packed: Tensor, n: int, k: int) -> Tensor:
    """Inverse of :func:`pack_index`: int64 [n]."""
    bits = index_bits(k)
    planes = unpack_bits(packed, n * bits).view(n, bits).long()
    return (planes << torch.arange(bits - 1, -1, -1)).sum(1)


@torch.no_grad()
def effective_digest(model: nn.Module) -> str:
    """SHA-256 of what a network computes with: masked weights, mask bits and every other state tensor."""
    state = model.state_dict()
    skip = _mask_keys(model)
    masked: dict[str, Tensor] = {}
    for name, layer in supermask_layers(model):
        hard = layer.mask().detach() != 0
        key = f"{name}.weight" if name else "weight"
        masked[key] = torch.where(hard, layer.weight, torch.zeros_like(layer.weight))  # no -0.0
        masked[key + ":bits"] = pack_bits(hard)
    for name, layer in slot_layers(model):
        key = f"{name}.weight" if name else "weight"
        masked[key] = layer.weight
        masked[key + ":bits"] = pack_index(layer.scores.argmax(0), layer.k)
    items = [(k, masked.get(k, v)) for k, v in sorted(state.items()) if k not in skip]
    items += [(k, v) for k, v in sorted(masked.items()) if k not in state]
    return _digest(items)


def _init_digest(model: nn.Module) -> str:
    return _digest(sorted(model.state_dict().items()))


def _rebuild(build: Callable[[], nn.Module], like: nn.Module | None = None) -> nn.Module:
    """``build()``: a model of your own, untrained (it must draw the same values every call, e.g. from a seed).
    When the exported model went through a meta-learner (its BatchNorm replaced), the rebuilt one is prepared the
    same way."""
    from metaticket.meta.modules import prepare_model

    fresh = build()
    if not isinstance(fresh, nn.Module):
        raise MetaticketError(f"build() returned a {type(fresh).__name__}, not an nn.Module")
    stock = (nn.BatchNorm1d, nn.BatchNorm2d)
    replaced = like is None or not any(isinstance(m, stock) and not isinstance(m, TaskBatchNorm1d)
                                       for m in like.modules())
    if replaced and any(isinstance(m, stock) and not isinstance(m, TaskBatchNorm1d) for m in fresh.modules()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepare_model(fresh, second_order=False)
    return fresh


@torch.no_grad()
def export_ticket(model: nn.Module, config: Config | None, path: str | Path, *, num_classes: int | None = None,
                  info: dict[str, Any] | None = None, build: Callable[[], nn.Module] | None = None) -> dict[str, Any]:
    """Write ``model`` (built from ``config`` and trained) as a ticket at ``path``, atomically.

    ``num_classes`` is needed for supervised (``run.kind: train``) networks. A model of your own (no config):
    pass ``config=None`` and ``build``, a function returning the untrained network with the same values every
    call (seed it inside); ``load_ticket(path, build=build)`` rebuilds it. Returns a report: file size, the size
    of the equivalent dense fp32 state_dict and their ratio, sparsity, and how many tensors and re-sampled weights
    had to be stored explicitly.
    """
    path = Path(path)
    if config is None and build is None:
        raise MetaticketError("export_ticket needs the config the model was built from, or build= (a function "
                              "that builds your model untrained, seeded)")
    fresh = build_network(config, num_classes) if config is not None else _rebuild(build, model)
    state, ref = model.state_dict(), fresh.state_dict()
    if set(state) != set(ref) or any(state[k].shape != ref[k].shape for k in state):
        raise MetaticketError("the model does not match the network its config (or build) builds (different "
                              "tensors); export the model together with what it was built from")
    if config is None and _init_digest(fresh) != _init_digest(_rebuild(build, model)):
        raise MetaticketError("build() gives other values on every call; seed it inside (torch.manual_seed or a "
                              "generator) so that the ticket can regenerate the weights")
    skip = _mask_keys(model)
    layers, numels, bit_chunks = [], [], []
    resampled: dict[str, dict[str, Tensor]] = {}
    weight_keys = set()
    pruned = total = 0
    for name, layer in supermask_layers(model):
        key = f"{name}.weight" if name else "weight"
        weight_keys.add(key)
        hard = layer.mask().detach() != 0
        layers.append(name)
        numels.append(hard.numel())
        bit_chunks.append(pack_bits(hard))
        pruned += int((~hard).sum())
        total += hard.numel()
        moved = (layer.weight.detach() != ref[key].to(layer.weight.device)) & hard
        if moved.any():
            index = moved.flatten().nonzero().flatten()
            resampled[key] = {"index": index.to(torch.int32).cpu(),
                              "value": layer.weight.detach().flatten()[index].cpu().clone()}
    slot_names, slot_numel, slot_chunks = [], [], []
    for name, layer in slot_layers(model):
        slot_names.append(name)
        slot_numel.append(layer.scores.shape[1:].numel())
        slot_chunks.append(pack_index(layer.scores.argmax(0), layer.k))
    dense = {k: v.detach().cpu().clone() for k, v in state.items()
             if k not in skip and k not in weight_keys and not torch.equal(v.cpu(), ref[k].cpu())}
    payload = {
        "format": FORMAT, "version": VERSION, "torch": str(torch.__version__),
        "config": config_yaml(config) if config is not None else None, "num_classes": num_classes,
        "mask_layers": layers, "mask_numel": numels,
        "mask_bits": torch.cat(bit_chunks) if bit_chunks else torch.zeros(0, dtype=torch.uint8),
        "resampled": resampled, "dense": dense, "slot_layers": slot_names, "slot_numel": slot_numel,
        "slot_bits": slot_chunks,
        "init_sha256": _init_digest(fresh), "sha256": effective_digest(model),
        "info": {k: v for k, v in (info or {}).items() if isinstance(v, (str, int, float, bool))},
    }
    save_atomic(payload, path)
    twin = freeze_slots(dense_like(model).cpu())
    for name, layer in supermask_layers(model):
        twin.get_submodule(name).weight.copy_(layer.weight * layer.mask().detach())
    dense_bytes = _saved_size({k: v for k, v in twin.state_dict().items() if not k.endswith("fixed_mask")})
    size = path.stat().st_size
    return {"path": str(path), "bytes": size, "dense_fp32_bytes": dense_bytes,
            "ratio": round(dense_bytes / size, 2), "sparsity": round(pruned / total, 4) if total else 0.0,
            "mask_bits": total, "slot_bits": sum(n * index_bits(layer.k) for n, (_, layer)
                                                 in zip(slot_numel, slot_layers(model))),
            "dense_tensors": len(dense),
            "resampled_weights": sum(int(r["index"].numel()) for r in resampled.values())}


def _saved_size(obj: Any) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell()


def _read(path: Path) -> dict:
    if not path.is_file():
        raise MetaticketError(f"ticket {path} does not exist; write one with `run.py export RUN_DIR -o {path}`")
    payload = load_checkpoint(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise MetaticketError(f"{path} is not a metaticket ticket; write one with `run.py export RUN_DIR`")
    if payload.get("version") != VERSION:
        raise MetaticketError(f"{path} is ticket format version {payload.get('version')}; this metaticket reads "
                              f"version {VERSION}: export it again with this version")
    return payload


def ticket_info(path: str | Path) -> dict[str, Any]:
    """What a ticket says about itself (config as a dict, class count, torch version, export info)."""
    payload = _read(Path(path))
    _check_fields(payload, Path(path))
    try:
        config = None if payload["config"] is None else parse_yaml(payload["config"], f"ticket {path}: its config")
    except ConfigError as e:
        raise MetaticketError(str(e)) from None
    return {"config": config, "num_classes": payload["num_classes"], "torch": payload["torch"],
            "mask_layers": list(payload["mask_layers"]), **payload["info"]}


def _is_int(v: Any, lo: int = 0, hi: int = 2**62) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_uint8(v: Any) -> bool:
    return isinstance(v, Tensor) and v.dtype == torch.uint8 and v.dim() == 1


def _check_fields(payload: dict, path: Path) -> None:
    """Every field a ticket's loader uses, checked for presence, type and internal consistency before use, so a
    damaged or crafted file fails with one line instead of an exception deep inside the rebuild."""
    def bad(what: str) -> MetaticketError:
        return MetaticketError(f"ticket {path}: {what}; the file is damaged or not a ticket, export it again")

    for key, ok in (("config", lambda v: v is None or isinstance(v, str)), ("torch", lambda v: isinstance(v, str)),
                    ("num_classes", lambda v: v is None or _is_int(v, 1, 100_000)),
                    ("mask_layers", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
                    ("mask_numel", lambda v: isinstance(v, list) and all(_is_int(x, 1) for x in v)),
                    ("mask_bits", _is_uint8),
                    ("resampled", lambda v: isinstance(v, dict)), ("dense", lambda v: isinstance(v, dict)),
                    ("init_sha256", lambda v: isinstance(v, str)), ("sha256", lambda v: isinstance(v, str)),
                    ("info", lambda v: isinstance(v, dict))):
        if key not in payload:
            raise bad(f"it has no {key}")
        if not ok(payload[key]):
            raise bad(f"its {key} has the wrong type or range")
    if len(payload["mask_layers"]) != len(payload["mask_numel"]):
        raise bad("its mask layer names and sizes differ in number")
    if payload["mask_bits"].numel() != (sum(payload["mask_numel"]) + 7) // 8:
        raise bad(f"it holds {payload['mask_bits'].numel()} mask bytes for {sum(payload['mask_numel'])} mask bits")
    slots = [payload.get(k, []) for k in ("slot_layers", "slot_numel", "slot_bits")]
    if not all(isinstance(x, list) for x in slots) or len({len(x) for x in slots}) != 1 \
            or not all(isinstance(x, str) for x in slots[0]) or not all(_is_int(x, 1) for x in slots[1]) \
            or not all(_is_uint8(x) for x in slots[2]):
        raise bad("its slot layer fields disagree")
    for key, r in payload["resampled"].items():
        if not (isinstance(key, str) and isinstance(r, dict) and isinstance(r.get("index"), Tensor)
                and isinstance(r.get("value"), Tensor) and not r["index"].is_floating_point()
                and r["value"].is_floating_point() and r["index"].dim() == 1
                and r["index"].shape == r["value"].shape):
            raise bad(f"its re-sampled weights of {key!r} are not (index, value) tensors of one length")
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in payload["dense"].items()):
        raise bad("its stored tensors are not named tensors")


def _check_declared_size(config: Config, payload: dict, path: Path) -> None:
    """The network ``config`` declares, built for shapes only (on the meta device: no memory, no draws), must have
    the mask layers and sizes the file's mask bits cover, before the real network is built and drawn: a file of a
    few kilobytes that declares a network of billions of weights is refused at once, not after gigabytes."""
    try:
        with torch.device("meta"):
            shapes = build_network(config, payload["num_classes"], device="meta")
    except MetaticketError:
        raise
    except Exception:  # noqa: BLE001 (a model that cannot be built for shapes only is checked after the real build)
        return
    layers = dict(supermask_layers(shapes))
    declared = [layer.scores.numel() for layer in layers.values()]
    if list(payload["mask_layers"]) != list(layers) or list(payload["mask_numel"]) != declared:
        total = sum(p.numel() for p in shapes.parameters())
        raise MetaticketError(f"ticket {path}: its config declares a network of {total:,} parameters whose mask "
                              f"layers ({sum(declared):,} mask bits) are not the {sum(payload['mask_numel']):,} its "
                              f"mask bits cover; the file is damaged or crafted, export it again")


@torch.no_grad()
def load_ticket(path: str | Path, device: torch.device | str = "cpu",
                build: Callable[[], nn.Module] | None = None) -> nn.Module:
    """Rebuild the network a ticket describes (in eval mode) and verify both of its checksums. A ticket of a model
    of your own needs the ``build`` function it was exported with."""
    path = Path(path)
    payload = _read(path)
    _check_fields(payload, path)
    if payload["config"] is None:
        if build is None:
            raise MetaticketError(f"ticket {path} holds a model of your own: pass build=, the function that builds "
                                  f"it untrained (the one given to export_ticket)")
        model = _rebuild(build)
    else:
        try:
            config = config_from_dict(parse_yaml(payload["config"], f"ticket {path}: its config"))
        except (ConfigError, TypeError, AttributeError) as e:
            raise MetaticketError(f"ticket {path}: its config does not load ({str(e)[:160]}); the file is damaged "
                                  f"or from another metaticket version") from None
        _check_declared_size(config, payload, path)
        model = build_network(config, payload["num_classes"])
    if _init_digest(model) != payload["init_sha256"]:
        if payload["config"] is None:
            raise MetaticketError(f"ticket {path}: build() regenerates other weights than the exporter's build "
                                  f"(another function, seed or torch version); pass the build it was exported with")
        raise MetaticketError(f"ticket {path}: the weights regenerated from its seed differ from the exporter's "
                              f"(exported with torch {payload['torch']}, this is torch {torch.__version__}); "
                              f"load it with the exporter's torch version, or the file is corrupted")
    layers = dict(supermask_layers(model))
    if list(payload["mask_layers"]) != list(layers) or \
            list(payload["mask_numel"]) != [layer.scores.numel() for layer in layers.values()]:
        raise MetaticketError(f"ticket {path}: its mask layers do not match the rebuilt network; the file is damaged")
    bits = unpack_bits(payload["mask_bits"], sum(payload["mask_numel"]))
    offset = 0
    for name, n in zip(payload["mask_layers"], payload["mask_numel"]):
        layer = layers[name]
        hard = bits[offset:offset + n].view_as(layer.scores)
        offset += n
        layer.scores.copy_(hard.to(layer.scores.dtype))
        if layer.mask_rule == "threshold":
            layer.threshold.fill_(0.5)
        elif int(hard.sum()) != int(round((1.0 - layer.topk_sparsity) * (layer.source_count if layer.source is not None
                                                                     else n))):
            raise MetaticketError(f"ticket {path}: layer {name} keeps {int(hard.sum())} of {n} weights, not the "
                                  f"top-k count of sparsity {layer.topk_sparsity}; the file is damaged")
    slots = dict(slot_layers(model))
    if list(payload.get("slot_layers", [])) != list(slots):
        raise MetaticketError(f"ticket {path}: its slot layers do not match the rebuilt network; the file is damaged")
    for name, n, packed in zip(payload.get("slot_layers", []), payload.get("slot_numel", []),
                               payload.get("slot_bits", [])):
        layer = slots[name]
        if n != layer.scores.shape[1:].numel() or packed.numel() != (n * index_bits(layer.k) + 7) // 8:
            raise MetaticketError(f"ticket {path}: slot layer {name} does not fit the rebuilt network; the file "
                                  f"is damaged")
        index = unpack_index(packed, n, layer.k)
        if int(index.max()) >= layer.k:
            raise MetaticketError(f"ticket {path}: slot layer {name} does not fit the rebuilt network; the file "
                                  f"is damaged")
        one_hot = torch.zeros_like(layer.scores).view(layer.k, -1)
        one_hot.scatter_(0, index.view(1, -1).to(one_hot.device), 1.0)
        layer.scores.copy_(one_hot.view_as(layer.scores))
    state = model.state_dict()
    for key, r in payload["resampled"].items():
        if key not in state:
            raise MetaticketError(f"ticket {path}: re-sampled weights of unknown tensor {key}; the file is damaged")
        index = r["index"].long()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= state[key].numel()):
            raise MetaticketError(f"ticket {path}: re-sampled weight indices of {key} lie outside its "
                                  f"{state[key].numel()} entries; the file is damaged")
        state[key].view(-1)[index] = r["value"].to(state[key].dtype)
    for key, value in payload["dense"].items():
        if key not in state or state[key].shape != value.shape:
            raise MetaticketError(f"ticket {path}: stored tensor {key} does not fit the rebuilt network; "
                                  f"the file is damaged")
        state[key].copy_(value)
    if effective_digest(model) != payload["sha256"]:
        raise MetaticketError(f"ticket {path} fails its checksum: the rebuilt network differs from the exported "
                              f"one (a corrupted file); export it again")
    return model.eval().to(device)


def same_outputs(a: nn.Module, b: nn.Module, example: Tensor) -> float:
    """Largest absolute difference of two networks' outputs (both in eval mode) on ``example``: [N, ...] input."""
    modes = a.training, b.training
    a.eval()
    b.eval()
    with torch.no_grad():
        diff = float((a(example) - b(example)).abs().max())
    a.train(modes[0])
    b.train(modes[1])
    return diff

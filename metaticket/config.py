"""Experiment configuration: frozen dataclasses loaded strictly from small YAML files.

A config file may name one ``base:`` file (relative to itself) whose values it overrides; the base may not
have a base of its own. ``--set section.key=value`` overrides are applied last. Every unknown key, wrong
type or out-of-range value raises :class:`ConfigError` with one line naming the key and the fix.
This module imports nothing from the package.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
import unicodedata
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32: below it precision is lost, then 0
VERSION = 3  # the config format: run folders' config.yaml starts with ``version: 3``; older ones: see upgrade()


class ConfigError(ValueError):
    """A bad config value; the message is one line naming the key and the fix."""


def _check(rule: Callable[[Any], bool], hint: str) -> dict[str, Any]:
    """Field metadata: a range rule on the (type-checked) value and the fix to show when it fails."""
    return {"rule": rule, "hint": hint}


def _one_path_component(name: str) -> bool:
    """A run name stays one folder inside ``run.out_dir``: not empty, no separators, no leading dot (``.``, ``..``,
    hidden folders), no control characters, and short enough for the ``-sweep`` / ``-N`` suffixes (255-byte limit)."""
    return (name != "" and not name.startswith(".") and "/" not in name and "\\" not in name
            and name == name.strip() and _utf8(name) and all(ord(c) >= 32 for c in name)
            and len(name.encode("utf-8", "surrogatepass")) <= 200)


def _utf8(text: str) -> bool:
    """Whether ``text`` is valid Unicode (argv bytes that are not UTF-8 arrive as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# IteRand has one rule in both sections (meta, train): it runs when rerand_every > 0, re-drawing a rerand_rate
# fraction of the pruned weights every rerand_every steps (meta-steps, or train.rerand_unit).
_RERAND_HINT = "use rerand_every >= 0 (0: no IteRand; N: re-draw pruned weights every N steps)"
_RATE_HINT = "rerand_rate is the fraction of pruned weights re-drawn, in (0, 1]"


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "omniglot"  # a registered dataset (metaticket.data.list_datasets()), checked when a run starts
    root: str | None = None  # folder holding the dataset (default: $METATICKET_DATA, else the download cache)
    download: bool = True
    ways: int = field(default=5, metadata=_check(lambda v: v >= 2, "use at least 2 ways"))
    shots: int = field(default=1, metadata=_check(lambda v: v >= 1, "use at least 1 shot"))
    queries: int = field(default=15, metadata=_check(lambda v: v >= 1, "use at least 1 query per class"))
    image_size: int | None = field(default=None,  # null: the dataset's own (28, 64, 84, 32)
                                   metadata=_check(lambda v: v is None or 1 <= v <= 1024,
                                                   "use an image size in [1, 1024] (or null: the dataset's own)"))
    rotations: bool = True  # Omniglot: 90/180/270-degree rotations as extra classes (MAML convention)
    # the class split, for datasets with several (Omniglot: vinyals, the standard alphabet-disjoint split, or maml,
    # characters drawn at random over all alphabets as in the MAML paper's code); null: the dataset's default
    split: str | None = None
    workers: int = field(default=2, metadata=_check(lambda v: 0 <= v <= 256,
                                                    "use workers in [0, 256] (0: load in the main process)"))


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"
    width: float = field(default=1.0, metadata=_check(lambda v: 0 < v <= 64, "use a width factor in (0, 64]"))
    channels: int = field(default=64, metadata=_check(lambda v: 1 <= v <= 8192, "use channels in [1, 8192]"))
    init: Literal["kaiming_normal", "kaiming_uniform", "signed_constant"] = "kaiming_normal"
    mask: Literal["threshold", "topk"] = "threshold"
    sparsity: float = field(default=0.5,  # model.mask topk: the fraction each supermask layer prunes
                            metadata=_check(lambda v: 0 <= v < 1, "sparsity is the fraction pruned, in [0, 1)"))
    # train.method randommask: the fraction its fixed random mask prunes over all layers, spread by model.ratios
    random_sparsity: float = field(default=0.5, metadata=_check(
        lambda v: 0 <= v < 1, "random_sparsity is the fraction the random mask prunes, in [0, 1)"))
    init_sparsity: float = field(default=0.0,
                                 metadata=_check(lambda v: 0 <= v < 1, "init_sparsity is a fraction pruned, in [0, 1)"))
    norm_eps: float = field(default=1e-5, metadata=_check(lambda v: 0 < v <= 1, "norm_eps is BatchNorm's epsilon, "
                                                                             "in (0, 1], e.g. 1e-5"))
    dense_head: bool = True  # supermask models: keep the classifier dense (Meta-ticket does)
    # supermask models: keep the first layer dense too (the reference sinusoid network masks only its middle layer)
    dense_first: bool = False
    scale_fan: bool = False  # edge-popup/IteRand: frozen weights times 1/sqrt(1 - sparsity) (kept fan-in's Kaiming std)
    slots: int = field(default=8, metadata=_check(lambda v: 2 <= v <= 256,
                                                  "Slot Machines need slots in [2, 256] values per connection"))
    slot_select: Literal["greedy", "sampled"] = "greedy"  # train.method slot: argmax of the scores, or a draw
    ratios: Literal["uniform", "er", "erk", "balanced", "pyramidal"] = "uniform"  # train.method randommask
    popup_sparsity: float = field(default=0.5, metadata=_check(
        lambda v: 0 <= v < 1, "popup_sparsity is the fraction of the random mask's weights pruned, in [0, 1)"))


@dataclass(frozen=True)
class MetaConfig:
    method: Literal["maml", "anil", "boil", "metaticket", "metaticket_boil"] = "metaticket"
    inner_lr: float = field(default=0.4, metadata=_check(lambda v: v > 0, "use a positive inner_lr"))
    inner_steps: int = field(default=1, metadata=_check(lambda v: 1 <= v <= 1000, "use 1 to 1000 inner steps"))
    inner_steps_test: int = field(default=3, metadata=_check(lambda v: 1 <= v <= 1000, "use 1 to 1000 inner steps"))
    first_order: bool = False
    meta_batch: int = field(default=32, metadata=_check(lambda v: v >= 1, "use a meta_batch of at least 1 task"))
    steps: int = field(default=10000, metadata=_check(lambda v: v >= 1, "train for at least 1 step"))
    optimizer: Literal["auto", "adam", "adamw", "sgd"] = "auto"  # auto: Adam for MAML, SGD + momentum for Meta-ticket
    outer_lr: float | None = field(default=None,
                                   metadata=_check(lambda v: v is None or v > 0, "use a positive outer_lr (or null)"))
    momentum: float = field(default=0.9, metadata=_check(lambda v: 0 <= v < 1, "momentum lies in [0, 1)"))
    # the outer optimizer's weight decay (adamw: decoupled, as AdamW; adam, sgd: L2 added to the gradient)
    weight_decay: float = field(default=0.0, metadata=_check(lambda v: v >= 0, "use weight_decay >= 0"))
    schedule: Literal["auto", "constant", "cosine"] = "auto"  # auto: constant for MAML, cosine for Meta-ticket
    warmup_steps: int | None = field(default=None,
                                     metadata=_check(lambda v: v is None or v >= 0, "use warmup_steps >= 0 (or null)"))
    rerand_every: int = field(default=0, metadata=_check(lambda v: v >= 0, _RERAND_HINT))  # IteRand, meta-steps
    rerand_rate: float = field(default=0.1, metadata=_check(lambda v: 0 < v <= 1, _RATE_HINT))
    # auto: factored for MLP-like chains (task weight changes kept as low-rank factors), else vmap over tasks for
    # small linear models and a per-task loop for the rest (convs); all give the same meta-gradient
    vectorize: Literal["auto", "factored", "vmap", "loop"] = "auto"
    # bfloat16: the query pass's matrix products in bfloat16, on the factored path (MLPs) the outer backward's, the
    # masked correction's and the scores' gradient too (support steps, parameters, losses float32); faster for wide
    # MLPs on CPUs with AVX512-BF16/AMX and on GPUs; the meta-gradient differs a little (benchmarks/README.md)
    precision: Literal["float32", "bfloat16"] = "float32"
    # Meta-ticket: which function of the mask the outer loop differentiates (the adapted networks are the same).
    # reference: the mask applied in every inner forward, as the Meta-ticket code; start: the mask's gradient
    # enters only at the inner loop's start w * mask (metaticket's formulation before format 3)
    score_grad: Literal["reference", "start"] = "reference"
    # Meta-ticket: the outer loop also meta-learns every parameter no mask covers (dense layers, biases, norms),
    # with the scores' optimizer and outer_lr, as the reference code's sinusoid runs do; false: only the scores
    learn_dense: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """Supervised training (``run.kind: train``): dense weights, edge-popup, IteRand, Slot Machines or a fixed
    random mask on a labelled dataset."""

    method: Literal["dense", "edgepopup", "slot", "randommask"] = "edgepopup"  # IteRand: edgepopup + rerand_every
    randommask_learns: Literal["weights", "scores"] = "weights"  # randommask: weights under the mask, or edge-popup
    epochs: int = field(default=100, metadata=_check(lambda v: v >= 1, "train for at least 1 epoch"))
    max_iterations: int | None = field(default=None, metadata=_check(lambda v: v is None or v >= 1,
                                                                     "use max_iterations >= 1 (or null: all epochs)"))
    batch_size: int = field(default=128, metadata=_check(lambda v: v >= 1, "use a batch_size of at least 1"))
    lr: float = field(default=0.1, metadata=_check(lambda v: v > 0, "use a positive lr"))
    momentum: float = field(default=0.9, metadata=_check(lambda v: 0 <= v < 1, "momentum lies in [0, 1)"))
    weight_decay: float = field(default=1e-4, metadata=_check(lambda v: v >= 0, "use weight_decay >= 0"))
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: int = field(default=0, metadata=_check(lambda v: v >= 0, "use warmup_epochs >= 0"))
    label_smoothing: float = field(default=0.0, metadata=_check(lambda v: 0 <= v < 1, "label_smoothing is in [0, 1)"))
    augment: bool = True  # random crop + horizontal flip
    channels_last: bool = True  # NHWC memory order for convolutions (faster on CPU and on recent GPUs)
    rerand_every: int = field(default=0, metadata=_check(lambda v: v >= 0, _RERAND_HINT))  # IteRand, rerand_unit
    rerand_unit: Literal["iterations", "epochs"] = "iterations"
    rerand_rate: float = field(default=0.1, metadata=_check(lambda v: 0 < v <= 1, _RATE_HINT))
    eval_every: int = field(default=1, metadata=_check(lambda v: v >= 1, "evaluate at least every epoch"))
    eval_batch: int = field(default=500, metadata=_check(lambda v: v >= 1, "use eval_batch >= 1"))
    init_from: str | None = None  # method dense: start from the values a trained slot run chose (fine-tuning)


@dataclass(frozen=True)
class EvalConfig:
    val_every: int = field(default=500, metadata=_check(lambda v: v >= 1, "validate at least every step"))
    val_tasks: int = field(default=200, metadata=_check(lambda v: v >= 1, "use at least 1 validation task"))
    test_tasks: int = field(default=600, metadata=_check(lambda v: v >= 1, "use at least 1 test task"))
    task_seed: int = field(default=1234, metadata=_check(lambda v: 0 <= v < 2**32, "seeds lie in [0, 2^32)"))
    # task_seed: the same validation/test tasks for every run and method
    batch: int = field(default=50, metadata=_check(lambda v: v >= 1, "evaluate at least 1 task per batch"))


@dataclass(frozen=True)
class RunConfig:
    kind: Literal["meta", "train"] = "meta"  # meta: few-shot meta-learning (meta-train); train: supervised (train)
    name: str = field(default="run", metadata=_check(
        lambda v: _one_path_component(v), "use one folder name: no / or \\, not starting with '.', no control "
                                          "characters, no leading or trailing spaces, valid UTF-8, at most 200 "
                                          "bytes"))
    out_dir: str = field(default="runs", metadata=_check(lambda v: v.strip() != "" and "\0" not in v and _utf8(v),
                                                         "name the folder that holds run folders in valid UTF-8, "
                                                         "e.g. runs"))
    seed: int = field(default=0, metadata=_check(lambda v: 0 <= v < 2**32, "seeds lie in [0, 2^32)"))
    device: str = field(default="auto", metadata=_check(lambda v: re.fullmatch(r"auto|cpu|cuda(:[0-9]{1,3})?", v)
                                                        is not None, "use auto, cpu or cuda[:N]"))
    threads: int = field(default=0, metadata=_check(lambda v: 0 <= v <= 1024,
                                                    "use threads in [0, 1024] (0: torch's default)"))
    checkpoint_every: int = field(default=1000, metadata=_check(lambda v: v >= 1, "use checkpoint_every >= 1"))
    log_every: int = field(default=50, metadata=_check(lambda v: v >= 1, "use log_every >= 1"))
    # keep: malloc keeps freed blocks for reuse (faster steps, the process keeps its peak heap; hardware.py);
    # system: the C library's defaults
    malloc: Literal["keep", "system"] = "keep"


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {f.name: f.default_factory().__class__ for f in dataclasses.fields(Config)}  # type: ignore[misc]


# ----------------------------------------------------------------------------------------------- loading
class _StrictLoader(yaml.SafeLoader):
    """safe_load that also refuses duplicate keys and reads scalars by YAML 1.2's rules (below)."""


# YAML 1.2 scalars, not PyYAML's 1.1: 010 is ten (not octal eight), 1:30 is a string (not ninety), yes/no/on/off are
# strings (only true/false are booleans) and 1e-3 is a number; octal and hex are written 0o10 and 0x10
_INT, _FLOAT, _BOOL = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in pairs if tag not in (_INT, _FLOAT, _BOOL)]
    for first, pairs in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_StrictLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_StrictLoader.add_implicit_resolver(_INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                                    list("-+0123456789"))
_StrictLoader.add_implicit_resolver(
    _FLOAT, re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)"
                       r"|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))


def _int_1_2(loader: _StrictLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text, 10)


_StrictLoader.add_constructor(_INT, _int_1_2)


def _mapping_no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}; keep one of them")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_no_duplicates)


def _no_aliases(loader: _StrictLoader, parent: Any, index: Any) -> Any:
    # Why: an alias repeats a node without copying it, so a few hundred bytes of nested aliases describe a structure
    # with billions of leaves that any walk over it (merging, printing, dumping) expands. Configs never need them.
    if loader.check_event(yaml.AliasEvent):
        event = loader.peek_event()
        raise ConfigError(f"line {event.start_mark.line + 1}: YAML alias *{event.anchor} is not allowed in a config; "
                          f"write the value out")
    return yaml.SafeLoader.compose_node(loader, parent, index)


_StrictLoader.compose_node = _no_aliases  # type: ignore[method-assign]


def parse_yaml(text: str, source: str) -> Any:
    """YAML ``text`` read safely (no tags, no aliases, no duplicate keys); errors are one line naming ``source``."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{source}{where}: invalid YAML ({problem}); indent with spaces, not tabs") from None
    except ConfigError as e:  # a duplicate key or an alias, found while reading
        raise ConfigError(f"{source}: {e}") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply; write a flat config") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass the path of a YAML file or the name of a shipped "
                          f"config, e.g. omniglot/quickstart (`run.py configs` lists them)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.start}); save the config as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path} ({e.strerror}); check the path and its "
                          f"permissions") from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (run, data, model, meta, train, eval)")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


SHIPPED = Path(__file__).parent / "configs"  # the configs installed with the package (configs/ in the repository)


def find_config(name: str | Path) -> Path:
    """``name`` as a path when that file exists, else the shipped config it names: ``omniglot/quickstart`` (or with
    ``.yaml``, or ``configs/omniglot/quickstart.yaml`` from outside the repository) is
    ``metaticket/configs/omniglot/quickstart.yaml`` of the installed package."""
    path = Path(name)
    if path.is_file():
        return path
    relative = Path(*path.parts[1:]) if path.parts[:1] == ("configs",) else path
    shipped = SHIPPED / relative.with_suffix(".yaml") if relative.suffix != ".yaml" else SHIPPED / relative
    if not path.is_absolute() and shipped.is_file():
        return shipped
    return path


def shipped_configs() -> list[str]:
    """The names of the shipped configs (``omniglot/quickstart``, ...), base files excluded."""
    return sorted(p.relative_to(SHIPPED).with_suffix("").as_posix() for p in SHIPPED.rglob("*.yaml")
                  if not p.name.startswith("base"))


def load_run_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A run folder's ``config.yaml``: like :func:`load_config`, but a file without ``version`` was written by
    version 1 (its ``train.rerand_every`` did nothing outside ``train.method: iterand``)."""
    return load_config(path, overrides, unversioned=1)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), unversioned: int = VERSION) -> Config:
    """Load ``path`` (with at most one level of ``base:``), apply ``section.key=value`` overrides, validate.

    ``path`` is a YAML file or the name of a shipped config (:func:`find_config`, e.g. ``omniglot/quickstart``); a
    file without a ``version`` key is read as format ``unversioned`` (:func:`upgrade`)."""
    path = find_config(path)
    raw = _read_yaml(path)
    base_name = raw.pop("base", None)
    if base_name is not None:
        base_path = (path.parent / str(base_name)).resolve()
        if base_path == path.resolve():
            raise ConfigError(f"{path}: base: points at the file itself; name another file or remove it")
        base_raw = _read_yaml(base_path)
        if "base" in base_raw:
            raise ConfigError(f"{base_path}: a base file may not have a base of its own (one level only); "
                              f"copy its values in")
        raw = _merge(base_raw, raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"--set {item!r}: write section.key=value, e.g. --set meta.steps=100")
        try:
            value = parse_yaml(text, f"--set {item!r}") if text else None
        except ConfigError as e:
            if "alias" in str(e) or "nested too deeply" in str(e):
                raise
            value = text  # not YAML: the plain string
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"--set {item!r}: {section} is not a section")
        raw[section][name] = value
    if any(item.startswith("model.sparsity=") for item in overrides) and _section(raw, "train").get(
            "method") == "randommask" and _run_kind(raw) == "train":
        raise ConfigError("--set model.sparsity does nothing under train.method randommask: its mask prunes "
                          "model.random_sparsity overall (and edge-popup inside it model.popup_sparsity); set that")
    return config_from_dict(raw, unversioned)


class ConfigDeprecation(UserWarning):
    """A config in an old spelling that is still read: the message names what it was read as."""


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    values = raw.get(name)
    return values if isinstance(values, dict) else {}


def _run_kind(raw: dict[str, Any]) -> Any:
    """``run.kind`` of a raw config (or its old name ``run.task``), ``meta`` when neither is set."""
    run = _section(raw, "run")
    return run.get("kind", run.get("task", "meta"))


def upgrade(raw: dict[str, Any], unversioned: int = VERSION) -> dict[str, Any]:
    """``raw`` (without its ``version``) in the current format; a file without ``version`` is of ``unversioned``.

    Version 1 switched supervised IteRand on with ``train.method: iterand`` and ignored ``train.rerand_every``
    otherwise; version 2 has one rule in ``meta`` and ``train``: IteRand runs when ``rerand_every > 0``. Version 1
    read ``model.sparsity`` as a randommask run's overall sparsity; version 2 calls that ``model.random_sparsity``
    and ``model.sparsity`` is only the top-k fraction. Version-1 spellings that mean one thing (``method: iterand``,
    a randommask run's ``model.sparsity``) are rewritten in an unversioned file too, with one
    :class:`ConfigDeprecation` line; run folders' config.yaml without ``version`` were written by version 1
    (:func:`load_run_config`) and are read silently as what they ran. Version 3 made Omniglot's standard class
    split (``data.split: vinyals``) and the reference code's score gradient (``meta.score_grad: reference``) the
    defaults; a file of version 1 or 2 without them ran the random-character split (Omniglot) and the ``start``
    gradient (Meta-ticket) and is read so (run folders silently, other files with one :class:`ConfigDeprecation`
    line), so a resumed run keeps its classes and its gradient. In every version ``model.name: wrn28``, whose
    ``model.width`` was the widen factor, is ``wrn28-10`` with the width divided by 10 (the same network), and
    ``run.task`` is ``run.kind``.
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items() if k != "version"}
    version = raw.get("version")
    if version is not None and (isinstance(version, bool) or version not in (1, 2, VERSION)):
        raise ConfigError(f"version = {version!r} is not a config format this metaticket reads; use 1, 2 or "
                          f"{VERSION} (or leave it out)")
    run = _section(out, "run")
    if "task" in run and "kind" not in run:  # run.task was the key's name: "task" also means a few-shot task
        out["run"] = run = {**{k: v for k, v in run.items() if k != "task"}, "kind": run["task"]}
        if unversioned == VERSION:  # a run folder's own file is read silently
            warnings.warn(f"run.task is now run.kind (meta or train): read as run.kind: {run['kind']} (write "
                          f"that)", ConfigDeprecation, stacklevel=3)
    model = _section(out, "model")
    if model.get("name") == "wrn28":  # its model.width was the widen factor; every model's width is a multiplier now
        widen = model.get("width", 1.0)
        out["model"] = model = {**model, "name": "wrn28-10"}
        if isinstance(widen, (int, float)) and not isinstance(widen, bool):
            model["width"] = widen / 10
        if unversioned == VERSION:  # a run folder's own file is read silently
            warnings.warn(f"model.name wrn28 (width = its widen factor {widen}) is model.name wrn28-10 with "
                          f"model.width {model.get('width')} (a multiplier of 10, as every model's width); write "
                          f"that", ConfigDeprecation, stacklevel=3)
    if version == VERSION:
        return out
    train, data = _section(out, "train"), _section(out, "data")
    said = []
    if (version or unversioned) in (1, 2) and _run_kind(out) == "meta" and \
            data.get("dataset", "omniglot") == "omniglot" and "split" not in data:
        out.setdefault("data", data)  # format 3 made the standard split Omniglot's default; older files ran this one
        data["split"] = "maml"
        said.append("data.split was not a key: Omniglot ran the split now called maml (write data.split: vinyals "
                    "for the standard split)")
    meta = _section(out, "meta")
    if (version or unversioned) in (1, 2) and _run_kind(out) == "meta" and \
            "score_grad" not in meta and str(meta.get("method", "metaticket")).startswith("metaticket"):
        out.setdefault("meta", meta)  # format 3 made the reference code's score gradient the default
        meta["score_grad"] = "start"
        said.append("meta.score_grad was not a key: Meta-ticket ran the score gradient now called start (write "
                    "meta.score_grad: reference for the reference code's)")
    if version == 2:
        if said and unversioned == VERSION:
            warnings.warn(f"config of format 2, read as it ran: {'; '.join(said)} (write that, and `version: "
                          f"{VERSION}` at the top, to silence this)", ConfigDeprecation, stacklevel=3)
        return out
    if train.get("method") == "iterand":
        train.update(method="edgepopup", rerand_every=train.get("rerand_every", 300))
        said.append(f"train.method: iterand is train.method: edgepopup with train.rerand_every: "
                    f"{train['rerand_every']}")
    elif (version or unversioned) == 1 and train.get("rerand_every", 0) not in (0, None):
        train["rerand_every"] = 0  # version 1 ran IteRand only under method iterand
        said.append("train.rerand_every did nothing outside train.method iterand: remove it")
    if train.get("method") == "randommask" and "sparsity" in model and "random_sparsity" not in model:
        model["random_sparsity"] = model.pop("sparsity")
        said.append(f"a randommask run's model.sparsity is model.random_sparsity: {model['random_sparsity']}")
    if said and (version == 1 or unversioned == VERSION):  # run folders' own files are read silently
        warnings.warn(f"old config spelling, read the new way: {'; '.join(said)} (write that, and `version: "
                      f"{VERSION}` at the top, to silence this)", ConfigDeprecation, stacklevel=3)
    return out


def config_from_dict(raw: dict[str, Any], unversioned: int = VERSION) -> Config:
    """Validate a nested dict into a :class:`Config` (old spellings first rewritten by :func:`upgrade`)."""
    _reject_unknown(raw, {**SECTIONS, "version": int}, "")
    raw = upgrade(raw, unversioned)
    sections = {}
    for name, cls in SECTIONS.items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{name}: expected a mapping of keys, got {type(values).__name__}; write its keys "
                              f"indented under `{name}:`, e.g. `  steps: 100`")
        sections[name] = _build(cls, values, name)
    return Config(**sections)


def _reject_unknown(values: dict[str, Any], known: dict[str, Any] | set[str], prefix: str) -> None:
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else f"known keys: {', '.join(sorted(known))}"
            raise ConfigError(f"unknown config key {prefix}{key}; {hint}")


def _build(cls: type, values: dict[str, Any], section: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _reject_unknown(values, set(fields), f"{section}.")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name not in values:
            continue
        key = f"{section}.{name}"
        value = _coerce(values[name], hints[name], key)
        if isinstance(value, str):  # names that differ only in Unicode normalization are one name (one folder)
            value = unicodedata.normalize("NFC", value)
        check = f.metadata.get("rule")
        if check is not None and not check(value):
            raise ConfigError(f"{key} = {value!r} is out of range: {f.metadata['hint']}")
        kwargs[name] = value
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} = {value!r} is not allowed; choose one of: {', '.join(map(str, args))}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r} must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} = {value!r} must be a whole number")
        if not -2 ** 63 <= value < 2 ** 63:  # what a tensor or a generator can hold
            raise ConfigError(f"{key} = {value} is beyond a 64-bit integer; use a smaller number")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string; a number is meant
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key} = {value!r} must be a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} = {value!r} must be a number")
        if not math.isfinite(value):
            raise ConfigError(f"{key} = {value!r} must be a finite number")
        # learning rates, decays and epsilons end up in float32 tensors: beyond its range they become inf or 0
        if abs(value) > FLOAT32_MAX or 0 < abs(value) < FLOAT32_TINY:
            raise ConfigError(f"{key} = {value!r} is beyond float32 (magnitudes {FLOAT32_TINY:.1e} to "
                              f"{FLOAT32_MAX:.1e}), the precision it is used in; use a value in that range")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} = {value!r} must be a string")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover (a bug in this file)


def config_yaml(config: Config) -> str:
    """The resolved config as YAML text (loadable by :func:`load_config`)."""
    return yaml.safe_dump({"version": VERSION, **config.to_dict()}, sort_keys=False)


def dump_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (loadable by :func:`load_config`)."""
    Path(path).write_text(config_yaml(config))

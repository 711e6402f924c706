"""Writes the experiment grid of configs/ (paper budgets); run from the repo root after editing GRID.

Each grid file names one base file of its dataset and method family and overrides only what differs.
"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1] / "configs"
MAML_FAMILY = ("maml", "anil", "boil")
TICKETS = ("metaticket", "metaticket_boil")

# Paper budgets: MAML (Finn et al. 2017) and Meta-ticket (Chijiwa et al. 2022; BOIL's settings for ImageNet-style).
BASES = {
    "omniglot": {
        "maml": {"data": {"dataset": "omniglot", "ways": 5, "shots": 1, "queries": 15},
                 "model": {"name": "mlp", "init": "kaiming_normal"},
                 "meta": {"method": "maml", "inner_lr": 0.4, "inner_steps": 1, "inner_steps_test": 3,
                          "meta_batch": 32, "steps": 60000, "outer_lr": 0.001},
                 "eval": {"val_every": 1000, "val_tasks": 200, "test_tasks": 600}},
        "metaticket": {"data": {"dataset": "omniglot", "ways": 5, "shots": 1, "queries": 15},
                       "model": {"name": "mlp", "init": "kaiming_normal", "mask": "threshold", "init_sparsity": 0.0},
                       "meta": {"method": "metaticket", "inner_lr": 0.4, "inner_steps": 1, "inner_steps_test": 3,
                                "meta_batch": 4, "steps": 30000, "outer_lr": 10.0, "warmup_steps": 1000},
                       "eval": {"val_every": 1000, "val_tasks": 200, "test_tasks": 600}},
    },
    "miniimagenet": {
        "maml": {"data": {"dataset": "miniimagenet", "ways": 5, "shots": 1, "queries": 15, "image_size": 84},
                 "model": {"name": "resnet12", "init": "kaiming_normal"},
                 "meta": {"method": "maml", "inner_lr": 0.3, "inner_steps": 1, "inner_steps_test": 1,
                          "meta_batch": 4, "steps": 30000, "outer_lr": 0.0006},
                 "eval": {"val_every": 1000, "val_tasks": 200, "test_tasks": 600, "batch": 10}},
        "metaticket": {"data": {"dataset": "miniimagenet", "ways": 5, "shots": 1, "queries": 15, "image_size": 84},
                       "model": {"name": "resnet12", "init": "kaiming_normal", "mask": "threshold",
                                 "init_sparsity": 0.0},
                       "meta": {"method": "metaticket", "inner_lr": 0.3, "inner_steps": 1, "inner_steps_test": 1,
                                "meta_batch": 4, "steps": 30000, "outer_lr": 10.0, "warmup_steps": 1000},
                       "eval": {"val_every": 1000, "val_tasks": 200, "test_tasks": 600, "batch": 10}},
    },
}
BASES["tinyimagenet"] = {
    fam: {**cfg, "data": {**cfg["data"], "dataset": "tinyimagenet", "image_size": 64},
          "model": {**cfg["model"], "name": "conv4"}}
    for fam, cfg in BASES["miniimagenet"].items()
}
# miniImageNet follows the Meta-ticket reference code's protocol (its config.yaml): queries = shots in training and
# test (each grid file sets its queries), 1,000 test tasks, and AdamW (weight decay 0) for the MAML family
for fam, cfg in BASES["miniimagenet"].items():
    cfg["data"] = {**cfg["data"], "queries": 1}
    cfg["eval"] = {**cfg["eval"], "test_tasks": 1000}
    if fam == "maml":
        cfg["meta"] = {**cfg["meta"], "optimizer": "adamw", "weight_decay": 0.0}


# Sinusoid regression, the Meta-ticket code's settings (30k x 4, AdamW 1e-3 for MAML, 5 inner steps in training and
# test, queries = shots) but for the inner lr: 0.002, not 0.01, because our Kaiming-normal init (std 1.4 on the
# 1-input layer, 2.4x torch's default) makes 0.01 diverge (tests/test_regression.py)
BASES["sinusoid"] = {
    fam: {"data": {"dataset": "sinusoid", "shots": 5, "queries": 5},
          "model": {"name": "sinusoid-mlp", "init": "kaiming_normal",
                    **({"mask": "threshold", "init_sparsity": 0.0} if fam == "metaticket" else {})},
          "meta": {"method": fam, "inner_lr": 0.002, "inner_steps": 5, "inner_steps_test": 5, "meta_batch": 4,
                   "steps": 30000, **({"optimizer": "adamw", "weight_decay": 0.0, "outer_lr": 0.001}
                                      if fam == "maml" else {"outer_lr": 10.0, "warmup_steps": 1000})},
          "eval": {"val_every": 1000, "val_tasks": 200, "test_tasks": 1000}}
    for fam in ("maml", "metaticket")
}


def write(path: Path, data: dict, comment: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {comment}\n" + yaml.safe_dump(data, sort_keys=False))


def grid() -> None:
    for dataset, bases in BASES.items():
        for fam, cfg in bases.items():
            write(ROOT / dataset / f"base_{fam}.yaml", cfg,
                  f"{dataset}: shared settings of the {fam} family (paper budget); grid files override it")

    def entry(dataset: str, model: str, tag: str, ways: int, shots: int, method: str, model_over: dict) -> None:
        fam = "metaticket" if method in TICKETS else "maml"
        name = f"{tag}_{ways}w{shots}s_{method}"
        data = {"base": f"base_{fam}.yaml", "run": {"name": f"{dataset}_{name}"},
                "data": {"ways": ways, "shots": shots, **({"queries": shots} if dataset == "miniimagenet" else {})},
                "model": {"name": model, **model_over},
                "meta": {"method": method}}
        write(ROOT / dataset / f"{name}.yaml", data, f"{dataset} {ways}-way {shots}-shot, {tag}, {method}")

    for width in (1, 2, 4, 8):
        for ways in (5, 20):
            for shots in (1, 5):
                for method in ("maml", "metaticket"):
                    tag = "mlp" if width == 1 else f"mlp-w{width}"
                    entry("omniglot", "mlp", tag, ways, shots, method, {"width": float(width)})
    for method in (*MAML_FAMILY, *TICKETS):
        for shots in (1, 5):
            entry("miniimagenet", "resnet12", "resnet12", 5, shots, method, {})
            entry("tinyimagenet", "conv4", "conv4", 5, shots, method, {})
            entry("tinyimagenet", "resnet12", "resnet12", 5, shots, method, {})
        for widen in (5, 10):
            entry("miniimagenet", "wrn28", f"wrn28-{widen}", 5, 5, method, {"width": float(widen)})
    for width in (1, 4):
        for shots in (5, 10):
            for method in ("maml", "metaticket"):
                tag = "mlp" if width == 1 else f"mlp-w{width}"
                name = f"{tag}_{shots}shot_{method}"
                write(ROOT / "sinusoid" / f"{name}.yaml",
                      {"base": f"base_{method}.yaml", "run": {"name": f"sinusoid_{name}"},
                       "data": {"shots": shots, "queries": shots}, "model": {"width": float(width)}},
                      f"sinusoid regression, {shots} shots, {tag}, {method}")


if __name__ == "__main__":
    grid()

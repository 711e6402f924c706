"""A run folder's config.yaml records the values that ran, not ``auto``/null, and resuming keeps them."""

from __future__ import annotations

import pytest
import yaml
from conftest import QUICK

from metaticket.cli import main
from metaticket.config import load_config
from metaticket.meta.learner import outer_defaults
from metaticket.runs.factory import RESOLVED, resolve


def small(out, name: str, steps: int = 4) -> list[str]:
    return ["--set", f"run.out_dir={out}", "--set", f"run.name={name}", "--set", f"meta.steps={steps}",
            "--set", "meta.meta_batch=2", "--set", "eval.val_every=2", "--set", "eval.val_tasks=4",
            "--set", "run.log_every=2", "--quiet"]


def test_resolve_fills_each_auto_from_one_rule():
    config = load_config(QUICK, ["meta.warmup_steps=null", "meta.steps=3000"])
    assert (config.meta.optimizer, config.meta.outer_lr, config.meta.schedule) == ("auto", 10.0, "auto")
    done = resolve(config)
    assert (done.meta.optimizer, done.meta.outer_lr, done.meta.schedule, done.meta.warmup_steps) == (
        "sgd", 10.0, "cosine", 300)
    assert done.data.image_size == 28 and done.meta.vectorize == "factored"  # the MLP is a chain
    assert config.data.split is None and done.data.split == "vinyals"  # Omniglot's default class split
    conv = resolve(load_config(QUICK, ["model.name=conv4", "model.channels=8"]))
    assert conv.meta.vectorize == "loop" and resolve(load_config(QUICK, ["meta.vectorize=vmap"])).meta.vectorize == \
        "vmap"
    # the learner built from a resolved config runs what it records
    from metaticket.runs.factory import build_learner
    assert build_learner(done).vectorize == done.meta.vectorize and build_learner(conv).vectorize == "loop"
    maml = resolve(load_config(QUICK, ["meta.method=maml", "meta.outer_lr=null", "meta.warmup_steps=null"]))
    assert (maml.meta.optimizer, maml.meta.outer_lr, maml.meta.schedule, maml.meta.warmup_steps) == (
        "adam", 1e-3, "constant", 0)
    assert outer_defaults("maml") == ("adam", 1e-3, "constant", 0)
    # a resumed run takes its saved values before the rules: growing meta.steps keeps the warm-up it started with
    grown = resolve(load_config(QUICK, ["meta.warmup_steps=null", "meta.steps=6000"]), saved=done)
    assert grown.meta.warmup_steps == 300 and resolve(grown) == grown
    assert set(RESOLVED) == {"data.image_size", "data.split", "meta.optimizer", "meta.outer_lr", "meta.schedule",
                             "meta.warmup_steps", "meta.vectorize"}


@pytest.mark.usefixtures("data_root")
def test_config_yaml_holds_resolved_values_and_a_resume_with_auto_continues(tmp_path):
    args = ["meta-train", str(QUICK), *small(tmp_path, "r"), "--set", "meta.warmup_steps=null"]
    assert main(args) == 0
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["meta"]["optimizer"] == "sgd" and saved["meta"]["schedule"] == "cosine"
    assert saved["meta"]["warmup_steps"] == 0 and saved["meta"]["vectorize"] == "factored"  # min(1000, 4 // 10)
    assert saved["data"]["image_size"] == 28 and saved["meta"]["outer_lr"] == 10.0
    assert saved["data"]["split"] == "vinyals"
    # the same command with auto values (and more steps) resumes the folder it wrote
    assert main([*args[:2], *small(tmp_path, "r", steps=6), "--set", "meta.warmup_steps=null", "--resume"]) == 0
    again = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert again["meta"]["steps"] == 6 and again["meta"]["warmup_steps"] == 0
    # a value that really differs from the resolved one is refused in one line
    assert main([*args[:2], *small(tmp_path, "r", steps=8), "--set", "meta.optimizer=adam", "--resume"]) == 2


@pytest.mark.usefixtures("data_root")
def test_a_run_shorter_than_its_warm_up_gets_a_note(tmp_path, capsys):
    assert main(["meta-train", str(QUICK), *small(tmp_path, "w"), "--set", "meta.warmup_steps=10"]) == 0
    err = capsys.readouterr().err
    assert "note: meta.warmup_steps = 10 >= meta.steps = 4" in err and "peaks at 4 of meta.outer_lr = 10" in err
    assert main(["meta-train", str(QUICK), *small(tmp_path, "v"), "--set", "meta.warmup_steps=1"]) == 0
    assert "warm-up" not in capsys.readouterr().err

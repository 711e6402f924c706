"""Determinism (same config + seed -> bit-identical metrics.jsonl) and the NaN/Inf guard (issue 8)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from test_cli import REPO, run
from test_resume import TIMING

from metaticket.checkpoint import load_checkpoint
from metaticket.config import ConfigError, load_config

QUICK = REPO / "configs" / "omniglot" / "quickstart.yaml"
CONV6 = REPO / "configs" / "cifar10" / "conv6_iterand.yaml"
SMALL = {
    "meta-train": (QUICK, ["meta.steps=30", "meta.meta_batch=4", "eval.val_every=15", "eval.val_tasks=8",
                           "run.log_every=5", "meta.warmup_steps=5", "meta.rerand_every=10"]),
    "train": (CONV6, ["model.width=0.0625", "train.max_iterations=12", "train.batch_size=32", "train.rerand_every=4",
                      "run.log_every=3", "train.epochs=1", "data.workers=0"]),
}


def start(kind: str, out: Path, *extra: str):
    config, sets = SMALL[kind]
    args = [kind, str(config), "--quiet"]
    for s in [*sets, *extra, f"run.out_dir={out}", "run.name=r"]:
        args += ["--set", s]
    return run(*args, cwd=out.parent)


def metric_lines(run_dir: Path) -> list[dict]:
    """Every metrics.jsonl line in order, wall-clock fields removed."""
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", ["meta-train", "train"])
def test_same_config_and_seed_give_bit_identical_metrics(kind, tmp_path, data_root):
    for name in ("a", "b"):
        r = start(kind, tmp_path / name)
        assert r.returncode == 0, r.stderr
    a, b = metric_lines(tmp_path / "a" / "r"), metric_lines(tmp_path / "b" / "r")
    assert len(a) >= 5 and a == b  # floats compared exactly (JSON keeps every bit of a float64)
    ckpts = sorted(p.name for p in (tmp_path / "a" / "r" / "checkpoints").iterdir())
    assert ckpts and ckpts == sorted(p.name for p in (tmp_path / "b" / "r" / "checkpoints").iterdir())
    for name in ckpts:  # weights, optimizer and RNG states, bit for bit
        assert_identical(load_checkpoint(tmp_path / "a" / "r" / "checkpoints" / name),
                         load_checkpoint(tmp_path / "b" / "r" / "checkpoints" / name), name)
    if kind == "train":
        assert json.loads((tmp_path / "a" / "r" / "train_summary.json").read_text())["top1"] == \
            json.loads((tmp_path / "b" / "r" / "train_summary.json").read_text())["top1"]
    else:  # and the meta-test result of each
        tested = [run("meta-test", str(tmp_path / n / "r"), "--tasks", "10", "--quiet", cwd=tmp_path) for n in "ab"]
        assert all(t.returncode == 0 for t in tested), [t.stderr for t in tested]
        assert json.loads(tested[0].stdout.splitlines()[-1]) == json.loads(tested[1].stdout.splitlines()[-1])
    # and the test can fail: another seed logs other numbers
    r = start(kind, tmp_path / "c", "run.seed=1")
    assert r.returncode == 0, r.stderr
    assert metric_lines(tmp_path / "c" / "r") != a


GOLDEN = Path(__file__).parent / "golden" / "small_runs.json"


def assert_close_to_golden(lines: list[dict], golden: list[dict]) -> None:
    """The logged numbers of an earlier version of this code: a change of the seeded generators' draws (a different
    init, other tasks) moves them by percents, another CPU's float rounding by far less than the tolerance."""
    assert len(lines) == len(golden)
    for got, want in zip(lines, golden):
        assert got.keys() == want.keys(), (got.keys() ^ want.keys())
        for k, v in want.items():
            tol = 1.0 if k in ("acc", "top1", "top5") else 1e-3  # accuracies move in steps of one prediction
            assert math.isclose(got[k], v, rel_tol=2e-3, abs_tol=tol) if isinstance(v, float) else got[k] == v, \
                (got["step"], got["split"], k, got[k], v)


@pytest.mark.parametrize("kind", ["meta-train", "train"])
def test_seeded_runs_reproduce_the_numbers_of_earlier_versions(kind, tmp_path, data_root):
    """Every benchmark number was measured with this code's random draws. All of them come from generators seeded
    with run.seed (the global RNG is not drawn from), so what this catches is a change to those draws: one extra
    draw from the model's generator fails both cases (tried), while building the model before the data does not."""
    r = start(kind, tmp_path / "g")
    assert r.returncode == 0, r.stderr
    assert_close_to_golden(metric_lines(tmp_path / "g" / "r"), json.loads(GOLDEN.read_text())[kind])


def assert_identical(a: object, b: object, where: str) -> None:
    """``a == b`` for nested checkpoint contents, tensors bit for bit (NaN equal to NaN); timing fields ignored."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b) or bool(((a == b) | (a.isnan() & b.isnan())).all()), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            if k not in TIMING:
                assert_identical(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["meta-train", "train"])
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(kind, tmp_path, data_root):
    """A learning rate of 1e30 blows the loss up within a few steps; the run must stop with the step number,
    exit 2 in one line, and leave a last.pt from before the blow-up whose weights are all finite."""
    blow_up = (["meta.method=maml", "meta.optimizer=sgd", "meta.outer_lr=1e30", "run.checkpoint_every=1"]
               if kind == "meta-train" else ["train.method=dense", "train.lr=1e30", "run.checkpoint_every=1"])
    r = start(kind, tmp_path / "x", *blow_up)
    err = r.stderr.strip()
    assert r.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err[-1500:]
    assert "became" in err and "last good checkpoint" in err
    step = int(err.split(" at step " if kind == "meta-train" else " at iteration ")[1].split(";")[0])
    last = tmp_path / "x" / "r" / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    saved = state["learner"]["step"] if kind == "meta-train" else state["iteration"]
    weights = state["learner"]["model"] if kind == "meta-train" else state["model"]
    assert saved == step - 1  # written after the previous step, not overwritten by the failing one
    assert all(bool(v.isfinite().all()) for v in weights.values() if v.is_floating_point())


def test_floats_in_scientific_notation_and_non_finite_values(tmp_path):
    config = load_config(QUICK, ["meta.outer_lr=1e-3", "meta.inner_lr=4E-1"])
    assert config.meta.outer_lr == 1e-3 and config.meta.inner_lr == 0.4
    for bad in ("meta.inner_lr=.inf", "meta.inner_lr=nan", "meta.inner_lr=1e999"):
        with pytest.raises(ConfigError, match="finite"):
            load_config(QUICK, [bad])
    assert math.isclose(load_config(QUICK, ["model.sparsity=5e-1"]).model.sparsity, 0.5)

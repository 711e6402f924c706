"""Supervised baselines: what each method's step changes, exact resume, data readers, and run.py train/eval."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MEAN, REPO, STD, model_for, plan, run, snapshot, toy_data
from PIL import Image

from metaticket.baselines.train import (
    EpochBatches,
    TrainPlan,
    evaluate_classifier,
    param_counts,
    trainable,
)
from metaticket.data.classification import TensorImages, classification_data
from metaticket.data.imagenet import ImageFiles, random_resized_box, scan_imagenet
from metaticket.errors import MetaticketError
from metaticket.runs.loop import Callbacks
from metaticket.runs.monitor import Monitor
from metaticket.runs.supervised import train_supervised


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


# ------------------------------------------------------------------------------------------ what changes
@pytest.mark.parametrize("method", ["dense", "edgepopup"])
def test_one_step_changes_exactly_what_the_method_learns(method, tmp_path):
    model = model_for(method)
    before = snapshot(model)
    train_supervised(model, toy_data(), toy_data(32, 1), MEAN, STD, plan(method, max_iterations=1), tmp_path,
                     Monitor(tmp_path, quiet=True, tensorboard=False), torch.device("cpu"))
    diff = changed(before, snapshot(model))
    weights = {k for k in before if k.endswith(".weight")}
    if method == "dense":
        assert weights <= diff and not any(k.endswith("scores") for k in before)
    else:
        scores = {k for k in before if k.endswith("scores")}
        assert diff - {k for k in before if "running_" in k or "num_batches" in k} == scores
        assert not (weights & diff)


def test_iterand_resamples_only_pruned_weights_and_only_on_schedule(tmp_path):
    model = model_for("iterand")
    layers = dict(model.named_modules())
    names = [k[:-len(".scores")] for k in snapshot(model) if k.endswith(".scores")]
    history = []

    class Watch(Monitor):
        def log(self, step, split, values):  # after every iteration (log_every=1): record the weights
            if split == "train":
                history.append((step, {n: (layers[n].weight.clone(), layers[n].mask().detach().clone())
                                       for n in names}))

    start = {n: layers[n].weight.clone() for n in names}
    train_supervised(model, toy_data(), toy_data(32, 1), MEAN, STD, plan("iterand", max_iterations=6), tmp_path,
                     Watch(tmp_path, quiet=True, tensorboard=False), torch.device("cpu"))
    prev = start
    prev_masks = None
    for step, state in history:
        moved = {n for n in names if not torch.equal(state[n][0], prev[n])}
        if step % 3:
            assert not moved, f"weights changed at iteration {step}, off the every-3 schedule"
        else:
            assert moved, f"IteRand did not re-sample at iteration {step}"
            for n in moved:  # the mask the re-sampling saw is the one after this iteration's score update
                mask = state[n][1]
                diff = state[n][0] != prev[n]
                assert not (diff & (mask == 1)).any(), f"{n}: a kept weight was re-sampled"
                frac = diff.float().sum() / (mask == 0).sum()
                assert 0.3 < float(frac) < 0.7, f"{n}: re-sampled {float(frac):.2f} of pruned, expected ~0.5"
        prev = {n: state[n][0] for n in names}
        prev_masks = state
    assert prev_masks is not None and len(history) == 6


def test_trainable_refuses_pruning_a_dense_model():
    with pytest.raises(MetaticketError, match="needs a supermask model"):
        trainable(model_for("dense"), "edgepopup")


# ------------------------------------------------------------------------------------------ resume
class Boom(TensorImages):
    """Raises once at the ``at``-th item read: a crash in the middle of an epoch."""

    def __init__(self, base: TensorImages, at: int) -> None:
        super().__init__(base.images, base.labels, base.augment, base.seed)
        self.reads, self.at = 0, at

    def __getitem__(self, i):
        self.reads += 1
        if self.reads == self.at:
            raise KeyboardInterrupt
        return super().__getitem__(i)


@pytest.mark.parametrize("method", ["dense", "iterand"])
def test_resume_after_a_crash_mid_epoch_matches_an_uninterrupted_run(method, tmp_path):
    p = plan(method, epochs=3, checkpoint_every=2)
    cpu = torch.device("cpu")
    straight = model_for(method)
    a = train_supervised(straight, toy_data(), toy_data(32, 1), MEAN, STD, p, tmp_path / "a",
                         Monitor(tmp_path / "a", quiet=True, tensorboard=False), cpu)
    crashed = model_for(method)
    with pytest.raises(KeyboardInterrupt):  # 4 batches/epoch of 16: dies inside iteration 7 (epoch 2)
        train_supervised(crashed, Boom(toy_data(), at=16 * 6 + 5), toy_data(32, 1), MEAN, STD, p, tmp_path / "b",
                         Monitor(tmp_path / "b", quiet=True, tensorboard=False), cpu)
    assert torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 6
    resumed = model_for(method, seed=99)  # different init: everything must come from the checkpoint
    b = train_supervised(resumed, toy_data(), toy_data(32, 1), MEAN, STD, p, tmp_path / "b",
                         Monitor(tmp_path / "b", quiet=True, tensorboard=False), cpu, resume=True)
    assert b["top1"] == a["top1"] and b["loss"] == a["loss"] and b["iterations"] == a["iterations"] == 12
    sa, sb = snapshot(straight), snapshot(resumed)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("method", ["dense", "iterand"])
def test_resume_logs_what_an_uninterrupted_run_logs(method, tmp_path):
    """Checkpoints at epoch ends (4 iterations) that are not log boundaries (every 3): the resumed run's log lines
    (train averages, IteRand's re-drawn fraction, test scores) equal the uninterrupted run's, and callbacks see
    every step, log line, evaluation, checkpoint and the end. Before the shared loop kept the log window in the
    checkpoint, the resumed line at iteration 9 averaged iterations 9 only (8 was lost)."""
    p = plan(method, epochs=3, checkpoint_every=100)
    p = TrainPlan(p.train, checkpoint_every=100, log_every=3, workers=0, seed=0)
    cpu = torch.device("cpu")

    def rows(folder: Path) -> dict:
        out = {}
        for line in (folder / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            out[(row["step"], row["split"])] = {k: v for k, v in row.items() if k not in ("ms_per_iter",
                                                                                         "images_per_s")}
        return out

    seen: list[tuple] = []
    calls = Callbacks(on_step=lambda i, out: seen.append(("step", i)), on_log=lambda i, v: seen.append(("log", i)),
                      on_validate=lambda i, v: seen.append(("test", i)),
                      on_checkpoint=lambda i, path: seen.append(("checkpoint", i)),
                      on_end=lambda summary: seen.append(("end", summary["iterations"])))
    logs: list[int] = []  # a second set of callbacks: both are called, in list order
    a = train_supervised(model_for(method), toy_data(), toy_data(32, 1), MEAN, STD, p, tmp_path / "a",
                         Monitor(tmp_path / "a", quiet=True, tensorboard=False), cpu,
                         callbacks=[calls, Callbacks(on_log=lambda i, v: logs.append(i))])
    assert logs == [3, 6, 9, 12]
    assert [s for s in seen if s[0] == "step"] == [("step", i) for i in range(1, 13)]
    assert [s for s in seen if s[0] != "step"] == [("log", 3), ("test", 4), ("checkpoint", 4), ("log", 6),
                                                   ("test", 8), ("checkpoint", 8), ("log", 9), ("log", 12),
                                                   ("test", 12), ("checkpoint", 12), ("end", 12)]
    with pytest.raises(KeyboardInterrupt):  # dies inside iteration 10, after the checkpoint at 8
        train_supervised(model_for(method), Boom(toy_data(), at=16 * 9 + 5), toy_data(32, 1), MEAN, STD, p,
                         tmp_path / "b", Monitor(tmp_path / "b", quiet=True, tensorboard=False), cpu)
    assert torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 8
    b = train_supervised(model_for(method, seed=99), toy_data(), toy_data(32, 1), MEAN, STD, p, tmp_path / "b",
                         Monitor(tmp_path / "b", quiet=True, tensorboard=False), cpu, resume=True)
    assert b["top1"] == a["top1"]
    assert rows(tmp_path / "a") == rows(tmp_path / "b")


def test_epoch_batches_are_seeded_and_skip_to_the_resume_point():
    s = EpochBatches(10, 3, seed=5)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start=1)
    assert list(s) == full[1:] and len(full) == 3
    s.set_epoch(3)
    assert list(s) != full
    with pytest.raises(MetaticketError, match="batch_size"):
        EpochBatches(2, 3, seed=0)


def test_augmentation_depends_only_on_seed_epoch_and_index():
    d = toy_data()
    d.set_epoch(1)
    x1 = d[5][0]
    d[7]
    assert torch.equal(d[5][0], x1)
    epoch1 = [d[i][0] for i in range(8)]
    d.set_epoch(2)
    assert any(not torch.equal(d[i][0], epoch1[i]) for i in range(8))


def test_evaluate_counts_top1_top5_and_params():
    model = model_for("edgepopup")
    score = evaluate_classifier(model, toy_data(40), MEAN, STD, 16, torch.device("cpu"))
    assert score["images"] == 40 and 0 <= score["top1"] <= score["top5"] <= 100
    counts = param_counts(model)
    weights = sum(m.weight.numel() for _, m in model.named_modules() if hasattr(m, "scores"))
    assert counts["params_total"] - counts["params_kept"] == weights // 2 or \
        abs(counts["params_total"] - counts["params_kept"] - weights / 2) <= 4  # round() per layer


# ------------------------------------------------------------------------------------------ data
def write_image(path: Path, size: tuple[int, int], color: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (color, 255 - color, 7)).save(path)


def test_imagenet_folders_with_class_val_and_with_kaggle_csv(tmp_path):
    root = tmp_path / "imagenet"
    for i, wnid in enumerate(["n01", "n02", "n03"]):
        for j in range(3):
            write_image(root / "train" / wnid / f"{wnid}_{j}.JPEG", (40 + 10 * j, 30), 60 * i)
        write_image(root / "val" / wnid / f"v_{wnid}.JPEG", (50, 50), 60 * i)
    classes, train, val = scan_imagenet(tmp_path)
    assert classes == ["n01", "n02", "n03"] and len(train) == 9 and [y for _, y in val] == [0, 1, 2]
    x, y = ImageFiles(val, 24, train=False)[1]
    assert x.shape == (3, 24, 24) and x.dtype == torch.uint8 and y == 1 and int(x[0, 12, 12]) == 60
    aug = ImageFiles(train, 16, train=True, seed=3)
    assert torch.equal(aug[4][0], aug[4][0]) and aug[4][0].shape == (3, 16, 16)
    # flat val/ + LOC_val_solution.csv (Kaggle's layout)
    flat = tmp_path / "flat"
    for wnid in ("n01", "n02"):
        write_image(flat / "train" / wnid / "a.JPEG", (20, 20), 9)
    write_image(flat / "val" / "ILSVRC2012_val_00000001.JPEG", (20, 20), 1)
    write_image(flat / "val" / "ILSVRC2012_val_00000002.JPEG", (20, 20), 2)
    (flat / "LOC_val_solution.csv").write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n02 1 2 3 4\n"
                                               "ILSVRC2012_val_00000002,n01 5 6 7 8\n")
    _, _, val = scan_imagenet(flat)
    assert [(p.stem[-1], y) for p, y in val] == [("1", 1), ("2", 0)]
    (flat / "LOC_val_solution.csv").unlink()
    with pytest.raises(MetaticketError, match="LOC_val_solution.csv"):
        scan_imagenet(flat)
    (flat / "train" / "n03").mkdir()
    with pytest.raises(MetaticketError, match="holds no images"):
        scan_imagenet(flat)
    with pytest.raises(MetaticketError, match="ImageNet not found"):
        scan_imagenet(tmp_path / "nowhere")


def test_random_resized_box_stays_inside_the_image():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        left, top, right, bottom = random_resized_box((37, 23), g)
        assert 0 <= left < right <= 37 and 0 <= top < bottom <= 23


def test_cifar10_torchvision_tar_gz_gives_the_same_training_set(tmp_path, cache_dir):
    """A cifar-10-python.tar.gz (torchvision's download) reads like the unpacked batches folder."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "plain" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    import pickle

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}, f)
    (tmp_path / "packed").mkdir()
    with tarfile.open(tmp_path / "packed" / "cifar-10-python.tar.gz", "w:gz") as t:
        t.add(folder, arcname="cifar-10-batches-py")
    a = classification_data("cifar10", tmp_path / "plain", tmp_path / "cache", 32, augment=False, seed=0)
    b = classification_data("cifar10", tmp_path / "packed", tmp_path / "cache", 32, augment=False, seed=0)
    assert len(a.train) == len(b.train) == 20 and len(a.test) == 4
    assert all(torch.equal(a.train[i][0], b.train[i][0]) and a.train[i][1] == b.train[i][1] for i in range(20))


def test_tinyimagenet_classification_uses_val_annotations(data_root, cache_dir):
    data = classification_data("tinyimagenet", data_root, cache_dir, 32, augment=False, seed=0, progress=False)
    assert len(data.classes) == 200 and len(data.train) == 200 * 120 and len(data.test) == 200 * 50
    x, y = data.test[50 * 7 + 3]
    assert x.shape == (3, 32, 32) and y == 7


# ------------------------------------------------------------------------------------------ run.py
def test_train_eval_and_width_sweep_on_real_cifar10(tmp_path, data_root):
    cfg = REPO / "configs" / "cifar10" / "conv6_iterand.yaml"
    small = ["--set", f"run.out_dir={tmp_path}", "--set", "train.max_iterations=3", "--set", "train.batch_size=32",
             "--set", "model.width=0.0625", "--set", "train.rerand_every=2", "--set", "run.log_every=1", "--quiet"]
    r = run("train", str(cfg), *small, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["method"] == "iterand" and result["images"] == 10000 and result["iterations"] == 3
    assert result["sparsity"] == pytest.approx(0.5, abs=0.01) and "top5" not in result
    assert result["params_kept"] < result["params_total"]
    metrics = (tmp_path / "cifar10_conv6_iterand" / "metrics.jsonl").read_text()
    rows = [json.loads(line) for line in metrics.splitlines()]
    assert any(row.get("rerandomized", 0) > 0 for row in rows if row["split"] == "train")
    again = run("eval", str(tmp_path / "cifar10_conv6_iterand"), "--quiet", cwd=tmp_path)
    assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1]) == result
    plain = [a for a in small if a != "train.rerand_every=2"]
    plain = [a for i, a in enumerate(plain) if not (a == "--set" and plain[i + 1] == "--set")]
    assert len(plain) == len(small) - 2
    sweep = run("sweep", str(cfg.with_name("conv6_edgepopup.yaml")), *plain, "--methods", "dense", "edgepopup",
                "--widths", "0.03125", "0.0625", cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr
    table = json.loads(sweep.stdout.strip().splitlines()[-1])
    assert [(g["method"], g["width"]) for g in table["groups"]] == [
        ("dense", 0.03125), ("dense", 0.0625), ("edgepopup", 0.03125), ("edgepopup", 0.0625)]
    assert table["groups"][0]["sparsity"] == 0 and table["groups"][2]["sparsity"] == pytest.approx(0.5, abs=0.01)
    sweep_dir = tmp_path / "cifar10_conv6_edgepopup-sweep"
    assert (sweep_dir / "sweep.png").is_file() and "| edgepopup | 0.0625 |" in (sweep_dir / "sweep.md").read_text()


def test_train_config_errors_are_one_line(tmp_path):
    meta_cfg = REPO / "configs" / "omniglot" / "quickstart.yaml"
    r = run("train", str(meta_cfg), "--set", f"run.out_dir={tmp_path}", cwd=tmp_path)
    assert r.returncode == 2 and "run.kind = meta" in r.stderr and "Traceback" not in r.stderr
    cfg = REPO / "configs" / "cifar10" / "conv6_dense.yaml"
    r = run("meta-train", str(cfg), "--set", f"run.out_dir={tmp_path}", cwd=tmp_path)
    assert r.returncode == 2 and "run.py train" in r.stderr
    r = run("train", str(cfg), "--set", "train.method=popup", cwd=tmp_path)
    assert r.returncode == 2 and "edgepopup" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run("train", str(cfg), "--set", "data.dataset=omniglot", "--set", f"run.out_dir={tmp_path}", cwd=tmp_path)
    assert r.returncode == 2 and "few-shot dataset" in r.stderr
    r = run("eval", str(tmp_path / "nothing"), cwd=tmp_path)
    assert r.returncode == 2 and "not a run folder" in r.stderr
    assert not any(p.name != "nothing" for p in tmp_path.iterdir()), "a failed start wrote files"


def test_plot_compares_runs_and_names_a_missing_metrics_file(tmp_path):
    for name, slope in (("a", 1.0), ("b", 2.0)):
        d = tmp_path / name
        d.mkdir()
        lines = [{"step": s, "split": "train", "loss": 2 - s / 10} for s in range(1, 5)]
        lines += [{"step": s, "split": "test", "top1": slope * s, "sparsity": 0.5} for s in (2, 4)]
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    r = run("plot", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "c.png"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    png = (tmp_path / "c.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    from metaticket.runs.plots import curve, read_metrics

    assert curve(read_metrics(tmp_path / "b"), "test", "top1") == ([2, 4], [4.0, 8.0])
    r = run("plot", str(tmp_path / "missing"), cwd=tmp_path)
    assert r.returncode == 2 and "no metrics.jsonl" in r.stderr and "Traceback" not in r.stderr

"""What a run shows in TensorBoard and metrics.jsonl, for meta-train, train and sweep."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import MEAN, QUICK, STD, events, model_for, plan, run, tiny, toy_data

from metaticket.core.supermask import topk_mask
from metaticket.runs.monitor import Monitor, mask_image
from metaticket.runs.supervised import train_supervised


def jsonl_keys(run_dir: Path, split: str) -> set[str]:
    keys: set[str] = set()
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["split"] == split:
            keys |= {f"{split}/{k}" for k in row if k not in ("step", "split")}
    return keys


def test_meta_train_writes_every_listed_tag(tmp_path, data_root):
    r = run("meta-train", str(QUICK), *tiny(tmp_path), "--set", "meta.rerand_every=2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "t"
    tags = events(run_dir).Tags()
    layers = ["features.0", "features.3", "features.6", "features.9"]  # the MLP's supermask layers
    scalars = {"train/loss", "train/acc", "train/outer_lr", "train/inner_lr", "train/ms_per_step",
               "train/tasks_per_s", "train/rerandomized", "val/acc", "val/ci95", "val/loss", "val/sparsity",
               *(f"val/sparsity/{name}" for name in layers),
               *(f"val/inner_change/{name}.weight" for name in layers), "val/inner_change/head.weight"}
    assert scalars <= set(tags["scalars"]), scalars - set(tags["scalars"])
    assert {f"scores/{name}" for name in layers} <= set(tags["histograms"])
    assert {f"mask/{name}" for name in layers} <= set(tags["images"])
    # the same scalars go to metrics.jsonl
    assert scalars <= jsonl_keys(run_dir, "train") | jsonl_keys(run_dir, "val")
    # inner-loop movement is a real measurement: the head moves, and a weight moves by a sane relative amount
    val = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"val"' in x][-1]
    assert 0 < val["inner_change/head.weight"] < 10 and 0 < val["inner_change/features.0.weight"] < 10


def test_supervised_run_writes_scalars_histograms_and_mask_images(tmp_path):
    run_dir = tmp_path / "s"
    monitor = Monitor(run_dir, quiet=True)
    train_supervised(model_for("iterand"), toy_data(), toy_data(32, 1), MEAN, STD, plan("iterand", epochs=1),
                     run_dir, monitor, torch.device("cpu"))
    monitor.close()
    tags = events(run_dir).Tags()
    assert {"train/loss", "train/acc", "train/lr", "train/ms_per_iter", "train/images_per_s", "train/rerandomized",
            "test/top1", "test/top5", "test/sparsity", "test/sparsity/features.0"} <= set(tags["scalars"])
    assert "scores/features.0" in tags["histograms"] and "mask/head" in tags["images"]


def test_sweep_shows_progress_over_its_runs(tmp_path, data_root):
    r = run("sweep", str(QUICK), "--seeds", "1", "2", *tiny(tmp_path)[:-1], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "sweep (2 runs)" in r.stderr and "2/2" in r.stderr


def test_mask_image_of_a_conv_is_a_grid_of_kernels():
    mask = topk_mask(torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0)), 0.5).detach()
    img = mask_image(mask)
    assert img.shape == (4 * 4, 3 * 4)  # one 3x3 tile per (out, in) pair plus a separator line
    assert torch.equal(img[4:7, 8:11], mask[1, 2])  # output channel 1, input channel 2
    assert (img[3, :] == 0.5).all() and (img[:, 3] == 0.5).all()
    assert mask_image(torch.ones(2000, 10)).shape == (512, 10)


def test_a_mask_wider_than_the_image_is_shrunk_by_block_averages_not_cropped():
    mask = torch.zeros(1024, 2048)
    mask[:, :1024] = 1  # the left half kept: a crop to 512 columns would show only kept weights
    img = mask_image(mask)
    assert img.shape == (512, 512) and img.mean().item() == 0.5
    assert (img[:, :256] == 1).all() and (img[:, 256:] == 0).all()
    checker = (torch.arange(1000)[:, None] + torch.arange(1000)[None]) % 2  # half kept, finely mixed
    shrunk = mask_image(checker.float())
    assert shrunk.shape == (512, 512) and abs(shrunk.mean().item() - 0.5) < 0.01 and shrunk.max() < 1


def hparams_of_run(run_dir: Path) -> tuple[dict, list[str]]:
    """The HParams view's data of a run folder: its hyper-parameters and the metric tags it lists."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = events(run_dir)
    content = acc.PluginTagToContent("hparams")
    params, metrics = {}, []
    for tag, blob in content.items():
        data = plugin_data_pb2.HParamsPluginData.FromString(blob)
        if tag == "_hparams_/session_start_info":
            params = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
                      for k, v in data.session_start_info.hparams.items()}
        if tag == "_hparams_/experiment":
            metrics = [m.name.tag for m in data.experiment.metric_infos]
    return params, metrics


def test_tensorboard_shows_the_hparams_and_the_meta_test_result(tmp_path, data_root):
    r = run("meta-train", str(QUICK), *tiny(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "t"
    r = run("meta-test", str(run_dir), "--tasks", "4", "--checkpoint", "last", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    params, metrics = hparams_of_run(run_dir)
    assert params["meta.method"] == "metaticket" and params["data.split"] == "vinyals"
    assert isinstance(params["meta.inner_lr"], float) and params["run.seed"] == 0
    assert "data.root" not in params and params["model.dense_head"] in ("true", "false")  # bools as text
    assert metrics == ["val/best_acc", "val/acc", "test/acc", "test/ci95"]
    scalars = set(events(run_dir).Tags()["scalars"])
    assert {"val/best_acc", "test/acc", "test/ci95"} <= scalars  # the meta-test's score is in TensorBoard too
    val = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"val"' in x]
    assert all(v["best_acc"] == max(w["acc"] for w in val[:i + 1]) for i, v in enumerate(val))


def test_hparams_of_a_supervised_config_are_its_train_section(tmp_path):
    from metaticket.config import load_config
    from metaticket.runs.commands import hparams_of

    config = load_config(Path(QUICK).parents[1] / "cifar10" / "conv6_iterand.yaml", ["run.seed=3"])
    params = hparams_of(config)
    assert params["train.method"] == config.train.method and params["run.seed"] == 3
    assert list(params)[:4] == ["train.method", "model.name", "model.width", "run.seed"]  # TensorBoard's first
    assert not any(k.startswith("meta.") for k in params) and "model.name" in params
    monitor = Monitor(tmp_path, quiet=True)
    monitor.hparams({**params, "a.list": [1, 2]}, ["test/top1"])
    monitor.close()
    got, metrics = hparams_of_run(tmp_path)
    assert got["train.method"] == config.train.method and "a.list" not in got and metrics == ["test/top1"]

"""The dataset registry: a new dataset is one file plus one registration, and every run path finds it by name."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import pytest
import torch

from metaticket.cli import main
from metaticket.data import DATASETS, DatasetSpec, get_dataset, list_datasets, register_dataset
from metaticket.errors import MetaticketError

# The "Adding a dataset" example of docs/own-data.md, as a user would write it in a file of their own.
TOY = '''
import torch

from metaticket.data import ClassImages, DatasetSpec, Source, register_dataset
from metaticket.data.classification import Classification, TensorImages


def _images(classes: int, per_class: int, side: int) -> torch.Tensor:
    """uint8 [classes, per_class, 3, side, side]: class c is a brightness level plus noise."""
    g = torch.Generator().manual_seed(0)
    base = torch.linspace(20, 235, classes).view(classes, 1, 1, 1, 1)
    noise = torch.randint(-10, 11, (classes, per_class, 3, side, side), generator=g)
    return (base + noise).clamp(0, 255).to(torch.uint8)


def episodes(src: Source) -> ClassImages:
    images = _images(30, 20, src.image_size)
    return ClassImages(images, {"train": list(range(20)), "val": list(range(20, 25)), "test": list(range(25, 30))})


def classification(src: Source, augment: bool, seed: int) -> Classification:
    images = _images(4, 16, src.image_size)  # [4, 16, 3, S, S]
    labels = torch.arange(4).repeat_interleave(16)
    x = images.flatten(0, 1)
    return Classification(TensorImages(x, labels, augment, seed), TensorImages(x, labels, False),
                          ["a", "b", "c", "d"], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), src.image_size)


register_dataset(DatasetSpec("toy", channels=3, image_size=12, decoded_images=240, episodes=episodes,
                             episode_splits=("train", "val", "test"), classification=classification, classes=4))
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    (tmp_path / "toy_dataset.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("toy_dataset", None)  # a fresh import (and registration) each test
    before = dict(DATASETS)
    importlib.import_module("toy_dataset")
    yield get_dataset("toy")
    DATASETS.clear()
    DATASETS.update(before)


def test_builtin_specs():
    builtin = {"cifar10", "imagenet", "miniimagenet", "omniglot", "sinusoid", "tinyimagenet"}
    assert builtin <= set(list_datasets())
    assert builtin & set(list_datasets(episodes=True)) == builtin - {"imagenet"}
    assert builtin & set(list_datasets(classification=True)) == {"cifar10", "imagenet", "tinyimagenet"}
    omniglot = get_dataset("omniglot")
    assert (omniglot.channels, omniglot.image_size, omniglot.rotations) == (1, 28, True)
    assert get_dataset("cifar10").episode_splits == ("test",)


def test_unknown_and_empty_specs_are_refused():
    with pytest.raises(MetaticketError, match=r"data.dataset = 'mnist' is unknown; known datasets: cifar10, "):
        get_dataset("mnist")
    with pytest.raises(ValueError, match="needs an episodes, generate or classification reader"):
        register_dataset(DatasetSpec("empty", channels=1, image_size=8, decoded_images=0))
    with pytest.raises(ValueError, match="names no episode_splits"):
        register_dataset(DatasetSpec("nosplits", channels=1, image_size=8, decoded_images=0, episodes=lambda s: None))
    assert "empty" not in DATASETS and "nosplits" not in DATASETS


def test_a_registered_dataset_meta_trains_tests_and_trains(toy, tmp_path, capsys):
    assert "toy" in list_datasets(episodes=True) and "toy" in list_datasets(classification=True)
    common = ["--set", "data.dataset=toy", "--set", f"run.out_dir={tmp_path / 'runs'}", "--set", "run.threads=1",
              "--quiet"]
    meta = ["--set", "meta.steps=4", "--set", "meta.meta_batch=2", "--set", "eval.val_every=4",
            "--set", "eval.val_tasks=4", "--set", "eval.test_tasks=8", "--set", "run.name=toy_meta"]
    assert main(["meta-train", "configs/omniglot/quickstart.yaml", *common, *meta]) == 0
    run = tmp_path / "runs" / "toy_meta"
    assert main(["meta-test", str(run), "--tasks", "8", "--quiet"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["dataset"] == "toy" and line["tasks"] == 8 and 0.0 <= line["accuracy"] <= 100.0
    sup = ["--set", "train.epochs=1", "--set", "train.batch_size=16", "--set", "run.name=toy_train",
           "--set", "model.name=conv4", "--set", "data.image_size=16"]
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["learner"]["step"] == 4
    capsys.readouterr()
    assert main(["train", "configs/cifar10/conv6_edgepopup.yaml", *common, *sup]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["dataset"] == "toy" and result["images"] == 64 and result["iterations"] == 4


def test_few_shot_only_and_supervised_only_datasets_say_so(tmp_path, capsys):
    out = ["--set", f"run.out_dir={tmp_path}", "--quiet"]
    assert main(["train", "configs/cifar10/conv6_edgepopup.yaml", "--set", "data.dataset=omniglot", *out]) == 2
    assert "is a few-shot dataset; supervised training takes one of: cifar10, imagenet" in capsys.readouterr().err
    assert main(["meta-train", "configs/omniglot/quickstart.yaml", "--set", "data.dataset=imagenet", *out]) == 2
    assert "imagenet has no few-shot tasks; meta-train on miniimagenet, omniglot" in capsys.readouterr().err
    assert main(["meta-train", "configs/omniglot/quickstart.yaml", "--set", "data.dataset=cifar10", *out]) == 2
    assert "cifar10 offers only test tasks" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_grayscale_supervised_dataset_trains_with_its_own_channel_count(tmp_path, monkeypatch, capsys):
    """The classifier takes the dataset spec's channels (1 here), not a fixed 3: before, a 1-channel dataset was
    refused by the forward check of a model built for RGB."""
    gray = TOY.replace("3, side, side", "1, side, side").replace("(0.5, 0.5, 0.5), (0.25, 0.25, 0.25)",
                                                                   "(0.5,), (0.25,)")
    gray = gray.replace('DatasetSpec("toy", channels=3', 'DatasetSpec("toy1", channels=1')
    assert "3, side, side" not in gray and "channels=1" in gray
    (tmp_path / "toy1_dataset.py").write_text(textwrap.dedent(gray))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("toy1_dataset", None)
    before = dict(DATASETS)
    try:
        importlib.import_module("toy1_dataset")
        args = ["train", "configs/cifar10/conv6_edgepopup.yaml", "--set", "data.dataset=toy1", "--set",
                f"run.out_dir={tmp_path / 'runs'}", "--set", "run.threads=1", "--quiet", "--set", "train.epochs=1",
                "--set", "train.batch_size=16", "--set", "model.name=conv4", "--set", "data.image_size=16",
                "--set", "run.name=gray"]
        assert main(args) == 0, capsys.readouterr().err
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["dataset"] == "toy1" and result["images"] == 64
        # its ticket is checked on 1-channel examples too (the export compared outputs on 3-channel ones)
        ticket = tmp_path / "gray.ticket"
        assert main(["export", str(tmp_path / "runs" / "gray"), "-o", str(ticket)]) == 0, \
            capsys.readouterr().err
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["identical_outputs"] is True
    finally:
        DATASETS.clear()
        DATASETS.update(before)

"""Dataset readers beyond Omniglot: Tiny-ImageNet (real data), miniImageNet and CIFAR-10 formats
(small files made here in the official formats), safe unpickling."""

from __future__ import annotations

import io
import json
import pickle
import re
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from metaticket.data import episode_samplers
from metaticket.data.cifar10 import CLASSES, read_batches, read_image_folders
from metaticket.data.miniimagenet import load_miniimagenet
from metaticket.data.safe_pickle import load_pickle
from metaticket.data.tinyimagenet import SPLIT_FILE, load_split, load_tinyimagenet
from metaticket.errors import MetaticketError


# ------------------------------------------------------------------------------------------------ Tiny-ImageNet
def test_tinyimagenet_real_subset(data_root, cache_dir):
    data = load_tinyimagenet(data_root, cache_dir, progress=False)
    assert data.train.shape == (200, 120, 3, 64, 64) and data.val.shape == (200, 50, 3, 64, 64)
    split = load_split(data.wnids)
    assert [len(split[k]) for k in ("train", "val", "test")] == [120, 40, 40]
    spec = json.loads(SPLIT_FILE.read_text())
    assert not set(spec["train"]) & set(spec["test"]) and not set(spec["val"]) & set(spec["test"])
    assert not set(spec["train"]) & set(spec["val"])


def _jpeg(color: tuple[int, int, int], size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_tinyimagenet_val_labels_come_from_annotations(tmp_path):
    top = tmp_path / "tiny-imagenet-200"
    wnids = ["n001", "n002", "n003"]
    colors = {"n001": (250, 0, 0), "n002": (0, 250, 0), "n003": (0, 0, 250)}
    (top / "val" / "images").mkdir(parents=True)
    (top / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for w in wnids:
        (top / "train" / w / "images").mkdir(parents=True)
        for i in range(3):
            (top / "train" / w / "images" / f"{w}_{i}.JPEG").write_bytes(_jpeg(colors[w]))
    # val files are named by number only; the class is known from the annotations file alone
    for i, w in enumerate(["n003", "n001", "n002", "n003", "n001", "n002"]):
        (top / "val" / "images" / f"val_{i}.JPEG").write_bytes(_jpeg(colors[w]))
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (top / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    data = load_tinyimagenet(tmp_path, tmp_path / "cache", progress=False)
    assert data.wnids == wnids and data.train.shape == (3, 3, 3, 64, 64) and data.val.shape == (3, 2, 3, 64, 64)
    for c, w in enumerate(wnids):
        channel = int(np.argmax(colors[w]))
        assert int(data.val[c, :, channel].float().mean()) > 200
        assert int(data.train[c, :, channel].float().mean()) > 200
    # the same folder packed as a .tar.gz reads the same
    with tarfile.open(tmp_path / "tiny-imagenet-200.tar.gz", "w:gz") as t:
        t.add(top, arcname="tiny-imagenet-200")
    packed_root = tmp_path / "packed"
    packed_root.mkdir()
    (tmp_path / "tiny-imagenet-200.tar.gz").rename(packed_root / "tiny-imagenet-200.tar.gz")
    packed = load_tinyimagenet(packed_root, tmp_path / "cache2", progress=False)
    assert torch.equal(packed.train, data.train) and torch.equal(packed.val, data.val)


@pytest.mark.parametrize(("damage", "needle"), [
    ("space separators", "line 1 is not '<image>\\t<wnid>"),
    ("a class without lines", "class n002 has no validation image"),
    ("an unknown image", "names 'val_9.JPEG', which is not in val/images/"),
    ("an image without a line", "image val_1.JPEG has no annotation line"),
])
def test_tinyimagenet_annotations_that_do_not_match_the_images_are_named(tmp_path, damage, needle):
    """Annotations that leave images or classes out are refused before anything trains, instead of a test set of 0
    images scored 'top-1 0.0' with exit 0."""
    top = tmp_path / "tiny-imagenet-200"
    (top / "val" / "images").mkdir(parents=True)
    (top / "wnids.txt").write_text("n001\nn002\n")
    for w in ("n001", "n002"):
        (top / "train" / w / "images").mkdir(parents=True)
        (top / "train" / w / "images" / f"{w}_0.JPEG").write_bytes(_jpeg((9, 9, 9)))
    for i in range(2):
        (top / "val" / "images" / f"val_{i}.JPEG").write_bytes(_jpeg((9, 9, 9)))
    lines = ["val_0.JPEG\tn001\t0\t0\t63\t63", "val_1.JPEG\tn002\t0\t0\t63\t63"]
    if damage == "space separators":
        lines = [x.replace("\t", " ") for x in lines]
    elif damage == "a class without lines":
        lines[1] = lines[1].replace("n002", "n001")
    elif damage == "an unknown image":
        lines.append("val_9.JPEG\tn001\t0\t0\t63\t63")
    elif damage == "an image without a line":
        lines = lines[:1] + ["val_0.JPEG\tn002\t0\t0\t63\t63"]
    (top / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(MetaticketError, match=re.escape(needle)):
        load_tinyimagenet(tmp_path, tmp_path / "cache", progress=False)


# ------------------------------------------------------------------------------------------------ miniImageNet
SPLIT_CLASSES = {"train": ["n01", "n02", "n03", "n04", "n05"], "val": ["n06", "n07", "n08", "n09", "n10"],
                 "test": ["n11", "n12", "n13", "n14", "n15"]}


def _mini_pickles(folder, per_class: int = 6, size: int = 84) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, classes in SPLIT_CLASSES.items():
        n = per_class * len(classes)
        data = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
        class_dict = {c: list(range(i * per_class, (i + 1) * per_class)) for i, c in enumerate(classes)}
        with open(folder / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": data, "class_dict": class_dict}, f, protocol=4)
        arrays[split] = data
    return arrays


def test_miniimagenet_pickles(tmp_path):
    folder = tmp_path / "miniimagenet"
    folder.mkdir()
    arrays = _mini_pickles(folder)
    data = load_miniimagenet(tmp_path, tmp_path / "cache", progress=False)
    assert data.images.shape == (15, 6, 3, 84, 84)
    assert data.split == {"train": [0, 1, 2, 3, 4], "val": [5, 6, 7, 8, 9], "test": [10, 11, 12, 13, 14]}
    assert data.classes[10] == "n11"
    # class n12 (test row 11) holds rows 6..11 of the test pickle, channels first
    expected = torch.from_numpy(arrays["test"][6:12]).permute(0, 3, 1, 2)
    assert torch.equal(data.images[11], expected)
    samplers = episode_samplers("miniimagenet", tmp_path, tmp_path / "cache", ways=5, shots=1, queries=2,
                                image_size=32, rotations=True, seed=0, val_seed=1, progress=False)
    t = samplers["test"].sample(2)
    assert t.support_x.shape == (2, 5, 3, 32, 32) and t.query_x.shape == (2, 10, 3, 32, 32)


def test_miniimagenet_csv_folder(tmp_path):
    base = tmp_path / "miniimagenet"
    (base / "images").mkdir(parents=True)
    colors = {}
    for split, classes in SPLIT_CLASSES.items():
        rows = ["filename,label"]
        for ci, c in enumerate(classes):
            colors[c] = (ci * 50, 255 - ci * 50, 128)
            for i in range(3):
                name = f"{c}{i:08d}.jpg"
                Image.new("RGB", (100, 90), colors[c]).save(base / "images" / name, format="JPEG", quality=95)
                rows.append(f"{name},{c}")
        (base / f"{split}.csv").write_text("\n".join(rows) + "\n")
    data = load_miniimagenet(tmp_path, tmp_path / "cache", progress=False)
    assert data.images.shape == (15, 3, 3, 84, 84)
    for row, c in enumerate(data.classes):
        mean = data.images[row].float().mean(dim=(0, 2, 3))
        assert torch.allclose(mean, torch.tensor(colors[c], dtype=torch.float32), atol=3)


def test_miniimagenet_html_pickle_is_named(tmp_path):
    for split in ("train", "val", "test"):
        (tmp_path / f"mini-imagenet-cache-{split}.pkl").write_text(
            "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head></html>")
    with pytest.raises(MetaticketError, match=r"is an HTML page, not a pickle"):
        load_miniimagenet(tmp_path, tmp_path / "cache", progress=False)


def test_pickle_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "mini-imagenet-cache-train.pkl"
    path.write_bytes(pickle.dumps({"image_data": Evil()}))
    with pytest.raises(MetaticketError, match=r"refusing to load .*builtins\.print is not allowed"):
        load_pickle(path)


def test_missing_miniimagenet_says_where(tmp_path):
    with pytest.raises(MetaticketError, match="miniImageNet not found under"):
        load_miniimagenet(tmp_path, tmp_path / "cache")


# ------------------------------------------------------------------------------------------------ CIFAR-10
def test_cifar10_batches_match_image_folder(data_root, tmp_path):
    """A torchvision-format archive made from a few real JPEGs decodes to the same tensors as the folder."""
    picked: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    with tarfile.open(data_root / "cifar10-jpeg" / "cifar10-jpeg.tar.gz") as t:
        for m in t:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 4 and len(picked.setdefault((parts[1], parts[2]), [])) < 2:
                picked[(parts[1], parts[2])].append((parts[3], t.extractfile(m).read()))
    folder = tmp_path / "cifar10-jpeg"
    for (split, cls), files in picked.items():
        (folder / split / cls).mkdir(parents=True, exist_ok=True)
        for name, raw in files:
            (folder / split / cls / name).write_bytes(raw)
    from_folder = read_image_folders(folder, progress=False)
    assert from_folder["classes"] == CLASSES
    # the folder must hold CIFAR-10's 10 classes: an 11th, or one left empty, is named (not an 11- or 9-class set)
    import shutil

    odd = tmp_path / "odd"
    shutil.copytree(folder, odd)
    for split in ("train", "test"):
        shutil.copytree(odd / split / "cat", odd / split / "lion")
    with pytest.raises(MetaticketError, match="found extra lion"):
        read_image_folders(odd, progress=False)
    for split in ("train", "test"):
        shutil.rmtree(odd / split / "lion")
        for f in (odd / split / "frog").iterdir():
            f.unlink()
    with pytest.raises(MetaticketError, match="missing \\(or without images\\) frog"):
        read_image_folders(odd, progress=False)
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    for split, files in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        # torchvision rows: 3072 bytes = the red plane, then green, then blue (row-major 32x32 each)
        rows, labels = [], []
        for label, cls in enumerate(CLASSES):
            for _, raw in sorted(picked[(split, cls)]):
                rows.append(np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")).transpose(2, 0, 1).reshape(-1))
                labels.append(label)
        chunks = np.array_split(np.arange(len(rows)), len(files))
        for name, idx in zip(files, chunks):
            with open(batches / name, "wb") as f:
                pickle.dump({b"data": np.stack([rows[i] for i in idx]), b"labels": [labels[i] for i in idx]}, f)
    from_batches = read_batches(batches)
    assert torch.equal(from_batches["train_y"], from_folder["train_y"])
    assert torch.equal(from_batches["train_x"], from_folder["train_x"])
    assert torch.equal(from_batches["test_x"], from_folder["test_x"])

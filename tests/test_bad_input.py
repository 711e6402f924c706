"""A catalogue of bad inputs: each must stop run.py with one line that names the key or file and the fix, exit
code 2, no traceback, and leave an existing run folder exactly as it was (issue 8)."""

from __future__ import annotations

import io
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import REPO, expect_one_line, fake_cache, folder_state, omniglot_with, refused, run, tiny
from PIL import Image

QUICK = str(REPO / "configs" / "omniglot" / "quickstart.yaml")
CIFAR = str(REPO / "configs" / "cifar10" / "conv6_edgepopup.yaml")








@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_root) -> Path:
    """A real (tiny) finished meta-train run folder, shared by the cases that point at a run."""
    out = tmp_path_factory.mktemp("runs")
    r = run("meta-train", QUICK, *tiny(out, "done"), cwd=out)
    assert r.returncode == 0, r.stderr
    return out / "done"


# ------------------------------------------------------------------------------------------ config values
CONFIG_CASES: list[tuple[str, list[str], tuple[str, ...]]] = [
    ("unknown key, with a suggestion", ["meta.inner_lrr=0.1"], ("meta.inner_lrr", "did you mean meta.inner_lr")),
    ("unknown section", ["metaa.steps=3"], ("metaa",)),
    ("wrong type (int)", ["meta.steps=abc"], ("meta.steps", "whole number")),
    ("wrong type (bool)", ["meta.first_order=maybe"], ("meta.first_order",)),
    ("wrong type (float)", ["meta.inner_lr=fast"], ("meta.inner_lr",)),
    ("sparsity >= 1", ["model.sparsity=1.0"], ("model.sparsity", "[0, 1)")),
    ("negative inner lr", ["meta.inner_lr=-0.1"], ("meta.inner_lr", "positive")),
    ("negative outer lr", ["meta.outer_lr=-1"], ("meta.outer_lr", "positive")),
    ("zero meta-batch", ["meta.meta_batch=0"], ("meta.meta_batch",)),
    ("unknown choice", ["meta.method=reptile"], ("meta.method", "maml")),
    ("bad device", ["run.device=gpu"], ("run.device", "cuda")),
    ("override without =", ["meta.steps"], ("meta.steps", "=")),
    ("unknown model", ["model.name=vgg99"], ("vgg99", "conv4")),
    ("unknown dataset", ["data.dataset=mnist"], ("data.dataset", "omniglot")),
]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_values(case, tmp_path):
    _, sets, needles = case
    args = [x for s in sets for x in ("--set", s)]
    refused("meta-train", QUICK, *args, tmp_path=tmp_path, needles=needles)


# These two need the data: on a fresh cache it is decoded first (with a progress bar unless --quiet).
def test_shots_plus_queries_beyond_the_images_of_a_class(tmp_path, data_root):
    refused("meta-train", QUICK, "--set", "data.shots=5", "--set", "data.queries=16", "--quiet", tmp_path=tmp_path,
            needles=("20", "data.queries"))


def test_more_ways_than_classes_in_a_split(tmp_path, data_root):
    refused("meta-train", QUICK, "--set", "data.ways=800", "--quiet", tmp_path=tmp_path,  # val: 172 x 4 classes
            needles=("data.ways", "classes"))


# ------------------------------------------------------------------------------------------ YAML files
def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


YAML_CASES: list[tuple[str, Callable[[Path], Path], tuple[str, ...]]] = [
    ("tab in YAML", lambda d: write(d / "tab.yaml", "run:\n\tname: x\n"), ("tab.yaml", "tab")),
    ("duplicate key", lambda d: write(d / "dup.yaml", "meta:\n  steps: 3\n  steps: 4\n"), ("dup.yaml", "steps")),
    ("base cycle", lambda d: (write(d / "b.yaml", "base: a.yaml\n"), write(d / "a.yaml", "base: b.yaml\n"))[1],
     ("base",)),
    ("missing base file", lambda d: write(d / "c.yaml", "base: nowhere.yaml\n"), ("nowhere.yaml",)),
    ("not a mapping", lambda d: write(d / "list.yaml", "- 1\n- 2\n"), ("list.yaml",)),
    ("missing config file", lambda d: d / "absent.yaml", ("absent.yaml",)),
    ("section is not a mapping", lambda d: write(d / "sec.yaml", "meta: 3\n"), ("meta", "indented")),
]


@pytest.mark.parametrize("case", YAML_CASES, ids=[c[0] for c in YAML_CASES])
def test_bad_yaml_files(case, tmp_path):
    _, make, needles = case
    refused("meta-train", str(make(tmp_path)), tmp_path=tmp_path, needles=needles)






def test_missing_data_root(tmp_path):
    refused("meta-train", QUICK, "--set", f"data.root={tmp_path / 'nowhere'}", tmp_path=tmp_path,
            needles=(str(tmp_path / "nowhere"), "data.root", "images_background.zip"), env_extra=fake_cache(tmp_path))


def test_empty_archive(tmp_path):
    refused("meta-train", QUICK, *omniglot_with(tmp_path, b""), tmp_path=tmp_path, needles=("images_background.zip",),
            env_extra=fake_cache(tmp_path))


def test_truncated_archive(tmp_path, data_root):
    real = (data_root / "omniglot" / "images_background.zip").read_bytes()
    refused("meta-train", QUICK, *omniglot_with(tmp_path, real[: len(real) // 3]), tmp_path=tmp_path,
            needles=("images_background.zip", "download it again"), env_extra=fake_cache(tmp_path))


def test_zip_whose_images_are_not_images(tmp_path, data_root):
    """The real archive with its first drawing replaced by HTML: the error names the archive and the member."""
    buf = io.BytesIO()
    with zipfile.ZipFile(data_root / "omniglot" / "images_background.zip") as src, zipfile.ZipFile(buf, "w") as dst:
        names = [i.filename for i in src.infolist() if i.filename.endswith(".png")]
        bad = sorted(names)[0]
        for info in src.infolist():
            dst.writestr(info, b"<html>not a png</html>" if info.filename == bad else src.read(info))
    args = omniglot_with(tmp_path, buf.getvalue())
    shutil.copy(data_root / "omniglot" / "images_evaluation.zip", tmp_path / "data" / "omniglot")
    refused("meta-train", QUICK, *args, "--set", "data.workers=0", tmp_path=tmp_path,
            needles=("images_background.zip", bad.rsplit("/", 1)[-1], "not a readable image"),
            env_extra=fake_cache(tmp_path))


def test_miniimagenet_pickle_that_is_html(tmp_path):
    root = tmp_path / "data" / "miniimagenet"
    root.mkdir(parents=True)
    for split in ("train", "val", "test"):
        (root / f"mini-imagenet-cache-{split}.pkl").write_bytes(b"<!DOCTYPE html><html>Sign in</html>")
    cfg = REPO / "configs" / "miniimagenet" / "resnet12_5w1s_metaticket.yaml"
    refused("meta-train", str(cfg), "--set", f"data.root={tmp_path / 'data'}", tmp_path=tmp_path,
            needles=("mini-imagenet-cache-", "pkl"), env_extra=fake_cache(tmp_path))


def test_imagefolder_with_an_empty_class(tmp_path):
    base = tmp_path / "data" / "imagenet"
    for split in ("train", "val"):
        for wnid in ("n01", "n02"):
            d = base / split / wnid
            d.mkdir(parents=True)
            if not (split == "train" and wnid == "n02"):
                Image.new("RGB", (8, 8)).save(d / "a.JPEG")
    cfg = REPO / "configs" / "imagenet" / "resnet50_dense.yaml"
    refused("train", str(cfg), "--set", f"data.root={tmp_path / 'data'}", tmp_path=tmp_path,
            needles=("n02", "holds no images"), env_extra=fake_cache(tmp_path))


def test_cifar_batches_that_are_not_pickles_of_arrays(tmp_path):
    d = tmp_path / "data" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (d / name).write_bytes(pickle.dumps({"data": "x"}) if name != "test_batch" else b"\x80\x04garbage")
    refused("train", CIFAR, "--set", f"data.root={tmp_path / 'data'}", tmp_path=tmp_path,
            needles=("cifar-10-batches-py", "download"), env_extra=fake_cache(tmp_path))


# ------------------------------------------------------------------------------------------ run folders, files
def test_checkpoint_from_a_different_architecture(finished_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(finished_run, other)
    cfg = (other / "config.yaml").read_text().replace("width: 1.0", "width: 2.0")
    assert "width: 2.0" in cfg
    (other / "config.yaml").write_text(cfg)
    before = folder_state(other)
    r = run("meta-test", str(other), "--tasks", "5", cwd=tmp_path)
    expect_one_line(r, str(other), "does not fit", "train a new run")
    assert folder_state(other) == before


def test_resume_folder_without_a_checkpoint(finished_run, tmp_path):
    other = tmp_path / "nockpt"
    shutil.copytree(finished_run, other)
    shutil.rmtree(other / "checkpoints")
    saved = yaml.safe_load((other / "config.yaml").read_text())
    saved["run"].update(out_dir=str(tmp_path), name="nockpt")  # --resume continues run.out_dir / run.name
    (other / "config.yaml").write_text(yaml.safe_dump(saved))
    before = folder_state(other)
    r = run("meta-train", str(other / "config.yaml"), "--resume", "--quiet", cwd=tmp_path)
    expect_one_line(r, str(other), "checkpoints/last.pt")
    assert folder_state(other) == before


def test_meta_test_of_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    expect_one_line(run("meta-test", str(tmp_path / "empty"), cwd=tmp_path), "not a run folder")
    assert not any((tmp_path / "empty").iterdir())


def test_ticket_with_a_flipped_bit(finished_run, tmp_path):
    ticket = tmp_path / "t.ticket"
    r = run("export", str(finished_run), "-o", str(ticket), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = bytearray(ticket.read_bytes())
    # flip one bit inside the packed mask bits (the largest uint8 storage in the file)
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        biggest = max(z.infolist(), key=lambda i: i.file_size if "/data/" in i.filename else -1)
        offset = biggest.header_offset + 30 + len(biggest.filename.encode()) + len(biggest.extra)
    data[offset + biggest.file_size // 2] ^= 0x10
    ticket.write_bytes(bytes(data))
    code = ("import sys; from metaticket import load_ticket\n"
            "from metaticket.errors import MetaticketError\n"
            "try:\n    load_ticket(sys.argv[1])\n"
            "except MetaticketError as e:\n    print(e, file=sys.stderr); sys.exit(2)")
    r = subprocess.run([sys.executable, "-c", code, str(ticket)], cwd=REPO, capture_output=True, text=True)
    expect_one_line(r, "t.ticket")


def test_export_of_a_folder_without_checkpoints(finished_run, tmp_path):
    other = tmp_path / "noexport"
    shutil.copytree(finished_run, other)
    shutil.rmtree(other / "checkpoints")
    before = folder_state(other)
    expect_one_line(run("export", str(other), "-o", str(tmp_path / "x.ticket"), cwd=tmp_path), "checkpoint")
    assert folder_state(other) == before and not (tmp_path / "x.ticket").exists()


def test_train_config_given_to_meta_train_and_back(tmp_path):
    refused("meta-train", CIFAR, tmp_path=tmp_path / "a", needles=("run.py train",))
    refused("train", QUICK, tmp_path=tmp_path / "b", needles=("run.kind = meta",))


def test_the_catalogue_has_at_least_25_cases():
    cases = len(CONFIG_CASES) + len(YAML_CASES)
    cases += sum(1 for name in globals() if name.startswith("test_") and name not in (
        "test_bad_config_values", "test_bad_yaml_files", "test_the_catalogue_has_at_least_25_cases"))
    assert cases >= 25, cases


# ------------------------------------------------------------------------------------------ untrusted archives
def zip_with(path: Path, name: str, symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images_background/A/character01/01.png", b"x")
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (0o120777 << 16)  # S_IFLNK
        z.writestr(info, b"/etc/passwd" if symlink else b"evil")
    return path


@pytest.mark.parametrize("name,symlink", [("../../evil.png", False), ("/abs/evil.png", False),
                                          ("images_background/A/link.png", True)])
def test_omniglot_zip_with_an_escaping_or_link_member_is_refused(tmp_path, name, symlink):
    root = tmp_path / "data" / "omniglot"
    root.mkdir(parents=True)
    for part in ("images_background", "images_evaluation"):
        zip_with(root / f"{part}.zip", name, symlink)
    refused("meta-train", QUICK, "--set", f"data.root={tmp_path / 'data'}", "--quiet", tmp_path=tmp_path,
            needles=(name, "refusing"), env_extra=fake_cache(tmp_path))
    assert not (tmp_path / "evil.png").exists()


@pytest.mark.parametrize("kind", ["dotdot", "symlink", "hardlink"])
def test_cifar_tar_with_an_escaping_or_link_member_is_refused(tmp_path, kind):
    import tarfile

    d = tmp_path / "data"
    d.mkdir()
    with tarfile.open(d / "cifar-10-python.tar.gz", "w:gz") as t:
        info = tarfile.TarInfo("cifar-10-batches-py/../../evil" if kind == "dotdot" else "cifar-10-batches-py/x")
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            t.addfile(info)
        elif kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
            t.addfile(info)
        else:
            info.size = 4
            t.addfile(info, io.BytesIO(b"evil"))
    refused("train", CIFAR, "--set", f"data.root={d}", "--quiet", tmp_path=tmp_path,
            needles=("cifar-10-python.tar.gz", "refusing"), env_extra=fake_cache(tmp_path))
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("name,symlink", [("tiny-imagenet-200/../../evil", False), ("/abs/evil", False),
                                          ("tiny-imagenet-200/train/n01/images/link.JPEG", True)])
def test_tinyimagenet_zip_with_an_escaping_or_link_member_is_refused(tmp_path, name, symlink):
    """The zip branch of the shared archive reader (Tiny-ImageNet, CIFAR-10 JPEG archives)."""
    d = tmp_path / "data"
    d.mkdir()
    with zipfile.ZipFile(d / "tiny-imagenet-200.zip", "w") as z:
        z.writestr("tiny-imagenet-200/wnids.txt", "n01\n")
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (0o120777 << 16)  # S_IFLNK
        z.writestr(info, b"/etc/passwd" if symlink else b"evil")
    cfg = REPO / "configs" / "tinyimagenet" / "conv4_5w5s_maml.yaml"
    refused("meta-train", str(cfg), "--set", f"data.root={d}", "--quiet", tmp_path=tmp_path,
            needles=("tiny-imagenet-200.zip", name, "refusing"), env_extra=fake_cache(tmp_path))
    assert not (tmp_path / "evil").exists()

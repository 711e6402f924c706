"""Hostile or damaged data files: zip bombs, damaged members, decompression-bomb and truncated images, malformed
pickles, stale or damaged caches (issue 17, item 5). Each ends in one error naming the file (and member)."""

from __future__ import annotations

import io
import pickle
import resource
import shutil
import struct
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QUICK, fake_cache, omniglot_with, refused
from PIL import Image

from metaticket.data.archive import MEMBER_LIMIT, iter_files
from metaticket.data.cache import cached, fingerprint
from metaticket.data.cifar10 import read_batches
from metaticket.data.images import MAX_PIXELS, decode_rgb, open_image
from metaticket.data.miniimagenet import _from_pickles
from metaticket.data.omniglot import _decode_character
from metaticket.errors import MetaticketError


def png(size: tuple[int, int] = (105, 105)) -> bytes:
    """A grayscale PNG of seeded noise (so that it does not compress to a few bytes)."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(size[1], size[0]), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    assert len(buf.getvalue()) > 1000
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def zip_bomb(path: Path, name: str, size: int) -> Path:
    """A zip whose member ``name`` inflates to ``size`` zero bytes (written in chunks: the test stays small)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, z.open(name, "w", force_zip64=True) as f:
        chunk = bytes(1 << 20)
        for _ in range(size >> 20):
            f.write(chunk)
    return path


def damaged_zip(path: Path, name: str, how: str) -> Path:
    """A zip whose member ``name`` fails its CRC check (``how="crc"``) or its inflate (``how="deflate"``)."""
    data = png() * 4
    method = zipfile.ZIP_STORED if how == "crc" else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w", method) as z:
        z.writestr(name, data)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    start = info.header_offset + 30 + len(name.encode()) + len(info.extra)
    for i in range(start + 8, start + 24):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))
    return path


# ------------------------------------------------------------------------------------------ archive members
def test_a_zip_bomb_member_is_refused_before_it_is_read(tmp_path):
    bomb = zip_bomb(tmp_path / "bomb.zip", "a/b.png", MEMBER_LIMIT + (1 << 20))
    assert bomb.stat().st_size < 1 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(MetaticketError, match=r"bomb.zip: member 'a/b.png' inflates to 129 MiB"):
        list(iter_files(bomb, lambda n: True))
    assert time.perf_counter() - t0 < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB: nothing was inflated


def test_a_tar_member_beyond_the_limit_is_refused(tmp_path):
    path = tmp_path / "big.tar"
    with tarfile.open(path, "w") as t:
        info = tarfile.TarInfo("x/big.bin")
        info.size = MEMBER_LIMIT + 1
        t.addfile(info, io.BytesIO(bytes(MEMBER_LIMIT + 1)))
    with pytest.raises(MetaticketError, match=r"big.tar: member 'x/big.bin' inflates to"):
        list(iter_files(path, lambda n: True))


@pytest.mark.parametrize("how", ["crc", "deflate"])
def test_a_damaged_member_names_the_archive_and_the_member(tmp_path, how):
    bad = damaged_zip(tmp_path / "d.zip", "images_background/A/character01/01.png", how)
    with pytest.raises(MetaticketError, match=r"d.zip: member 'images_background/A/character01/01.png' is damaged"):
        list(iter_files(bad, lambda n: True))
    with pytest.raises(MetaticketError, match=r"d.zip: member 'images_background/A/character01/01.png' is damaged"):
        _decode_character((str(bad), ["images_background/A/character01/01.png"], 28))


# ------------------------------------------------------------------------------------------ images
@pytest.mark.parametrize(("raw", "needle"), [
    (png_declaring(10_000, 10_000), "declares 10000 x 10000 pixels"),
    (png_declaring(50_000, 50_000), "declares more pixels than PIL opens"),
    (png()[:200], "not a readable image"),
    (b"<html>not an image</html>", "not a readable image"),
    (png_declaring(1 << 30, 1), "declares"),
])
def test_bad_images_are_one_error_naming_the_member(raw, needle):
    with pytest.raises(MetaticketError, match=needle) as e:
        decode_rgb(raw, 32, "x.zip: member a.png")
    assert "x.zip: member a.png" in str(e.value) and "\n" not in str(e.value)
    assert open_image(png((64, 64)), "ok", "L").size == (64, 64)
    assert 4096 * 4096 == MAX_PIXELS


def test_omniglot_decode_names_the_member_of_a_bomb_or_truncated_image(tmp_path):
    path = tmp_path / "images_background.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images_background/A/character01/01.png", png())
        z.writestr("images_background/A/character01/02.png", png_declaring(60_000, 60_000))
        z.writestr("images_background/A/character01/03.png", png()[:300])
    assert _decode_character((str(path), ["images_background/A/character01/01.png"], 28)).shape == (1, 28, 28)
    for member, needle in (("02.png", "declares more pixels"), ("03.png", "not a readable image")):
        with pytest.raises(MetaticketError, match=needle) as e:
            _decode_character((str(path), [f"images_background/A/character01/{member}"], 28))
        assert f"images_background.zip: member images_background/A/character01/{member}" in str(e.value)


def test_the_cli_names_a_damaged_member_of_the_real_archive(tmp_path, data_root):
    """The real Omniglot background zip with its first drawing's bytes damaged (CRC error)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(data_root / "omniglot" / "images_background.zip") as src, \
            zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as dst:
        infos = src.infolist()
        first = sorted(i.filename for i in infos if i.filename.endswith(".png"))[0]
        for info in infos:
            dst.writestr(info.filename, src.read(info))
    raw = bytearray(buf.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as z:
        info = z.getinfo(first)
    start = info.header_offset + 30 + len(first.encode()) + len(info.extra)
    raw[start + 40] ^= 0xFF
    args = omniglot_with(tmp_path, bytes(raw))
    shutil.copy(data_root / "omniglot" / "images_evaluation.zip", tmp_path / "data" / "omniglot")
    refused("meta-train", QUICK, *args, "--set", "data.workers=0", tmp_path=tmp_path,
            needles=("images_background.zip", first, "damaged"), env_extra=fake_cache(tmp_path))


# ------------------------------------------------------------------------------------------ pickles
def write_pickle(path: Path, obj) -> Path:
    path.write_bytes(pickle.dumps(obj))
    return path


def mini(tmp_path: Path, image_data, class_dict) -> list[Path]:
    good = {"image_data": np.zeros((4, 8, 8, 3), np.uint8), "class_dict": {"a": [0, 1], "b": [2, 3]}}
    paths = [write_pickle(tmp_path / f"mini-imagenet-cache-{s}.pkl", good) for s in ("val", "test")]
    bad = write_pickle(tmp_path / "mini-imagenet-cache-train.pkl", {"image_data": image_data,
                                                                  "class_dict": class_dict})
    return [bad, *paths]


@pytest.mark.parametrize(("image_data", "class_dict", "needle"), [
    (np.zeros((4, 8, 8, 3), np.uint8), {"c": [0, 9]}, r"class_dict\['c'\] must be whole numbers in \[0, 4\)"),
    (np.zeros((4, 8, 8, 3), np.uint8), {"c": [0, -1]}, "class_dict"),
    (np.zeros((4, 8, 8, 3), np.uint8), {"c": ["x"]}, "class_dict"),
    (np.zeros((4, 8, 8, 3), np.float32), {"c": [0]}, "image_data is ndarray float32"),
    ("not an array", {"c": [0]}, "image_data is str"),
    (np.zeros((4, 8, 8, 3), np.uint8), [0, 1], "class_dict is not a mapping"),
])
def test_miniimagenet_pickles_are_checked_after_unpickling(tmp_path, image_data, class_dict, needle):
    with pytest.raises(MetaticketError, match=needle) as e:
        _from_pickles(mini(tmp_path, image_data, class_dict), 8)
    assert "mini-imagenet-cache-train.pkl" in str(e.value)


def cifar_batches(tmp_path: Path, data, labels) -> Path:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    good = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        obj = {b"data": data, b"labels": labels} if name == "data_batch_3" else good
        (root / name).write_bytes(pickle.dumps(obj))
    (root / "batches.meta").write_bytes(pickle.dumps({}))
    return root


@pytest.mark.parametrize(("data", "labels", "needle"), [
    (np.zeros((2, 3072), np.uint8), [0], "2 images but 1 labels"),
    (np.zeros((2, 3072), np.uint8), [0, 10], r"labels must be whole numbers in \[0, 10\)"),
    (np.zeros((2, 100), np.uint8), [0, 1], "hold 100 bytes"),
    (np.zeros((2, 3072), np.int64), [0, 1], "data is ndarray int64"),
])
def test_cifar_batches_are_checked_after_unpickling(tmp_path, data, labels, needle):
    with pytest.raises(MetaticketError, match=needle) as e:
        read_batches(cifar_batches(tmp_path, data, labels))
    assert "data_batch_3" in str(e.value)


# ------------------------------------------------------------------------------------------ caches
def test_the_cache_key_follows_file_contents(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"AAAA")
    (folder / "b.png").write_bytes(b"BBBB")
    key = fingerprint([folder])
    (folder / "a.png").write_bytes(b"BBBB")
    (folder / "b.png").write_bytes(b"AAAA")  # same names, same sizes, swapped contents
    assert fingerprint([folder]) != key
    (folder / "a.png").write_bytes(b"AAAA")
    (folder / "b.png").write_bytes(b"BBBB")
    assert fingerprint([folder]) == key


@pytest.mark.parametrize("damage", [lambda p: p.write_bytes(p.read_bytes()[:40]), lambda p: p.write_text("hello"),
                                    lambda p: torch.save({"other": 1}, p), lambda p: torch.save([1, 2], p)],
                         ids=["truncated", "text", "other keys", "not a dict"])
def test_a_damaged_or_foreign_cache_file_is_rebuilt(tmp_path, damage, capsys):
    path = tmp_path / "c.pt"
    builds = []

    def build() -> dict:
        builds.append(1)
        return {"images": torch.arange(6)}

    cached(path, build, keys=("images",))
    damage(path)
    assert torch.equal(cached(path, build, keys=("images",))["images"], torch.arange(6))
    assert len(builds) == 2 and "decoding the data set again" in capsys.readouterr().err
    assert torch.equal(cached(path, build, keys=("images",))["images"], torch.arange(6)) and len(builds) == 2

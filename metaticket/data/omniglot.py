"""Omniglot: 1623 handwritten characters x 20 drawings, decoded once into a cached uint8 tensor.

Sources, tried in this order under ``root``: the official zips (``images_background.zip``,
``images_evaluation.zip``), their extracted folders, or either inside torchvision's ``omniglot-py/``.
With ``download=True`` and nothing found, torchvision downloads the zips into ``root/omniglot-py``.
The archives are not checked against torchvision's MD5 (rebuilt copies differ byte-wise); the cache
is keyed by their SHA-256 instead, so a changed archive is decoded again.

Images are stored inverted (strokes 255, background 0) and resized to ``image_size`` with Lanczos.
"""

from __future__ import annotations

import json
import stat
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from metaticket.data.archive import check_member, check_size, read_zip_member
from metaticket.data.cache import cached, fingerprint, images_of
from metaticket.data.images import open_image
from metaticket.data.registry import ClassImages, DatasetSpec, Source, register_dataset
from metaticket.errors import MetaticketError

PARTS = ("images_background", "images_evaluation")
DRAWINGS = 20
NUM_CHARACTERS = 1623
SPLITS_DIR = Path(__file__).parent / "splits"
# data.split: vinyals, the standard split (whole alphabets held out; the Meta-ticket code, torchmeta, Prototypical
# Networks), or maml, characters drawn at random over all alphabets (the kind of split of the MAML paper's code)
CLASS_SPLITS = ("vinyals", "maml")


def split_file(name: str = CLASS_SPLITS[0]) -> Path:
    """The committed file of the class split ``name`` (one of :data:`CLASS_SPLITS`)."""
    return SPLITS_DIR / f"omniglot-{name}.json"


@dataclass(frozen=True)
class Omniglot:
    """images: uint8 [1623, 20, S, S]; characters: ids ``<part>/<alphabet>/<characterNN>`` in row order."""

    images: Tensor
    characters: list[str]


def load_omniglot(root: str | Path, cache_dir: str | Path, image_size: int = 28, download: bool = False,
                  workers: int = 2, progress: bool = True) -> Omniglot:
    """Load (decoding once, then from cache) all Omniglot characters at ``image_size``."""
    sources = find_sources(Path(root))
    if sources is None and download:
        _download(Path(root))
        sources = find_sources(Path(root))
    if sources is None:
        raise MetaticketError(
            f"Omniglot not found under {root}: expected images_background.zip and images_evaluation.zip (or their "
            f"folders, or torchvision's omniglot-py/); set METATICKET_DATA or data.root to the folder holding "
            f"omniglot/, or allow the download")
    key = fingerprint(sources)
    blob = cached(Path(cache_dir) / f"omniglot-{key[:16]}-{image_size}px.pt",
                  lambda: _decode(sources, image_size, workers, progress), keys=("images", "characters"),
                  valid=lambda b: images_of("images", dims=(4,), side=image_size)(b)
                  and tuple(b["images"].shape[:2]) == (NUM_CHARACTERS, DRAWINGS)
                  and len(b["characters"]) == NUM_CHARACTERS)
    return Omniglot(blob["images"], list(blob["characters"]))


def find_sources(root: Path) -> list[Path] | None:
    """The two zips or two folders under ``root`` (or ``root/omniglot-py``), or None."""
    for base in (root, root / "omniglot-py", root / "omniglot"):
        zips = [base / f"{p}.zip" for p in PARTS]
        if all(z.is_file() for z in zips):
            return zips
        dirs = [base / p for p in PARTS]
        if all(d.is_dir() for d in dirs):
            return dirs
    return None


def _list_pngs(src: Path) -> dict[str, list[str]]:
    """character id -> sorted drawing names (zip member names or file paths)."""
    part = src.stem if src.is_file() else src.name
    chars: dict[str, list[str]] = {}
    try:
        if src.is_file():
            with zipfile.ZipFile(src) as z:
                for info in z.infolist():
                    check_member(src, info.filename, stat.S_ISLNK(info.external_attr >> 16))
                names = [n for n in z.namelist() if n.endswith(".png")]
        else:
            names = [str(p.relative_to(src.parent)) for p in src.rglob("*.png")]
    except zipfile.BadZipFile as e:
        raise MetaticketError(f"{src} is not a readable zip archive ({e}); download it again") from None
    for n in names:
        pieces = Path(n).parts
        if len(pieces) != 4 or pieces[0] != part:
            continue
        chars.setdefault("/".join(pieces[:3]), []).append(n)
    return {c: sorted(v) for c, v in chars.items()}


_OPEN_ZIPS: dict[str, zipfile.ZipFile] = {}  # per worker process: parsing a zip's directory is the slow part


def _decode_character(args: tuple[str, list[str], int]) -> Tensor:
    src, names, size = args
    zf = None
    if src.endswith(".zip"):
        zf = _OPEN_ZIPS.get(src) or _OPEN_ZIPS.setdefault(src, zipfile.ZipFile(src))
    out = torch.empty(len(names), size, size, dtype=torch.uint8)
    for i, n in enumerate(names):
        if zf is not None:
            raw = read_zip_member(zf, zf.getinfo(n), Path(src))
        else:
            file = Path(src).parent / n
            check_size(Path(src), n, file.stat().st_size)
            raw = file.read_bytes()
        img = open_image(raw, f"{src}: member {n}", "L").resize((size, size), Image.LANCZOS)
        out[i] = 255 - torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size)
    return out


def _decode(sources: list[Path], size: int, workers: int, progress: bool) -> dict:
    jobs: list[tuple[str, list[str], int]] = []
    characters: list[str] = []
    for src in sources:
        for char, names in sorted(_list_pngs(src).items()):
            if len(names) != DRAWINGS:
                raise MetaticketError(f"{src}: character {char} has {len(names)} drawings, expected {DRAWINGS}; "
                                      f"the archive is incomplete, download it again")
            characters.append(char)
            jobs.append((str(src), names, size))
    if len(characters) != NUM_CHARACTERS:
        raise MetaticketError(f"found {len(characters)} Omniglot characters in {[str(s) for s in sources]}, "
                              f"expected {NUM_CHARACTERS}; the archives are incomplete, download them again")
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="decoding Omniglot (once)", unit="char", disable=not progress)
    rows: list[Tensor] = []
    try:
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                for row in pool.map(_decode_character, jobs, chunksize=16):
                    rows.append(row)
                    bar.update()
        else:
            for job in jobs:
                rows.append(_decode_character(job))
                bar.update()
    except (OSError, ValueError) as e:  # PIL raises these for files that are not images
        raise MetaticketError(f"{e}; the archive is damaged, download it again") from None
    finally:
        bar.close()
    return {"images": torch.stack(rows), "characters": characters}


def _download(root: Path) -> None:
    try:
        from torchvision.datasets import Omniglot as TVOmniglot

        for background in (True, False):
            TVOmniglot(str(root), background=background, download=True)
    except Exception as e:  # network errors come in many types
        raise MetaticketError(f"could not download Omniglot into {root} ({type(e).__name__}: {e}); without "
                              f"internet, point data.root (or METATICKET_DATA, when data.root is unset) at a "
                              f"folder holding omniglot/images_background.zip and images_evaluation.zip") from None


def load_split(characters: list[str], split: str | Path = CLASS_SPLITS[0]) -> dict[str, list[int]]:
    """Row indices of the train / val / test characters of the class split ``split`` (a name of
    :data:`CLASS_SPLITS`, or a split file of the same format)."""
    path = split_file(split) if isinstance(split, str) else split
    spec = json.loads(path.read_text())
    index = {c: i for i, c in enumerate(characters)}
    out: dict[str, list[int]] = {}
    for name in ("train", "val", "test"):
        missing = [c for c in spec[name] if c not in index]
        if missing:
            raise MetaticketError(f"{path}: {len(missing)} {name} characters (e.g. {missing[0]}) are not in "
                                  f"the loaded Omniglot; the archives differ from the official ones")
        out[name] = [index[c] for c in spec[name]]
    return out


def _episodes(src: Source) -> ClassImages:
    data = load_omniglot(src.root, src.cache_dir, image_size=src.image_size, download=src.download,
                         workers=src.workers, progress=src.progress)
    return ClassImages(data.images, load_split(data.characters, src.split or CLASS_SPLITS[0]))


register_dataset(DatasetSpec("omniglot", channels=1, image_size=28, decoded_images=32_460, episodes=_episodes,
                             episode_splits=("train", "val", "test"), rotations=True,
                             class_splits=CLASS_SPLITS))

"""Omniglot on real data: loading, the committed split, episodes. Needs $METATICKET_DATA."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from metaticket.data.episodes import EpisodeSampler
from metaticket.data.omniglot import SPLIT_FILE, find_sources, load_omniglot, load_split
from metaticket.errors import MetaticketError


def test_omniglot_shapes_and_values(omniglot):
    assert omniglot.images.shape == (1623, 20, 28, 28) and omniglot.images.dtype == torch.uint8
    assert len(set(omniglot.characters)) == 1623
    # strokes are stored as 255 on a 0 background: a drawing covers a small part of the square
    ink = omniglot.images.float().mean() / 255
    assert 0.03 < ink < 0.3


def test_split_is_fixed_and_disjoint(omniglot):
    spec = json.loads(SPLIT_FILE.read_text())
    split = load_split(omniglot.characters)
    assert [len(split[k]) for k in ("train", "val", "test")] == [1100, 100, 423]
    sets = [set(spec[k]) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert len(sets[0] | sets[1] | sets[2]) == 1623


def test_episodes_draw_only_from_their_split(omniglot):
    split = load_split(omniglot.characters)
    images = omniglot.images
    # Tag each character's images with its row index (an int64 'image') to see where a task's images come from.
    tagged = torch.arange(1623, dtype=torch.int64).view(1623, 1, 1, 1).expand(1623, 20, 1, 1)
    for name, rows in split.items():
        s = EpisodeSampler(tagged, rows, ways=5, shots=1, queries=3, rotations=False, seed=3)
        tasks = s.sample(40)
        used = set((tasks.support_x * 255).round().long().flatten().tolist())
        used |= set((tasks.query_x * 255).round().long().flatten().tolist())
        assert used <= set(rows), f"{name} task used rows outside its split"
    # with real images: shapes, labels and rotations
    s = EpisodeSampler(images, split["train"], ways=5, shots=2, queries=3, rotations=True, seed=0)
    t = s.sample(4)
    assert t.support_x.shape == (4, 10, 1, 28, 28) and t.query_x.shape == (4, 15, 1, 28, 28)
    assert t.support_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert float(t.support_x.max()) <= 1.0 and float(t.support_x.min()) >= 0.0


def test_classes_of_a_task_come_from_the_split_rows(omniglot):
    """Exact check: every support image equals some (possibly rotated) image of a split row."""
    split = load_split(omniglot.characters)
    rows = split["val"]
    s = EpisodeSampler(omniglot.images, rows, ways=5, shots=1, queries=1, rotations=True, seed=1)
    t = s.sample(3)
    pool = omniglot.images[rows].float().div(255)  # [100, 20, 28, 28]
    pool = torch.cat([torch.rot90(pool, k, dims=(-2, -1)) for k in range(4)]).flatten(2)
    other = omniglot.images[split["test"][:100]].float().div(255).flatten(2)
    for img in t.support_x.reshape(-1, 28 * 28):
        assert ((pool - img).abs().amax(-1) == 0).any()
        assert not ((other - img).abs().amax(-1) == 0).any() or img.sum() == 0


def test_same_seed_same_tasks(omniglot):
    rows = list(range(50))
    a = EpisodeSampler(omniglot.images, rows, ways=5, shots=1, queries=2, seed=7).sample(3)
    b = EpisodeSampler(omniglot.images, rows, ways=5, shots=1, queries=2, seed=7).sample(3)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)


def test_sampler_rejects_impossible_tasks(omniglot):
    with pytest.raises(MetaticketError, match=r"data\.shots \+ data\.queries = 21"):
        EpisodeSampler(omniglot.images, [0, 1, 2, 3, 4], ways=5, shots=1, queries=20)
    with pytest.raises(MetaticketError, match=r"data\.ways = 6 but this split has only 5 classes"):
        EpisodeSampler(omniglot.images, [0, 1, 2, 3, 4], ways=6, shots=1, queries=1)


def test_extracted_torchvision_layout_gives_the_same_images(data_root, tmp_path, omniglot):
    """torchvision's omniglot-py/ with extracted folders decodes to the same tensor as the zips."""
    target = tmp_path / "omniglot-py"
    for part in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(data_root / "omniglot" / f"{part}.zip") as z:
            z.extractall(target)
    assert find_sources(tmp_path) == [target / "images_background", target / "images_evaluation"]
    from_folders = load_omniglot(tmp_path, tmp_path / "cache", progress=False)
    assert from_folders.characters == omniglot.characters
    assert torch.equal(from_folders.images, omniglot.images)


def test_missing_or_broken_archives_give_clear_errors(tmp_path):
    with pytest.raises(MetaticketError, match="Omniglot not found under"):
        load_omniglot(tmp_path, tmp_path / "cache", download=False)
    for part in ("images_background", "images_evaluation"):
        (tmp_path / f"{part}.zip").write_bytes(b"<html>not a zip</html>")
    with pytest.raises(MetaticketError, match="not a readable zip archive"):
        load_omniglot(tmp_path, tmp_path / "cache", download=False)

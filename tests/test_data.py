"""Omniglot on real data: loading, the committed split, episodes. Needs $METATICKET_DATA."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from metaticket.data.episodes import EpisodeSampler
from metaticket.data.omniglot import CLASS_SPLITS, find_sources, load_omniglot, load_split, split_file
from metaticket.errors import MetaticketError


def test_omniglot_shapes_and_values(omniglot):
    assert omniglot.images.shape == (1623, 20, 28, 28) and omniglot.images.dtype == torch.uint8
    assert len(set(omniglot.characters)) == 1623
    # strokes are stored as 255 on a 0 background: a drawing covers a small part of the square
    ink = omniglot.images.float().mean() / 255
    assert 0.03 < ink < 0.3


def _alphabet(character: str) -> str:
    return character.rsplit("/", 1)[0]  # images_background/<alphabet>


@pytest.mark.parametrize("name", CLASS_SPLITS)
def test_splits_are_fixed_and_disjoint(omniglot, name):
    spec = json.loads(split_file(name).read_text())
    split = load_split(omniglot.characters, name)
    sizes = {"vinyals": [1028, 172, 423], "maml": [1100, 100, 423]}[name]
    assert [len(split[k]) for k in ("train", "val", "test")] == sizes
    sets = [set(spec[k]) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert len(sets[0] | sets[1] | sets[2]) == 1623


def test_vinyals_split_holds_out_whole_alphabets(omniglot):
    """The standard split: validation is 5 whole background alphabets, test 13 evaluation alphabets of which only
    Gurmukhi also has characters in train (its 1-41; 42-45 are test); the maml split shares nearly every alphabet."""
    spec = {k: v for k, v in json.loads(split_file("vinyals").read_text()).items() if k != "_about"}
    alphabets = {k: {_alphabet(c) for c in v} for k, v in spec.items()}
    assert len(alphabets["val"]) == 5 and all(a.startswith("images_background/") for a in alphabets["val"])
    assert len(alphabets["test"]) == 13 and all(a.startswith("images_evaluation/") for a in alphabets["test"])
    assert not alphabets["train"] & alphabets["val"] and not alphabets["val"] & alphabets["test"]
    assert alphabets["train"] & alphabets["test"] == {"images_evaluation/Gurmukhi"}
    gurmukhi = {k: sorted(int(c[-2:]) for c in v if _alphabet(c) == "images_evaluation/Gurmukhi")
                for k, v in spec.items()}
    assert gurmukhi == {"train": list(range(1, 42)), "val": [], "test": [42, 43, 44, 45]}
    # every character of a whole alphabet is in the split of that alphabet (nothing lost between the three)
    all_chars = {c for c in omniglot.characters}
    for k in ("val", "test"):
        whole = alphabets[k] - {"images_evaluation/Gurmukhi"}
        assert {c for c in all_chars if _alphabet(c) in whole} <= set(spec[k])
    maml = {k: {_alphabet(c) for c in v} for k, v in json.loads(split_file("maml").read_text()).items()
            if k != "_about"}
    assert len(maml["train"] & maml["test"]) >= 40  # the control: the random split shares the test alphabets


def test_rotations_stay_in_the_split_of_their_character(omniglot):
    """Each character's 4 rotations are 4 classes of its own split: a val task's images, rotated back, are
    drawings of val characters and never of train characters."""
    split = load_split(omniglot.characters, "vinyals")
    tagged = torch.zeros(1623, 20, 28, 28, dtype=torch.uint8)
    tagged[:, :, 0, 0] = 255  # a corner mark shows the rotation: it moves to another corner
    code = torch.arange(1623)
    tagged[:, :, 14, 14:25] = ((code.view(-1, 1) >> torch.arange(11)) & 1).to(torch.uint8).view(1623, 1, 11) * 255
    for name, rows in split.items():
        s = EpisodeSampler(tagged, rows, ways=5, shots=2, queries=2, rotations=True, seed=5)
        t = s.sample(30)
        seen, turns = set(), set()
        for img in torch.cat([t.support_x, t.query_x], 1).flatten(0, 1)[:, 0]:
            k = next(k for k in range(4) if torch.rot90(img, -k, dims=(0, 1))[0, 0] > 0.5)
            turns.add(k)
            back = torch.rot90(img, -k, dims=(0, 1))
            seen.add(int(((back[14, 14:25] > 0.5).long() << torch.arange(11)).sum()))
        assert seen <= set(rows) and turns == {0, 1, 2, 3}, name


def test_split_names_are_checked():
    from metaticket.data import get_dataset

    assert get_dataset("omniglot").split_name(None) == "vinyals"
    with pytest.raises(MetaticketError, match="data.split = 'random' is not a class split of omniglot; use one of: "
                                              "vinyals, maml"):
        get_dataset("omniglot").split_name("random")
    with pytest.raises(MetaticketError, match="tinyimagenet has one fixed class split; leave data.split unset"):
        get_dataset("tinyimagenet").split_name("vinyals")


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

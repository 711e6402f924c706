"""Config loading: strict keys, types and ranges, one level of base:, --set overrides, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaticket.config import Config, ConfigError, dump_config, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_every_shipped_config_loads():
    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert files
    for f in files:
        assert isinstance(load_config(f), Config)


def test_base_inheritance_and_overrides(tmp_path):
    write(tmp_path, "meta:\n  inner_lr: 0.1\n  steps: 50\nmodel:\n  width: 2\n", "base.yaml")
    child = write(tmp_path, "base: base.yaml\nmeta:\n  steps: 7\n")
    c = load_config(child, ["meta.meta_batch=3", "model.mask=topk"])
    assert (c.meta.inner_lr, c.meta.steps, c.meta.meta_batch, c.model.width, c.model.mask) == (0.1, 7, 3, 2.0, "topk")


def test_round_trip_through_dump(tmp_path):
    c = load_config(REPO / "configs/omniglot/quickstart.yaml")
    dump_config(c, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == c


BAD = [
    ("meta:\n  inner_lrr: 0.1\n", r"unknown config key meta\.inner_lrr; did you mean meta\.inner_lr\?"),
    ("metaa:\n  steps: 1\n", r"unknown config key metaa; did you mean meta\?"),
    ("meta:\n  steps: ten\n", r"meta\.steps = 'ten' must be a whole number"),
    ("meta:\n  steps: 1.5\n", r"meta\.steps = 1\.5 must be a whole number"),
    ("meta:\n  first_order: 1\n", r"meta\.first_order = 1 must be true or false"),
    ("model:\n  sparsity: 1.0\n", r"model\.sparsity = 1\.0 is out of range: sparsity is the fraction pruned"),
    ("model:\n  sparsity: -0.1\n", r"model\.sparsity = -0\.1 is out of range"),
    ("data:\n  ways: 1\n", r"data\.ways = 1 is out of range: use at least 2 ways"),
    ("meta:\n  inner_lr: -1\n", r"meta\.inner_lr = -1\.0 is out of range: use a positive inner_lr"),
    ("meta:\n  outer_lr: 0\n", r"meta\.outer_lr = 0\.0 is out of range"),
    ("meta:\n  meta_batch: 0\n", r"meta\.meta_batch = 0 is out of range"),
    ("meta:\n  method: reptile\n",
     r"meta\.method = 'reptile' is not allowed; choose one of: maml, anil, boil, metaticket, metaticket_boil"),
    ("run:\n  device: tpu\n", r"run\.device = 'tpu' is out of range: use auto, cpu or cuda"),
    ("meta:\n\tsteps: 3\n", r"invalid YAML .*indent with spaces, not tabs"),
    ("meta:\n  steps: 3\n  steps: 4\n", r"duplicate key 'steps' at line 3"),
    ("- a\n- b\n", r"the top level must be a mapping"),
    ("meta: 3\n", r"meta: expected a mapping"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_config_gives_one_line_error(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match=r"write section\.key=value"):
        load_config(write(tmp_path, ""), ["steps=3"])


def test_base_of_base_is_refused(tmp_path):
    write(tmp_path, "meta:\n  steps: 1\n", "a.yaml")
    write(tmp_path, "base: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="one level only"):
        load_config(write(tmp_path, "base: b.yaml\n"))


def test_base_cycle_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="points at the file itself"):
        load_config(write(tmp_path, "base: c.yaml\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


# ------------------------------------------------------------------------- one meaning per name (format 2)
TRAIN = "run:\n  kind: train\n"


def loaded_quietly(path: Path, overrides: tuple[str, ...] = (), run_folder: bool = False) -> Config:
    """``path`` loaded with every ConfigDeprecation turned into an error: proof that nothing was said."""
    import warnings

    from metaticket.config import ConfigDeprecation, load_run_config

    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigDeprecation)
        return (load_run_config if run_folder else load_config)(path, overrides)


def test_iterand_has_one_switch_and_the_old_method_name_is_read_with_one_line(tmp_path):
    from metaticket.config import ConfigDeprecation

    old = write(tmp_path, TRAIN + "train:\n  method: iterand\n  rerand_every: 40\n")
    with pytest.warns(ConfigDeprecation) as said:
        c = load_config(old)
    assert (c.train.method, c.train.rerand_every) == ("edgepopup", 40)
    assert len(said) == 1 and "\n" not in str(said[0].message) and "rerand_every: 40" in str(said[0].message)
    with pytest.warns(ConfigDeprecation):  # without rerand_every: version 1's default, 300
        assert load_config(write(tmp_path, TRAIN + "train:\n  method: iterand\n")).train.rerand_every == 300
    new = loaded_quietly(write(tmp_path, TRAIN + "train:\n  method: edgepopup\n  rerand_every: 40\n"))
    assert new == c  # the current spelling of the same run, read without a word
    assert loaded_quietly(write(tmp_path, TRAIN + "train:\n  method: edgepopup\n")).train.rerand_every == 0
    with pytest.raises(ConfigError, match="train.method = 'iterand' is not allowed"):
        load_config(write(tmp_path, "version: 2\n" + TRAIN + "train:\n  method: iterand\n"))
    with pytest.raises(ConfigError, match="version = 4 is not a config format"):
        load_config(write(tmp_path, "version: 4\n"))
    for section in ("meta", "train"):  # the same range in both sections
        with pytest.raises(ConfigError, match=f"{section}.rerand_rate = 0.0 is out of range"):
            load_config(write(tmp_path, ""), [f"{section}.rerand_rate=0"])


def test_run_folders_of_version_1_keep_what_they_ran(tmp_path):
    """A config.yaml written before format 2 has no version and train.rerand_every: 300 under every method, which
    did nothing outside iterand: read from a run folder it stays without IteRand, silently."""
    dump = Config().to_dict()
    dump["run"]["kind"], dump["train"]["rerand_every"] = "train", 300
    del dump["model"]["random_sparsity"]
    import yaml

    old_popup = write(tmp_path, yaml.safe_dump(dump), "popup.yaml")
    assert loaded_quietly(old_popup, run_folder=True).train.rerand_every == 0
    dump["train"]["method"] = "iterand"
    old_iterand = loaded_quietly(write(tmp_path, yaml.safe_dump(dump), "iterand.yaml"), run_folder=True)
    assert (old_iterand.train.method, old_iterand.train.rerand_every) == ("edgepopup", 300)
    dump["train"].update(method="randommask", rerand_every=300)
    dump["model"]["sparsity"] = 0.8
    old_random = loaded_quietly(write(tmp_path, yaml.safe_dump(dump), "random.yaml"), run_folder=True)
    assert (old_random.model.random_sparsity, old_random.train.rerand_every) == (0.8, 0)
    # what this version writes carries its format and reads back as itself, IteRand included
    current = load_config(write(tmp_path, TRAIN + "train:\n  rerand_every: 9\n"))
    dump_config(current, tmp_path / "now.yaml")
    assert (tmp_path / "now.yaml").read_text().startswith("version: 3\n")
    assert loaded_quietly(tmp_path / "now.yaml", run_folder=True) == current


def test_random_mask_sparsity_has_its_own_key(tmp_path):
    from metaticket.config import ConfigDeprecation

    old = write(tmp_path, TRAIN + "model:\n  sparsity: 0.8\ntrain:\n  method: randommask\n")
    with pytest.warns(ConfigDeprecation, match="model.random_sparsity: 0.8"):
        c = load_config(old)
    assert (c.model.random_sparsity, c.model.sparsity) == (0.8, 0.5)
    new = write(tmp_path, TRAIN + "model:\n  random_sparsity: 0.8\ntrain:\n  method: randommask\n")
    assert loaded_quietly(new) == c
    with pytest.raises(ConfigError, match="--set model.sparsity does nothing under train.method randommask.*"
                                          "model.random_sparsity"):
        load_config(new, ["model.sparsity=0.9"])
    assert loaded_quietly(new, ("model.random_sparsity=0.9",)).model.random_sparsity == 0.9


def test_omniglot_files_of_earlier_formats_keep_the_split_they_ran(tmp_path):
    """Format 3 made the standard (alphabet-disjoint) split the default. An Omniglot meta config of format 1 or 2
    without data.split ran the random-character split: read as data.split maml, silently from a run folder and
    with one line otherwise; a file of the current format (or without a version) gets the new default."""
    import yaml

    from metaticket.config import ConfigDeprecation
    from metaticket.runs.factory import resolve

    dump = Config().to_dict()
    del dump["data"]["split"]
    for version in (None, 2):
        text = (f"version: {version}\n" if version else "") + yaml.safe_dump(dump)
        assert loaded_quietly(write(tmp_path, text, "old.yaml"), run_folder=True).data.split == "maml"
    with pytest.warns(ConfigDeprecation, match="data.split was not a key: Omniglot ran the split now called maml"):
        assert load_config(write(tmp_path, "version: 2\n" + yaml.safe_dump(dump))).data.split == "maml"
    fresh = loaded_quietly(write(tmp_path, yaml.safe_dump(dump)))
    assert fresh.data.split is None and resolve(fresh).data.split == "vinyals"
    assert loaded_quietly(write(tmp_path, f"version: 3\n{yaml.safe_dump(dump)}")).data.split is None
    # a resumed run takes the split its folder saved, whatever the new default
    assert resolve(fresh, saved=loaded_quietly(write(tmp_path, yaml.safe_dump(dump), "o.yaml"),
                                                run_folder=True)).data.split == "maml"
    # other datasets and supervised runs are not touched
    assert loaded_quietly(write(tmp_path, "version: 2\nrun:\n  kind: train\n")).data.split is None
    tiny = "version: 2\ndata:\n  dataset: tinyimagenet\nmeta:\n  score_grad: start\n"
    assert loaded_quietly(write(tmp_path, tiny)).data.split is None
    with pytest.raises(Exception, match="data.split = 'alphabets' is not a class split of omniglot"):
        resolve(load_config(write(tmp_path, ""), ["data.split=alphabets"]))


def test_meta_ticket_files_of_earlier_formats_keep_the_score_gradient_they_ran(tmp_path):
    """Format 3 made the reference code's score gradient the default; a Meta-ticket meta config of format 1 or 2
    without meta.score_grad ran the one now called start, and is read so (MAML files are not touched)."""
    import yaml

    from metaticket.config import ConfigDeprecation

    dump = Config().to_dict()
    del dump["meta"]["score_grad"], dump["data"]["split"]
    assert loaded_quietly(write(tmp_path, yaml.safe_dump(dump))).meta.score_grad == "reference"
    old = loaded_quietly(write(tmp_path, "version: 2\n" + yaml.safe_dump(dump), "o.yaml"), run_folder=True)
    assert (old.meta.score_grad, old.data.split) == ("start", "maml")
    with pytest.warns(ConfigDeprecation, match="meta.score_grad was not a key: Meta-ticket ran the score gradient "
                                               "now called start") as said:
        load_config(write(tmp_path, "version: 2\n" + yaml.safe_dump(dump)))
    assert len(said) == 1 and "data.split" in str(said[0].message)  # one line names both
    dump["meta"]["method"] = "maml"
    assert loaded_quietly(write(tmp_path, "version: 2\n" + yaml.safe_dump(dump), "m.yaml"),
                          run_folder=True).meta.score_grad == "reference"  # not used by MAML
    with pytest.raises(ConfigError, match="meta.score_grad = 'mask-every-step' is not allowed"):
        load_config(write(tmp_path, ""), ["meta.score_grad=mask-every-step"])


def test_model_width_is_a_multiplier_for_every_model_and_old_wrn28_files_keep_their_network(tmp_path):
    """``model.width`` multiplies the named network's sizes for every model: WRN-28-10 is ``wrn28-10`` at width 1.
    A file that names ``wrn28`` (whose width was the widen factor) is read as ``wrn28-10`` at width / 10 with one
    line, and builds the same network; a run folder's own file is read silently."""
    import warnings

    from metaticket.config import ConfigDeprecation, load_run_config
    from metaticket.runs.factory import build_meta_model

    base = "data:\n  dataset: miniimagenet\n  image_size: 16\nmeta:\n  method: maml\n"
    old = write(tmp_path, base + "model:\n  name: wrn28\n  width: 2.0\n")
    with pytest.warns(ConfigDeprecation) as said:
        c = load_config(old)
    assert (c.model.name, c.model.width) == ("wrn28-10", 0.2) and len(said) == 1 and "wrn28-10" in str(
        said[0].message)
    new = loaded_quietly(write(tmp_path, base + "model:\n  name: wrn28-10\n  width: 0.2\n", "new.yaml"))
    assert new == c
    heads = {build_meta_model(x).head.in_features for x in (c, new)}
    assert heads == {128}  # 64 x widen 2, as wrn28 at width 2 built
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_run_config(old).model.name == "wrn28-10"
    assert load_config("miniimagenet/wrn28-5_5w5s_maml").model.name == "wrn28-5"


def test_run_kind_was_run_task_and_old_files_still_read(tmp_path):
    """``run.task`` (meta or train) is ``run.kind`` now ("task" is a few-shot task everywhere else): an old file is
    read as what it says with one line naming the new key, a run folder's own file silently, ``--set`` too."""
    import warnings

    from metaticket.config import ConfigDeprecation, load_run_config

    old = write(tmp_path, "run:\n  task: train\n", "old.yaml")
    with pytest.warns(ConfigDeprecation) as said:
        was = load_config(old)
    assert was.run.kind == "train" and len(said) == 1 and "run.kind" in str(said[0].message)
    assert loaded_quietly(write(tmp_path, TRAIN, "new.yaml")) == was
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_run_config(old).run.kind == "train"
    with pytest.warns(ConfigDeprecation):
        assert load_config(write(tmp_path, ""), ["run.task=train"]).run.kind == "train"
    with pytest.raises(ConfigError, match="unknown config key run.tsk"):
        load_config(write(tmp_path, ""), ["run.tsk=train"])


def test_miniimagenet_configs_follow_the_reference_protocol(tmp_path):
    """queries = shots in training and test, 1,000 test tasks, AdamW (weight decay 0) for the MAML family, as the
    Meta-ticket code's config.yaml; the learner builds AdamW from them."""
    from metaticket.config import shipped_configs
    from metaticket.runs.factory import build_learner

    names = [n for n in shipped_configs() if n.startswith("miniimagenet/")]
    assert len(names) == 20
    for name in names:
        c = load_config(name)
        assert c.data.queries == c.data.shots and c.eval.test_tasks == 1000, name
        if not c.meta.method.startswith("metaticket"):
            assert (c.meta.optimizer, c.meta.weight_decay, c.meta.outer_lr) == ("adamw", 0.0, 6e-4), name
    c = load_config("miniimagenet/resnet12_5w5s_maml", ["model.width=0.05", "data.image_size=16",
                                                       "meta.weight_decay=0.01"])
    opt = build_learner(c).optimizer
    assert type(opt).__name__ == "AdamW" and opt.param_groups[0]["weight_decay"] == 0.01
    with pytest.raises(ConfigError, match="meta.weight_decay = -1.0 is out of range"):
        load_config(write(tmp_path, ""), ["meta.weight_decay=-1"])

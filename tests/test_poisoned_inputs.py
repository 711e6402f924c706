"""Inputs that would poison a run are refused in one line and change nothing: learner batches and settings,
config numbers at the edges of the dtypes they end up in, YAML 1.1 readings, odd run names, a torn metrics line,
and plot outputs that are not images (issue 35)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import learner, tasks
from hypothesis import given, settings
from hypothesis import strategies as st

from metaticket.config import ConfigError, config_from_dict, load_config, parse_yaml
from metaticket.runs.monitor import Monitor
from metaticket.tasks import Tasks


def snapshot(lrn) -> list[torch.Tensor]:
    return [t.detach().clone() for t in (*lrn.model.state_dict().values(),)]


def unchanged(lrn, before: list[torch.Tensor]) -> bool:
    return all(torch.equal(a, b) for a, b in zip(before, lrn.model.state_dict().values())) and lrn.step == 0


def poisoned(kind: str) -> Tasks:
    t = tasks(batch=2, queries=2)
    sx, sy, qx, qy = t.support_x.clone(), t.support_y.clone(), t.query_x.clone(), t.query_y.clone()
    if kind == "ignore-index labels":
        qy[:] = -100
    elif kind == "NaN pixels":
        sx[0, 0, 0, 0, 0] = float("nan")
    elif kind == "Inf pixels":
        qx[1, 2, 0, 3, 3] = float("inf")
    elif kind == "empty support":
        sx, sy = sx[:, :0], sy[:, :0]
    elif kind == "empty meta-batch":
        sx, sy, qx, qy = sx[:0], sy[:0], qx[:0], qy[:0]
    elif kind == "float labels":
        sy = sy.float()
    elif kind == "labels of other tasks":
        qy = qy[:1]
    return Tasks(sx, sy, qx, qy)


KINDS = ["ignore-index labels", "NaN pixels", "Inf pixels", "empty support", "empty meta-batch", "float labels",
         "labels of other tasks"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["maml", "metaticket"])
def test_poisoned_batches_are_refused_and_change_nothing(method, kind):
    lrn = learner(method)
    before = snapshot(lrn)
    with pytest.raises(ValueError) as err:
        lrn.meta_step(poisoned(kind))
    assert "\n" not in str(err.value) and unchanged(lrn, before)
    assert all(p.grad is None for p in lrn.parameters())


@pytest.mark.parametrize(("name", "value"), [("inner_lr", float("nan")), ("inner_lr", -0.1), ("inner_steps", -1),
                                             ("inner_steps", 0), ("inner_steps_test", 0)])
def test_bad_inner_settings_are_refused(name, value):
    lrn = learner("maml")
    setattr(lrn, name, value)
    before = snapshot(lrn)
    with pytest.raises(ValueError, match=name):
        lrn.meta_step(tasks(batch=2))
    assert unchanged(lrn, before)


def test_a_non_finite_meta_gradient_is_never_applied():
    lrn = learner("maml", inner_lr=1e30)  # the inner step overflows
    before = snapshot(lrn)
    with pytest.raises(ValueError, match="not finite; nothing was updated"):
        lrn.meta_step(tasks(batch=2))
    assert unchanged(lrn, before) and not lrn.optimizer.state
    lrn.inner_lr = 0.4
    lrn.meta_step(tasks(batch=2))  # and the learner still works
    assert lrn.step == 1


def test_the_finiteness_check_sees_one_bad_element_and_lets_huge_finite_values_pass():
    from metaticket.meta.learner import all_finite

    g = torch.randn(1000)
    assert all_finite([torch.tensor(1.0), g]) and all_finite([])
    for bad in (float("nan"), float("inf"), -float("inf")):
        h = g.clone()
        h[617] = bad
        assert not all_finite([torch.tensor(1.0), h]), bad
    assert all_finite([torch.full((10,), 3e38)])  # the sum overflows, every element is finite
    assert not all_finite([torch.tensor([3e38, 3e38, float("nan")])])


# ------------------------------------------------------------------------------------------ config numbers
@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["meta.inner_lr", "meta.outer_lr", "meta.weight_decay", "train.lr", "model.norm_eps"]),
       st.sampled_from([1e39, 3.5e38, 1e300, 1e-39, 1e-300, 5e-324]))
def test_floats_beyond_float32_are_refused_naming_the_key(key, value):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=f"{key} = .* is beyond float32"):
        config_from_dict({section: {name: value}})


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["meta.steps", "meta.meta_batch", "train.epochs", "data.queries"]),
       st.integers(min_value=2 ** 63, max_value=2 ** 80))
def test_integers_beyond_int64_are_refused(key, value):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=f"{key} = {value} is beyond a 64-bit integer"):
        config_from_dict({section: {name: value}})


@pytest.mark.parametrize(("text", "value"), [("010", 10), ("0o10", 8), ("0x10", 16), ("1:30", "1:30"),
                                             ("yes", "yes"), ("off", "off"), ("1e-3", 0.001), ("true", True)])
def test_yaml_scalars_are_read_by_yaml_1_2(text, value):
    got = parse_yaml(f"a: {text}\n", "t")["a"]
    assert got == value and type(got) is type(value)


def test_yaml_1_1_readings_do_not_pass_silently(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("meta:\n  steps: 010\n")
    assert load_config(path).meta.steps == 10  # as written, not octal 8
    path.write_text("run:\n  name: 1:30\n")
    assert load_config(path).run.name == "1:30"  # a string, not 90 (which a str key refused)
    path.write_text("data:\n  rotations: yes\n")
    with pytest.raises(ConfigError, match="data.rotations = 'yes' must be true or false"):
        load_config(path)


# ------------------------------------------------------------------------------------------ names
@pytest.mark.parametrize("name", [" run", "run ", "r\udcffn", "a\udc80"])
def test_run_names_with_edge_spaces_or_invalid_utf8_are_refused(name):
    with pytest.raises(ConfigError, match="run.name = .* is out of range"):
        config_from_dict({"run": {"name": name}})
    with pytest.raises(ConfigError, match="run.out_dir"):
        config_from_dict({"run": {"out_dir": "r\udcffuns"}})


def test_run_names_are_one_unicode_normal_form():
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert config_from_dict({"run": {"name": decomposed}}).run.name == composed
    assert config_from_dict({"run": {"name": composed}}).run.name == composed


# ------------------------------------------------------------------------------------------ files
def test_a_torn_last_metrics_line_is_cut_before_appending(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "split": "train", "loss": 1.0}\n{"step": 2, "split": "tr')
    monitor = Monitor(tmp_path, quiet=True, tensorboard=False)
    monitor.log(3, "train", {"loss": 0.5})
    monitor.close()
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 3]
    from metaticket.runs.plots import read_metrics

    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 3]


def test_plot_output_must_be_an_image_file(tmp_path, capsys):
    from metaticket.cli import main

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text('{"step": 1, "split": "val", "acc": 50.0, "ci95": 1.0}\n')
    assert main(["plot", str(tmp_path / "r"), "-o", str(tmp_path / "curves.txt")]) == 2
    assert ".txt is not an image format plot writes" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "r"), "-o", str(tmp_path)]) == 2
    assert "is a folder; name the image file to write" in capsys.readouterr().err


def test_an_archive_that_is_not_one_ends_in_one_error_line(tmp_path):
    """A .tar.gz of random bytes: exit 2 and the error is the last (and only) line on stderr."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / "cifar-10-python.tar.gz").write_bytes(os.urandom(5000))
    config = str(REPO / "configs/cifar10/conv6_edgepopup.yaml")
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), "train", config,
                           "--set", f"data.root={tmp_path}", "--set", "data.download=false", "--set",
                           f"run.out_dir={tmp_path / 'runs'}"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "METATICKET_CACHE": str(tmp_path / "cache")})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[-1].startswith("error: ") and "cifar-10-python.tar.gz is damaged or truncated" in lines[-1]


def test_a_cache_file_of_the_wrong_shape_is_rebuilt_and_a_read_only_cache_is_used(tmp_path, monkeypatch, capsys):
    import os

    import metaticket.data.cache as cache

    path = tmp_path / "d.pt"
    valid = cache.images_of("images", dims=(4,), side=8)
    torch.save({"images": torch.zeros(3, 2, 5, 5, dtype=torch.uint8)}, path)  # 5 x 5, not 8 x 8
    built = []

    def build() -> dict:
        built.append(1)
        return {"images": torch.ones(3, 2, 8, 8, dtype=torch.uint8)}

    blob = cache.cached(path, build, keys=("images",), valid=valid)
    assert built == [1] and blob["images"].shape == (3, 2, 8, 8) and "damaged or foreign" in capsys.readouterr().err
    assert cache.cached(path, build, keys=("images",), valid=valid)["images"].shape == (3, 2, 8, 8) and built == [1]
    # a cache folder that cannot be written: the decoded data is used, with a note (no traceback)
    path.unlink()

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", read_only)
    blob = cache.cached(path, build, keys=("images",), valid=valid)
    assert blob["images"].shape == (3, 2, 8, 8) and not path.exists()
    assert "read-only); using it without caching" in capsys.readouterr().err


def test_a_run_folder_in_use_is_not_resumed_by_a_second_process(tmp_path, capsys, data_root):
    import os

    from conftest import QUICK

    from metaticket.cli import main
    from metaticket.runs.rundir import LOCK, hold_run, release_hold

    args = ["meta-train", str(QUICK), "--set", f"run.out_dir={tmp_path}", "--set", "run.name=r", "--set",
            "meta.steps=2", "--set", "meta.meta_batch=2", "--set", "eval.val_every=2", "--set", "eval.val_tasks=4",
            "--quiet"]
    assert main(args) == 0 and not (tmp_path / "r" / LOCK).exists()  # released when the run ends
    fd = hold_run(tmp_path / "r")  # another process training in it (a lock is per open file, as across processes)
    try:
        capsys.readouterr()
        assert main([*args[:-1], "--set", "meta.steps=4", "--resume", "--quiet"]) == 2
        assert f"is in use by a running process (pid {os.getpid()})" in capsys.readouterr().err
    finally:
        release_hold(tmp_path / "r", fd)
    assert main([*args[:-1], "--set", "meta.steps=4", "--resume", "--quiet"]) == 0


def test_a_finished_run_in_a_read_only_folder_is_tested_without_writing(tmp_path, capsys, monkeypatch, data_root):
    """meta-test of a run in a folder that cannot be written prints its line (with a note) and writes nothing;
    --resume there ends in one line naming the folder as read-only. (The suite runs as root, which ignores file
    modes, so the read-only folder is simulated: every open for writing inside it fails with EROFS.)"""
    import builtins
    import errno
    import json
    import os

    from conftest import QUICK

    from metaticket.cli import main

    args = ["meta-train", str(QUICK), "--set", f"run.out_dir={tmp_path}", "--set", "run.name=r", "--set",
            "meta.steps=2", "--set", "meta.meta_batch=2", "--set", "eval.val_every=2", "--set", "eval.val_tasks=4",
            "--quiet"]
    assert main(args) == 0
    run = tmp_path / "r"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    real_open, real_os_open = builtins.open, os.open

    def guarded(file, mode="r", *a, **k):  # noqa: ANN001, ANN002, ANN003
        if str(file).startswith(str(run)) and any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *a, **k)

    def guarded_os(path, flags, *a, **k):  # noqa: ANN001, ANN002, ANN003
        if str(path).startswith(str(run)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_os_open(path, flags, *a, **k)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(os, "open", guarded_os)
    capsys.readouterr()
    assert main(["meta-test", str(run), "--tasks", "8"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out.strip().splitlines()[-1])["tasks"] == 8
    assert "is read-only; the score is printed" in out.err
    assert main([*args[:-1], "--set", "meta.steps=4", "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the folder is read-only" in err[0]
    monkeypatch.undo()
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_links_planted_in_a_run_folder_are_not_written_through(tmp_path, capsys, monkeypatch, data_root):
    import os

    from conftest import QUICK

    from metaticket.cli import main
    from metaticket.errors import MetaticketError
    from metaticket.runs.checkpoint import open_append

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "runs" / "r").mkdir(parents=True)
    os.symlink(victim, tmp_path / "runs" / "r" / "metrics.jsonl")
    with pytest.raises(MetaticketError, match="is a symbolic link; run files are written only as plain files"):
        open_append(tmp_path / "runs" / "r" / "metrics.jsonl")
    args = ["meta-train", str(QUICK), "--set", f"run.out_dir={tmp_path / 'runs'}", "--set", "run.name=r", "--set",
            "meta.steps=2", "--set", "meta.meta_batch=2", "--set", "eval.val_every=2", "--set", "eval.val_tasks=4",
            "--quiet"]
    main(args)  # writes into r or a new folder; never through the link
    assert victim.read_text() == "precious\n"
    # a run folder that is a link is followed only to a folder of the user who runs us (another user simulated:
    # the suite may run as root, so getuid reports someone else)
    mine = tmp_path / "mine"
    mine.mkdir()
    os.symlink(mine, tmp_path / "runs" / "linked")
    capsys.readouterr()
    assert main([*args[:4], "--set", "run.name=linked", *args[6:]]) == 0 and (mine / "config.yaml").is_file()
    real_uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real_uid + 1)
    assert main([*args[:4], "--set", "run.name=linked", *args[6:8], "--set", "meta.steps=4", "--resume",
                 "--quiet"]) == 2
    assert "is not a folder of yours" in capsys.readouterr().err


@pytest.mark.parametrize("other", ["width", "optimizer", "not a state"])
def test_a_state_of_another_learner_is_refused_and_changes_nothing(other):
    lrn = learner("maml")
    lrn.meta_step(tasks(batch=2))
    before = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in lrn.model.state_dict().items()}
    opt_before = repr(lrn.optimizer.state_dict()["param_groups"])
    if other == "width":
        from metaticket.meta.learner import MetaLearner
        from metaticket.models import build_model
        from metaticket.runs.factory import make_layers

        layers = make_layers(supermask=False, generator=torch.Generator().manual_seed(0))
        state = MetaLearner(build_model("mlp", num_classes=5, width=0.5, layers=layers), method="maml",
                            outer_steps=10).state_dict()
    elif other == "optimizer":
        state = learner("maml", optimizer="sgd").state_dict()
    else:
        state = {"model": {}}
    with pytest.raises(ValueError, match="another model|another optimizer|not a MetaLearner state"):
        lrn.load_state_dict(state)
    assert all(torch.equal(before[k], v) for k, v in lrn.model.state_dict().items())
    assert repr(lrn.optimizer.state_dict()["param_groups"]) == opt_before and lrn.step == 1
    lrn.load_state_dict(lrn.state_dict())  # its own state still loads


def _claim_and_release(args: tuple[str, int]) -> list[str]:
    from pathlib import Path

    from metaticket.runs.rundir import claim_run_dir, release_run_dir

    root, rounds = args
    errors = []
    for _ in range(rounds):
        try:
            got = claim_run_dir(Path(root) / "deep" / "er" / "r")
            release_run_dir(got, Path(root))
        except Exception as e:  # noqa: BLE001 (any failure is what this test counts)
            errors.append(f"{type(e).__name__}: {e}")
    return errors


def test_claims_and_releases_of_one_name_from_three_processes_never_fail(tmp_path):
    """Claim then release the same run name (in folders that a release removes again) from 3 processes at once:
    every claim succeeds (before the fix about 10% failed with FileNotFoundError or 'cannot create')."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(3) as pool:
        errors = sum(pool.map(_claim_and_release, [(str(tmp_path), 60)] * 3), [])
    assert errors == [], errors[:3]


# ----------------------------------------------------------------------------------- data files that declare sizes
@pytest.mark.parametrize("declared", [(10 ** 13,), (1, 10 ** 6), "subarray"])
def test_a_pickle_declaring_a_huge_array_is_refused_before_allocating(declared, tmp_path):
    """A few hundred bytes that ask numpy for terabytes (an array placeholder of a huge shape, or of a dtype with a
    huge sub-array) are refused with a one-line error before any allocation: no MemoryError, no swap."""
    import pickle
    import resource

    import numpy as np

    from metaticket.data.safe_pickle import load_pickle
    from metaticket.errors import MetaticketError

    shape, dtype = ((1,), np.dtype(("u1", (2 * 10 ** 9,)))) if declared == "subarray" else (declared, np.dtype("u1"))

    class Huge:
        def __reduce__(self):
            return (np._core.multiarray._reconstruct, (np.ndarray, shape, dtype))

    path = tmp_path / "mini-imagenet-cache-train.pkl"
    path.write_bytes(pickle.dumps({"image_data": Huge(), "class_dict": {}}, protocol=4))
    assert path.stat().st_size < 400
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(MetaticketError, match=r"refusing to load .*declares \d+ bytes"):
        load_pickle(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KB: nothing was allocated
    normal = tmp_path / "ok.pkl"  # the control: a real numpy pickle of the same protocol still loads
    normal.write_bytes(pickle.dumps({"image_data": np.zeros((300, 84, 84, 3), np.uint8)}, protocol=4))
    assert load_pickle(normal)["image_data"].shape == (300, 84, 84, 3)


@pytest.mark.parametrize("row", ["../outside.jpg", "/etc/hostname", "images/../../outside.jpg"])
def test_a_miniimagenet_csv_naming_a_file_outside_images_is_refused(row, tmp_path):
    from PIL import Image

    from metaticket.data.miniimagenet import load_miniimagenet
    from metaticket.errors import MetaticketError

    base = tmp_path / "miniimagenet"
    (base / "images").mkdir(parents=True)
    Image.new("RGB", (90, 90)).save(base / "outside.jpg")
    Image.new("RGB", (90, 90)).save(base / "images" / "n0000000100000001.jpg")
    for split in ("train", "val", "test"):
        rows = ["filename,label", "n0000000100000001.jpg,n00000001"] + ([f"{row},n00000001"] if split == "val" else [])
        (base / f"{split}.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(MetaticketError, match=r"val\.csv names .* a path outside .*images"):
        load_miniimagenet(tmp_path, tmp_path / "cache", progress=False)


def test_a_ticket_declaring_a_huge_network_is_refused_before_building_it(tmp_path):
    """A ticket whose config says model.width 64 (395 million weights) but whose mask bits cover the exported
    width-0.25 MLP: refused from a shapes-only build in well under a second, nothing drawn or allocated."""
    import resource
    import time

    from conftest import trained_metaticket

    from metaticket.config import config_from_dict, config_yaml, parse_yaml
    from metaticket.errors import MetaticketError
    from metaticket.runs.checkpoint import load_checkpoint
    from metaticket.runs.ticket import export_ticket, load_ticket

    config, model = trained_metaticket()
    path = tmp_path / "m.ticket"
    export_ticket(model, config, path)
    payload = load_checkpoint(path)
    raw = parse_yaml(payload["config"], "config")
    raw["model"]["width"] = 64.0
    payload["config"] = config_yaml(config_from_dict(raw))
    torch.save(payload, tmp_path / "huge.ticket")
    before, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    with pytest.raises(MetaticketError, match=r"declares a network of 394,\d{3},\d{3} parameters"):
        load_ticket(tmp_path / "huge.ticket")
    assert time.perf_counter() - t0 < 5 and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000
    assert load_ticket(path) is not None  # the control: the exported ticket itself loads

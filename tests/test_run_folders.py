"""Run folders are claimed atomically and stay inside run.out_dir; refused resumes and outputs write nothing they
should not (issue 17, items 2-4 and 6)."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import QUICK, REPO, expect_one_line, folder_state, refused, run, tiny

from metaticket.config import ConfigError, load_config
from metaticket.errors import MetaticketError
from metaticket.runs.checkpoint import check_checkpoint, load_checkpoint, read_json, save_atomic, write_text_atomic
from metaticket.runs.commands import check_memory
from metaticket.runs.rundir import claim_run_dir, release_run_dir


@pytest.mark.parametrize("name", ["a/b", "..", ".", "", ".hidden", "../escape", "a\\b", "x" * 201, "a\nb",
                                  "/abs"])
def test_run_name_is_one_folder_inside_out_dir(name):
    with pytest.raises(ConfigError, match="run.name"):
        load_config(QUICK, [f"run.name={json.dumps(name)}"])


def test_run_name_escaping_out_dir_is_refused_by_the_cli(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    r = run("meta-train", str(QUICK), "--set", f"run.out_dir={out}", "--set", "run.name=../escaped", "--quiet",
            cwd=out)
    expect_one_line(r, "run.name", "one folder name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and not any(out.iterdir())


def _claim(args: tuple[str, int]) -> str:
    return str(claim_run_dir(Path(args[0])))


def test_claims_made_at_the_same_moment_get_distinct_folders(tmp_path):
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        got = pool.map(_claim, [(str(tmp_path / "runs" / "same"), i) for i in range(12)])
    assert len(set(got)) == 12
    assert {Path(g).name for g in got} == {"same"} | {f"same-{i}" for i in range(1, 12)}


def test_two_runs_started_together_end_in_two_folders(tmp_path, data_root):
    cmd = [sys.executable, str(REPO / "run.py"), "meta-train", str(QUICK), *tiny(tmp_path, "twin")]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-800:] for o in outs]
    for name in ("twin", "twin-1"):
        assert (tmp_path / name / "checkpoints" / "last.pt").is_file()
        assert load_config(tmp_path / name / "config.yaml").run.name == "twin"


def test_a_run_refused_after_its_claim_leaves_no_folder(tmp_path):
    out = tmp_path / "deep" / "runs"
    r = run("meta-train", str(QUICK), "--set", f"run.out_dir={out}", "--set", f"data.root={tmp_path / 'nodata'}",
            "--set", "data.download=false", "--quiet", cwd=tmp_path, env_extra={"METATICKET_CACHE": str(tmp_path)})
    expect_one_line(r, "Omniglot not found")
    assert not (tmp_path / "deep").exists()
    # and releasing never touches a run that started
    started = claim_run_dir(tmp_path / "r" / "x")
    (started / "config.yaml").write_text("run:\n  name: x\n")
    release_run_dir(started, tmp_path)
    assert (started / "config.yaml").read_text() == "run:\n  name: x\n"


@pytest.fixture(scope="module")
def done(tmp_path_factory, data_root) -> Path:
    out = tmp_path_factory.mktemp("runs")
    r = run("meta-train", str(QUICK), *tiny(out, "done"), cwd=out)
    assert r.returncode == 0, r.stderr
    return out / "done"


def copy_run(done: Path, tmp_path: Path) -> Path:
    other = tmp_path / "done"
    shutil.copytree(done, other)
    text = (other / "config.yaml").read_text().replace(f"out_dir: {done.parent}", f"out_dir: {tmp_path}")
    (other / "config.yaml").write_text(text)
    return other


def resume(run_dir: Path, *sets: str) -> subprocess.CompletedProcess:
    args = [x for s in sets for x in ("--set", s)]
    return run("meta-train", str(run_dir / "config.yaml"), *args, "--resume", "--quiet", cwd=run_dir.parent)


def damage_sampler(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["sampler"]["generator"] = state["sampler"]["generator"][:100]
    torch.save(state, path)


@pytest.mark.parametrize(("damage", "needles"), [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), ("last.pt", "truncated")),
    (lambda p: p.write_bytes(b""), ("last.pt",)),
    (lambda p: torch.save({"format": "metaticket-ticket", "version": 1}, p), ("is a ticket",)),
    (lambda p: torch.save({"model": {}, "optimizer": {}}, p), ("not a meta checkpoint",)),
    (damage_sampler, ("sampler generator state is damaged",)),
], ids=["truncated", "empty", "ticket", "other kind", "sampler state size"])
def test_a_refused_resume_writes_nothing(done, tmp_path, damage, needles):
    other = copy_run(done, tmp_path)
    damage(other / "checkpoints" / "last.pt")
    before = folder_state(other)
    expect_one_line(resume(other), *needles)
    assert folder_state(other) == before  # no rewritten config.yaml, no new event file


def test_resume_names_the_keys_that_differ_and_may_extend_steps(done, tmp_path):
    other = copy_run(done, tmp_path)
    before = folder_state(other)
    err = expect_one_line(resume(other, "meta.inner_lr=0.2", "data.shots=2"), "meta.inner_lr (saved 0.4, now 0.2)",
                          "data.shots (saved 1, now 2)")
    assert "meta.steps" in err  # the fix says what may change
    expect_one_line(resume(other, "model.width=2.0"), "model.width")  # architecture: refused before loading
    assert folder_state(other) == before
    r = resume(other, "meta.steps=6")
    assert r.returncode == 0, r.stderr
    assert read_json(other / "train_summary.json")["steps"] == 6


def test_export_refuses_a_folder_and_a_file_that_is_not_a_ticket(done, tmp_path):
    (tmp_path / "notes.txt").write_text("my notes")
    expect_one_line(run("export", str(done), "-o", str(tmp_path / "notes.txt"), cwd=tmp_path), "notes.txt",
                    "not a ticket")
    assert (tmp_path / "notes.txt").read_text() == "my notes"
    expect_one_line(run("export", str(done), "-o", str(tmp_path), cwd=tmp_path), "is a folder")
    expect_one_line(run("export", str(done), "-o", str(tmp_path / "no" / "x.ticket"), cwd=tmp_path),
                    "does not exist")
    ticket = tmp_path / "t.ticket"
    for _ in range(2):  # an earlier ticket may be replaced
        r = run("export", str(done), "-o", str(ticket), cwd=tmp_path)
        assert r.returncode == 0, r.stderr


def test_sweep_refuses_duplicate_values_and_rebuilds_a_torn_result(done, tmp_path):
    for flag, values in (("--seeds", ["1", "1"]), ("--widths", ["1", "2", "1"]), ("--seeds", ["-1"])):
        r = run("sweep", str(QUICK), flag, *values, "--set", f"run.out_dir={tmp_path}", "--quiet", cwd=tmp_path)
        expect_one_line(r, flag)
    assert not any(tmp_path.iterdir())
    # a sweep point whose test.json was torn by a crash is scored again instead of failing
    sweep = tmp_path / "q-sweep" / "seed0"
    shutil.copytree(done, sweep)
    text = (sweep / "config.yaml").read_text().replace(f"out_dir: {done.parent}", f"out_dir: {tmp_path}")
    (sweep / "config.yaml").write_text(text.replace("name: done", "name: q"))
    (sweep / "test.json").write_text('{"accuracy": 5')
    (sweep / "train_summary.json").write_text('{"ste')
    sets = [x for s in tiny(tmp_path, "q")[:-1] for x in (s,)]
    r = run("sweep", str(QUICK), "--seeds", "0", *sets, "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert read_json(sweep / "test.json")["tasks"] == 10
    assert json.loads((tmp_path / "q-sweep" / "sweep.json").read_text())["seeds"][0]["seed"] == 0


@pytest.mark.parametrize(("args", "needle"), [
    (["--tasks", "0"], "--tasks"), (["--tasks", "-3"], "--tasks"), (["--tasks", "many"], "--tasks"),
    (["--checkpoint", "middle"], "--checkpoint"),
])
def test_meta_test_arguments_have_ranges(done, tmp_path, args, needle):
    expect_one_line(run("meta-test", str(done), *args, cwd=tmp_path), needle)


@pytest.mark.parametrize(("sets", "needle"), [
    (["run.seed=-1"], "run.seed"), (["run.seed=4294967296"], "run.seed"), (["eval.task_seed=-5"], "eval.task_seed"),
    (["run.threads=100000"], "run.threads"), (["data.workers=1000"], "data.workers"),
    (["data.image_size=100000"], "data.image_size"), (["model.width=1000"], "model.width"),
    (["model.channels=1000000"], "model.channels"),
])
def test_config_values_have_ranges(sets, needle):
    """In-process (the CLI's one-line path for a ConfigError is covered by the catalogue in test_bad_input.py)."""
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")) as e:
        load_config(QUICK, sets)
    assert "out of range" in str(e.value) and "\n" not in str(e.value)


def test_an_empty_out_dir_is_refused():
    with pytest.raises(ConfigError, match="run.out_dir"):
        load_config(QUICK, ['run.out_dir=""'])


def test_a_batch_beyond_the_machines_memory_is_refused_before_loading(tmp_path):
    refused("meta-train", str(QUICK), "--set", "data.image_size=1024", "--set", "meta.meta_batch=4000", "--quiet",
            tmp_path=tmp_path, needles=("data.image_size = 1024", "GiB", "lower"))
    config = load_config(QUICK, ["data.image_size=256"])
    check_memory(config, memory=64 * 2**30)  # 2 GiB of decoded images fit into 64 GiB
    with pytest.raises(MetaticketError, match="data.image_size = 256"):
        check_memory(config, memory=2 * 2**30)


def test_yaml_alias_bombs_end_at_once(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    bomb += "run:\n  name: *i\n"
    assert len(bomb) < 700
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb)
    r = run("meta-train", str(path), cwd=tmp_path)  # the subprocess timeout would catch a hang
    expect_one_line(r, "bomb.yaml", "alias")
    with pytest.raises(ConfigError, match="alias"):
        load_config(QUICK, ["run.name=&a [*a]"])


def test_a_config_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("run:\n  name: caf\xe9\n".encode("latin-1"))
    expect_one_line(run("meta-train", str(path), cwd=tmp_path), "latin1.yaml", "UTF-8")


def test_atomic_writes_and_a_full_disk(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    write_text_atomic(path, '{"a": 1}')
    assert read_json(path) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["x.json"]
    path.write_text('{"a": ')
    assert read_json(path) is None  # torn: the caller rebuilds it
    ckpt = tmp_path / "last.pt"
    save_atomic({"w": torch.ones(3)}, ckpt)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(MetaticketError, match="No space left on device.*the previous file is kept"):
        save_atomic({"w": torch.zeros(3)}, ckpt)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(ckpt)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "x.json"]  # no temporary file left


def test_a_full_disk_during_a_run_is_one_line(tmp_path, data_root):
    """The file size limit makes every write past 64 KiB fail as a full disk does (EFBIG instead of ENOSPC); the
    first file to hit it here is TensorBoard's event file, written from its own thread."""
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))\n"
            f"sys.argv = ['run.py', *sys.argv[1:]]\nsys.path.insert(0, {str(REPO)!r})\n"
            "from metaticket.cli import main\nsys.exit(main())\n")
    r = subprocess.run([sys.executable, "-c", code, "meta-train", str(QUICK), *tiny(tmp_path, "full")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    expect_one_line(r, "cannot write", "File too large", "continue with --resume")
    assert not list((tmp_path / "full").rglob("*.tmp*"))  # no half-written file left behind


def test_check_checkpoint_names_what_a_file_is(tmp_path):
    with pytest.raises(MetaticketError, match="a checkpoint of a train run"):
        check_checkpoint({k: 0 for k in ("model", "optimizer", "scheduler", "rerand", "rng", "iteration",
                                         "history")}, "meta", tmp_path / "x.pt")
    with pytest.raises(MetaticketError, match="not a train checkpoint"):
        check_checkpoint([1, 2], "train", tmp_path / "x.pt")


def test_an_out_dir_that_is_a_file_and_an_image_size_the_model_cannot_take(tmp_path, data_root):
    (tmp_path / "afile").write_text("x")
    r = run("meta-train", str(QUICK), "--set", f"run.out_dir={tmp_path / 'afile'}", "--quiet", cwd=tmp_path)
    expect_one_line(r, "afile", "run.out_dir")
    refused("meta-train", str(QUICK), "--set", "model.name=conv4", "--set", "data.image_size=4", "--quiet",
            tmp_path=tmp_path / "small", needles=("conv4", "data.image_size"))


def test_a_cache_folder_that_cannot_be_written(tmp_path):
    from metaticket.data.cache import cached

    (tmp_path / "afile").write_text("x")
    with pytest.raises(MetaticketError, match="METATICKET_CACHE"):
        cached(tmp_path / "afile" / "c.pt", lambda: {"a": torch.ones(1)})


def test_ticket_fields_are_checked_before_use(done, tmp_path):
    import time

    from metaticket.runs.ticket import load_ticket

    ticket = tmp_path / "t.ticket"
    r = run("export", str(done), "-o", str(ticket), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    good = torch.load(ticket, weights_only=True)
    bomb = "a: &a [x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    cases = [("config", bomb, "alias"), ("mask_bits", good["mask_bits"][:-1], "mask bytes"),
             ("mask_numel", [n + 1 for n in good["mask_numel"]], "mask"), ("num_classes", 10**9, "num_classes"),
             ("resampled", {"features.0.weight": {"index": torch.tensor([10**9]), "value": torch.ones(1)}},
              "outside"), ("resampled", {"features.0.weight": {"index": torch.ones(2)}}, "re-sampled"),
             ("dense", {"head.weight": torch.ones(3)}, "does not fit"), ("sha256", None, "sha256")]
    for key, value, needle in cases:
        payload = dict(good)
        payload[key] = value
        torch.save(payload, ticket)
        t0 = time.perf_counter()
        with pytest.raises(MetaticketError, match=needle) as e:
            load_ticket(ticket)
        assert time.perf_counter() - t0 < 1.0 and "\n" not in str(e.value), key
    payload = dict(good)
    del payload["mask_layers"]
    torch.save(payload, ticket)
    with pytest.raises(MetaticketError, match="no mask_layers"):
        load_ticket(ticket)

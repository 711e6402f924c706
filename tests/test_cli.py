"""run.py end to end on real Omniglot (tiny budgets), and its one-line errors."""

from __future__ import annotations

import json

import pytest
from conftest import QUICK, REPO, folder_state, run, tiny

from metaticket.config import load_config


def test_meta_train_then_meta_test(tmp_path, data_root):
    r = run("meta-train", str(QUICK), *tiny(tmp_path), "--test", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("method", "dataset", "ways", "shots", "accuracy", "ci95", "tasks"):
        assert key in result
    assert result["method"] == "metaticket" and result["tasks"] == 10 and 0 <= result["accuracy"] <= 100
    run_dir = tmp_path / "t"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "best.pt").is_file()
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert all("sparsity" in r for r in rows if r["split"] == "val")
    # meta-test alone, with a task count
    r2 = run("meta-test", str(run_dir), "--tasks", "6", "--quiet", cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout.strip().splitlines()[-1])["tasks"] == 6
    # running the same config again never overwrites the first run
    r3 = run("meta-train", str(QUICK), *tiny(tmp_path), cwd=tmp_path)
    assert r3.returncode == 0, r3.stderr
    assert (tmp_path / "t-1" / "checkpoints" / "last.pt").is_file()


def test_resume_continues_to_the_planned_steps(tmp_path, data_root):
    args = tiny(tmp_path, "r")
    r = run("meta-train", str(QUICK), *args[:-1], "--set", "meta.steps=2", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # resuming with another config is refused, naming the key, and writes nothing; fewer steps are refused too
    before = folder_state(tmp_path / "r")
    bad = run("meta-train", str(QUICK), *args, "--set", "meta.inner_lr=0.3", "--resume", cwd=tmp_path)
    assert bad.returncode == 2 and "config differs" in bad.stderr and "meta.inner_lr (saved 0.4, now 0.3)" in \
        bad.stderr, bad.stderr
    shorter = run("meta-train", str(QUICK), *args[:-1], "--set", "meta.steps=1", "--resume", cwd=tmp_path)
    assert shorter.returncode == 2 and "meta.steps = 1 is below the saved 2" in shorter.stderr, shorter.stderr
    assert folder_state(tmp_path / "r") == before
    # with the saved one it runs on to the end, and a larger meta.steps extends the run
    ok = run("meta-train", str(QUICK), *args[:-1], "--set", "meta.steps=2", "--resume", "--quiet", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    longer = run("meta-train", str(QUICK), *args, "--resume", "--quiet", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
    assert json.loads((tmp_path / "r" / "train_summary.json").read_text())["steps"] == 4
    assert load_config(tmp_path / "r" / "config.yaml").meta.steps == 4
    # run.device stays the rule written (auto); each session records what it resolved to, a resume included
    assert load_config(tmp_path / "r" / "config.yaml").run.device == "auto"
    sessions = [json.loads(x) for x in (tmp_path / "r" / "sessions.jsonl").read_text().splitlines()]
    assert [s["resume"] for s in sessions] == [False, True, True]
    assert {s["device"] for s in sessions} == {"cpu"} and all(s["torch"] and s["threads"] >= 1 for s in sessions)
    assert all(s["cpu"]["model"] and isinstance(s["cpu"]["flags"], list) for s in sessions)


@pytest.mark.parametrize(("args", "message"), [
    (["meta-train", "missing.yaml"], "config file missing.yaml does not exist"),
    (["meta-train", str(QUICK), "--set", "meta.inner_lrr=1"], "did you mean meta.inner_lr?"),
    (["meta-train", str(QUICK), "--set", "model.sparsity=1"], "model.sparsity = 1.0 is out of range"),
    (["meta-train", str(QUICK), "--set", "data.ways=1"], "data.ways = 1 is out of range"),
    (["meta-train", str(QUICK), "--set", "data.queries=20"], "data.shots + data.queries = 21"),
    (["meta-train", str(QUICK), "--set", "model.name=resnet999"], "known models: conv4, conv6, mlp, resnet12"),
    (["meta-test", "no-such-run"], "is not a run folder"),
])
def test_cli_errors_are_one_line(tmp_path, args, message, data_root):
    extra = ["--quiet"] if args[0] == "meta-test" else ["--set", f"run.out_dir={tmp_path}", "--quiet"]
    r = run(*args, *extra, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    if args[0] == "meta-train":
        assert not any(tmp_path.iterdir()), "a failed start wrote files"


def test_missing_data_root_is_one_line(tmp_path):
    r = run("meta-train", str(QUICK), "--set", f"data.root={tmp_path / 'nothing'}", "--set", "data.download=false",
            "--set", f"run.out_dir={tmp_path / 'runs'}", "--quiet", cwd=tmp_path)
    assert r.returncode == 2 and "Omniglot not found under" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


def test_tinyimagenet_run_and_cross_domain_test_on_cifar10(tmp_path, data_root):
    cfg = REPO / "configs" / "tinyimagenet" / "conv4_5w5s_metaticket.yaml"
    r = run("meta-train", str(cfg), *tiny(tmp_path, "x"), "--set", "data.image_size=16",
            "--set", "data.queries=2", "--set", "meta.vectorize=loop", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    own = run("meta-test", str(tmp_path / "x"), "--tasks", "4", "--quiet", cwd=tmp_path)
    cross = run("meta-test", str(tmp_path / "x"), "--tasks", "4", "--dataset", "cifar10", "--quiet", cwd=tmp_path)
    assert own.returncode == 0 and cross.returncode == 0, own.stderr + cross.stderr
    a, b = (json.loads(x.stdout.strip().splitlines()[-1]) for x in (own, cross))
    assert (a["dataset"], b["dataset"], b["trained_on"]) == ("tinyimagenet", "cifar10", "tinyimagenet")
    assert a["shots"] == b["shots"] == 5 and b["tasks"] == 4
    wrong = run("meta-test", str(tmp_path / "x"), "--dataset", "omniglot", "--quiet", cwd=tmp_path)
    assert wrong.returncode == 2 and "channel" in wrong.stderr


def test_sweep_writes_a_table_over_seeds_and_resumes(tmp_path, data_root):
    args = ["sweep", str(QUICK), "--seeds", "1", "2", *tiny(tmp_path, "s")]
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    table = json.loads(r.stdout.strip().splitlines()[-1])
    assert [s["seed"] for s in table["seeds"]] == [1, 2] and "mean" in table and "ci95_over_seeds" in table
    md = (tmp_path / "s-sweep" / "sweep.md").read_text()
    assert "| 1 |" in md and "| 2 |" in md and "mean over 2 seeds" in md
    # the two seeds train different networks on different tasks
    assert table["seeds"][0]["accuracy"] != table["seeds"][1]["accuracy"] or \
        table["seeds"][0]["sparsity"] != table["seeds"][1]["sparsity"]
    # re-running reuses the finished seeds (no new training)
    before = (tmp_path / "s-sweep" / "seed1" / "metrics.jsonl").read_text()
    again = run(*args, cwd=tmp_path)
    assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1]) == table
    assert (tmp_path / "s-sweep" / "seed1" / "metrics.jsonl").read_text() == before

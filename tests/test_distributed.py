"""Distributed training with torch.distributed (gloo, 2 processes on this machine) against one process (issue 8)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, run

from metaticket.distributed import SINGLE, Collective
from metaticket.runs.checkpoint import load_checkpoint

WORKER = Path(__file__).resolve().parent / "distributed_worker.py"


GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


def torchrun(*args: str, cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone`` of ``args``. Run once more, only when a rank died of gloo's teardown abort: with
    the barrier in ``shutdown`` it was 0 in 25 and 0 in 10 idle runs here, but it struck once in a CI run on a
    loaded machine (rank 1, SIGABRT). Any other failure, or the abort twice, fails the test."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True, timeout=600)
    if proc.returncode != 0 and GLOO_TEARDOWN_ABORT in proc.stderr:
        print(f"gloo teardown abort, run again: {proc.stderr.strip().splitlines()[0]}", file=sys.stderr)
        proc = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True, timeout=600)
    return proc


def test_collective_slices_cover_the_batch_once():
    for n in (2, 5, 32):
        for world in (1, 2, 3):
            if n < world:
                continue
            parts = [Collective(r, world).bounds(n) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert SINGLE.main and SINGLE.bounds(7) == (0, 7)


# float32 for the per-task loop (what Conv models and large MLPs run); the vmap path in float64, because vmap's
# batched kernels round differently for 3 and 6 tasks (about 1e-5 relative in float32, 1e-15 in float64)
@pytest.mark.parametrize("method,vectorize,dtype", [("metaticket", "loop", "float32"), ("maml", "loop", "float32"),
                                                    ("maml", "vmap", "float64"), ("metaticket", "vmap", "float64"),
                                                    ("maml", "factored", "float64")])
def test_two_gloo_processes_give_the_single_process_meta_gradient(method, vectorize, dtype, tmp_path):
    args = [method, vectorize, dtype]
    single = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "one.pt"), *args], cwd=tmp_path,
                            text=True, capture_output=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr
    two = torchrun(str(WORKER), str(tmp_path / "two.pt"), *args, cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert a["world"] == 1 and b["world"] == 2
    assert a["grads"].keys() == b["grads"].keys() and a["grads"]
    for k in a["grads"]:  # the meta-gradient of step 1
        assert torch.allclose(a["grads"][k], b["grads"][k], rtol=0, atol=1e-6), k
    for k in a["params"]:  # every parameter and buffer after 3 outer steps
        assert torch.allclose(a["params"][k].double(), b["params"][k].double(), rtol=0, atol=1e-6), k
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    # the test can fail: 2 processes that each used only their own half would give another gradient
    half = {k: v for k, v in b["grads"].items()}
    assert any(not torch.allclose(half[k] * 2, a["grads"][k], atol=1e-6) for k in a["grads"])


TINY_META = ["meta.vectorize=loop", "meta.steps=3", "meta.meta_batch=4", "eval.val_every=3", "eval.val_tasks=4",
             "eval.test_tasks=10", "run.log_every=1", "run.checkpoint_every=1", "meta.warmup_steps=1"]


def sets(values: list[str], out: Path) -> list[str]:
    return [x for s in [*values, f"run.out_dir={out}", "run.name=r"] for x in ("--set", s)]


def test_torchrun_meta_train_equals_one_process_and_only_rank_0_writes(tmp_path, data_root):
    quick = str(REPO / "configs" / "omniglot" / "quickstart.yaml")
    one = run("meta-train", quick, *sets(TINY_META, tmp_path / "one"), "--quiet", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    two = torchrun(str(REPO / "run.py"), "meta-train", quick, *sets(TINY_META, tmp_path / "two"), "--quiet",
                   cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["r"]  # one run folder, no "r-1"
    a = load_checkpoint(tmp_path / "one" / "r" / "checkpoints" / "last.pt")["learner"]["model"]
    b = load_checkpoint(tmp_path / "two" / "r" / "checkpoints" / "last.pt")["learner"]["model"]
    assert all(torch.allclose(a[k].double(), b[k].double(), rtol=0, atol=1e-6) for k in a)
    rows_a = [json.loads(x) for x in (tmp_path / "one" / "r" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (tmp_path / "two" / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in rows_a] == [(r["step"], r["split"]) for r in rows_b]  # logged once
    for ra, rb in zip(rows_a, rows_b):
        for key in ("loss", "acc"):
            if key in ra:
                assert ra[key] == pytest.approx(rb[key], abs=1e-5)


def test_torchrun_train_with_ddp_runs_and_writes_once(tmp_path, data_root):
    cfg = str(REPO / "configs" / "cifar10" / "conv6_edgepopup.yaml")
    small = ["model.width=0.0625", "train.max_iterations=3", "train.batch_size=32", "run.log_every=1",
             "data.workers=0", "train.epochs=1"]
    two = torchrun(str(REPO / "run.py"), "train", cfg, *sets(small, tmp_path / "two"), "--quiet", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    printed = [line for line in two.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1 and json.loads(printed[0])["iterations"] == 3  # only rank 0 reports
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["r"]
    state = load_checkpoint(tmp_path / "two" / "r" / "checkpoints" / "last.pt")
    assert state["iteration"] == 3
    odd = torchrun(str(REPO / "run.py"), "train", cfg, *sets([*small, "train.batch_size=33"], tmp_path / "odd"),
                   "--quiet", cwd=tmp_path)
    assert odd.returncode != 0 and "train.batch_size = 33" in odd.stderr


DIST_RESUME = {
    "meta-train": (REPO / "configs" / "omniglot" / "quickstart.yaml",
                   ["meta.vectorize=loop", "meta.steps=60", "meta.meta_batch=4", "eval.val_every=30",
                    "eval.val_tasks=4", "eval.test_tasks=10", "run.log_every=5", "run.checkpoint_every=10",
                    "meta.warmup_steps=5", "meta.rerand_every=15"]),
    "train": (REPO / "configs" / "cifar10" / "conv6_iterand.yaml",
              ["model.width=0.0625", "train.max_iterations=60", "train.batch_size=32", "train.rerand_every=7",
               "run.checkpoint_every=10", "run.log_every=5", "train.epochs=1", "data.workers=0"]),
}


@pytest.mark.parametrize("kind", ["meta-train", "train"])
def test_torchrun_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(kind, tmp_path, data_root):
    """2 gloo processes: SIGKILL the whole torchrun group after its first checkpoint, resume under torchrun, and end
    with the parameters and logged metrics of an uninterrupted 2-process run."""
    config, values = DIST_RESUME[kind]
    args = [str(REPO / "run.py"), kind, str(config), "--quiet"]
    straight = torchrun(*args, *sets(values, tmp_path / "a"), cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    run_dir = tmp_path / "b" / "r"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             *args, *sets(values, tmp_path / "b")], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists():
        if proc.poll() is not None:
            pytest.fail(f"torchrun ended (code {proc.returncode}) before a checkpoint: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("no checkpoint within 300 s")
        time.sleep(0.02)
    time.sleep(0.3)
    if proc.poll() is not None:
        pytest.fail("the run finished before it could be killed; give it more steps")
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
    proc.wait()
    state = load_checkpoint(last)
    step = state["learner"]["step"] if kind == "meta-train" else state["iteration"]
    assert 0 < step < 60
    before = (run_dir / "metrics.jsonl").read_text()
    resume = ["--resume"] if kind == "meta-train" else ["--resume", str(run_dir)]
    resumed = torchrun(*args, *sets(values, tmp_path / "b"), *resume, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # it continued from the checkpoint (a fresh start would rewrite the log or log the early steps twice)
    after = (run_dir / "metrics.jsonl").read_text()
    assert after.startswith(before) and len(after) > len(before)
    logged = [(r["step"], r["split"]) for r in map(json.loads, after.splitlines())]
    assert all(logged.count(key) == 1 for key in logged if key[0] <= step)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["r"]  # resumed in place, no second folder
    a = load_checkpoint(tmp_path / "a" / "r" / "checkpoints" / "last.pt")
    b = load_checkpoint(last)
    a, b = (a["learner"]["model"], b["learner"]["model"]) if kind == "meta-train" else (a["model"], b["model"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), rtol=0, atol=1e-6), k

    def rows(path: Path) -> dict:  # the last line of each (step, split), without wall-clock numbers
        out = {}
        for line in (path / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            out[(row["step"], row["split"])] = {k: v for k, v in row.items()
                                                if k not in {"ms_per_step", "tasks_per_s", "ms_per_iter",
                                                             "images_per_s"}}
        return out

    rows_a, rows_b = rows(tmp_path / "a" / "r"), rows(run_dir)
    assert rows_a.keys() == rows_b.keys()
    for key in rows_a:
        for name, value in rows_a[key].items():
            if isinstance(value, float):
                assert rows_b[key][name] == pytest.approx(value, abs=1e-5), (key, name)

"""Runs survive being killed: SIGKILL + --resume ends where an uninterrupted run ends; checkpoints are atomic and
never unpickle code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import QUICK, REPO, TIMING, run

from metaticket.errors import MetaticketError
from metaticket.runs.checkpoint import load_checkpoint, save_atomic
from metaticket.runs.ticket import load_ticket

META_SETS = ["meta.steps=240", "meta.meta_batch=4", "eval.val_every=60", "eval.val_tasks=10", "eval.test_tasks=10",
             "run.log_every=15", "run.checkpoint_every=20", "meta.warmup_steps=20", "meta.rerand_every=30"]
TRAIN_SETS = ["model.width=0.125", "train.max_iterations=200", "train.batch_size=32", "train.rerand_every=7",
              "run.checkpoint_every=10", "run.log_every=5", "train.epochs=1", "data.workers=0"]
KINDS = {
    "meta-train": (QUICK, META_SETS),
    "train": (REPO / "configs" / "cifar10" / "conv6_iterand.yaml", TRAIN_SETS),
}


def command(kind: str, out: Path) -> list[str]:
    config, sets = KINDS[kind]
    args = [kind, str(config), "--quiet"]
    for s in [*sets, f"run.out_dir={out}", "run.name=r"]:
        args += ["--set", s]
    return args


def metrics(run_dir: Path) -> dict[tuple[int, str], dict]:
    """The last line logged for each (step, split), timing removed (a resumed run re-logs the steps it redoes)."""
    rows = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[(row["step"], row["split"])] = {k: v for k, v in row.items() if k not in TIMING}
    return rows


def final_state(run_dir: Path, kind: str) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    return state["learner"]["model"] if kind == "meta-train" else state["model"]


def kill_after_first_checkpoint(args: list[str], run_dir: Path) -> int:
    """Start run.py, SIGKILL it as soon as its first checkpoint exists; return the step it had reached."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    last = run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (code {proc.returncode}) before its first checkpoint: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint within 300 s")
        time.sleep(0.02)
    time.sleep(0.3)  # let it run on past the checkpoint, so the resumed run redoes some steps
    if proc.poll() is not None:
        pytest.fail("the run finished before it could be killed; give it more steps")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(last)
    return state["learner"]["step"] if "learner" in state else state["iteration"]


@pytest.mark.parametrize("kind", ["meta-train", "train"])
def test_sigkill_then_resume_equals_an_uninterrupted_run(kind, tmp_path, data_root):
    straight = run(*command(kind, tmp_path / "a"), cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    killed_dir = tmp_path / "b" / "r"
    step = kill_after_first_checkpoint(command(kind, tmp_path / "b"), killed_dir)
    planned = 240 if kind == "meta-train" else 200
    assert 0 < step < planned
    resume = ["--resume"] if kind == "meta-train" else ["--resume", str(killed_dir)]
    resumed = run(*command(kind, tmp_path / "b"), *resume, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a_state, b_state = final_state(tmp_path / "a" / "r", kind), final_state(killed_dir, kind)
    assert a_state.keys() == b_state.keys()
    assert all(torch.equal(a_state[k], b_state[k]) for k in a_state), "final parameters differ"
    a_rows, b_rows = metrics(tmp_path / "a" / "r"), metrics(killed_dir)
    assert a_rows == b_rows  # every logged loss, accuracy, sparsity, learning rate and validation score
    if kind == "train":  # the JSON line train prints: final test top-1 etc.
        assert json.loads(straight.stdout.splitlines()[-1]) == json.loads(resumed.stdout.splitlines()[-1])


def test_resume_folder_without_checkpoint_is_one_line(tmp_path):
    (tmp_path / "r").mkdir()
    r = run("train", "--resume", str(tmp_path / "r"), "--quiet", cwd=tmp_path)
    assert r.returncode == 2 and "not a run folder" in r.stderr and "Traceback" not in r.stderr


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path):
    """The writer process is SIGKILLed halfway through writing the new file: the old one still loads."""
    path = tmp_path / "last.pt"
    save_atomic({"step": 1, "w": torch.ones(3)}, path)
    script = textwrap.dedent(f"""
        import os, signal, torch
        import metaticket.runs.checkpoint as c
        def dying_save(obj, f):
            f.write(b"PK\\x03\\x04 half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        c.torch.save = dying_save
        c.save_atomic({{"step": 2, "w": torch.zeros(3)}}, {str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert any(p.name.startswith(".last.pt.tmp") for p in tmp_path.iterdir())  # the torn write is beside it
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))


def test_an_error_while_writing_keeps_the_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"step": 1}, path)

    def failing_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("metaticket.runs.checkpoint.torch.save", failing_save)
    with pytest.raises(MetaticketError, match="disk full.*the previous file is kept"):
        save_atomic({"step": 2}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("loader", [load_checkpoint, load_ticket])
def test_a_file_that_needs_code_to_unpickle_is_refused_not_run(loader, tmp_path):
    marker = tmp_path / "code-ran"
    bad = tmp_path / "evil.pt"
    torch.save({"step": 1, "payload": _RunsCode(marker)}, bad)
    with pytest.raises(MetaticketError, match="refusing to load .*needs code execution"):
        loader(bad)
    assert not marker.exists()


def test_truncated_checkpoint_is_named(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"w": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(MetaticketError, match="truncated or not a checkpoint"):
        load_checkpoint(path)

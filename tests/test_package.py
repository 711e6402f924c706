"""metaticket after a plain (not editable) install from a built wheel, used from outside the repository: the console
script, ``python -m metaticket`` and the shipped configs by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import REPO


def test_a_built_wheel_installs_into_a_fresh_venv_and_runs_the_quickstart_by_name(tmp_path, data_root):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("metaticket-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python*/site-packages"))
    # the dependencies (torch, ...) from this environment, without its editable metaticket (a plain path entry:
    # the .pth files that activate the editable install there are not read)
    (site / "dependencies.pth").write_text(str(Path(torch.__file__).parents[1]) + "\n")
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    work = tmp_path / "elsewhere"  # no configs/ folder here: names must resolve to the installed package data
    work.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "METATICKET_CACHE": str(tmp_path / "cache")}

    def call(*argv: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([*argv], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    where = call(str(python), "-c", "import metaticket; print(metaticket.__file__)").stdout.strip()
    assert Path(where).is_relative_to(site), where  # the installed copy, not the source tree
    assert "omniglot/quickstart" in call(str(venv / "bin" / "metaticket"), "configs", "omniglot").stdout.split()
    tiny = ["--set", "meta.steps=2", "--set", "meta.meta_batch=2", "--set", "eval.val_every=2", "--set",
            "eval.val_tasks=4", "--set", "meta.warmup_steps=1", "--set", f"run.out_dir={work / 'runs'}", "--quiet"]
    call(str(venv / "bin" / "metaticket"), "meta-train", "omniglot/quickstart", *tiny)
    line = json.loads(call(str(python), "-m", "metaticket", "meta-test", str(work / "runs" / "quickstart"), "--tasks",
                           "10", "--quiet").stdout.strip().splitlines()[-1])
    assert line["tasks"] == 10 and line["dataset"] == "omniglot"
    usage = subprocess.run([str(python), "-m", "metaticket", "meta-train"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=120)
    assert usage.returncode == 2 and "see `python -m metaticket meta-train --help`" in usage.stderr

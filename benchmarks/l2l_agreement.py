"""Benchmark: our MAML and learn2learn's MAML trained on the same tasks reach the same accuracy.

    python benchmarks/l2l_agreement.py [--steps 2000] [--meta-batch 16] [--peers-python .venv-peers/bin/python]

Omniglot 5-way 1-shot, MLP 784-256-128-64-64, second order, inner lr 0.4, 1 inner step in training and 3 at test,
Adam 1e-3. Both start from the same initial weights (our registry's MLP drawn with ``--seed``; learn2learn gets
it with torch's own BatchNorm), see the same sequence of training tasks (our seeded episode sampler) and are
tested on the same 600 test tasks (``eval.task_seed`` 1234). learn2learn runs in ``--peers-python`` (a separate
venv, see benchmarks/README.md); it is never a dependency. Writes ``benchmarks/results/<name>.json`` and prints
both accuracies with their 95% intervals and whether each lies inside the other's interval.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

WAYS, SHOTS, QUERIES, INNER_LR, TEST_STEPS, TEST_TASKS, TASK_SEED = 5, 1, 15, 0.4, 3, 600, 1234


def samplers(seed: int):
    from metaticket.data import episode_samplers

    root = Path(os.environ.get("METATICKET_DATA", ROOT.parent / "shared" / "data"))
    cache = Path(os.environ.get("METATICKET_CACHE") or Path.home() / ".cache" / "metaticket")
    return episode_samplers("omniglot", root, cache, ways=WAYS, shots=SHOTS, queries=QUERIES, image_size=28,
                            rotations=True, seed=seed, val_seed=TASK_SEED, progress=False)


def initial_model(seed: int):
    import torch

    from metaticket.models import build_model
    from metaticket.models.registry import make_layers

    return build_model("mlp", num_classes=WAYS, layers=make_layers(supermask=False,
                                                                     generator=torch.Generator().manual_seed(seed)))


def train_ours(steps: int, meta_batch: int, seed: int) -> dict:
    import torch

    from metaticket import MAML

    torch.manual_seed(seed)
    sets = samplers(seed)
    learner = MAML(initial_model(seed), inner_lr=INNER_LR, inner_steps=1, inner_steps_test=TEST_STEPS,
                   optimizer="adam", outer_lr=1e-3, outer_steps=steps)
    t0 = time.perf_counter()
    for _ in range(steps):
        learner.meta_step(sets["train"].sample(meta_batch))
    minutes = (time.perf_counter() - t0) / 60
    accs = []
    for _ in range(TEST_TASKS // 50):
        accs.append(learner.evaluate(sets["test"].sample(50))[1])
    return summary(torch.cat(accs).tolist(), minutes, learner.vectorize)


def train_l2l(steps: int, meta_batch: int, seed: int) -> dict:
    import learn2learn as l2l
    import torch
    import torch.nn.functional as F
    from torch import nn

    from metaticket.core.norm import TaskBatchNorm1d

    torch.manual_seed(seed)
    sets = samplers(seed)
    model = initial_model(seed)
    for name, m in list(model.features.named_children()):  # the same affine start (1, 0), torch's own kernel
        if isinstance(m, TaskBatchNorm1d):
            model.features[int(name)] = nn.BatchNorm1d(m.num_features, track_running_stats=False)
    maml = l2l.algorithms.MAML(model, lr=INNER_LR, first_order=False)
    opt = torch.optim.Adam(maml.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for _ in range(steps):
        tasks = sets["train"].sample(meta_batch)
        opt.zero_grad()
        for i in range(meta_batch):
            learner = maml.clone()
            learner.adapt(F.cross_entropy(learner(tasks.support_x[i]), tasks.support_y[i]))
            (F.cross_entropy(learner(tasks.query_x[i]), tasks.query_y[i]) / meta_batch).backward()
        opt.step()
    minutes = (time.perf_counter() - t0) / 60
    accs = []
    for _ in range(TEST_TASKS // 50):
        tasks = sets["test"].sample(50)
        for i in range(50):
            learner = maml.clone()
            for _ in range(TEST_STEPS):  # no meta-gradient at test: first order, as ours
                learner.adapt(F.cross_entropy(learner(tasks.support_x[i]), tasks.support_y[i]), first_order=True)
            with torch.no_grad():
                accs.append(float((learner(tasks.query_x[i]).argmax(-1) == tasks.query_y[i]).float().mean()))
    return summary(accs, minutes, "loop")


def summary(accs: list[float], minutes: float, how: str) -> dict:
    n = len(accs)
    mean = 100 * sum(accs) / n
    std = 100 * math.sqrt(sum((a - mean / 100) ** 2 for a in accs) / (n - 1))
    return {"accuracy": round(mean, 3), "ci95": round(1.96 * std / math.sqrt(n), 3), "tasks": n,
            "train_minutes": round(minutes, 2), "tasks_per_step": how}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--one", choices=["ours", "learn2learn"], help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--meta-batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    p.add_argument("--results", default=str(RESULTS), help="folder for the results")
    p.add_argument("--name", default="l2l_agreement")
    args = p.parse_args()
    if args.one:
        train = train_ours if args.one == "ours" else train_l2l
        print(json.dumps({"impl": args.one, **train(args.steps, args.meta_batch, args.seed)}))
        return
    rows = {}
    for impl, python in (("ours", sys.executable), ("learn2learn", args.peers_python)):
        cmd = [python, str(Path(__file__).resolve()), "--one", impl, "--steps", str(args.steps), "--meta-batch",
               str(args.meta_batch), "--seed", str(args.seed)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        if proc.returncode != 0:
            sys.exit(f"{impl} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
        rows[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(rows[impl]), flush=True)
    a, b = rows["ours"], rows["learn2learn"]
    out = {"settings": {"steps": args.steps, "meta_batch": args.meta_batch, "seed": args.seed, "ways": WAYS,
                        "shots": SHOTS, "queries": QUERIES, "inner_lr": INNER_LR, "test_steps": TEST_STEPS},
           "ours": a, "learn2learn": b,
           "ours_within_l2l_ci": abs(a["accuracy"] - b["accuracy"]) <= b["ci95"],
           "l2l_within_ours_ci": abs(a["accuracy"] - b["accuracy"]) <= a["ci95"]}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.name}.json").write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k.endswith("ci")}))


if __name__ == "__main__":
    main()

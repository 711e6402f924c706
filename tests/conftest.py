"""Shared fixtures and helpers (tasks, learners, run.py calls, toy data...). Tests that need real data read it
from $METATICKET_DATA and fail (not skip) without it."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.func import functional_call

from metaticket.baselines.train import TrainPlan
from metaticket.config import TrainConfig, load_config
from metaticket.core.supermask import rerandomize, supermask_layers
from metaticket.data.classification import TensorImages
from metaticket.meta import factored
from metaticket.meta.learner import MetaLearner
from metaticket.models import build_model
from metaticket.models.registry import make_layers
from metaticket.runs.factory import build_learner
from metaticket.tasks import Tasks

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = os.environ.get("METATICKET_DATA")
    if not root or not (Path(root) / "omniglot" / "images_background.zip").is_file():
        pytest.fail("this test needs real Omniglot: set METATICKET_DATA to a folder holding "
                    "omniglot/images_background.zip and images_evaluation.zip (CI uses ../shared/data)")
    return Path(root)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """The decoded-dataset cache (shared with run.py so the decode happens once per machine)."""
    return Path(os.environ.get("METATICKET_CACHE") or Path.home() / ".cache" / "metaticket")


@pytest.fixture(scope="session")
def omniglot(data_root: Path, cache_dir: Path):
    from metaticket.data.omniglot import load_omniglot

    return load_omniglot(data_root / "omniglot", cache_dir, progress=False)


# ----------------------------------------------------------------------------------------------- shared helpers
def tasks(batch: int = 3, ways: int = 5, shots: int = 1, queries: int = 3, size: int = 28, seed: int = 0) -> Tasks:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(ways)
    return Tasks(torch.rand(batch, ways * shots, 1, size, size, generator=g),
                 labels.repeat_interleave(shots).expand(batch, -1).clone(),
                 torch.rand(batch, ways * queries, 1, size, size, generator=g),
                 labels.repeat_interleave(queries).expand(batch, -1).clone())


def learner(method: str, model: str = "mlp", seed: int = 0, **kw) -> MetaLearner:
    g = torch.Generator().manual_seed(seed)
    layers = make_layers(supermask=method == "metaticket", generator=g, mask=kw.pop("mask", "threshold"),
                         sparsity=kw.pop("sparsity", 0.5), init_sparsity=kw.pop("init_sparsity", 0.0))
    net = build_model(model, num_classes=5, width=0.25, layers=layers, **({"channels": 8} if model == "conv4" else {}))
    return MetaLearner(net, method=method, outer_steps=10, **kw)


class Spy:
    """Counts how many meta-batches ran the factored inner loop."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = factored.FactoredInner.adapt

        def adapt(inner, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            self.calls += 1
            return real(inner, *args, **kwargs)

        monkeypatch.setattr(factored.FactoredInner, "adapt", adapt)


def ops_writing(fn, sizes: set[int]) -> list[tuple[str, torch.dtype | None, torch.dtype]]:
    """``(op, first tensor input's dtype, output dtype)`` of every aten op ``fn`` runs that writes a tensor of one
    of ``sizes`` elements, in order; allocations, views and detaches are not counted."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[tuple[str, torch.dtype | None, torch.dtype]] = []
    skip = ("aten.empty", "aten.detach", "aten.view", "aten.alias", "aten.expand")

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            out = func(*args, **(kwargs or {}))
            name = str(func.overloadpacket)
            if not name.startswith(skip):
                for o in out if isinstance(out, (tuple, list)) else [out]:
                    if isinstance(o, torch.Tensor) and o.numel() in sizes:
                        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
                        seen.append((name, None if first is None else first.dtype, o.dtype))
                        break
            return out

    with Log():
        fn()
    return seen


def double(batch: Tasks) -> Tasks:
    return Tasks(batch.support_x.double(), batch.support_y, batch.query_x.double(), batch.query_y)


REPO = Path(__file__).resolve().parents[1]


QUICK = REPO / "configs" / "omniglot" / "quickstart.yaml"


def run(*args: str | Path, cwd: Path, env_extra: dict[str, str] | None = None,
        process: bool = False) -> subprocess.CompletedProcess:
    """``run.py ARGS`` from ``cwd`` with ``env_extra`` set: in this test process (``metaticket.cli.main`` with its
    output captured; starting Python and torch again costs seconds per call), or as a real process with
    ``process=True`` (or METATICKET_TEST_PROCESS=1 for the whole suite). Paths are passed as their text."""
    args = tuple(str(a) for a in args)
    if process or os.environ.get("METATICKET_TEST_PROCESS") == "1":
        env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
        return subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, env=env, text=True,
                              capture_output=True, timeout=600)
    return run_in_process(list(args), cwd, env_extra or {})


def run_in_process(argv: list[str], cwd: Path, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    """``metaticket.cli.main(argv)`` as ``run.py`` would run it: one thread (as OMP_NUM_THREADS=1), ``cwd`` and the
    environment set for the call, stdout/stderr captured, an exception reported as a traceback with exit code 1;
    the test process's working folder, environment, thread count, RNG states and thread hook are restored."""
    import contextlib
    import random
    import threading
    import traceback

    import torch

    from metaticket.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd, saved_threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    saved_random, saved_hook = random.getstate(), threading.excepthook
    code: int = 0
    try:
        os.environ.update(env_extra)
        os.chdir(cwd)
        torch.set_num_threads(1)
        with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse: usage errors and --help
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:  # noqa: BLE001 (what a real process would print before exiting with 1)
                traceback.print_exc(file=err)
                code = 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(saved_threads)
        random.setstate(saved_random)
        threading.excepthook = saved_hook
    return subprocess.CompletedProcess([sys.executable, "run.py", *argv], code, out.getvalue(), err.getvalue())


def tiny(out: Path, name: str = "t") -> list[str]:
    return ["--set", f"run.out_dir={out}", "--set", f"run.name={name}", "--set", "meta.steps=4",
            "--set", "meta.meta_batch=2", "--set", "eval.val_every=2", "--set", "eval.val_tasks=4",
            "--set", "eval.test_tasks=10", "--set", "run.log_every=2", "--set", "meta.warmup_steps=1", "--quiet"]


def folder_state(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file and folder under ``root``: what 'nothing written' is checked against."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def model_for(method: str, name: str = "conv6", width: float = 0.125, seed: int = 0) -> torch.nn.Module:
    layers = make_layers(supermask=method != "dense", mask="topk", sparsity=0.5, dense_head=False,
                         generator=torch.Generator().manual_seed(seed), norm="batch", norm_affine=method == "dense")
    return build_model(name, num_classes=4, image_size=16, width=width, layers=layers)


def toy_data(n: int = 64, seed: int = 0) -> TensorImages:
    g = torch.Generator().manual_seed(seed)
    return TensorImages(torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g),
                        torch.randint(0, 4, (n,), generator=g), augment=True, seed=seed)


def plan(method: str, checkpoint_every: int = 2, **kw) -> TrainPlan:
    """``iterand`` is edge-popup with IteRand on (every 3 iterations); every other method runs without it."""
    rerand = dict(method="edgepopup", rerand_every=3) if method == "iterand" else dict(method=method)
    train = dict(**rerand, epochs=2, batch_size=16, lr=0.1, rerand_rate=0.5, eval_batch=32)
    return TrainPlan(TrainConfig(**{**train, **kw}), checkpoint_every=checkpoint_every, log_every=1, workers=0, seed=0)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def reference_score_grads(lrn: MetaLearner, batch: Tasks, steps: int, first_order: bool) -> dict[str, torch.Tensor]:
    """The Meta-ticket code's meta-gradient on the scores, computed the way that code forms it: per task, the
    supermask model's own forward (mask recomputed from the scores in every forward, dense weights ``w`` inside),
    SGD on w and the other non-score parameters, the mean query loss differentiated to the scores."""
    model, lr = lrn.model, lrn.inner_lr
    own = dict(model.named_parameters())
    scores = {n: p for n, p in own.items() if n.endswith("scores")}
    start = {n: p.detach() for n, p in own.items() if n not in scores}
    total = 0.0
    for i in range(len(batch)):
        inner = {n: v.clone().requires_grad_() for n, v in start.items()}
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(model, {**scores, **inner}, (batch.support_x[i],)),
                                   batch.support_y[i])
            grads = torch.autograd.grad(loss, list(inner.values()), create_graph=not first_order)
            inner = {n: v - lr * g for (n, v), g in zip(inner.items(), grads)}
        logits = functional_call(model, {**scores, **inner}, (batch.query_x[i],))
        total = total + F.cross_entropy(logits, batch.query_y[i]) / len(batch)
    return dict(zip(scores, torch.autograd.grad(total, list(scores.values()))))


def meta_step_grads(lrn: MetaLearner, batch: Tasks) -> dict[str, torch.Tensor]:
    lrn.meta_step(batch)
    return {n: p.grad.clone() for n, p in lrn.model.named_parameters() if p.grad is not None}


def earlier_run(out: Path) -> dict[str, tuple[int, int]]:
    """An earlier run at ``out/earlier`` (the files a finished run leaves) and the state of ``out``."""
    run_dir = out / "earlier"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("run:\n  name: earlier\n")
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"weights")
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    return folder_state(out)


def refused(command: str, config: str, *args: str, tmp_path: Path, needles: tuple[str, ...] = (),
            env_extra: dict[str, str] | None = None) -> str:
    """Run ``run.py command config args`` into an output folder that already holds a run of the same
    ``run.name``; it must stop with one line naming ``needles`` and leave that folder as it was (no files
    written, no new run folder beside it)."""
    out = tmp_path / "runs"
    before = earlier_run(out)
    r = run(command, config, *args, "--set", f"run.out_dir={out}", "--set", "run.name=earlier", cwd=tmp_path,
            env_extra=env_extra)
    err = expect_one_line(r, *needles)
    assert folder_state(out) == before, "a refused run wrote into the output folder"
    return err


def expect_one_line(result, *needles: str) -> str:
    err = result.stderr.strip()
    assert result.returncode == 2, f"exit {result.returncode}; stderr: {err[-1500:]}"
    assert "Traceback" not in err, err[-1500:]
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{err[-1500:]}"
    for needle in needles:
        assert needle.lower() in err.lower(), f"{needle!r} not in: {err}"
    return err


# ------------------------------------------------------------------------------------------ data files
def omniglot_with(tmp_path: Path, background: bytes) -> list[str]:
    root = tmp_path / "data"
    (root / "omniglot").mkdir(parents=True)
    (root / "omniglot" / "images_background.zip").write_bytes(background)
    (root / "omniglot" / "images_evaluation.zip").write_bytes(background)
    return ["--set", f"data.root={root}", "--quiet"]


def fake_cache(tmp_path: Path) -> dict[str, str]:
    return {"METATICKET_CACHE": str(tmp_path / "cache")}


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    acc.Reload()
    return acc


TIMING = {"ms_per_step", "tasks_per_s", "ms_per_iter", "images_per_s"}  # wall-clock numbers differ between runs


BENCH = REPO / "benchmarks"


def bench(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def trained_metaticket(seed: int = 0):
    """A Meta-ticket MLP whose scores moved (some weights pruned), re-randomized twice in between, so that some
    kept weights are no longer the seed's draw; its head bias also moved (a learned dense tensor)."""
    config = load_config(QUICK, [f"run.seed={seed}"])
    model = build_learner(config).model
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _round in range(2):
            for _, layer in supermask_layers(model):
                layer.scores.add_(0.05 * torch.randn(layer.scores.shape, generator=g))
            rerandomize(model, 0.5, g)
        model.head.bias.add_(0.1)
    return config, model
